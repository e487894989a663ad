#!/usr/bin/env sh
# Build the served snippet (ingest/static/funnelstream.js, committed) from the readable
# source src/funnelstream.js with the terser pinned in package-lock.json.
#
#   ingest/static/build.sh            rebuild in place
#   ingest/static/build.sh OUT.js     write elsewhere (the up-to-date test does this)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/funnelstream.js}
case $out in /*) ;; *) out=$PWD/$out ;; esac
cd "$here"
if [ ! -x node_modules/.bin/terser ]; then
    npm ci --no-audit --no-fund --loglevel=error
fi
node_modules/.bin/terser src/funnelstream.js \
    --compress passes=2 \
    --mangle \
    --comments '/^!/' \
    --output "$out"
