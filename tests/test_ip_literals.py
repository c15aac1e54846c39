"""``block_ip_literals``: a host that is an IP address (in any spelling a browser accepts) is blocked for
minors' groups, after the legal list, the allowlist and the IP lists, outside the group's exempt networks.

Engine precedence, the policy keys and their errors, the DNS memo (answer addresses are not IP literals),
the HTTP edge (target canonicalisation, invalid addresses refused, CONNECT, transparent destinations) and
the block page. The end-to-end twin through a real mitmdump is tests/test_ip_literals_e2e.py.
"""

from __future__ import annotations

import pytest
from conftest import write_config
from mitmproxy.test import taddons
from test_http_addon import client, connect, get, hello, run_request, server_connect, with_hosts

from filterproxy import cli
from filterproxy.config import ConfigError, load_config
from filterproxy.dns.decisions import Decisions
from filterproxy.http import blockpage
from filterproxy.http.addon import FilterAddon, _target
from filterproxy.lists.snapshot import build_snapshot
from filterproxy.policy.engine import Engine
from filterproxy.policy.model import IP_LITERAL_EXEMPT, Policy
from filterproxy.verdict import Action, Reason, Verdict

POLICIES = {
    "teen": """
        name: Teen
        tone: teen
        block_categories: [adult]
        allow: [203.0.113.80, "0xcb007151", "[2001:DB8::80]", 198.51.100.66]
    """,
    "kid": """
        name: Kid
        tone: child
        block_categories: [adult]
        ip_literal_exempt: []
    """,
    "school": """
        name: School lab
        tone: teen
        ip_literal_exempt: [203.0.113.0/24, "2001:db8:5::/48"]
    """,
    "grown": """
        name: Grown
        tone: adult
        block_categories: [malware]
    """,
    "teen-off": """
        name: Teen, IP literals allowed
        tone: teen
        block_ip_literals: false
    """,
    "strict-adult": """
        name: Adult, IP literals blocked
        tone: adult
        block_ip_literals: true
    """,
}
LISTS = """
timezone: Asia/Ho_Chi_Minh
default_group: teen
clients:
  - {cidr: 10.1.0.0/16, group: kid}
  - {cidr: 10.2.0.0/16, group: teen}
  - {ip: 10.3.0.1, group: grown}
lists:
  - {id: national, category: illegal, format: domains, legal: true, path: legal.txt}
  - {id: adult-ips, category: adult, format: domains, path: adult.txt}
  - {id: approved, category: education, format: domains, allow: true, path: approved.txt}
"""
KID, TEEN, GROWN = "10.1.0.7", "10.2.0.5", "10.3.0.1"


def _files(tmp):
    (tmp / "legal.txt").write_text("illegal.example\n198.51.100.66\n")
    (tmp / "adult.txt").write_text("adult.example\n203.0.113.66\n2001:db8::66\n")
    (tmp / "approved.txt").write_text("198.18.0.5\n")
    return write_config(tmp, LISTS, POLICIES)


@pytest.fixture(scope="module")
def cfg_path(tmp_path_factory):
    return str(_files(tmp_path_factory.mktemp("ip-literals")))


@pytest.fixture(scope="module")
def engine(cfg_path):
    config = load_config(cfg_path)
    return Engine(config, build_snapshot(config.lists))


BLOCK, ALLOW = Action.BLOCK, Action.ALLOW


@pytest.mark.parametrize(
    "group,host,action,reason,extra",
    [
        # minors' tones block IP literals by default, in every spelling a browser accepts
        ("teen", "203.0.113.7", BLOCK, Reason.IP_LITERAL, {"list_id": "policy:teen", "category": None}),
        ("teen", "3405803783", BLOCK, Reason.IP_LITERAL, {}),  # 203.0.113.7 as one 32-bit number
        ("teen", "0xcb.0.0x71.07", BLOCK, Reason.IP_LITERAL, {}),
        ("teen", "0313.0.0161.07", BLOCK, Reason.IP_LITERAL, {}),
        ("teen", "203.29447", BLOCK, Reason.IP_LITERAL, {}),
        ("teen", "[2001:DB8::7]", BLOCK, Reason.IP_LITERAL, {}),
        ("teen", "0.0.0.0", BLOCK, Reason.IP_LITERAL, {}),
        ("teen", "172.32.0.1", BLOCK, Reason.IP_LITERAL, {}),  # just outside 172.16.0.0/12
        ("kid", "203.0.113.7", BLOCK, Reason.IP_LITERAL, {"rule": "block_ip_literals (default for tone child)"}),
        ("strict-adult", "203.0.113.7", BLOCK, Reason.IP_LITERAL, {"rule": "block_ip_literals: true"}),
        # the adult tone allows them, and so does a policy that says block_ip_literals: false
        ("grown", "203.0.113.7", ALLOW, Reason.DEFAULT, {}),
        ("grown", "3405803783", ALLOW, Reason.DEFAULT, {}),
        ("teen-off", "203.0.113.7", ALLOW, Reason.DEFAULT, {}),
        ("teen-off", "2001:db8::7", ALLOW, Reason.DEFAULT, {}),
        # private, loopback and link-local addresses stay reachable (school intranet, home router)
        ("teen", "10.20.30.40", ALLOW, Reason.DEFAULT, {}),
        ("teen", "172.16.5.4", ALLOW, Reason.DEFAULT, {}),
        ("teen", "192.168.1.1", ALLOW, Reason.DEFAULT, {}),
        ("teen", "0xc0.0xa8.1.1", ALLOW, Reason.DEFAULT, {}),  # 192.168.1.1
        ("teen", "3232235777", ALLOW, Reason.DEFAULT, {}),  # 192.168.1.1
        ("teen", "127.0.0.1", ALLOW, Reason.DEFAULT, {}),
        ("teen", "127.1", ALLOW, Reason.DEFAULT, {}),
        ("teen", "169.254.169.254", ALLOW, Reason.DEFAULT, {}),
        ("teen", "::1", ALLOW, Reason.DEFAULT, {}),
        ("teen", "fd12:3456::1", ALLOW, Reason.DEFAULT, {}),
        ("teen", "fe80::1", ALLOW, Reason.DEFAULT, {}),
        ("teen", "::ffff:192.168.1.1", ALLOW, Reason.DEFAULT, {}),
        # ... unless the group's ip_literal_exempt says otherwise (it replaces the default networks)
        ("kid", "192.168.1.1", BLOCK, Reason.IP_LITERAL, {}),
        ("kid", "127.0.0.1", BLOCK, Reason.IP_LITERAL, {}),
        ("school", "203.0.113.7", ALLOW, Reason.DEFAULT, {}),
        ("school", "2001:db8:5::9", ALLOW, Reason.DEFAULT, {}),
        ("school", "10.0.0.1", BLOCK, Reason.IP_LITERAL, {}),
        # the group's allowlist may allow a specific address, in any spelling
        ("teen", "203.0.113.80", ALLOW, Reason.ALLOWLIST, {"rule": "203.0.113.80"}),
        ("teen", "3405803856", ALLOW, Reason.ALLOWLIST, {"rule": "203.0.113.80"}),
        ("teen", "203.0.113.81", ALLOW, Reason.ALLOWLIST, {"rule": "203.0.113.81"}),  # written 0xcb007151
        ("teen", "2001:db8:0::80", ALLOW, Reason.ALLOWLIST, {"rule": "2001:db8::80"}),
        ("teen", "203.0.113.82", BLOCK, Reason.IP_LITERAL, {}),
        ("teen", "198.18.0.5", ALLOW, Reason.ALLOWLIST, {"list_id": "approved"}),  # an allow source's address
        # the national list still wins, even over the allowlist (198.51.100.66 is allowlisted for teen)
        ("teen", "198.51.100.66", BLOCK, Reason.LEGAL, {"legal": True, "list_id": "national"}),
        ("teen", "0xc6.0x33.0x64.0x42", BLOCK, Reason.LEGAL, {}),
        ("grown", "198.51.100.66", BLOCK, Reason.LEGAL, {}),
        # IP lists match as before, by their category, before this rule, whatever the spelling
        ("teen", "203.0.113.66", BLOCK, Reason.CATEGORY, {"category": "adult", "list_id": "adult-ips"}),
        ("teen", "0313.0.0161.0102", BLOCK, Reason.CATEGORY, {"category": "adult"}),
        ("teen", "3405803842", BLOCK, Reason.CATEGORY, {"category": "adult"}),
        ("teen", "[2001:DB8:0::66]", BLOCK, Reason.CATEGORY, {"category": "adult"}),
        ("grown", "203.0.113.66", ALLOW, Reason.DEFAULT, {}),  # grown does not block adult
        # names are not IP literals
        ("teen", "example.org", ALLOW, Reason.DEFAULT, {}),
        ("teen", "adult.example", BLOCK, Reason.CATEGORY, {}),
    ],
)
def test_precedence(engine, group, host, action, reason, extra):
    v = engine.decide(None, host, group=group)
    assert (v.action, v.reason) == (action, reason), v
    for k, val in extra.items():
        assert getattr(v, k) == val, (k, v)


def test_verdict_explains_itself(engine, cfg_path):
    v = engine.decide(None, "203.0.113.7", group="teen", explain=True)
    assert v.short_id == "ip-literal/policy:teen"
    assert v.source and v.source.endswith("teen.yaml:3")  # the tone line decides the default (line 1 is blank)
    v = engine.decide(None, "203.0.113.7", group="strict-adult")
    assert v.source and v.source.endswith("strict-adult.yaml:4")  # the block_ip_literals line


def test_invalid_address_fails_closed(engine):
    for host in ("256.0.0.1", "1.2.3.4.5", "example.123"):
        v = engine.decide(None, host, group="grown")
        assert v.action is Action.BLOCK and v.reason is Reason.ERROR, host


def test_resolver_answers_are_not_ip_literals(engine):
    """The DNS answer check decides on the addresses an upstream answered: IP lists apply to them, the
    IP-literal rule does not (else every name of a minors' group would be blocked by its own address)."""
    d = Decisions(engine)
    assert d.decide("203.0.113.7", "teen").action is Action.ALLOW
    assert d.decide("2001:db8::7", "kid").action is Action.ALLOW
    assert d.decide("203.0.113.66", "teen").reason is Reason.CATEGORY  # listed: blocks the name
    assert d.decide("198.51.100.66", "grown").reason is Reason.LEGAL
    assert engine.decide(None, "203.0.113.7", group="teen", ip_literals=False).action is Action.ALLOW


# ---------------------------------------------------------------- policy keys


def test_defaults_follow_the_tone():
    assert Policy("a", "A", tone="child").ip_literals_blocked
    assert Policy("a", "A", tone="teen").ip_literals_blocked
    assert not Policy("a", "A", tone="adult").ip_literals_blocked
    assert not Policy("a", "A", tone="teen", block_ip_literals=False).ip_literals_blocked
    assert Policy("a", "A", tone="adult", block_ip_literals=True).ip_literals_blocked


def test_parsed_keys(engine):
    groups = engine.config.groups
    assert groups["teen"].block_ip_literals is None and groups["teen"].ip_literals_blocked
    assert groups["teen"].ip_literal_exempt == IP_LITERAL_EXEMPT
    assert groups["kid"].ip_literal_exempt == ()
    assert groups["school"].ip_literal_exempt == ("203.0.113.0/24", "2001:db8:5::/48")
    assert not groups["grown"].ip_literals_blocked
    assert groups["teen-off"].block_ip_literals is False
    assert set(groups["teen"].allow) == {"203.0.113.80", "203.0.113.81", "2001:db8::80", "198.51.100.66"}


def test_shipped_policies():
    from conftest import REPO

    cfg = load_config(str(REPO / "filterproxy" / "defaults" / "filterproxy.yaml"))
    blocked = {gid for gid, p in cfg.groups.items() if p.ip_literals_blocked}
    assert blocked == {gid for gid, p in cfg.groups.items() if p.tone != "adult"}
    assert {"primary", "child", "teen"} <= blocked and not {"adult", "staff"} & blocked


@pytest.mark.parametrize(
    "policy,line,needle",
    [
        ("name: G\nblock_ip_literals: 'yes'\n", 2, "'policy g.block_ip_literals' must be bool, got 'yes'"),
        ("name: G\nblock_ip_literals: 1\n", 2, "'policy g.block_ip_literals' must be bool"),
        ("name: G\nblock_ip_literal: true\n", 2, "unknown key 'policy g.block_ip_literal'"),
        ("name: G\nip_literals_exempt: []\n", 2, "unknown key 'policy g.ip_literals_exempt'"),
        ("name: G\nip_literal_exempt: 10.0.0.0/8\n", 2, "'policy g.ip_literal_exempt' must be list"),
        (
            "name: G\nip_literal_exempt:\n  - 10.0.0.0/8\n  - 10.0.0.0/33\n",
            4,
            "'policy g.ip_literal_exempt' has invalid network '10.0.0.0/33' (expected a CIDR",
        ),
        ("name: G\nip_literal_exempt: [school-lan]\n", 2, "invalid network 'school-lan'"),
        ("name: G\nip_literal_exempt: [8]\n", 2, "invalid network 8"),
        ("name: G\nallow:\n  - ok.example\n  - 256.1.1.1\n", 4, "out of range"),
        ("name: G\nblock: ['1.2.3.4.5']\n", 2, "expected a domain name or an IP address"),
    ],
)
def test_errors_name_file_line(tmp_path, policy, line, needle):
    cfg = write_config(tmp_path, "", {"g": policy})
    with pytest.raises(ConfigError) as exc:
        load_config(str(cfg))
    msg = str(exc.value)
    assert needle in msg, msg
    assert f"{tmp_path / 'policies' / 'g.yaml'}:{line}:" in msg, msg


# ---------------------------------------------------------------- the HTTP edge


@pytest.fixture
def addon(cfg_path):
    a = FilterAddon()
    with taddons.context(a) as tctx:
        tctx.configure(a, filterproxy_config=cfg_path, filterproxy_reload_signal=False)
        yield a


@pytest.mark.parametrize(
    "url,host_header,want_host,want_url",
    [
        ("http://2130706433:8080/p", None, "127.0.0.1", "http://127.0.0.1:8080/p"),
        ("http://0x7f.1/p", None, "127.0.0.1", "http://127.0.0.1/p"),
        ("http://0177.0.0.1/", None, "127.0.0.1", "http://127.0.0.1/"),
        ("http://x.example/", "0xCB.0.0X71.07:81", "203.0.113.7", "http://203.0.113.7:81/"),
        ("http://x.example/", "[2001:DB8:0::7]", "2001:db8::7", "http://[2001:db8::7]/"),
        ("http://x.example/", "[::ffff:127.0.0.1]:8080", "127.0.0.1", "http://127.0.0.1:8080/"),
        ("http://x.example/", "256.0.0.1", "256.0.0.1", "http://256.0.0.1/"),  # left for host_problem (400)
        ("http://x.example/", "host.1a", "host.1a", "http://host.1a/"),  # a name
    ],
)
def test_target_canonicalises_ip_literals(url, host_header, want_host, want_url):
    from mitmproxy import http

    req = http.Request.make("GET", url, b"")
    if host_header:
        req.headers["Host"] = host_header
    assert _target(req) == (want_host, want_url, False)


@pytest.mark.parametrize(
    "ip,url,status,short_id",
    [
        (TEEN, "http://203.0.113.7/", 403, "ip-literal/policy:teen"),
        (TEEN, "http://3405803783/", 403, "ip-literal/policy:teen"),
        (TEEN, "http://0xcb.0.0x71.07:8080/x", 403, "ip-literal/policy:teen"),
        (TEEN, "http://0313.0.0161.07/", 403, "ip-literal/policy:teen"),
        (TEEN, "http://[2001:db8::7]/", 403, "ip-literal/policy:teen"),
        (TEEN, "http://0313.0.0161.0102/", 403, "category/adult/adult-ips"),  # the IP list, in octal
        (KID, "http://127.1/", 403, "ip-literal/policy:kid"),
        (TEEN, "http://192.168.1.1/", None, None),  # private: exempt
        (TEEN, "http://3405803856/", None, None),  # allowlisted 203.0.113.80
        (GROWN, "http://203.0.113.7/", None, None),
        (GROWN, "http://3405803783/", None, None),
        (TEEN, "http://256.0.0.1/", 400, None),  # ends in a number, no address: refused
        (GROWN, "http://1.2.3.4.5/", 400, None),
        (GROWN, "http://example.123/", 400, None),
    ],
)
def test_requests(addon, ip, url, status, short_id):
    f = run_request(addon, get(url, ip))
    if status is None:
        assert f.response is None
        return
    assert f.response is not None and f.response.status_code == status, f.response
    if short_id:
        assert f.response.headers["X-Filterproxy-Reason"] == short_id
    else:
        assert b"not a valid IP address" in f.response.content


@pytest.mark.parametrize(
    "host,ip,status",
    [
        ("203.0.113.7", TEEN, 200),  # blocked: tunnel accepted without upstream, the block page inside
        ("3405803783", TEEN, 200),
        ("0xcb.0.0x71.07", KID, 200),
        ("192.168.1.1", TEEN, None),
        ("203.0.113.7", GROWN, None),
    ],
)
def test_connect_to_an_address(addon, host, ip, status):
    conn = client(ip)
    f = connect(host, conn=conn)
    addon.http_connect(f)
    if status is None:
        assert f.response is None
        assert server_connect(addon, conn, addr=(host, 443)).error is None
        return
    assert f.response.status_code == status
    assert server_connect(addon, conn, addr=(host, 443)).error  # never contacts the address
    inner = run_request(addon, get(f"https://{host}/", conn=conn))
    assert inner.response.status_code == 403
    assert inner.response.headers["X-Filterproxy-Reason"].startswith("ip-literal/")


def test_tls_without_a_name_is_decided_on_the_address(addon):
    """Transparent mode, no SNI (what a client sends for https://203.0.113.7/): the address is the host."""
    conn = client(TEEN, mode="transparent")
    data = hello(conn, None, addr=("203.0.113.7", 443))
    addon.tls_clienthello(data)
    assert data.ignore_connection is False and server_connect(addon, conn, addr=("203.0.113.7", 443)).error
    conn = client(TEEN, mode="transparent")
    data = hello(conn, "allowed.example", addr=("203.0.113.7", 443))
    addon.tls_clienthello(data)
    assert server_connect(addon, conn, addr=("203.0.113.7", 443)).error is None  # the name is decided


def test_transparent_destination_address_is_not_an_ip_literal(addon):
    """In transparent mode the request's target is the address the client's name resolved to: IP lists
    apply to it, the IP-literal rule does not (the client named a host)."""
    conn = client(TEEN, mode="transparent")
    f = run_request(addon, with_hosts("http://203.0.113.7/", b"Host: allowed.example", conn=conn))
    assert f.response is None
    f = run_request(addon, with_hosts("http://203.0.113.66/", b"Host: allowed.example", conn=conn))
    assert f.response.status_code == 403  # a listed address
    assert f.response.headers["X-Filterproxy-Reason"] == "category/adult/adult-ips"


# ---------------------------------------------------------------- block page and explain


@pytest.mark.parametrize(
    "lang,tone,phrase",
    [
        ("vi", "teen", "là một địa chỉ IP, không phải tên trang web"),
        ("en", "teen", "is an IP address, not a website's name"),
        ("en", "adult", "is an IP address, not a website's name"),
        ("vi", "child", "dãy số thay vì tên trang"),
        ("en", "child", "opened with a number instead of its name"),
    ],
)
def test_block_page_says_why(lang, tone, phrase):
    v = Verdict(Action.BLOCK, Reason.IP_LITERAL, "teen", list_id="policy:teen", rule="block_ip_literals")
    status, headers, body = blockpage.render(
        v, "203.0.113.7", lang=lang, tone=tone, settings=blockpage.BlockPageSettings()
    )
    text = body.decode()
    assert status == 403 and phrase in text and "ip-literal/policy:teen" in text
    assert headers["X-Filterproxy-Reason"] == "ip-literal/policy:teen"


def test_explain_shows_the_address(cfg_path, capsys):
    assert cli.main(["explain", "--config", cfg_path, "--group", "teen", "0xcb.0.0x71.07", "http://127.1/"]) == 0
    out = capsys.readouterr().out
    assert "0xcb.0.0x71.07: BLOCK for group teen (--group) — reason: ip-literal" in out
    assert "address    203.0.113.7" in out and "rule       block_ip_literals (default for tone teen)" in out
    assert "http://127.1/: ALLOW" in out and "address    127.0.0.1" in out
    assert cli.main(["explain", "--config", cfg_path, "--group", "teen", "256.0.0.1"]) == 1
    assert "out of range" in capsys.readouterr().err
