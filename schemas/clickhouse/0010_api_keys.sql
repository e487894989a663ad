-- API keys created through the CLI or the admin API (funnelstream/key_store.py); the
-- config file's keys are not stored here. `digest` is HMAC-SHA256(server secret, key) in
-- hex: the plaintext is shown once at creation and never stored. Revoking writes the
-- row again with revoked_at set and a greater version; every process reloads this table
-- every key_refresh_seconds (FINAL), so a revoked key stops working everywhere within
-- that bound.
CREATE TABLE IF NOT EXISTS api_keys
(
    key_id String,
    project_id LowCardinality(String),
    scope LowCardinality(String),
    digest String,
    label String,
    created_at DateTime64(3, 'UTC'),
    revoked_at Nullable(DateTime64(3, 'UTC')),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY key_id;
