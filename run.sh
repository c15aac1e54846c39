#!/usr/bin/env bash
# Install filterproxy into .venv and run it on the embedded default configuration:
# DNS 127.0.0.1:5353, HTTP(S) proxy 127.0.0.1:8080, metrics 127.0.0.1:9108. Extra arguments go to 'filterproxy run'.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup-venv.sh
exec .venv/bin/filterproxy run "$@"
