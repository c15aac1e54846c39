#!/usr/bin/env bash
# Install the Debian packages whose commands are missing (as root, or with sudo).
# Arguments: command:package pairs, e.g. dig:bind9-dnsutils unbound:unbound; a command with a slash is a path
# glob for binaries off PATH, e.g. '/usr/lib/postgresql/*/bin/initdb:postgresql'
set -euo pipefail
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else echo "need root for: $*" >&2; return 1; fi; }
need=()
for pair in "$@"; do
  cmd="${pair%%:*}"
  if [[ "$cmd" == */* ]]; then
    compgen -G "$cmd" >/dev/null || need+=("${pair#*:}")
  else
    command -v "$cmd" >/dev/null 2>&1 || need+=("${pair#*:}")
  fi
done
if [ ${#need[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u)
fi
