"""DoH (RFC 8484) and DoT (RFC 7858) listeners of a real ``filterproxy run``, asked by real clients.

Clients: httpx (HTTP/1.1 and HTTP/2, GET and POST; dnspython >= 2.9's ``dns.query.https`` needs h2 >= 4.4,
which mitmproxy 11 does not allow), dnspython's ``dns.query.tls``, kdig (``+https``: HTTP/2 only; ``+tls``)
and raw sockets for pipelining and malformed input. The server runs on
a self-signed certificate made here (SAN 127.0.0.1 and localhost) in front of a fake upstream.
"""

from __future__ import annotations

import base64
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import urllib.request

import dns.edns
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import httpx
import pytest
import yaml
from tlsutil import self_signed

from filterproxy.dns.testing import FakeUpstream, ServerProcess, synth_a

BLOCK_PAGE = "10.9.9.9"  # server.block_page_ipv4: the answer for a name blocked for group "home"


def _self_signed(folder) -> tuple[str, str]:
    return self_signed(folder)


def _config(folder, upstream: FakeUpstream, cert: str, key: str):
    (folder / "policies").mkdir()
    (folder / "policies" / "home.yaml").write_text("name: Home\nblock: [everyone-blocked.example]\n")
    kids = "name: Kids\nblock: [everyone-blocked.example, kids-blocked.example]\nblock_mode: nxdomain\n"
    (folder / "policies" / "kids.yaml").write_text(kids)
    cfg = folder / "filterproxy.yaml"
    server = {"state_dir": str(folder / "state"), "block_page_ipv4": BLOCK_PAGE}
    cfg.write_text(
        yaml.safe_dump(
            {
                "server": {**server, "tls_cert_file": cert, "tls_key_file": key},
                "upstreams": {"servers": [upstream.address], "timeout": 1.0},
                "dns": {"allowed_networks": ["127.0.0.0/8"], "rate_limit": 0},
                "policies_dir": "policies",
                "groups": ["home", "kids"],
                "default_group": "home",
                "clients": [{"doh": "Phone-1", "group": "kids"}],
                "lists": [],
            }
        )
    )
    return cfg


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("encrypted")
    cert, key = _self_signed(folder)
    up = FakeUpstream().start()
    cfg = _config(folder, up, cert, key)
    args = ["--config", str(cfg), "--dns-listen", "127.0.0.1:0", "--proxy-listen", "off"]
    args += ["--metrics-listen", "127.0.0.1:0", "--doh-listen", "127.0.0.1:0", "--dot-listen", "127.0.0.1:0"]
    proc = ServerProcess(args, log_path=str(folder / "run.log")).start()
    text = proc.output()
    doh = re.search(r"DoH listening on https://127\.0\.0\.1:(\d+)/dns-query", text)
    dot = re.search(r"DoT listening on 127\.0\.0\.1:(\d+)", text)
    assert doh and dot, text[-2000:]
    yield {"proc": proc, "cert": cert, "doh": int(doh.group(1)), "dot": int(dot.group(1)), "folder": folder}
    proc.stop()
    up.stop()


def _url(server, path: str = "/dns-query") -> str:
    return f"https://127.0.0.1:{server['doh']}{path}"


def _doh(server, name: str, path: str = "/dns-query", *, post: bool = True, http2: bool = True) -> dns.message.Message:
    """One query the way RFC 8484 clients send it (ID 0; GET: base64url without padding)."""
    q = dns.message.make_query(name, "A", use_edns=0)
    q.id = 0
    wire = q.to_wire()
    with httpx.Client(verify=_ctx(server), http1=not http2, http2=http2, timeout=5) as c:
        if post:
            r = c.post(_url(server, path), content=wire, headers={"content-type": "application/dns-message"})
        else:
            r = c.get(_url(server, path), params={"dns": base64.urlsafe_b64encode(wire).rstrip(b"=").decode()})
    assert r.status_code == 200 and r.headers["content-type"] == "application/dns-message", r.text
    assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    return dns.message.from_wire(r.content)


def _a(msg: dns.message.Message) -> list[str]:
    return [rr.address for rrset in msg.answer if rrset.rdtype == dns.rdatatype.A for rr in rrset]


def _ede(msg: dns.message.Message) -> list[int]:
    return [o.code for o in msg.options if isinstance(o, dns.edns.EDEOption)]


def _ctx(server) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=server["cert"])
    ctx.check_hostname = True
    return ctx


@pytest.mark.parametrize("post", [False, True], ids=["GET", "POST"])
@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2"])
def test_doh_answers_and_blocks_like_udp(server, post, http2):
    ok = _doh(server, "allowed.example", post=post, http2=http2)
    assert ok.rcode() == dns.rcode.NOERROR and _a(ok) == [synth_a("allowed.example")]
    blocked = _doh(server, "everyone-blocked.example", post=post, http2=http2)
    assert _a(blocked) == [BLOCK_PAGE] and _ede(blocked) == [15]  # the block answer of group "home"
    udp = dns.query.udp(dns.message.make_query("everyone-blocked.example", "A"), "127.0.0.1", port=server["proc"].port)
    assert _a(udp) == _a(blocked)


def test_doh_path_id_selects_the_group_of_its_client_rule(server):
    for path in ("/dns-query/phone-1", "/dns-query/PHONE-1"):  # ids are case-insensitive, like the config
        kids = _doh(server, "kids-blocked.example", path=path)
        assert kids.rcode() == dns.rcode.NXDOMAIN and _ede(kids) == [15], path  # group "kids": nxdomain mode
    assert _doh(server, "everyone-blocked.example", path="/dns-query/phone-1").rcode() == dns.rcode.NXDOMAIN
    for path in ("/dns-query", "/dns-query/someone-else"):  # no id, or an id without a rule: the address decides
        home = _doh(server, "kids-blocked.example", path=path)
        assert home.rcode() == dns.rcode.NOERROR and _a(home) == [synth_a("kids-blocked.example")], path


def test_dot_answers_blocks_and_pipelines_on_one_connection(server):
    ctx = _ctx(server)
    r = dns.query.tls(
        dns.message.make_query("everyone-blocked.example", "A"),
        "127.0.0.1",
        port=server["dot"],
        timeout=5,
        ssl_context=ctx,
        server_hostname="localhost",
    )
    assert _a(r) == [BLOCK_PAGE]
    names = [f"pipelined{i}.example" for i in range(5)]
    with socket.create_connection(("127.0.0.1", server["dot"]), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            assert s.selected_alpn_protocol() in (None, "dot")
            wire = [dns.message.make_query(n, "A").to_wire() for n in names]
            s.sendall(b"".join(struct.pack(">H", len(w)) + w for w in wire))  # all at once (RFC 7766 §6.2.1.1)
            got = {}
            for _ in names:
                msg = dns.message.from_wire(_read_frame(s))
                got[msg.question[0].name.to_text(omit_final_dot=True)] = _a(msg)
    assert got == {n: [synth_a(n)] for n in names}


def _read_frame(s) -> bytes:
    buf = b""
    while len(buf) < 2:
        buf += s.recv(2 - len(buf))
    n = struct.unpack(">H", buf)[0]
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        assert chunk, "connection closed mid-message"
        data += chunk
    return data


def _kdig(*args: str) -> str:
    out = subprocess.run(["kdig", *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_kdig_over_https_h2_and_tls(server):
    tls = ["@127.0.0.1", f"+tls-ca={server['cert']}", "+tls-hostname=localhost"]
    https = _kdig(*tls, "-p", str(server["doh"]), "+https=/dns-query/phone-1", "kids-blocked.example", "A")
    assert "status: NXDOMAIN" in https and "(HTTP/2-POST)" in https and "EDE: 15" in https, https
    https = _kdig(*tls, "-p", str(server["doh"]), "+https-get", "+short", "allowed.example", "A")
    assert https.split() == [synth_a("allowed.example")]
    dot = _kdig(*tls, "-p", str(server["dot"]), "+tls", "everyone-blocked.example", "A")
    assert "status: NOERROR" in dot and BLOCK_PAGE in dot and "(TCP)" in dot, dot


def test_malformed_doh_requests_get_http_errors_and_the_server_keeps_serving(server):
    url = _url(server)
    good = dns.message.make_query("still-serving.example", "A").to_wire()
    two_questions = good[:4] + b"\x00\x02" + good[6:]  # a query header that parses, then a FORMERR
    with httpx.Client(verify=_ctx(server), http2=True) as c:
        cases = [
            (c.get(url, params={"dns": "!!not base64!!"}), 400),
            (c.get(url), 400),
            (c.get(url, params={"dns": base64.urlsafe_b64encode(b"short").decode().rstrip("=")}), 400),
            (c.post(url, content=good, headers={"content-type": "text/plain"}), 415),
            (c.post(url, content=b"\0" * 200000, headers={"content-type": "application/dns-message"}), 413),
            (c.post(url, content=two_questions, headers={"content-type": "application/dns-message"}), 200),
            (c.post(url, content=b"\x12\x34" + b"\xff" * 20, headers={"content-type": "application/dns-message"}), 400),
            (c.put(url, content=good, headers={"content-type": "application/dns-message"}), 405),
            (c.get(_url(server, "/other"), params={"dns": "AAAA"}), 404),
            (c.get(_url(server, "/dns-query/bad id"), params={"dns": "AAAA"}), 404),
        ]
        for i, (resp, status) in enumerate(cases):
            assert resp.status_code == status, (i, resp.status_code, resp.text)
        garbage = cases[5][0]  # a DNS error is a DNS answer in a 200 (RFC 8484 §4.2.1), not an HTTP error
        assert garbage.headers["content-type"] == "application/dns-message"
        assert dns.rcode.from_flags(*struct.unpack(">HH", garbage.content[2:6])) == dns.rcode.FORMERR
        ok = c.post(url, content=good, headers={"content-type": "application/dns-message"})
        assert ok.status_code == 200 and _a(dns.message.from_wire(ok.content)) == [synth_a("still-serving.example")]
    assert server["proc"].alive()


def test_garbage_on_dot_drops_the_connection_and_the_server_keeps_serving(server):
    with socket.create_connection(("127.0.0.1", server["dot"]), timeout=5) as raw:  # not TLS at all
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n" + b"\x00" * 100)
        while raw.recv(4096):  # a TLS alert at most, then the server closes (a timeout here fails the test)
            pass
    ctx = _ctx(server)
    with socket.create_connection(("127.0.0.1", server["dot"]), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(struct.pack(">H", 3) + b"abc")  # a frame too short for a DNS header: dropped, no answer
            q = dns.message.make_query("after-garbage.example", "A").to_wire()
            s.sendall(struct.pack(">H", len(q)) + q)
            assert _a(dns.message.from_wire(_read_frame(s))) == [synth_a("after-garbage.example")]
    r = dns.query.tls(
        dns.message.make_query("after-garbage.example", "A"),
        "127.0.0.1",
        port=server["dot"],
        timeout=5,
        ssl_context=ctx,
        server_hostname="localhost",
    )
    assert _a(r) == [synth_a("after-garbage.example")]
    assert server["proc"].alive()


def test_queries_are_counted_by_protocol(server):
    _doh(server, "counted.example")
    dns.query.tls(
        dns.message.make_query("counted.example", "A"),
        "127.0.0.1",
        port=server["dot"],
        timeout=5,
        ssl_context=_ctx(server),
        server_hostname="localhost",
    )
    url = server["proc"].metrics_url
    assert url
    seen: set[str] = set()
    deadline = time.monotonic() + 20  # counters are published once a second
    while time.monotonic() < deadline and seen != {"doh", "dot"}:
        text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
        seen = set(re.findall(r'^filterproxy_dns_queries_total\{[^}]*protocol="(do[ht])"[^}]*\} [1-9]', text, re.M))
        time.sleep(0.2)
    assert seen == {"doh", "dot"}


@pytest.mark.parametrize("broken", ["missing", "garbage"])
def test_run_refuses_a_listener_without_a_usable_certificate(tmp_path, broken):
    up = FakeUpstream().start()
    try:
        cert, key = _self_signed(tmp_path)
        if broken == "garbage":
            (tmp_path / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        cfg = _config(tmp_path, up, cert, key)
        if broken == "missing":
            text = yaml.safe_load(cfg.read_text())
            del text["server"]["tls_cert_file"]
            cfg.write_text(yaml.safe_dump(text))
        args = ["--dns-listen", "127.0.0.1:0", "--proxy-listen", "off", "--metrics-listen", "off"]
        out = subprocess.run(
            [sys.executable, "-m", "filterproxy", "run", "--config", str(cfg), *args, "--dot-listen", "127.0.0.1:0"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        up.stop()
    assert out.returncode == 2, out.stderr[-2000:]
    expected = {
        "missing": "--dot-listen needs 'server.tls_cert_file'",
        "garbage": "'server.tls_cert_file' " + str(tmp_path / "cert.pem"),
    }[broken]
    assert expected in out.stderr.splitlines()[-1], out.stderr[-2000:]


def test_hypercorn_is_imported_only_when_doh_is_on():
    """The Pi has 1 GB: DoT and the DNS service must not load the HTTP server."""
    code = (
        "import sys, filterproxy.runner, filterproxy.dns.service, filterproxy.dns.encrypted; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('hypercorn', 'h2', 'h11')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_reload_reaches_doh_ids(tmp_path):
    """A new ``{doh: ID}`` rule applies after SIGHUP (the DoH app asks the service's chain, which reloads)."""
    up = FakeUpstream().start()
    cert, key = _self_signed(tmp_path)
    cfg = _config(tmp_path, up, cert, key)
    args = ["--config", str(cfg), "--dns-listen", "127.0.0.1:0", "--proxy-listen", "off", "--metrics-listen", "off"]
    proc = ServerProcess([*args, "--doh-listen", "127.0.0.1:0"], log_path=str(tmp_path / "run.log")).start()
    try:
        m = re.search(r"DoH listening on https://127\.0\.0\.1:(\d+)", proc.output())
        assert m
        server = {"doh": int(m.group(1)), "cert": cert}
        before = _doh(server, "kids-blocked.example", path="/dns-query/tablet-2")
        assert before.rcode() == dns.rcode.NOERROR
        text = yaml.safe_load(cfg.read_text())
        text["clients"].append({"doh": "tablet-2", "group": "kids"})
        cfg.write_text(yaml.safe_dump(text))
        proc.signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "config generation 2" not in proc.output():
            time.sleep(0.1)
        after = _doh(server, "kids-blocked.example", path="/dns-query/tablet-2")
        assert after.rcode() == dns.rcode.NXDOMAIN, proc.output()[-2000:]
    finally:
        proc.stop()
        up.stop()
