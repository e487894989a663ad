-- Every version of every funnel saved through the API. `funnels` kept only the latest row
-- of a funnel (its ReplacingMergeTree collapses the rest), so a replaced definition was
-- gone; here a version is a row of its own, numbered 1, 2, 3... per funnel, and replacing
-- a funnel adds a row. Archiving rewrites the current version's row with `archived_at`
-- set (a greater `written_at` wins the merge); saving the id again adds the next version.
-- `funnels` is no longer written; its live rows become version 1 here.
CREATE TABLE IF NOT EXISTS funnel_versions
(
    project_id LowCardinality(String),
    funnel_id String,
    version UInt32,
    definition String,
    saved_at DateTime64(3, 'UTC'),
    archived_at Nullable(DateTime64(3, 'UTC')),
    written_at UInt64
)
ENGINE = ReplacingMergeTree(written_at)
ORDER BY (project_id, funnel_id, version);

-- The previous release's funnels: `version` there was the save time in nanoseconds.
INSERT INTO funnel_versions
SELECT project_id, funnel_id, 1, definition,
       fromUnixTimestamp64Nano(toInt64(version), 'UTC'), NULL, version
FROM funnels FINAL
WHERE is_deleted = 0;
