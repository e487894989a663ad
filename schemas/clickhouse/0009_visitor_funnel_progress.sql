-- One visitor's progress in one funnel, as a backfill rebuilt it (processor/backfills.py).
-- A backfill writes these instead of the visitor's whole state (which holds every funnel
-- of the project), so its cost does not grow with the number of funnels saved. On
-- assignment the processor loads them over the states: a row of the funnel's current
-- definition wins over the state unless the state was written after it (a greater
-- applied_offset: a live event since, whose state carries the funnel too). A row of an
-- older definition is ignored; that definition's backfill rebuilds it. progress = '':
-- the visitor has none.
CREATE TABLE IF NOT EXISTS visitor_funnel_progress
(
    consumer_group LowCardinality(String),
    log_partition UInt32,
    visitor_key String,
    funnel_id String,
    definition_hash String,
    progress String,
    applied_offset UInt64,
    written_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(written_at)
ORDER BY (consumer_group, log_partition, visitor_key, funnel_id);
