-- Live reads of recent transitions ("who reached a step in the last N minutes", and the
-- server-sent-events stream of new ones) filter by time, which funnel_transitions'
-- per-visitor order cannot skip to. This copy, kept by a materialized view, is ordered by
-- the time the visitor reached the step. A replay after a processor crash re-inserts
-- identical rows (same key), so reads use FINAL as on the original table. The minmax index
-- on processed_at lets the stream skip to rows written since its last poll.
CREATE TABLE IF NOT EXISTS funnel_transitions_by_time
(
    project_id LowCardinality(String),
    funnel_id LowCardinality(String),
    visitor_id String,
    step UInt8,
    reached_at DateTime64(3, 'UTC'),
    chain_started_at DateTime64(3, 'UTC'),
    event_id UUID,
    processed_at DateTime64(3, 'UTC'),
    INDEX processed_at_minmax processed_at TYPE minmax GRANULARITY 1
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(reached_at)
ORDER BY (project_id, funnel_id, reached_at, visitor_id, step);

CREATE MATERIALIZED VIEW IF NOT EXISTS funnel_transitions_by_time_mv
TO funnel_transitions_by_time
AS SELECT project_id, funnel_id, visitor_id, step, reached_at, chain_started_at, event_id,
          processed_at
FROM funnel_transitions;

-- Transitions written before this migration.
INSERT INTO funnel_transitions_by_time
SELECT project_id, funnel_id, visitor_id, step, reached_at, chain_started_at, event_id,
       processed_at
FROM funnel_transitions;
