-- Which funnel definitions the processor has rebuilt live state for, per log partition.
-- A funnel saved after events were stored gets its per-visitor stages from those events
-- (processor/backfill.py); the marker is written last, so a crash mid-backfill redoes it.
CREATE TABLE IF NOT EXISTS funnel_backfills
(
    consumer_group LowCardinality(String),
    log_partition UInt32,
    project_id LowCardinality(String),
    funnel_id String,
    definition_hash String,
    done_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(done_at)
ORDER BY (consumer_group, log_partition, project_id, funnel_id);
