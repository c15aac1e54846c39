#!/usr/bin/env bash
# Create .venv and install filterproxy into it (editable). Needs only Python 3.11+;
# on Debian without the venv module it installs python3-venv (as root or with sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
extras=${1:-}  # e.g. "test"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else echo "need root for: $*" >&2; return 1; fi; }
if ! "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  echo "filterproxy needs Python 3.11 or newer ($PYTHON is $("$PYTHON" -V 2>&1))" >&2; exit 1
fi
if [ ! -x .venv/bin/python ]; then
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    v=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python${v}-venv" || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    "$PYTHON" -m venv .venv
  fi
fi
stamp=".venv/.installed-$extras-$(cat pyproject.toml | cksum | cut -d' ' -f1)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip wheel setuptools
  # the tests' reference PDQ (pdqhash, not needed to run the filter) builds from source and imports numpy at
  # build time: numpy first, without build isolation for it
  if [ "$extras" = test ] && ! .venv/bin/python -c 'import pdqhash' 2>/dev/null; then
    .venv/bin/python -m pip install -q "numpy>=2" Cython
    if ! command -v gcc >/dev/null || ! "$PYTHON" -c 'import sysconfig,os,sys; sys.exit(not os.path.exists(sysconfig.get_paths()["include"]+"/Python.h"))'; then
      as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential python3-dev || true
    fi
    .venv/bin/python -m pip install -q --no-build-isolation "pdqhash>=0.2.8"
  fi
  .venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
