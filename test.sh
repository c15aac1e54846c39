#!/usr/bin/env bash
# Install everything the tests need (Debian packages as root or with sudo, Python packages into .venv)
# and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
# binary → Debian package, for the real peers the tests start (DNS client, resolver, Prometheus, browser)
bash scripts/apt-need.sh dig:bind9-dnsutils unbound:unbound unbound-checkconf:unbound prometheus:prometheus \
  promtool:prometheus prometheus-pushgateway:prometheus-pushgateway chromium:chromium nft:nftables \
  systemd-analyze:systemd nginx:nginx-light gcc:build-essential
bash scripts/setup-venv.sh test
set +e
.venv/bin/python -m pytest "$@"
rc=$?
[ $rc -eq 5 ] && { echo "no tests collected" >&2; exit 1; }
exit $rc
