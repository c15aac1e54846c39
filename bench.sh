#!/usr/bin/env bash
# Install what the benchmarks need (the peers as Debian packages, as root or with sudo; Python packages into
# .venv) and run one benchmark, or all. Extra arguments go to the benchmark script.
#   ./bench.sh dns [--rounds 3]     filterproxy vs unbound vs dnsmasq (dnsperf), ~5 min
#   ./bench.sh http                 addon vs bare mitmdump vs squid (wrk), ~6 min
#   ./bench.sh reload               DNS under load while lists reload, vs no reloads, ~3 min
#   ./bench.sh domains              the domain matcher, 1M names
#   ./bench.sh imagehash            PDQ + exact hashes, 1M-hash search
#   ./bench.sh stats [--postgres]   statistics: 30 days of per-minute counts, stats() over them, ~2 min (+2 min)
#   ./bench.sh admin                the control API's RSS in the main process (admin off vs on), ~1 min
#   ./bench.sh distribution         2,000 gateways updating a 1M-hash list from nginx: delta vs full, ~3 min
#   ./bench.sh all
set -euo pipefail
cd "$(dirname "$0")"
what=${1:-all}
[ $# -gt 0 ] && shift
case "$what" in
  dns) pairs="dnsperf:dnsperf unbound:unbound dnsmasq:dnsmasq-base taskset:util-linux" ;;
  reload) pairs="dnsperf:dnsperf taskset:util-linux" ;;
  http) pairs="wrk:wrk nginx:nginx-light squid:squid" ;;
  distribution) pairs="nginx:nginx-light" ;;
  domains|admin) pairs="" ;;
  imagehash) pairs="/usr/share/backgrounds/mate/nature/Dune.jpg:mate-backgrounds" ;;  # real photographs
  stats) pairs="/usr/lib/postgresql/*/bin/initdb:postgresql" ;;
  all) pairs="dnsperf:dnsperf unbound:unbound dnsmasq:dnsmasq-base taskset:util-linux wrk:wrk nginx:nginx-light squid:squid
    /usr/share/backgrounds/mate/nature/Dune.jpg:mate-backgrounds" ;;
  *) echo "usage: $0 dns|http|reload|domains|imagehash|stats|admin|distribution|all [benchmark options]" >&2; exit 2 ;;
esac
bash scripts/apt-need.sh $pairs
bash scripts/setup-venv.sh test
for b in dns http reload domains imagehash stats admin distribution; do
  if [ "$what" = all ] || [ "$what" = "$b" ]; then
    echo "== bench/bench_$b.py" >&2
    .venv/bin/python "bench/bench_$b.py" "$@"
  fi
done
