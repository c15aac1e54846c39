#!/usr/bin/env bash
# Install filterproxy as a system service: one command, run from a source checkout or release tarball.
#
#   sudo deploy/install.sh home      # Raspberry Pi / home box: DNS filter on port 53
#   sudo deploy/install.sh school    # school gateway: DNS + proxy, nftables rules, per-VLAN groups
#
# What it does (idempotent; an existing /etc/filterproxy/filterproxy.yaml is never overwritten):
#   user 'filterproxy' (systemd-sysusers), venv in /opt/filterproxy/.venv, config + policies + default
#   lists in /etc/filterproxy, systemd units (service + list-update timer), and for 'school' the
#   nftables rules in /etc/nftables.d/filterproxy.nft (not loaded: edit the subnets first).
#
# Test hooks: DESTDIR=/some/root installs files there only (no apt, pip, users or systemctl).
set -euo pipefail

profile=${1:-}
case "$profile" in
  home|school) ;;
  *) echo "usage: sudo $0 home|school" >&2; exit 2 ;;
esac

src=$(cd "$(dirname "$0")/.." && pwd)
dest=${DESTDIR:-}
live=1; [ -n "$dest" ] && live=0
if [ "$live" = 1 ] && [ "$(id -u)" != 0 ]; then echo "run as root (sudo $0 $profile)" >&2; exit 1; fi

say() { printf '==> %s\n' "$*"; }
etc="$dest/etc/filterproxy"
opt="$dest/opt/filterproxy"

if [ "$live" = 1 ]; then
  say "Debian packages"
  missing=()
  for pair in python3:python3 nft:nftables; do command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}"); done
  python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "filterproxy needs Python 3.11+" >&2; exit 1; }

  say "user filterproxy"
  install -D -m 0644 "$src/deploy/systemd/filterproxy.sysusers.conf" /etc/sysusers.d/filterproxy.conf
  systemd-sysusers /etc/sysusers.d/filterproxy.conf
fi

say "program in $opt"
install -d -m 0755 "$opt"
if [ "$live" = 1 ]; then
  [ -x "$opt/.venv/bin/python" ] || python3 -m venv "$opt/.venv"
  "$opt/.venv/bin/python" -m pip install -q --upgrade pip wheel
  "$opt/.venv/bin/python" -m pip install -q "$src"
fi
rm -rf "$opt/deploy" "$opt/policies" "$opt/blocklists"
cp -r "$src/deploy" "$opt/deploy"
# reference copies (replaced on every install): the shipped policies and default lists
cp -r "$src/policies" "$opt/policies"
mkdir -p "$opt/blocklists" && cp -r "$src/blocklists/default" "$src/blocklists/sources.yaml" "$opt/blocklists/"

say "configuration in $etc"
install -d -m 0750 "$etc" "$etc/policies" "$etc/lists"
if [ ! -f "$etc/filterproxy.yaml" ]; then
  install -m 0640 "$src/deploy/config/$profile.yaml" "$etc/filterproxy.yaml"
  addr=${FILTERPROXY_ADDRESS:-$( [ "$live" = 1 ] && hostname -I 2>/dev/null | awk '{print $1}' || true)}
  if [ -n "$addr" ]; then
    sed -i "s/^  block_page_ipv4: 127.0.0.1 .*/  block_page_ipv4: $addr/" "$etc/filterproxy.yaml"
  fi
else
  say "keeping existing $etc/filterproxy.yaml (new template: $opt/deploy/config/$profile.yaml)"
fi
for f in "$src"/policies/*.yaml; do
  [ -f "$etc/policies/$(basename "$f")" ] || install -m 0640 "$f" "$etc/policies/"
done
for f in "$src"/blocklists/default/*.txt; do install -m 0640 "$f" "$etc/lists/"; done
[ -f "$etc/sources.yaml" ] || install -m 0640 "$src/blocklists/sources.yaml" "$etc/sources.yaml"

say "systemd units"
for u in filterproxy.service filterproxy-lists.service filterproxy-lists.timer; do
  install -D -m 0644 "$src/deploy/systemd/$u" "$dest/etc/systemd/system/$u"
done

if [ "$profile" = school ]; then
  install -D -m 0644 "$src/deploy/nftables/filterproxy.nft" "$dest/etc/nftables.d/filterproxy.nft"
  say "nftables rules in /etc/nftables.d/filterproxy.nft: edit STUDENT_V4/STUDENT_V6, then"
  say "  nft -f /etc/nftables.d/filterproxy.nft   (and include it from /etc/nftables.conf)"
fi

if [ "$live" = 1 ]; then
  chown -R root:filterproxy "$etc"
  say "checking the configuration"
  runuser -u filterproxy -- "$opt/.venv/bin/filterproxy" check --config "$etc/filterproxy.yaml"
  systemctl daemon-reload
  systemctl enable --now filterproxy.service filterproxy-lists.timer
  say "running: DNS on port 53. Next: point your router's DHCP DNS at $(hostname -I 2>/dev/null | awk '{print $1}')"
fi
say "done"
