"""``filterproxy mobileconfig``: an Apple configuration profile that points a device's DNS at our DoH.

The profile holds one DNS Settings payload (``com.apple.dnsSettings.managed``, ``DNSProtocol: HTTPS``)
whose server URL is ``<url>/<id>``: the id maps the device to a group through a ``clients: [{doh: ID,
group: G}]`` rule (:mod:`filterproxy.dns.doh`). Identifiers and UUIDs derive from the server URL, so
printing the profile again for the same id gives the same profile, and installing it replaces the old one.
"""

from __future__ import annotations

import argparse
import ipaddress
import plistlib
import sys
import uuid
from typing import Any
from urllib.parse import urlsplit

from filterproxy.vocabulary import DOH_ID_RE, ConfigError

_NAMESPACE = uuid.UUID("6f6b0c2e-3b1a-5d4e-9a63-0c5f3c1d2a10")  # filterproxy's: profiles of other tools differ


def server_url(url: str, doh_id: str) -> str:
    """``https://host[:port]/dns-query`` + ``/<id>``; ConfigError naming the option that is wrong."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(f"--url {url!r}: expected https://HOST[:PORT]/dns-query (the DoH listener's URL)")
    if not DOH_ID_RE.match(doh_id):
        raise ConfigError(f"--id {doh_id!r}: expected 1-64 letters, digits, '.', '_', '~' or '-'")
    return f"{url.rstrip('/')}/{doh_id}"


def profile(url: str, doh_id: str, name: str | None = None, addresses: tuple[str, ...] = ()) -> dict[str, Any]:
    """The profile as a plist dictionary (see :func:`render`)."""
    target = server_url(url, doh_id)
    for a in addresses:
        try:
            ipaddress.ip_address(a)
        except ValueError:
            raise ConfigError(f"--address {a!r}: expected an IP address of the DoH server") from None
    title = name or f"filterproxy DNS ({doh_id})"
    dns: dict[str, Any] = {"DNSProtocol": "HTTPS", "ServerURL": target}
    if addresses:
        dns["ServerAddresses"] = list(addresses)
    ident = f"filterproxy.dns.{urlsplit(target).hostname}.{doh_id}"
    payload = {
        "PayloadType": "com.apple.dnsSettings.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": ident + ".dnssettings",
        "PayloadUUID": str(uuid.uuid5(_NAMESPACE, target + "#dnssettings")).upper(),
        "PayloadDisplayName": title,
        "DNSSettings": dns,
    }
    return {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": ident,
        "PayloadUUID": str(uuid.uuid5(_NAMESPACE, target)).upper(),
        "PayloadDisplayName": title,
        "PayloadDescription": f"Encrypted DNS (DoH) through the filter at {target}",
        "PayloadContent": [payload],
    }


def render(url: str, doh_id: str, name: str | None = None, addresses: tuple[str, ...] = ()) -> bytes:
    """The ``.mobileconfig`` file: an XML property list, unsigned."""
    return plistlib.dumps(profile(url, doh_id, name, addresses), fmt=plistlib.FMT_XML, sort_keys=True)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``mobileconfig`` sub-command."""
    sp = sub.add_parser("mobileconfig", help="print an Apple .mobileconfig profile that sends a device's DNS to DoH")
    sp.add_argument("--id", required=True, metavar="ID", help="the device's DoH id (a clients: {doh: ID} rule)")
    sp.add_argument("--url", required=True, metavar="URL", help="the DoH listener, https://HOST[:PORT]/dns-query")
    sp.add_argument("--name", metavar="NAME", help="the name the device shows for the profile")
    sp.add_argument(
        "--address", action="append", default=[], metavar="IP", help="the server's address(es), if HOST has no DNS"
    )
    sp.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    sys.stdout.buffer.write(render(args.url, args.id, args.name, tuple(args.address)))
    sys.stdout.flush()
    return 0
