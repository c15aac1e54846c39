"""FilterAddon with mitmproxy's taddons/tflow: decisions, SafeSearch, pass-through, auth, fail-closed, reload.

The end-to-end twin (real mitmdump, real client, real servers) is tests/test_http_e2e.py.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
import types
import uuid

import pytest
from conftest import write_config
from mitmproxy import connection, http
from mitmproxy.proxy import server_hooks
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils
from mitmproxy.tls import ClientHelloData

from filterproxy import metrics
from filterproxy.http.addon import KEY, FilterAddon, _target
from filterproxy.http.auth import hash_password
from filterproxy.match.urlhash import expression_hash
from filterproxy.verdict import Action, Reason, Verdict

POLICIES = {
    "kid": """
        name: Kid (school)
        tone: child
        block_categories: [adult, gambling, social]
        safesearch: strict
        youtube: strict
        passthrough: [kidbank.example]
    """,
    "teen": """
        name: Teen (school)
        names: {vi: "Thiếu niên (trường)", en: "Teenagers (school)"}
        description: "Rules <agreed> with the school board"
        tone: teen
        block_categories: [adult, gambling]
        safesearch: moderate
        youtube: moderate
    """,
    "grown": """
        name: Staff
        tone: adult
        block_categories: [malware]
        safesearch: "off"
        youtube: "off"
        bypass_defences: false
    """,
}
KID, TEEN, GROWN, UNKNOWN = "10.1.0.7", "10.2.0.5", "10.3.0.1", "192.168.9.9"


def make_config(tmp, *, users: str | None = None, default_group: str | None = None, clients: str = ""):
    (tmp / "adult.txt").write_text("blocked.example\npinned-bad.example\n")
    (tmp / "social.txt").write_text("social.example\n")
    (tmp / "legal.txt").write_text("illegal.example\n")
    (tmp / "urls.txt").write_text("badsite.example/casino/\n")
    (tmp / "urlhash.txt").write_text(expression_hash("hashed.example/evil/").hex() + "\n")
    extra = ""
    if users is not None:
        (tmp / "users.txt").write_text(users)
        extra = "  users_file: users.txt\n"
    dg = f"default_group: {default_group}\n" if default_group else ""
    return write_config(
        tmp,
        f"""
timezone: Asia/Ho_Chi_Minh
{dg}clients:
  - {{cidr: 10.1.0.0/16, group: kid}}
  - {{cidr: 10.2.0.0/16, group: teen}}
  - {{ip: 10.3.0.1, group: grown}}
{clients}http:
  passthrough: [bank.example, pinned-bad.example]
  review_url: https://review.example/ask
  report_url: https://report.example/
{extra}lists:
  - {{id: adult, category: adult, format: domains, match: subdomains, path: adult.txt}}
  - {{id: social, category: social, format: domains, match: subdomains, path: social.txt}}
  - {{id: national, category: illegal, format: domains, match: subdomains, legal: true, path: legal.txt}}
  - {{id: ut1-gambling, category: gambling, format: urls, path: urls.txt}}
  - {{id: sb-hashes, category: adult, format: urlhash, path: urlhash.txt}}
""",
        POLICIES,
    )


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    return str(make_config(tmp_path_factory.mktemp("http-addon")))


@pytest.fixture
def addon(config_path):
    a = FilterAddon()
    with taddons.context(a) as tctx:
        tctx.configure(a, filterproxy_config=config_path, filterproxy_reload_signal=False)
        yield a


def client(ip: str = TEEN, *, sockname=("127.0.0.1", 8080), mode: str = "regular") -> connection.Client:
    c = tflow.tclient_conn()
    c.id = str(uuid.uuid4())
    c.peername = (ip, 40000)
    c.sockname = sockname
    c.proxy_mode = ProxyMode.parse(mode)
    return c


def get(url: str, ip: str = TEEN, headers: dict | None = None, conn: connection.Client | None = None) -> http.HTTPFlow:
    req = http.Request.make("GET", url, b"")
    for k, v in (headers or {}).items():
        req.headers[k] = v  # after make(): setting the URL rewrites a Host header given to make()
    return tflow.tflow(client_conn=conn or client(ip), req=req)


def run_request(a: FilterAddon, f: http.HTTPFlow) -> http.HTTPFlow:
    res = a.requestheaders(f)
    assert res is None, "unexpected slow path"
    a.request(f)
    return f


# ---------------------------------------------------------------- decisions on the full URL


@pytest.mark.parametrize(
    "ip,url,status,short_id",
    [
        (TEEN, "http://allowed.example/", None, None),
        (TEEN, "http://blocked.example/x", 403, "category/adult/adult"),
        (TEEN, "http://www.blocked.example/", 403, "category/adult/adult"),
        (TEEN, "https://blocked.example:8443/a?b=c", 403, "category/adult/adult"),
        (TEEN, "http://illegal.example/", 451, "legal/illegal/national"),
        (GROWN, "http://sub.illegal.example/", 451, "legal/illegal/national"),
        (TEEN, "http://badsite.example/casino/roulette", 403, "category/gambling/ut1-gambling"),
        (TEEN, "http://badsite.example/news", None, None),
        (GROWN, "http://badsite.example/casino/", None, None),  # staff do not block gambling
        (TEEN, "http://hashed.example/evil/page.html?x=1", 403, "category/adult"),  # hashed: no list id shown
        (TEEN, "http://www.hashed.example/evil/", 403, "category/adult"),
        (TEEN, "http://hashed.example/good/", None, None),
        (KID, "http://social.example/", 403, "category/social/social"),
        (GROWN, "http://social.example/", None, None),
        (UNKNOWN, "http://allowed.example/", 403, "unknown-client"),
    ],
)
def test_decisions(addon, ip, url, status, short_id):
    f = run_request(addon, get(url, ip))
    if status is None:
        assert f.response is None
        assert f.metadata[KEY]["action"] in ("allow", "rewrite")
    else:
        assert f.response is not None and f.response.status_code == status
        assert f.response.headers["X-Filterproxy-Reason"] == short_id
        assert f.response.headers["Cache-Control"] == "no-store"
        assert f'<code id="reason-id">{short_id}</code>' in f.response.text
        assert ip not in f.response.text
        assert f.metadata[KEY]["action"] == "block"


def test_hashed_rule_never_shown(addon):
    f = run_request(addon, get("http://hashed.example/evil/x", TEEN))
    body = f.response.text
    assert "hashed.example/evil" not in body and "sb-hashes" not in body
    assert expression_hash("hashed.example/evil/").hex() not in body


def test_host_header_and_target_both_decided(addon):
    # absolute-form to an allowed host but a Host header naming a blocked one (and the reverse): a Host that
    # disagrees with the target is refused (400) before any decision, so neither name is forwarded
    f = run_request(addon, get("http://allowed.example/", TEEN, {"Host": "blocked.example"}))
    assert f.response is not None and f.response.status_code == 400
    f = run_request(addon, get("http://blocked.example/", TEEN, {"Host": "allowed.example"}))
    assert f.response is not None and f.response.status_code == 400


@pytest.mark.parametrize(
    "change,status",
    [
        (lambda r: setattr(r, "url", "http://blocked.example/"), 403),  # e.g. map_remote before this addon
        (lambda r: r.headers.__setitem__("Host", "blocked.example"), 400),  # Host ≠ target: refused
        (lambda r: setattr(r, "path", "/casino/x") or r.headers.__setitem__("Host", "badsite.example"), 400),
    ],
)
def test_request_guard_redecides_changed_requests(addon, change, status):
    f = get("http://allowed.example/ok", TEEN)
    addon.requestheaders(f)
    assert f.response is None
    addon.request(f)
    assert f.response is None  # unchanged: no second decision
    change(f.request)
    addon.request(f)
    assert f.response is not None and f.response.status_code == status


@pytest.mark.parametrize(
    "url,host_header,want_host,want_url",
    [
        ("http://a.example/x?y=1", None, "a.example", "http://a.example/x?y=1"),
        ("http://a.example:8080/x", "a.example:8080", "a.example", "http://a.example:8080/x"),
        ("https://a.example:443/", "b.example", "b.example", "https://b.example/"),
        ("http://10.0.0.1/p", "site.example:81", "site.example", "http://site.example:81/p"),
        ("http://[::1]:8080/p", None, "::1", "http://[::1]:8080/p"),
        ("http://x.example/p", "[2001:db8::1]:8443", "2001:db8::1", "http://[2001:db8::1]:8443/p"),
        ("http://x.example/p", "xn--bcher-kva.example", "xn--bcher-kva.example", "http://xn--bcher-kva.example/p"),
    ],
)
def test_target_matches_pretty_url(url, host_header, want_host, want_url):
    req = http.Request.make("GET", url, b"")
    if host_header:
        req.headers["Host"] = host_header
    host, full, auth = _target(req)
    assert (host, full, auth) == (want_host, want_url, False)
    assert host == req.pretty_host
    if ":" not in host:  # mitmproxy 11 leaves IPv6 hosts unbracketed in pretty_url; ours is a valid URL
        assert full == req.pretty_url


# ---------------------------------------------------------------- SafeSearch at the HTTP layer


@pytest.mark.parametrize(
    "ip,url,param,value",
    [
        (KID, "http://www.google.com/search?q=x&safe=off", "safe", "active"),
        (TEEN, "http://www.google.com.vn/search?q=x", "safe", "active"),
        (KID, "http://www.bing.com/search?q=x", "adlt", "strict"),
        (TEEN, "http://www.bing.com/search?q=x&adlt=off", "adlt", "moderate"),
        (KID, "http://duckduckgo.com/?q=x", "kp", "1"),
        (TEEN, "http://duckduckgo.com/?q=x&kp=-2", "kp", "-1"),
        (GROWN, "http://www.google.com/search?q=x&safe=off", "safe", "off"),
        (GROWN, "http://www.bing.com/search?q=x", "adlt", None),
    ],
)
def test_safesearch_params(addon, ip, url, param, value):
    f = run_request(addon, get(url, ip))
    assert f.response is None
    assert f.request.query.get(param) == value
    if value and ip != GROWN:
        assert f.metadata[KEY]["action"] == "rewrite"
        assert f.request.host == http.Request.make("GET", url).host  # forwarded to the original host


@pytest.mark.parametrize("ip,want", [(KID, "Strict"), (TEEN, "Moderate"), (GROWN, None)])
def test_youtube_restrict_header(addon, ip, want):
    f = run_request(addon, get("https://www.youtube.com/watch?v=abc", ip))
    assert f.response is None
    assert f.request.headers.get("YouTube-Restrict") == want


def test_safesearch_counted(addon):
    before = metrics.HTTP_SAFESEARCH_REWRITES.value("kid", "google")
    run_request(addon, get("http://www.google.com/search?q=x", KID))
    assert metrics.HTTP_SAFESEARCH_REWRITES.value("kid", "google") == before + 1


# ---------------------------------------------------------------- block page language and tone


@pytest.mark.parametrize(
    "accept,lang,phrase",
    [
        (None, "vi", "Trang này"),
        ("en-US,en;q=0.9", "en", "This page"),
        ("fr-FR,fr;q=0.9", "vi", "Trang này"),
        ("en;q=0.4, vi;q=0.8", "vi", "Trang này"),
        ("vi-VN, en;q=0.5", "vi", "Trang này"),
    ],
)
def test_block_page_language(addon, accept, lang, phrase):
    f = run_request(addon, get("http://blocked.example/", TEEN, {"Accept-Language": accept} if accept else {}))
    assert f.response.headers["Content-Language"] == lang
    assert f'<html lang="{lang}">' in f.response.text
    assert phrase in f.response.text


@pytest.mark.parametrize("ip,tone,review", [(KID, "child", False), (TEEN, "teen", True)])
def test_block_page_tone(addon, ip, tone, review):
    f = run_request(addon, get("http://blocked.example/", ip))
    body = f.response.text
    assert f'class="tone-{tone}' in body
    assert ("https://review.example/ask?" in body) is review
    assert "tel:111" in body and "https://report.example/" in body


@pytest.mark.parametrize(
    "ip,url,accept,line",
    [
        (TEEN, "http://blocked.example/", None, "Chính sách áp dụng: Thiếu niên (trường)."),
        (TEEN, "http://blocked.example/", "en", "Policy: Teenagers (school)."),
        (GROWN, "http://illegal.example/", None, "Chính sách áp dụng: Staff."),  # no names: the default name
        (GROWN, "http://illegal.example/", "en", "Policy: Staff."),
    ],
)
def test_block_page_policy_name(addon, ip, url, accept, line):
    f = run_request(addon, get(url, ip, {"Accept-Language": accept} if accept else {}))
    assert f"<p>{line}</p>" in f.response.text


def test_block_page_policy_description(addon):
    f = run_request(addon, get("http://blocked.example/", TEEN))
    assert '<p class="description">Rules &lt;agreed&gt; with the school board</p>' in f.response.text  # escaped
    f = run_request(addon, get("http://illegal.example/", GROWN))  # a policy without one: no paragraph
    assert 'class="description"' not in f.response.text


# ---------------------------------------------------------------- the proxy itself: PAC file


def test_pac_served_by_proxy(addon):
    conn = client(TEEN, sockname=("127.0.0.1", 8080))
    f = run_request(addon, get("http://127.0.0.1:8080/proxy.pac", conn=conn, headers={"Host": "gw.school.lan:8080"}))
    assert f.response.status_code == 200
    assert f.response.headers["Content-Type"] == "application/x-ns-proxy-autoconfig"
    assert 'return "PROXY gw.school.lan:8080";' in f.response.text
    f = run_request(addon, get("http://localhost:8080/other", conn=client(TEEN, sockname=("127.0.0.1", 8080))))
    assert f.response.status_code == 404  # never forwarded to itself


# ---------------------------------------------------------------- CONNECT, TLS ClientHello, pass-through


def connect(host: str, ip: str = TEEN, conn=None, headers=None) -> http.HTTPFlow:
    req = tutils.treq(
        method=b"CONNECT",
        scheme=b"",
        host=host,
        port=443,
        authority=f"{host}:443".encode(),
        path=b"",
        headers=http.Headers(**(headers or {})),
        content=b"",
    )
    return tflow.tflow(client_conn=conn or client(ip), req=req)


def hello(conn: connection.Client, sni: str | None, addr=("1.2.3.4", 443)) -> ClientHelloData:
    context = Context(conn, None)  # type: ignore[arg-type]
    context.server.address = addr
    return ClientHelloData(context, types.SimpleNamespace(sni=sni))  # type: ignore[arg-type]


def server_connect(a: FilterAddon, conn: connection.Client, addr=("1.2.3.4", 443)) -> connection.Server:
    server = connection.Server(address=addr)
    a.server_connect(server_hooks.ServerConnectionHookData(server, conn))
    return server


@pytest.mark.parametrize(
    "host,ip,ignore,kill,connect_status",
    [
        ("allowed.example", TEEN, False, False, None),  # intercepted, decided per request
        ("bank.example", TEEN, True, False, None),  # global pass-through
        ("www.bank.example", TEEN, True, False, None),  # suffix match
        ("kidbank.example", KID, True, False, None),  # the kid policy's own pass-through
        ("kidbank.example", TEEN, False, False, None),  # ... not the teen's
        ("blocked.example", TEEN, False, False, 200),  # blocked: tunnel accepted without upstream, page inside
        ("pinned-bad.example", TEEN, True, True, 403),  # blocked pass-through: refused / closed
        ("www.google.com", KID, False, False, None),  # SafeSearch needs interception
    ],
)
def test_connect_and_clienthello(addon, host, ip, ignore, kill, connect_status):
    # explicit proxy: CONNECT first
    conn = client(ip)
    f = connect(host, conn=conn)
    addon.http_connect(f)
    if connect_status is None:
        assert f.response is None
    else:
        assert f.response.status_code == connect_status
    if connect_status == 403:
        return
    data = hello(conn, host)
    addon.tls_clienthello(data)
    assert data.ignore_connection is ignore
    # transparent mode: no CONNECT, the SNI alone
    tconn = client(ip, mode="transparent")
    tdata = hello(tconn, host)
    addon.tls_clienthello(tdata)
    assert tdata.ignore_connection is ignore
    refused = server_connect(addon, tconn).error is not None
    assert refused is (kill or connect_status == 200)


def test_blocked_tunnel_serves_page_and_never_connects(addon):
    conn = client(TEEN)
    f = connect("blocked.example", conn=conn)
    addon.http_connect(f)
    assert f.response.status_code == 200 and f.response.headers.fields == ()
    data = hello(conn, "blocked.example")
    data.establish_server_tls_first = True  # what mitmproxy's tlsconfig asks for by default
    addon.tls_clienthello(data)
    assert data.establish_server_tls_first is False and data.ignore_connection is False
    assert server_connect(addon, conn).error  # defence in depth
    inner = run_request(addon, get("https://blocked.example/page", conn=conn))
    assert inner.response.status_code == 403
    addon.client_disconnected(conn)
    assert conn.id not in addon._conns


def test_sni_blocked_behind_allowed_connect(addon):
    conn = client(TEEN)
    f = connect("allowed.example", conn=conn)
    addon.http_connect(f)
    assert f.response is None
    addon.tls_clienthello(hello(conn, "blocked.example", addr=("allowed.example", 443)))
    inner = run_request(addon, get("https://allowed.example/", conn=conn))  # Host claims the allowed name
    assert inner.response.status_code == 403
    assert "blocked.example" in inner.response.text


# ---------------------------------------------------------------- proxy authentication


def basic(user: str, pw: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()


@pytest.fixture(scope="module")
def auth_config(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("http-auth")
    users = (
        f"# lab users\nlab1:kid:{hash_password('kid-pass')}\nteacher:grown:{hash_password('staff pass:with colon')}\n"
    )
    return str(make_config(tmp, users=users))


async def _auth_case(config: str, ip: str, header: str | None, url: str, mode: str = "regular"):
    a = FilterAddon()
    with taddons.context(a) as tctx:
        tctx.configure(a, filterproxy_config=config, filterproxy_reload_signal=False)
        conn = client(ip, mode=mode)
        f = get(url, conn=conn, headers={"Proxy-Authorization": header} if header else {})
        res = a.requestheaders(f)
        if res is not None:
            await res
        a.request(f)
        # a second request on the same connection without the header keeps the login
        f2 = get(url, conn=conn)
        res = a.requestheaders(f2)
        if res is not None:
            await res
        return f, f2


@pytest.mark.parametrize(
    "ip,header,url,status,group",
    [
        ("127.0.0.1", None, "http://allowed.example/", 407, None),  # not mapped by IP: log in
        ("127.0.0.1", basic("lab1", "wrong"), "http://allowed.example/", 407, None),
        ("127.0.0.1", "Bearer abc", "http://allowed.example/", 407, None),
        ("127.0.0.1", basic("lab1", "kid-pass"), "http://allowed.example/", None, "kid"),
        ("127.0.0.1", basic("LAB1", "kid-pass"), "http://social.example/", 403, "kid"),
        ("127.0.0.1", basic("teacher", "staff pass:with colon"), "http://social.example/", None, "grown"),
        (TEEN, None, "http://allowed.example/", None, "teen"),  # mapped by CIDR: no login needed
        (TEEN, basic("teacher", "staff pass:with colon"), "http://social.example/", None, "grown"),  # login wins
    ],
)
def test_proxy_auth(auth_config, ip, header, url, status, group):
    f, f2 = asyncio.run(_auth_case(auth_config, ip, header, url))
    if status is None:
        assert f.response is None
    else:
        assert f.response.status_code == status
    if status == 407:
        assert f.response.headers["Proxy-Authenticate"].startswith('Basic realm="filterproxy"')
        return
    assert f.metadata[KEY]["group"] == group
    assert "Proxy-Authorization" not in f.request.headers  # never forwarded upstream
    assert f2.metadata[KEY]["group"] == group
    if status == 403:
        assert "lab1" not in f.response.text.lower() and ip not in f.response.text


def test_proxy_auth_not_in_transparent_mode(tmp_path):
    cfg = str(make_config(tmp_path, users=f"lab1:kid:{hash_password('x')}\n", default_group="teen"))
    f, _ = asyncio.run(_auth_case(cfg, "127.0.0.1", None, "http://allowed.example/", mode="transparent"))
    assert f.response is None and f.metadata[KEY]["group"] == "teen"


def test_config_user_rule_beats_users_file_group(tmp_path):
    cfg = str(
        make_config(tmp_path, users=f"lab1:kid:{hash_password('pw')}\n", clients="  - {user: lab1, group: grown}\n")
    )
    f, _ = asyncio.run(_auth_case(cfg, "127.0.0.1", basic("lab1", "pw"), "http://social.example/"))
    assert f.response is None and f.metadata[KEY]["group"] == "grown"


@pytest.mark.parametrize(
    "host,ip,ignore,refused",
    [
        ("allowed.example", TEEN, True, False),  # allowed: passed through untouched
        ("www.google.com", KID, True, False),  # even SafeSearch hosts (no CA: DNS does the CNAME)
        ("blocked.example", TEEN, False, True),  # blocked: intercepted (page with CA, else closed)
        ("pinned-bad.example", TEEN, True, True),  # blocked pass-through: closed
    ],
)
def test_inspect_https_off(config_path, host, ip, ignore, refused):
    a = FilterAddon()
    with taddons.context(a) as tctx:
        tctx.configure(a, filterproxy_config=config_path, filterproxy_inspect_https=False)
        conn = client(ip, mode="transparent")
        data = hello(conn, host)
        a.tls_clienthello(data)
        assert data.ignore_connection is ignore
        assert (server_connect(a, conn).error is not None) is refused


@pytest.mark.parametrize(
    "mode,group", [("wireguard@51821", "kid"), ("wireguard@51822", "grown"), ("wireguard@51823", "teen")]
)  # not mapped: the address (10.2/16)
def test_listener_group(config_path, mode, group):
    a = FilterAddon()
    with taddons.context(a) as tctx:
        tctx.configure(a, filterproxy_config=config_path, filterproxy_listener_group=["51821=kid", "51822=grown"])
        f = run_request(a, get("http://social.example/", conn=client(TEEN, mode=mode)))
        assert f.metadata[KEY]["group"] == group
        data = hello(client(TEEN, mode=mode), "social.example")
        a.tls_clienthello(data)
        assert (server_connect(a, data.context.client).error is not None) is (group == "kid")


def test_listener_group_validated(config_path):
    from mitmproxy import exceptions

    a = FilterAddon()
    with taddons.context(a) as tctx:
        with pytest.raises(exceptions.OptionsError, match="unknown group 'nope'"):
            tctx.configure(a, filterproxy_config=config_path, filterproxy_listener_group=["51821=nope"])
        with pytest.raises(exceptions.OptionsError, match="expected PORT=GROUP"):
            tctx.configure(a, filterproxy_listener_group=["x=kid"])


def test_users_file_unknown_group_is_options_error(tmp_path):
    from mitmproxy import exceptions

    cfg = str(make_config(tmp_path, users=f"lab1:nosuchgroup:{hash_password('x')}\n"))
    a = FilterAddon()
    with taddons.context(a) as tctx:
        with pytest.raises(exceptions.OptionsError, match=r"users.txt:1: .*unknown group 'nosuchgroup'"):
            tctx.configure(a, filterproxy_config=cfg)


# ---------------------------------------------------------------- fail closed


class _Broken:
    def __init__(self, engine):
        self.clients = engine.clients
        self.config = engine.config
        self.snapshot = engine.snapshot

    def decide(self, *a, **k):
        raise RuntimeError("boom")


def test_request_exception_blocks_and_counts(addon):
    addon.state = dataclasses.replace(addon.state, engine=_Broken(addon.state.engine))
    before = metrics.HTTP_ERRORS.value("requestheaders")
    f = get("http://allowed.example/", TEEN)
    addon.requestheaders(f)
    assert f.response is not None and f.response.status_code == 403
    assert f.response.headers["X-Filterproxy-Reason"] == "error"
    assert metrics.HTTP_ERRORS.value("requestheaders") == before + 1


def test_connect_and_tls_exceptions_fail_closed(addon):
    addon.state = dataclasses.replace(addon.state, engine=_Broken(addon.state.engine))
    f = connect("allowed.example")
    addon.http_connect(f)
    assert f.response.status_code == 403
    conn = client(TEEN, mode="transparent")
    data = hello(conn, "bank.example")  # a pass-through name: must NOT be passed through on error
    addon.tls_clienthello(data)
    assert data.ignore_connection is False
    assert server_connect(addon, conn).error
    f = get("https://bank.example/", conn=conn)
    addon.requestheaders(f)
    assert f.response.status_code == 403


def test_no_state_fails_closed():
    a = FilterAddon()
    with taddons.context(a):
        f = get("http://allowed.example/")
        a.requestheaders(f)
        assert f.response.status_code == 403


# ---------------------------------------------------------------- response hook point, hot swap


class _ImageCheck:
    def __init__(self):
        self.seen = []

    def responseheaders(self, flow, info):
        self.seen.append(info.get("group"))

    def response(self, flow, info):
        if flow.response.headers.get("content-type", "").startswith("image/"):
            return Verdict(Action.BLOCK, Reason.CATEGORY, info["group"], category="adult", list_id="img")
        return None


def test_response_check_hook_point(addon):
    check = _ImageCheck()
    addon.add_response_check(check)
    f = run_request(addon, get("http://allowed.example/a.jpg", TEEN))
    f.response = tutils.tresp(headers=http.Headers(content_type="image/jpeg"))
    f.response.headers["alt-svc"] = 'h3=":443"'
    addon.responseheaders(f)
    assert "alt-svc" not in f.response.headers
    addon.response(f)
    assert check.seen == ["teen"]
    assert f.response.status_code == 403 and "category/adult/img" in f.response.text


def test_reload_swaps_state_and_keeps_last_good(tmp_path):
    cfg = make_config(tmp_path)
    a = FilterAddon()
    with taddons.context(a) as tctx:
        tctx.configure(a, filterproxy_config=str(cfg), filterproxy_reload_signal=False)
        gen = a.state.generation
        assert run_request(a, get("http://newly-bad.example/")).response is None
        (tmp_path / "adult.txt").write_text("blocked.example\nnewly-bad.example\n")
        assert a.reload().result(timeout=30) is True
        assert a.state.generation == gen + 1
        assert run_request(a, get("http://newly-bad.example/")).response.status_code == 403
        good = a.state
        cfg.write_text(cfg.read_text() + "\nnot valid: [\n")
        assert a.reload().result(timeout=30) is False
        assert a.state is good and a.last_reload_error
        assert run_request(a, get("http://newly-bad.example/")).response.status_code == 403


def test_options_are_validated(tmp_path):
    from mitmproxy import exceptions

    a = FilterAddon()
    with taddons.context(a) as tctx:
        with pytest.raises(exceptions.OptionsError, match="filterproxy: .*missing.yaml: cannot read"):
            tctx.configure(a, filterproxy_config=str(tmp_path / "missing.yaml"))
        with pytest.raises(exceptions.OptionsError, match="--client-group"):
            tctx.configure(
                a, filterproxy_config=str(make_config(tmp_path)), filterproxy_client_group=["10.0.0.0/8=nope"]
            )


def test_metrics_labels_are_bounded(addon):
    before = metrics.HTTP_BLOCKED.value("teen", "adult")
    for i in range(5):
        run_request(addon, get(f"http://blocked.example/{i}", TEEN))
    assert metrics.HTTP_BLOCKED.value("teen", "adult") == before + 5
    labels = {k for k in metrics.HTTP_REQUESTS.snapshot()}
    assert all(TEEN not in "".join(k) and "blocked.example" not in "".join(k) for k in labels)


def test_decision_is_cheap(addon):
    flows = [get(f"http://www.site{i}.example/p/{i}?q={i}", TEEN) for i in range(300)]
    t = time.perf_counter()
    for f in flows:
        addon.requestheaders(f)
        addon.request(f)
    per = (time.perf_counter() - t) / len(flows)
    assert per < 0.002, f"{per * 1e6:.0f} µs per request"  # mitmproxy itself spends ~3 ms per request


# ---------------------------------------------------------------- ambiguous Host: refused before any decision


def with_hosts(url: str, *hosts: bytes, conn=None, version: str = "HTTP/1.1") -> http.HTTPFlow:
    f = get(url, conn=conn)
    f.request.http_version = version
    f.request.headers.fields = tuple(kv for kv in f.request.headers.fields if kv[0].lower() != b"host") + tuple(
        (name, value) for name, value in (h.split(b": ", 1) for h in hosts)
    )
    return f


@pytest.mark.parametrize(
    "url,hosts",
    [
        ("http://allowed.example/", [b"Host: allowed.example", b"Host: blocked.example"]),
        ("http://allowed.example/", [b"Host: blocked.example", b"Host: allowed.example"]),
        ("http://allowed.example/", [b"Host: allowed.example", b"host: blocked.example"]),
        ("http://allowed.example/", [b"HOST: allowed.example", b"Host: allowed.example"]),  # even the same name twice
        ("http://10.9.9.9:8000/", [b"Host: allowed.example"]),  # absolute-form target ≠ Host
        ("http://allowed.example/", [b"Host: blocked.example"]),
    ],
)
def test_ambiguous_host_is_refused(addon, url, hosts):
    f = run_request(addon, with_hosts(url, *hosts))
    assert f.response is not None and f.response.status_code == 400
    assert f.response.headers["Content-Type"].startswith("text/plain") and b"Host" in f.response.content
    assert f.metadata[KEY]["action"] == "invalid"


def test_consistent_host_is_allowed(addon):
    for hosts in ([b"Host: allowed.example"], [b"host: ALLOWED.example:80"], [b"Host: allowed.example."], []):
        f = run_request(addon, with_hosts("http://allowed.example/", *hosts))
        assert f.response is None, hosts


def test_http2_host_must_match_authority(addon):
    f = with_hosts("https://allowed.example/", b"host: blocked.example", version="HTTP/2.0")
    f.request.authority = "allowed.example"
    assert run_request(addon, f).response.status_code == 400
    f = with_hosts("https://allowed.example/", b"host: allowed.example", version="HTTP/2.0")
    f.request.authority = "allowed.example"
    assert run_request(addon, f).response is None


def test_host_must_match_connect_target_and_sni(addon):
    conn = client(TEEN)
    addon.http_connect(connect("allowed.example", conn=conn))
    inner = run_request(addon, with_hosts("https://allowed.example/", b"Host: blocked.example", conn=conn))
    assert inner.response.status_code == 400  # Host ≠ CONNECT target
    conn.tls, conn.sni = True, "allowed.example"
    assert (
        run_request(addon, with_hosts("https://allowed.example/", b"Host: allowed.example", conn=conn)).response is None
    )
    conn.sni = "other.example"
    inner = run_request(addon, with_hosts("https://allowed.example/", b"Host: allowed.example", conn=conn))
    assert inner.response.status_code == 400 and b"SNI" in inner.response.content


def test_transparent_destination_address_is_not_a_conflict(addon):
    conn = client(TEEN, mode="transparent")
    f = run_request(addon, with_hosts("http://10.9.9.9/", b"Host: allowed.example", conn=conn))
    assert f.response is None
    f = run_request(addon, with_hosts("http://10.9.9.9/", b"Host: blocked.example", conn=conn))
    assert f.response.status_code == 403  # decided on the Host name
