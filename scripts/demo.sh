#!/usr/bin/env bash
# The main job: install, then run ingest + processor + query API embedded on one port,
# send a demo storefront's traffic and print its checkout funnel. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/funnelstream serve --data-dir "${FUNNELSTREAM_DATA_DIR:-./funnelstream-data}" \
  --port "${PORT:-8080}" --demo "$@"
