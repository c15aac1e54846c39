#!/usr/bin/env bash
# Install everything the tests need (Debian packages as root or with sudo, Python packages into .venv)
# and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else echo "need root for: $*" >&2; return 1; fi; }
# binary → Debian package, for the real peers the tests start (DNS client, resolver, Prometheus, browser)
need=()
for pair in dig:bind9-dnsutils unbound:unbound unbound-checkconf:unbound prometheus:prometheus promtool:prometheus \
            prometheus-pushgateway:prometheus-pushgateway chromium:chromium nft:nftables systemd-analyze:systemd \
            nginx:nginx-light gcc:build-essential; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u)
fi
bash scripts/setup-venv.sh "test,fast"
set +e
.venv/bin/python -m pytest "$@"
rc=$?
[ $rc -eq 5 ] && { echo "no tests collected" >&2; exit 1; }
exit $rc
