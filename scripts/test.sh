#!/usr/bin/env bash
# The test suite, every marker included: real Kafka (started by the fixtures from
# deploy/kafka/broker.sh), real ClickHouse engine (chdb), real Chromium. Then lint + types.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --all
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest -p no:cacheprovider -q "$@"
