-- Raw events, one row per accepted event. ReplacingMergeTree on a key that ends in
-- event_id: a replay after a processor crash re-inserts identical rows, which merges
-- collapse; funnel queries (windowFunnel, uniqExact) are unaffected by such duplicates.
CREATE TABLE IF NOT EXISTS events
(
    project_id LowCardinality(String),
    event_id UUID,
    event LowCardinality(String),
    visitor_id String,
    user_id String,
    client_session_id String,
    timestamp DateTime64(3, 'UTC'),
    received_at DateTime64(3, 'UTC'),
    properties Map(String, String),
    context Map(LowCardinality(String), String),
    log_partition UInt32,
    log_offset UInt64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (project_id, toDate(timestamp), visitor_id, timestamp, event_id);

-- Sessions as the processor last saw them. A late event can merge two sessions: the
-- absorbed one is written again with is_deleted = 1.
CREATE TABLE IF NOT EXISTS sessions
(
    project_id LowCardinality(String),
    visitor_id String,
    session_id String,
    started_at DateTime64(3, 'UTC'),
    ended_at DateTime64(3, 'UTC'),
    event_count UInt32,
    entry_url String,
    referrer String,
    utm_source String,
    utm_medium String,
    utm_campaign String,
    device LowCardinality(String),
    browser LowCardinality(String),
    os LowCardinality(String),
    version UInt64,
    is_deleted UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY (project_id, visitor_id, session_id);

-- Per visitor and funnel: the deepest step reached and, per step, when the chain that
-- holds it started and reached it (windowFunnel semantics, see processor/funnel_stage.py).
CREATE TABLE IF NOT EXISTS funnel_state
(
    project_id LowCardinality(String),
    funnel_id LowCardinality(String),
    visitor_id String,
    level UInt8,
    step_started_at Array(DateTime64(3, 'UTC')),
    step_reached_at Array(DateTime64(3, 'UTC')),
    updated_at DateTime64(3, 'UTC'),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (project_id, funnel_id, visitor_id);

-- One row each time a visitor first reaches a step of a funnel.
CREATE TABLE IF NOT EXISTS funnel_transitions
(
    project_id LowCardinality(String),
    funnel_id LowCardinality(String),
    visitor_id String,
    step UInt8,
    reached_at DateTime64(3, 'UTC'),
    chain_started_at DateTime64(3, 'UTC'),
    event_id UUID,
    processed_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (project_id, funnel_id, visitor_id, step);

-- The processor's per-visitor state, written after the rows above and before the offset
-- commit. applied_offset lets a restarted processor skip what a visitor already absorbed.
CREATE TABLE IF NOT EXISTS processor_state
(
    consumer_group LowCardinality(String),
    log_partition UInt32,
    visitor_key String,
    state String,
    applied_offset UInt64
)
ENGINE = ReplacingMergeTree(applied_offset)
ORDER BY (consumer_group, log_partition, visitor_key);

-- Messages the processor could not use, with why.
CREATE TABLE IF NOT EXISTS dead_letters
(
    recorded_at DateTime64(3, 'UTC'),
    source LowCardinality(String),
    reason LowCardinality(String),
    detail String,
    log_partition Int64,
    log_offset Int64,
    payload String
)
ENGINE = ReplacingMergeTree
ORDER BY (source, log_partition, log_offset);

-- Funnel definitions saved through the API or the config file.
CREATE TABLE IF NOT EXISTS funnels
(
    project_id LowCardinality(String),
    funnel_id String,
    definition String,
    version UInt64,
    is_deleted UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY (project_id, funnel_id);
