#!/usr/bin/env bash
# Installs everything Funnelstream needs on a fresh machine, idempotently:
#   - a virtualenv in .venv with the package and its dev tools (pip, from PyPI)
#   - the analyst page's chart library (npm, query_api/static/build.sh)
#   - with --all: Debian's Chromium (browser tests), Debian's Prometheus and promtool
#     (prometheus tests) and Apache Kafka's jars (Maven Central)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# Reinstall only when the dependency list changed since the last install.
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[dev]'
  rm -f .venv/.installed-* && touch "$stamp"
fi

# npm ci in a directory only when its lockfile changed since the last install there.
npm_ci() {
  npm_stamp="$1/node_modules/.installed-$(sha256sum "$1/package-lock.json" | cut -c1-16)"
  if [ ! -f "$npm_stamp" ]; then
    (cd "$1" && npm ci --no-audit --no-fund --loglevel=error)
    touch "$npm_stamp"
  fi
}
# The vendors' JS SDKs the SDK tests send with (Node and browser builds, tests/sdk/node),
# from its lockfile.
if command -v npm >/dev/null; then
  npm_ci tests/sdk/node
fi
# The analyst page's chart library (npm, pinned by its lockfile), copied where the query
# API serves it: query_api/static/vendor/ (not committed).
npm_ci query_api/static
sh query_api/static/build.sh

if [ "${1:-}" = "--all" ]; then
  bash deploy/browser/install.sh
  bash deploy/prometheus/install.sh
  bash deploy/kafka/broker.sh fetch
fi
