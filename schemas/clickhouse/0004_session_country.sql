-- The visitor's country (ISO 3166 alpha-2, from a CDN header at ingest; "" if unknown),
-- kept per session like device and browser so reports can break down by it.
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS country LowCardinality(String) AFTER os;
