"""Host canonicalisation at the edge (filterproxy.names): IP literals read the way browsers read them (the
WHATWG URL host parser), names normalised, and hosts that are neither refused."""

from __future__ import annotations

import pytest

from filterproxy.names import NameError_, canonical_host, canonical_ip, is_ip


@pytest.mark.parametrize(
    "text,want",
    [
        # IPv4: 1-4 parts, decimal, 0x hex or 0-led octal; the last part fills the remaining bytes
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),  # one 32-bit number
        ("0x7f.0.0.1", "127.0.0.1"),
        ("0X7F.0.0.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0177.0.0.01", "127.0.0.1"),
        ("127.1", "127.0.0.1"),  # 2 parts: the last fills 3 bytes
        ("0x7f.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),  # 3 parts: the last fills 2 bytes
        ("0x7f000001", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("203.0.113.7", "203.0.113.7"),
        ("3405803783", "203.0.113.7"),
        ("0xcb.0.0x71.07", "203.0.113.7"),
        ("0313.0.0161.07", "203.0.113.7"),
        ("203.29447", "203.0.115.7"),
        ("192.168.257", "192.168.1.1"),
        ("4294967295", "255.255.255.255"),
        ("0", "0.0.0.0"),
        ("0x", "0.0.0.0"),  # "0x" alone is 0
        ("00.00.00.00", "0.0.0.0"),
        ("1.2.3.0x", "1.2.3.0"),
        ("127.0.0.1.", "127.0.0.1"),  # one trailing dot, as for names
        (" 127.0.0.1 ", "127.0.0.1"),
        ("１２７.0.0.1", "127.0.0.1"),  # full-width digits map to ASCII (UTS #46), as in browsers
        # IPv6: lower case, compressed; an IPv4-mapped address is the IPv4 address it reaches
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("[2001:DB8:0:0::0:7]", "2001:db8::7"),
        ("2001:0db8:0000:0000:0000:0000:0000:0007", "2001:db8::7"),
        ("[::FFFF:127.0.0.1]", "127.0.0.1"),
        ("::ffff:7f00:1", "127.0.0.1"),
        ("[FE80::1]", "fe80::1"),
        # names: normalised as before; a last label that starts with a digit but is no number is a name
        ("Example.COM.", "example.com"),
        ("host.1a", "host.1a"),
        ("0x7f.example", "0x7f.example"),
        ("1.2.3.4.example", "1.2.3.4.example"),
        ("xn--p1ai", "xn--p1ai"),
        ("bücher.example", "xn--bcher-kva.example"),
    ],
)
def test_canonical_host(text, want):
    assert canonical_host(text) == want
    assert canonical_host(want) == want  # idempotent: canonical input stays as it is
    assert canonical_ip(text) == (want if is_ip(want) else None)


@pytest.mark.parametrize(
    "text,why",
    [
        ("256.0.0.1", "out of range"),
        ("1.256.0.1", "out of range"),
        ("4294967296", "out of range"),  # 2^32
        ("0x100000000", "out of range"),
        ("1.16777216", "out of range"),  # 2 parts: the last must fit 3 bytes
        ("1.2.65536", "out of range"),
        ("1.2.3.256", "out of range"),
        ("1.2.3.4.5", "not an IPv4 address"),  # more than 4 parts
        ("08.0.0.1", "not an IPv4 address"),  # 8 is no octal digit
        ("0x1g.0.0.1", "not an IPv4 address"),
        ("example.123", "not an IPv4 address"),  # ends in a number: browsers refuse it
        ("example.0x1f", "not an IPv4 address"),
        ("a.b.1.2.3", "not an IPv4 address"),
        ("1..2", "empty label"),
        ("[127.0.0.1]", "invalid IPv6"),  # brackets hold IPv6 only
        ("[::1", "invalid IPv6"),
        ("1:2:3", "invalid IPv6"),
        ("fe80::1%eth0", "zone"),
        ("[fe80::1%25eth0]", "zone"),
    ],
)
def test_refused(text, why):
    with pytest.raises(NameError_, match=why):
        canonical_host(text)
    with pytest.raises(NameError_):
        canonical_ip(text)


@pytest.mark.parametrize("text", ["example.com", "www.example.org.", "a_b.example", "bad name.example", "-x-.com", ""])
def test_canonical_ip_is_none_for_names(text):
    assert canonical_ip(text) is None  # names, valid or not, are not addresses (and not refused here)


def test_is_ip_unchanged():
    """is_ip stays the cheap check on canonical text (the DNS path uses it): other spellings are not addresses."""
    assert is_ip("127.0.0.1") and is_ip("::1") and is_ip("[::1]")
    assert not is_ip("2130706433") and not is_ip("127.1") and not is_ip("example.com")
