-- Which visitors count for which user in `count_by: "user"` funnels: a visitor counts for
-- the user id of its newest event that carried one. The processor owning the visitor
-- writes a row when that changes, and deletes the row of the user it leaves (is_deleted);
-- rebuilding a user's live progress reads its visitors here (processor/user_funnels.py).
CREATE TABLE IF NOT EXISTS visitor_identities
(
    project_id LowCardinality(String),
    user_id String,
    visitor_id String,
    identified_at DateTime64(3, 'UTC'),
    is_deleted UInt8
)
ENGINE = ReplacingMergeTree(identified_at, is_deleted)
ORDER BY (project_id, user_id, visitor_id);

-- Those visitors' events are then read by visitor id, which is not a prefix of the
-- events table's order: a bloom filter lets the read skip granules without them.
ALTER TABLE events ADD INDEX IF NOT EXISTS visitor_bloom visitor_id TYPE bloom_filter(0.01) GRANULARITY 4;
