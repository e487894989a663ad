#!/usr/bin/env bash
# Install Debian's Prometheus (prometheus, promtool) and Alertmanager (amtool) for the tests
# marked `prometheus`: the alert rules' unit tests (promtool), the Alertmanager example's
# check (amtool) and a real Prometheus scraping the service.
#
# Idempotent: does nothing when both are installed. Only Debian's package archive is
# used. The packages' own services are not wanted here (the tests start their own
# Prometheus on a free port), so they are stopped if the packages started them.
set -euo pipefail

if command -v prometheus >/dev/null && command -v promtool >/dev/null \
    && command -v amtool >/dev/null; then
    echo "prometheus already installed: $(promtool --version 2>&1 | head -1)"
    exit 0
fi

SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends prometheus prometheus-alertmanager
for service in prometheus prometheus-alertmanager; do
    if command -v systemctl >/dev/null && systemctl is-active --quiet "$service" 2>/dev/null; then
        $SUDO systemctl disable --now "$service"
    fi
done

promtool --version 2>&1 | head -1
