#!/usr/bin/env sh
# Vendor the analyst page's chart library: install uPlot at the version package-lock.json
# pins (npm ci, from the npm registry) and copy its built files into vendor/, which the
# query API serves at /app/vendor/. Nothing here is committed: the page loads no CDN, and
# the third-party build is fetched by this step (scripts/setup.sh runs it) rather than
# kept in the repository.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
if [ ! -f node_modules/uplot/dist/uPlot.iife.min.js ]; then
    npm ci --no-audit --no-fund --loglevel=error
fi
mkdir -p vendor
cp node_modules/uplot/dist/uPlot.iife.min.js vendor/uplot.min.js
cp node_modules/uplot/dist/uPlot.min.css vendor/uplot.min.css
cp node_modules/uplot/LICENSE vendor/uplot.LICENSE
