"""The query log's records and their ids: :class:`Info` (one verdict's logged fields), :class:`Ids` (values →
32-bit ids in generations), client address anonymisation. Used by the writer (:mod:`filterproxy.querylog`)
and by the DNS hot loops, which queue ids, not objects (docs/decisions/querylog-format.md).
"""

from __future__ import annotations

import ipaddress
import threading
from array import array
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from filterproxy.verdict import Verdict

_GEN_BITS = 24  # an id: (generation & 0xFF) << 24 | index in that generation's table
_INDEX = (1 << _GEN_BITS) - 1


Fields = tuple  # the 8 logged fields of a verdict (see Info)


class Info:
    """The logged part of one verdict: (group, proto, name, qtype or method, action, reason, list, category)."""

    __slots__ = ("fields",)

    def __init__(self, *fields: str | None) -> None:
        if len(fields) != 8:
            raise ValueError(f"a query-log record has 8 fields, got {len(fields)}")
        self.fields = fields

    def __iter__(self) -> Iterator[str | None]:
        return iter(self.fields)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Info):
            return self.fields == other.fields
        if isinstance(other, tuple):
            return self.fields == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.fields)

    def __repr__(self) -> str:
        return f"Info{self.fields!r}"


class Ids:
    """Values (client networks, verdicts' fields) ↔ 32-bit ids, per process; ids are never 0.

    An id is ``(generation & 0xFF) << 24 | index``. A generation holds at most ``cap`` values; the next value
    starts a new one, and only the current and the previous generation resolve (memory stays bounded).
    ``on_roll`` then runs (the DNS service drops its packed replies and client states, which hold ids), so
    no id older than the previous generation is still handed out (docs/decisions/querylog-format.md).
    """

    __slots__ = ("cap", "serial", "ids", "cur", "tables", "lock", "on_roll")

    def __init__(self, cap: int) -> None:
        if not 1 <= cap <= _INDEX + 1:
            raise ValueError(f"an id table holds 1 to {_INDEX + 1} values, not {cap}")
        self.cap = cap
        self.serial = 1
        self.cur: list = []
        self.ids: dict = {}  # value → id, current generation
        self.tables: dict[int, tuple[int, list]] = {1: (1, self.cur)}  # generation byte → (serial, values)
        self.lock = threading.Lock()
        self.on_roll: list[Callable[[], None]] = []

    def get(self, value: Any) -> int:
        """The id of ``value`` (a new one the first time)."""
        i = self.ids.get(value)
        if i is not None:
            return i
        rolled = False
        with self.lock:
            i = self.ids.get(value)
            if i is None:
                if len(self.cur) >= self.cap:
                    self._roll()
                    rolled = True
                i = (self.serial & 0xFF) << _GEN_BITS | len(self.cur)
                self.cur.append(value)
                self.ids[value] = i
        if rolled:
            for hook in self.on_roll:
                hook()
        return i

    def _roll(self) -> None:
        self.serial += 1
        if not self.serial & 0xFF:  # generation byte 0 never: id 0 means "no record"
            self.serial += 1
        self.tables.pop((self.serial - 2) & 0xFF, None)
        self.tables.pop((self.serial - 3) & 0xFF, None)  # when byte 0 was skipped
        self.cur = []
        self.tables[self.serial & 0xFF] = (self.serial, self.cur)
        self.ids = {}

    def value(self, i: int) -> Any:
        """The value of id ``i``; None when its generation is gone."""
        t = self.tables.get(i >> _GEN_BITS)
        if t is None or (i & _INDEX) >= len(t[1]):
            return None
        return t[1][i & _INDEX]


class _Buffer:
    """Records queued by one producer: times (float64) and ids (``client id << 32 | verdict id``), appended in
    that order, so the writer takes ``n = len(ids)`` whole records from the head (each array op is atomic
    under the GIL; a record half-appended at the tail waits for the next batch)."""

    __slots__ = ("times", "ids", "wall")

    def __init__(self, wall: bool) -> None:
        self.times = array("d")
        self.ids = array("Q")
        self.wall = wall  # times are Unix times (else monotonic seconds)


def anonymise_ip(address: str) -> str:
    """IPv4 → ``a.b.c.0/24``, IPv6 → ``x:y:z::/48`` (IPv4-mapped IPv6 as IPv4); ``"invalid"`` if unparsable."""
    text = str(address).strip()
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    text = text.split("%", 1)[0]  # scope id of link-local addresses
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return "invalid"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def info(group: str, proto: str, name: str, kind: str, action: Any, v: Verdict | None) -> Info:
    """The logged part of one decision (``kind``: the DNS query type or the HTTP method)."""
    if v is None:
        return Info(group, proto, name, kind, _text(action), None, None, None)
    return Info(group, proto, name, kind, _text(action), v.reason.value, v.list_id, v.category)


def _tail(fields: tuple) -> str:
    """A verdict's fields as the tab-separated tail of its ``D`` line (None: empty)."""
    return "\t".join("" if v is None else _field(_text(v)) for v in fields)


def _text(value: Any) -> str:
    if hasattr(value, "value") and isinstance(value.value, str):  # enums (Action, Reason)
        value = value.value
    return str(value)


def _field(text: str) -> str:
    """A value as one field of a line: no tabs, no line breaks (names are canonical; this is for the rest)."""
    if "\t" in text or "\n" in text or "\r" in text:
        return text.replace("\t", " ").replace("\n", " ").replace("\r", " ")
    return text


def _opt(value: Any) -> str | None:
    return None if value is None else _text(value)
