"""Shared fixtures. Backends are gated by markers (`kafka`, `clickhouse`, `browser`); a
fixture that starts a backend fails an unmarked test that asks for it."""

pytest_plugins = ["tests.fixtures.clickhouse", "tests.fixtures.kafka"]
