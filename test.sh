#!/usr/bin/env bash
# Install everything the tests need (Debian packages as root or with sudo, Python packages into .venv),
# run the linters and the type checker, then the whole test suite. Extra arguments go to pytest
# (e.g. `./test.sh -m unit` for the fast layer). FILTERPROXY_NO_LINT=1 skips ruff and mypy.
set -euo pipefail
cd "$(dirname "$0")"
# binary → Debian package, for the real peers the tests start (DNS client, resolver, Prometheus, browser);
# a path → the package that ships it (mate-backgrounds: the photographs of tests/test_imagehash_fidelity.py)
bash scripts/apt-need.sh dig:bind9-dnsutils kdig:knot-dnsutils /usr/sbin/knotd:knot unbound:unbound unbound-checkconf:unbound prometheus:prometheus \
  promtool:prometheus victoria-metrics:victoria-metrics \
  vmauth:victoria-metrics vmalert:victoria-metrics chromium:chromium nft:nftables \
  systemd-analyze:systemd nginx:nginx-light gcc:build-essential '/usr/lib/postgresql/*/bin/initdb:postgresql' \
  /usr/share/backgrounds/mate/nature/Dune.jpg:mate-backgrounds
bash scripts/setup-venv.sh test
if [ "${FILTERPROXY_NO_LINT:-}" != 1 ]; then
  echo "lint: ruff check, ruff format --check, mypy" >&2
  .venv/bin/python -m ruff check -q filterproxy tests bench addons
  .venv/bin/python -m ruff format -q --check filterproxy tests bench addons
  .venv/bin/python -m mypy --no-error-summary
fi
set +e
.venv/bin/python -m pytest "$@"
rc=$?
[ $rc -eq 5 ] && { echo "no tests collected" >&2; exit 1; }
exit $rc
