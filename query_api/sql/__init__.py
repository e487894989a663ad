"""SQL builders: definition in, (sql, parameters) out. Snapshot-tested in tests/query_api/sql."""
