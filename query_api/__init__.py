"""Query API: funnel reports for analysts, live stage counts, metrics. Reads ClickHouse only."""
