-- How far an unfinished backfill got, per log partition: it runs in chunks of visitors in
-- key order (processor/backfills.py), and after each chunk is written the last visitor key
-- it covered is written here. A restarted processor resumes after it instead of starting
-- over. The marker in funnel_backfills still says when a backfill is complete, so a
-- release that does not know this table redoes an unfinished one from the start.
CREATE TABLE IF NOT EXISTS funnel_backfill_progress
(
    consumer_group LowCardinality(String),
    log_partition UInt32,
    project_id LowCardinality(String),
    funnel_id String,
    definition_hash String,
    resume_after String,
    written_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(written_at)
ORDER BY (consumer_group, log_partition, project_id, funnel_id);
