#!/usr/bin/env bash
# Install what the benchmarks need (the peers as Debian packages, as root or with sudo; Python packages into
# .venv) and run one benchmark, or all. Extra arguments go to the benchmark script.
#   ./bench.sh dns [--rounds 3]     filterproxy vs unbound vs dnsmasq (dnsperf), ~5 min
#   ./bench.sh http                 addon vs bare mitmdump vs squid (wrk), ~6 min
#   ./bench.sh domains              the domain matcher, 1M names
#   ./bench.sh imagehash            PDQ + exact hashes, 1M-hash search
#   ./bench.sh all
set -euo pipefail
cd "$(dirname "$0")"
what=${1:-all}
[ $# -gt 0 ] && shift
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else echo "need root for: $*" >&2; return 1; fi; }
case "$what" in
  dns) pairs="dnsperf:dnsperf unbound:unbound dnsmasq:dnsmasq-base taskset:util-linux" ;;
  http) pairs="wrk:wrk nginx:nginx-light squid:squid" ;;
  domains|imagehash) pairs="" ;;
  all) pairs="dnsperf:dnsperf unbound:unbound dnsmasq:dnsmasq-base taskset:util-linux wrk:wrk nginx:nginx-light squid:squid" ;;
  *) echo "usage: $0 dns|http|domains|imagehash|all [benchmark options]" >&2; exit 2 ;;
esac
need=()
for pair in $pairs; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u)
fi
bash scripts/setup-venv.sh "test,fast"
for b in dns http domains imagehash; do
  if [ "$what" = all ] || [ "$what" = "$b" ]; then
    echo "== bench/bench_$b.py" >&2
    .venv/bin/python "bench/bench_$b.py" "$@"
  fi
done
