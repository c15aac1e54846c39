"""Fast DNS wire-format helpers: parse a query by hand, read upstream answers, pack replies.

dnslib objects cost tens of microseconds per message; the resolver's hot path only needs the
question and the EDNS record of a query, and building an answer once per cache entry. Everything here
works on ``bytes`` with explicit bounds checks: a malformed message raises :class:`WireError`, never
``IndexError`` or ``struct.error``.

Names inside the resolver are *wire names*: uncompressed label sequences (``b"\\x03www\\x07example\\x03com\\x00"``)
in lower case, plus the dotted text form (``"www.example.com"``, no trailing dot) for the policy engine.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

# ---------------------------------------------------------------- constants

A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, SRV, NAPTR, DNAME, OPT = 1, 2, 5, 6, 12, 15, 16, 28, 33, 35, 39, 41
SVCB, HTTPS, ANY = 64, 65, 255
CLASS_IN = 1

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16

# RFC 8914 Extended DNS Errors
EDE_OTHER, EDE_BLOCKED, EDE_CENSORED, EDE_FILTERED, EDE_PROHIBITED = 0, 15, 16, 17, 18
EDE_NO_REACHABLE_AUTHORITY, EDE_NETWORK_ERROR = 22, 23
OPT_EDE = 15

EDNS_UDP_SIZE = 1232  # DNS flag day 2020: no IP fragmentation
MAX_UDP_NO_EDNS = 512

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_HDR = struct.Struct(">HHHHHH")
_RRFIX = struct.Struct(">HHIH")  # type, class, ttl, rdlength

# labels the policy engine accepts (filterproxy.names.normalize_host); anything else cannot be checked → refused
_HOSTNAME_RE = re.compile(rb"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
# a whole host name in text form: labels as above, joined by dots (\Z: no trailing newline slips through)
_POLICY_NAME_RE = re.compile(
    rb"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*\Z"
)
_LOWER = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")

QTYPE_NAMES = {
    A: "A",
    NS: "NS",
    CNAME: "CNAME",
    SOA: "SOA",
    PTR: "PTR",
    MX: "MX",
    TXT: "TXT",
    AAAA: "AAAA",
    SRV: "SRV",
    NAPTR: "NAPTR",
    DNAME: "DNAME",
    OPT: "OPT",
    SVCB: "SVCB",
    HTTPS: "HTTPS",
    ANY: "ANY",
    43: "DS",
    48: "DNSKEY",
    46: "RRSIG",
    47: "NSEC",
    257: "CAA",
}


class WireError(ValueError):
    """A message that cannot be parsed; ``rcode`` is what to answer (FORMERR, NOTIMP) when the header was read."""

    def __init__(self, message: str, rcode: int | None = FORMERR):
        super().__init__(message)
        self.rcode = rcode


def lower(b: bytes) -> bytes:
    """ASCII lower case (DNS names compare case-insensitively, RFC 4343)."""
    return b.translate(_LOWER)


# ---------------------------------------------------------------- names


def read_name(buf: bytes, off: int, *, allow_pointers: bool = True) -> tuple[bytes, int]:
    """Read a possibly compressed name at ``off`` → (uncompressed wire name, offset after it)."""
    out = bytearray()
    end = -1
    jumps = 0
    n = len(buf)
    while True:
        if off >= n:
            raise WireError("name runs past the end of the message")
        ln = buf[off]
        if ln == 0:
            out.append(0)
            off += 1
            break
        if ln & 0xC0 == 0xC0:
            if not allow_pointers:
                raise WireError("compression pointer where none is allowed")
            if off + 1 >= n:
                raise WireError("truncated compression pointer")
            ptr = ((ln & 0x3F) << 8) | buf[off + 1]
            if end < 0:
                end = off + 2
            jumps += 1
            if ptr >= off or jumps > 127:  # pointers go backwards only: no loops
                raise WireError("forward compression pointer")
            off = ptr
            continue
        if ln & 0xC0:
            raise WireError(f"unsupported label type 0x{ln:02x}")
        if off + 1 + ln > n:
            raise WireError("label runs past the end of the message")
        out += buf[off : off + 1 + ln]
        off += 1 + ln
        if len(out) > 255:
            raise WireError("name longer than 255 octets")
    if len(out) > 255:
        raise WireError("name longer than 255 octets")
    return bytes(out), (end if end >= 0 else off)


def skip_name(buf: bytes, off: int, *, backward: bool = False) -> int:
    """Offset after a (possibly compressed) name, without building it. ``backward``: a compression pointer
    must point before itself (so into what a copy of the message keeps at the same place)."""
    n = len(buf)
    while True:
        if off >= n:
            raise WireError("name runs past the end of the message")
        ln = buf[off]
        if ln == 0:
            return off + 1
        if ln & 0xC0 == 0xC0:
            if off + 1 >= n:
                raise WireError("truncated compression pointer")
            if backward and ((ln & 0x3F) << 8 | buf[off + 1]) >= off:
                raise WireError("bad compression pointer")
            return off + 2
        if ln & 0xC0:
            raise WireError(f"unsupported label type 0x{ln:02x}")
        off += 1 + ln


def name_to_text(wire: bytes) -> str:
    """Wire name → dotted text without the trailing dot ("" for the root). Non-printable bytes are escaped."""
    labels = []
    i = 0
    while i < len(wire) and wire[i]:
        ln = wire[i]
        lab = wire[i + 1 : i + 1 + ln]
        if all(33 <= c < 127 and c not in (0x2E, 0x5C) for c in lab):
            labels.append(lab.decode("ascii"))
        else:
            labels.append("".join(chr(c) if 33 <= c < 127 and c not in (0x2E, 0x5C) else f"\\{c:03d}" for c in lab))
        i += 1 + ln
    return ".".join(labels)


def text_to_name(text: str) -> bytes:
    """Dotted text (ASCII, no escapes) → lower-case wire name."""
    t = text.strip().rstrip(".").lower()
    if not t:
        return b"\x00"
    out = bytearray()
    for lab in t.split("."):
        b = lab.encode("ascii")
        if not b or len(b) > 63:
            raise WireError(f"invalid label in {text!r}")
        out.append(len(b))
        out += b
    out.append(0)
    if len(out) > 255:
        raise WireError(f"name too long: {text[:40]}...")
    return bytes(out)


def policy_name(wire: bytes) -> str | None:
    """The canonical host name the policy engine can decide on, or None when the name has bytes no host
    name can have (those cannot be filtered, so the resolver refuses them: fail closed).

    One pass over the length bytes (each becomes a dot), then one regular expression over the whole
    name; a dot inside a label shows as one dot too many.
    """
    i = wire[0] if wire else 0
    if not i:
        return ""
    buf = bytearray(wire[1:])
    n = len(buf)
    labels = 1
    while i < n:
        ln = buf[i]
        if not ln:
            del buf[i:]
            break
        buf[i] = 46  # "."
        labels += 1
        i += 1 + ln
    else:  # no terminating zero: not a name
        return None
    buf = buf.translate(_LOWER)
    if _POLICY_NAME_RE.match(buf) is None or buf.count(46) != labels - 1:
        return None
    return buf.decode("ascii")


# ---------------------------------------------------------------- queries


@dataclass(slots=True)
class Query:
    """The parts of a query the resolver needs. ``qend`` is the offset just after the question."""

    data: bytes
    id: int
    flags: int
    qname: bytes  # lower-case wire name
    qtype: int
    qclass: int
    qend: int
    edns: bool = False
    udp_size: int = MAX_UDP_NO_EDNS
    do: bool = False
    edns_version: int = 0

    @property
    def rd(self) -> bool:
        return bool(self.flags & 0x0100)

    @property
    def cd(self) -> bool:
        return bool(self.flags & 0x0010)

    @property
    def name(self) -> str:
        return name_to_text(self.qname)

    @property
    def qtype_name(self) -> str:
        return QTYPE_NAMES.get(self.qtype, str(self.qtype))

    def max_udp(self) -> int:
        """Largest UDP reply this client accepts (RFC 6891; capped at 1232 to avoid fragmentation)."""
        if not self.edns:
            return MAX_UDP_NO_EDNS
        return max(MAX_UDP_NO_EDNS, min(self.udp_size, EDNS_UDP_SIZE))


def parse_query(data: bytes) -> Query:
    """Parse a query: header, exactly one question (no compression), and the OPT record if any.

    Raises WireError with ``rcode`` None when the message must be dropped (too short for a header, or a
    response), else with the rcode to answer (FORMERR, NOTIMP).
    """
    n = len(data)
    if n < 12:
        raise WireError("shorter than a DNS header", None)
    qid, flags, qd, an, ns, ar = _HDR.unpack_from(data)
    if flags & 0x8000:
        raise WireError("a response, not a query", None)
    if (flags >> 11) & 0xF != 0:
        raise WireError("opcode not supported", NOTIMP)
    if qd != 1:
        raise WireError(f"{qd} questions (expected 1)")
    off = 12
    while True:
        if off >= n:
            raise WireError("question runs past the end")
        ln = data[off]
        if ln == 0:
            off += 1
            break
        if ln > 63:
            raise WireError("compressed or invalid label in the question")
        off += 1 + ln
    qname_end = off
    if qname_end - 12 > 255:
        raise WireError("question name longer than 255 octets")
    if off + 4 > n:
        raise WireError("question truncated")
    qtype, qclass = struct.unpack_from(">HH", data, off)
    off += 4
    q = Query(data, qid, flags, lower(data[12:qname_end]), qtype, qclass, off)
    if an or ns or ar:
        _parse_additional(q, data, off, an + ns, ar)
    return q


def _parse_additional(q: Query, data: bytes, off: int, skip: int, ar: int) -> None:
    n = len(data)
    for _ in range(skip):  # answer/authority records in a query: legal but unused
        off = skip_name(data, off)
        if off + 10 > n:
            raise WireError("record truncated")
        rdlen = _U16.unpack_from(data, off + 8)[0]
        off += 10 + rdlen
        if off > n:
            raise WireError("record data truncated")
    for _ in range(ar):
        start = off
        off = skip_name(data, off)
        if off + 10 > n:
            raise WireError("additional record truncated")
        rtype, rclass, ttl, rdlen = _RRFIX.unpack_from(data, off)
        off += 10
        if off + rdlen > n:
            raise WireError("additional record data truncated")
        if rtype == OPT:
            if q.edns:
                raise WireError("more than one OPT record")
            if off - 10 - start != 1 or data[start] != 0:
                raise WireError("OPT record not owned by the root")
            q.edns = True
            q.udp_size = rclass
            q.edns_version = (ttl >> 16) & 0xFF
            q.do = bool(ttl & 0x8000)
            o = off
            while o < off + rdlen:  # options must be well formed
                if o + 4 > off + rdlen:
                    raise WireError("EDNS option truncated")
                olen = _U16.unpack_from(data, o + 2)[0]
                o += 4 + olen
                if o > off + rdlen:
                    raise WireError("EDNS option data truncated")
        off += rdlen


def header_reply(data: bytes, rcode: int) -> bytes | None:
    """A reply with only the header (and the question, when it can be read) for a message we cannot
    handle: FORMERR, NOTIMP, REFUSED. None when even the header is unusable (drop it)."""
    if len(data) < 12 or data[2] & 0x80:
        return None
    qd = _U16.unpack_from(data, 4)[0]
    question = b""
    if qd == 1:
        try:
            off = skip_name(data, 12)
            if (
                off + 4 <= len(data)
                and off - 12 <= 255
                and not any(data[i] & 0xC0 for i in _label_starts(data, 12, off))
            ):
                question = data[12 : off + 4]
        except WireError:
            pass
    flags = 0x8000 | (data[2] << 8 & 0x7900) | 0x0080 | (rcode & 0xF)  # QR, opcode, RD echoed, RA
    return data[:2] + _U16.pack(flags) + _U16.pack(1 if question else 0) + b"\x00\x00\x00\x00\x00\x00" + question


def _label_starts(data: bytes, off: int, end: int):
    while off < end - 1:
        yield off
        off += 1 + data[off]


# ---------------------------------------------------------------- records and messages


class RR(NamedTuple):
    """One resource record with an uncompressed owner name (wire, lower case) and uncompressed rdata.

    A tuple of atoms: the garbage collector stops tracking it, so big caches cost no GC scans."""

    name: bytes
    type: int
    cls: int
    ttl: int
    rdata: bytes

    def target(self) -> bytes | None:
        """The name a CNAME/DNAME points to (wire)."""
        if self.type in (CNAME, DNAME):
            return self.rdata
        return None

    def address(self) -> str | None:
        """The IP address of an A/AAAA record, as text."""
        if self.type == A and len(self.rdata) == 4:
            return str(ipaddress.IPv4Address(self.rdata))
        if self.type == AAAA and len(self.rdata) == 16:
            return str(ipaddress.IPv6Address(self.rdata))
        return None


# rdata layouts with names that may be compressed (RFC 3597 §4: only these "well-known" types)
_NAME_FIELDS: dict[int, tuple[int, int]] = {
    NS: (0, 1),
    CNAME: (0, 1),
    PTR: (0, 1),
    DNAME: (0, 1),  # (bytes before the first name, number of names)
    MX: (2, 1),
    SOA: (0, 2),
    SRV: (6, 1),
    7: (0, 1),
    8: (0, 1),
    9: (0, 1),  # MB, MG, MR
    14: (0, 2),
    17: (0, 2),
    18: (2, 1),
    21: (2, 1),
    36: (2, 1),
}  # MINFO, RP, AFSDB, RT, KX


def _expand_rdata(buf: bytes, rtype: int, off: int, rdlen: int) -> bytes:
    spec = _NAME_FIELDS.get(rtype)
    end = off + rdlen
    if spec is None:
        return buf[off:end]
    pre, count = spec
    if pre > rdlen:
        raise WireError("rdata too short")
    out = bytearray(buf[off : off + pre])
    o = off + pre
    for _ in range(count):
        name, o = read_name(buf, o)
        if o > end:
            raise WireError("rdata name runs past the record")
        out += lower(name) if rtype != SOA else name
    out += buf[o:end]
    return bytes(out)


@dataclass(slots=True)
class Message:
    """A parsed upstream reply."""

    id: int
    flags: int
    question: tuple[bytes, int, int] | None
    answer: list[RR] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)
    additional: list[RR] = field(default_factory=list)  # without OPT
    edns: bool = False
    ext_rcode: int = 0

    @property
    def rcode(self) -> int:
        return (self.flags & 0xF) | (self.ext_rcode << 4)

    @property
    def tc(self) -> bool:
        return bool(self.flags & 0x0200)


def parse_message(buf: bytes) -> Message:
    """Parse a full message (a reply from an upstream): names decompressed, rdata names expanded."""
    n = len(buf)
    if n < 12:
        raise WireError("shorter than a DNS header")
    mid, flags, qd, an, ns, ar = _HDR.unpack_from(buf)
    off = 12
    question = None
    qname = b""
    for i in range(qd):
        name, off = read_name(buf, off)
        if off + 4 > n:
            raise WireError("question truncated")
        qt, qc = struct.unpack_from(">HH", buf, off)
        off += 4
        if i == 0:
            qname = lower(name)
            question = (qname, qt, qc)
    msg = Message(mid, flags, question)
    unpack = _RRFIX.unpack_from
    for count, section in ((an, msg.answer), (ns, msg.authority), (ar, msg.additional)):
        for _ in range(count):
            if qd and off + 1 < n and buf[off] == 0xC0 and buf[off + 1] == 12:  # most owners: "the question"
                name = qname
                off += 2
            else:
                name, off = read_name(buf, off)
                name = lower(name)
            if off + 10 > n:
                raise WireError("record truncated")
            rtype, rclass, ttl, rdlen = unpack(buf, off)
            off += 10
            if off + rdlen > n:
                raise WireError("record data truncated")
            if rtype == OPT:
                msg.edns = True
                msg.ext_rcode = ttl >> 24
            else:
                if ttl & 0x80000000:  # RFC 2181 §8: treat as zero
                    ttl = 0
                rdata = buf[off : off + rdlen] if rtype not in _NAME_FIELDS else _expand_rdata(buf, rtype, off, rdlen)
                section.append(RR(name, rtype, rclass, ttl, rdata))
            off += rdlen
    return msg


class RawAnswer(NamedTuple):
    """An upstream reply kept as bytes, to be copied into client replies instead of re-packed.

    ``msg[qend:end]`` is the answer and authority sections. A client's reply puts them at the same offset
    (its question has the same length as ours), so compression pointers stay valid. Packed in bytes (atoms
    only: cached entries are invisible to the garbage collector): ``ttls`` the (offset, TTL) of every
    record, TTLs already clamped; ``cnames`` and ``addrs`` where the CNAME targets and A/AAAA addresses
    are (for the answer check, without parsing the whole message).
    """

    msg: bytes
    qend: int
    end: int
    an: int
    ns: int
    ttls: bytes  # ">HI" (offset, ttl) per record
    cnames: bytes  # ">H" rdata offset per CNAME/DNAME
    addrs: bytes  # ">HHH" (type, rdata offset, length) per A/AAAA
    life: int  # seconds it may be cached (0: not at all)

    def ttl_items(self):
        return _TTLREC.iter_unpack(self.ttls)

    def cname_offsets(self) -> list[int]:
        return [o for (o,) in _U16.iter_unpack(self.cnames)]

    def addr_items(self):
        return _ADDRREC.iter_unpack(self.addrs)


_TTLREC = struct.Struct(">HI")
_TUPLE_NEW = tuple.__new__
_ADDRREC = struct.Struct(">HHH")


def scan_reply(  # noqa: C901 - a measured hot loop, inlined on purpose (see the docstring)
    buf: bytes, qname: bytes, qtype: int, min_ttl: int, max_ttl: int, negative_ttl: int
) -> tuple[int, int, RawAnswer] | None:
    """Walk an upstream reply to our question: (rcode, flags, RawAnswer), or None when it is unusual
    (compressed or different question, forward pointers, EDNS extended rcode, truncation...) and must
    take the general path (:func:`parse_message`). Raises WireError when it is malformed.

    A measured hot loop: every cache miss runs it, so the record walk is one inlined function
    (docs/performance.md has the miss-path figures)."""
    n = len(buf)
    if n < 12:
        raise WireError("shorter than a DNS header")
    _id, flags, qd, an, ns, ar = _HDR.unpack_from(buf)
    qend = 12 + len(qname) + 4
    if (
        qd != 1
        or qend > n
        or not (buf.startswith(qname, 12) or lower(buf[12 : 12 + len(qname)]) == qname)
        or _U16.unpack_from(buf, qend - 4)[0] != qtype
        or flags & 0x0200
    ):
        return None
    rcode = flags & 0xF
    off = qend
    ttls = bytearray()  # _TTLREC per record
    cnames = bytearray()
    addrs = bytearray()
    min_an = 1 << 31
    soa_neg = None
    unpack = _RRFIX.unpack_from
    for i in range(an + ns):
        if off + 1 < n and buf[off] == 0xC0 and buf[off + 1] == 12:
            off += 2
        else:
            off = skip_name(buf, off, backward=True)
        if off + 10 > n:
            raise WireError("record truncated")
        rtype, _rclass, ttl, rdlen = unpack(buf, off)
        if ttl & 0x80000000:  # RFC 2181 §8: treat as zero
            ttl = 0
        ttl_off = off + 4
        off += 10
        rd = off
        off += rdlen
        if off > n or off > 0xFFFF:
            raise WireError("record data truncated")
        if rtype == OPT:
            return None
        spec = _NAME_FIELDS.get(rtype)
        if spec is not None:  # names inside rdata: their pointers must stay inside what we copy
            o = rd + spec[0]
            for _ in range(spec[1]):
                o = skip_name(buf, o, backward=True)
            if o > off:
                raise WireError("rdata name runs past the record")
        if i < an:
            if ttl < min_an:
                min_an = ttl
            if rtype == CNAME or rtype == DNAME:
                cnames += _U16.pack(rd)
            elif rtype == A or rtype == AAAA:
                addrs += _ADDRREC.pack(rtype, rd, rdlen)
        elif rtype == SOA and rdlen >= 22 and soa_neg is None:
            soa_neg = (len(ttls), min(ttl, int.from_bytes(buf[off - 4 : off], "big")))
        ttls += _TTLREC.pack(ttl_off, ttl if min_ttl <= ttl <= max_ttl else max(min_ttl, min(ttl, max_ttl)))
    end = off
    for _ in range(ar):  # additional records are dropped; an OPT with an extended rcode takes the slow path
        if off < n and buf[off] == 0:  # the root (an OPT record's owner): no call
            off += 1
        else:
            off = skip_name(buf, off, backward=True)
        if off + 10 > n:
            raise WireError("record truncated")
        rtype, _rclass, ttl, rdlen = unpack(buf, off)
        if rtype == OPT and ttl >> 24:
            return None
        off += 10 + rdlen
        if off > n:
            raise WireError("record data truncated")
    # lifetime (see cache.lifetime: the same rules on the same numbers)
    if rcode == NOERROR and an:
        life = max(min_ttl, min(min_an, max_ttl))
    elif rcode in (NOERROR, NXDOMAIN):
        if soa_neg is None:
            life = min_ttl
        else:
            life = max(min_ttl, min(soa_neg[1], negative_ttl, max_ttl))
            _U32.pack_into(ttls, soa_neg[0] + 2, life)  # downstream caches keep it as long as we do
    else:
        life = 0
    # tuple.__new__ directly: the NamedTuple's generated __new__ is a Python frame more
    return rcode, flags, _TUPLE_NEW(RawAnswer, (buf, qend, end, an, ns, bytes(ttls), bytes(cnames), bytes(addrs), life))


def pack_raw(
    q: Query, rcode: int, raw: RawAnswer, elapsed: int, *, ad: bool = False, max_size: int = 65535
) -> tuple[bytes, list[tuple[int, int]]]:
    """A reply to ``q`` with ``raw``'s sections copied in, TTLs aged by ``elapsed`` (see RawAnswer)."""
    flags = 0x8000 | (q.flags & 0x0110) | 0x0080 | (rcode & 0xF) | (0x0020 if ad else 0)
    buf = bytearray(_HDR.pack(q.id, flags, 1, raw.an, raw.ns, 1 if q.edns else 0))
    buf += q.data[12 : q.qend]
    buf += raw.msg[raw.qend : raw.end]
    pack = _U32.pack_into
    offsets = []
    for off, ttl in raw.ttl_items():
        t = ttl - elapsed
        if t < 0:
            t = 0
        pack(buf, off, t)
        offsets.append((off, t))
    if q.edns:
        buf += opt_record(q.do, rcode >> 4)
    if len(buf) > max_size:
        return truncated_reply(q, rcode), []
    return bytes(buf), offsets


def build_query(
    qname: bytes,
    qtype: int,
    qclass: int = CLASS_IN,
    *,
    qid: int = 0,
    rd: bool = True,
    cd: bool = False,
    do: bool = False,
    edns: bool = True,
) -> bytes:
    """A query message (for upstreams): EDNS with a 1232-byte UDP size."""
    flags = (0x0100 if rd else 0) | (0x0010 if cd else 0)
    msg = _HDR.pack(qid, flags, 1, 0, 0, 1 if edns else 0) + qname + struct.pack(">HH", qtype, qclass)
    if edns:
        msg += b"\x00" + _RRFIX.pack(OPT, EDNS_UDP_SIZE, 0x8000 if do else 0, 0)
    return msg


# ---------------------------------------------------------------- packing replies


class Packer:
    """Appends records to a reply with name compression; remembers where each TTL is (for ageing)."""

    __slots__ = ("buf", "names", "ttl_offsets")

    def __init__(self, head: bytes, qname: bytes):
        self.buf = bytearray(head)
        # the question name sits at offset 12: its suffixes are compression targets
        self.names: dict[bytes, int] = {}
        self._remember(qname, 12)
        self.ttl_offsets: list[tuple[int, int]] = []

    def _remember(self, name: bytes, at: int) -> None:
        i = 0
        while name[i] and at + i < 0x3FFF:
            self.names.setdefault(lower(name[i:]), at + i)
            i += 1 + name[i]

    def name(self, name: bytes) -> None:
        i = 0
        at = len(self.buf)
        low = lower(name)
        while name[i]:
            ptr = self.names.get(low[i:])
            if ptr is not None:
                self.buf += name[:i]
                self.buf += _U16.pack(0xC000 | ptr)
                j = 0
                while j < i and at + j < 0x3FFF:  # the labels written here are targets too
                    self.names.setdefault(low[j:], at + j)
                    j += 1 + name[j]
                return
            i += 1 + name[i]
        self.buf += name
        self._remember(name, at)

    def rr(self, rr: RR, ttl: int) -> None:
        self.name(rr.name)
        self.buf += _U16.pack(rr.type) + _U16.pack(rr.cls)
        ttl = ttl if ttl > 0 else 0
        self.ttl_offsets.append((len(self.buf), ttl))
        self.buf += _U32.pack(ttl)
        rdlen_at = len(self.buf)
        self.buf += b"\x00\x00"
        spec = _NAME_FIELDS.get(rr.type) if rr.type in (NS, CNAME, PTR, MX, SOA) else None
        if spec is None:
            self.buf += rr.rdata
        else:  # compress names in the well-known types
            pre, count = spec
            self.buf += rr.rdata[:pre]
            o = pre
            for _ in range(count):
                _name, o2 = read_name(rr.rdata, o, allow_pointers=False)
                self.name(rr.rdata[o:o2])
                o = o2
            self.buf += rr.rdata[o:]
        _U16.pack_into(self.buf, rdlen_at, len(self.buf) - rdlen_at - 2)


def opt_record(do: bool = False, ext_rcode: int = 0, options: bytes = b"") -> bytes:
    """Our OPT pseudo-record: UDP size 1232, version 0, DO echoed."""
    return b"\x00" + _RRFIX.pack(OPT, EDNS_UDP_SIZE, (ext_rcode << 24) | (0x8000 if do else 0), len(options)) + options


def ede_option(code: int, text: str = "") -> bytes:
    """RFC 8914 Extended DNS Error option: INFO-CODE + EXTRA-TEXT (UTF-8)."""
    t = text.encode("utf-8")[:200]
    return _U16.pack(OPT_EDE) + _U16.pack(2 + len(t)) + _U16.pack(code) + t


def pack_reply(
    q: Query,
    rcode: int,
    answer: Sequence[RR] = (),
    authority: Sequence[RR] = (),
    additional: Sequence[RR] = (),
    *,
    ttls: tuple[list[int], list[int], list[int]] | None = None,
    ede: tuple[int, str] | None = None,
    aa: bool = False,
    ad: bool = False,
    max_size: int = 65535,
) -> tuple[bytes, list[tuple[int, int]]]:
    """A complete reply to ``q`` (its ID, its question bytes as sent, OPT if it had EDNS).

    ``ttls`` gives the TTL to write for each record (default: each record's own). Returns the message and
    the (offset, written TTL) of every TTL field, so a cached copy can be aged without re-packing. Too
    large for ``max_size`` → an empty reply with TC set (the client retries over TCP).
    """
    ext, low_rcode = rcode >> 4, rcode & 0xF
    flags = 0x8000 | (q.flags & 0x0110) | 0x0080 | low_rcode | (0x0400 if aa else 0) | (0x0020 if ad else 0)
    sections: tuple[Sequence[RR], Sequence[RR], Sequence[RR]] = (answer, authority, additional)
    while True:
        nar = len(sections[2]) + (1 if q.edns else 0)
        head = _HDR.pack(q.id, flags, 1, len(sections[0]), len(sections[1]), nar) + q.data[12 : q.qend]
        p = Packer(head, q.qname)
        for i, section in enumerate(sections):
            t = ttls[i] if ttls is not None else None
            for j, rr in enumerate(section):
                p.rr(rr, t[j] if t is not None else rr.ttl)
        if q.edns:
            p.buf += opt_record(q.do, ext, ede_option(*ede) if ede else b"")
        if len(p.buf) <= max_size:
            return bytes(p.buf), p.ttl_offsets
        if not sections[2]:
            return truncated_reply(q, rcode), []
        sections = (answer, authority, ())  # the additional section may go without setting TC (RFC 2181 §9)


def truncated_reply(q: Query, rcode: int = NOERROR) -> bytes:
    """TC=1 and no records: "ask again over TCP"."""
    flags = 0x8000 | (q.flags & 0x0110) | 0x0080 | 0x0200 | (rcode & 0xF)
    out = _HDR.pack(q.id, flags, 1, 0, 0, 1 if q.edns else 0) + q.data[12 : q.qend]
    if q.edns:
        out += opt_record(q.do, rcode >> 4)
    return out


def age_ttls(msg: bytes | bytearray, offsets: list[tuple[int, int]], elapsed: int, *, base: int = 0) -> bytes:
    """A copy of ``msg`` with every TTL at ``offsets`` lowered by ``elapsed`` seconds (never below 0).

    ``base`` is subtracted from every offset (cached copies are stored without their 2-byte ID).
    """
    buf = bytearray(msg)
    pack = _U32.pack_into
    for off, ttl in offsets:
        t = ttl - elapsed
        pack(buf, off - base, t if t > 0 else 0)
    return bytes(buf)


# ---------------------------------------------------------------- SVCB / HTTPS (RFC 9460)

SVC_MANDATORY, SVC_ALPN, SVC_NO_DEFAULT_ALPN, SVC_ECH = 0, 1, 2, 5


def parse_svcb(rdata: bytes) -> tuple[int, bytes, list[tuple[int, bytes]]]:
    """SVCB/HTTPS rdata → (priority, target wire name, [(key, value), ...])."""
    if len(rdata) < 3:
        raise WireError("SVCB rdata too short")
    prio = _U16.unpack_from(rdata, 0)[0]
    target, off = read_name(rdata, 2, allow_pointers=False)
    params = []
    last = -1
    while off < len(rdata):
        if off + 4 > len(rdata):
            raise WireError("SVCB parameter truncated")
        key, ln = struct.unpack_from(">HH", rdata, off)
        off += 4
        if off + ln > len(rdata):
            raise WireError("SVCB parameter value truncated")
        if key <= last:
            raise WireError("SVCB keys out of order")
        last = key
        params.append((key, rdata[off : off + ln]))
        off += ln
    return prio, target, params


def pack_svcb(prio: int, target: bytes, params: list[tuple[int, bytes]]) -> bytes:
    return _U16.pack(prio) + target + b"".join(_U16.pack(k) + _U16.pack(len(v)) + v for k, v in params)


def strip_svcb(rdata: bytes, *, ech: bool = True, h3: bool = False) -> bytes:
    """SVCB/HTTPS rdata without the ``ech`` parameter (ECH hides the real SNI from the filter) and, when
    ``h3``, without HTTP/3 in ``alpn`` (QUIC cannot be inspected by the proxy). ``mandatory`` is kept
    consistent. Malformed rdata is returned unchanged (the client will ignore it too)."""
    try:
        prio, target, params = parse_svcb(rdata)
    except WireError:
        return rdata
    if prio == 0 or not params:
        return rdata
    drop: set[int] = set()
    out: list[tuple[int, bytes]] = []
    for key, val in params:
        if key == SVC_ECH and ech:
            drop.add(key)
            continue
        if key == SVC_ALPN and h3:
            ids, o = [], 0
            while o < len(val):
                ln = val[o]
                ids.append(val[o + 1 : o + 1 + ln])
                o += 1 + ln
            kept = [i for i in ids if not (i == b"h3" or i.startswith(b"h3-"))]
            if len(kept) != len(ids):
                if not kept:
                    drop.add(key)
                    continue
                val = b"".join(bytes([len(i)]) + i for i in kept)
        out.append((key, val))
    if SVC_ALPN in drop:  # no alpn left: "no-default-alpn" would leave no protocol at all
        out = [(k, v) for k, v in out if k != SVC_NO_DEFAULT_ALPN]
        drop.add(SVC_NO_DEFAULT_ALPN)
    if not drop:
        return rdata
    res = []
    for key, val in out:
        if key == SVC_MANDATORY:
            keys = [_U16.unpack_from(val, i)[0] for i in range(0, len(val) - 1, 2)]
            keys = [k for k in keys if k not in drop]
            if not keys:
                continue
            val = b"".join(_U16.pack(k) for k in keys)
        res.append((key, val))
    return pack_svcb(prio, target, res)
