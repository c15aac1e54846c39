"""Compact, suffix-aware domain matcher.

Names are stored reversed with a trailing dot (``www.example.com`` → ``moc.elpmaxe.www.``) in one
MARISA trie, so one walk (``Trie.iter_prefixes_with_ids``) yields every stored name that is the query or
one of its parent domains, cut at label boundaries; a query with no rule costs one C call. Per unique
name, one packed 7-byte record indexed by the trie's key id holds the first rule (list index, source
line, flags); names listed by several lists keep the rest in a small overflow dict.

Speed: a lookup is one trie walk plus as little Python as possible around it, because here a Python
bytecode costs about as much as a cache miss. Measured with ``bench/bench_domains.py`` (1M names,
300k queries, one process, a busy 2-vCPU host, same bench before and after): listed names 193k → 266k
lookups/s, names with no rule ~680k/s (unchanged: the same single walk), the 30/70 mix 320k → 435k/s.
The bare trie walk over a listed name's key costs ~1.9-2.4 µs here, so 500k/s on that mix (2 µs per
lookup) is out of reach while every hit is confirmed by the trie. What paid:

* one record read with one ``struct`` call instead of three arrays (list, line, flags): one memory
  access per matching name instead of three (~0.3 µs per match), and no more bytes;
* ``DomainMatch`` built with ``tuple.__new__`` (0.4 µs instead of 0.7) and its name sliced from the
  query (the stored name is a suffix of it) instead of decoded from the trie key.

What did not pay (measured, not kept):

* a suffix filter in front of the trie — a bitmap over crc32 of every stored name's last two labels
  (one probe per query, 2 bytes/name, but public suffixes such as ``com.br`` and ``co.uk`` let 22% of
  unlisted names through), or of every label-boundary suffix (one probe per label, 4 bytes/name).
  Hashing in Python costs about what the trie walk it saves costs (~1 µs), adds that to every listed
  name, and a hit still needs the trie to confirm it (hash collisions must never match);
* a hash index mapping suffixes to key ids: confirming the key (``Trie.key_id`` or ``restore_key``,
  ~1.1 µs) plus hashing each label costs as much as the whole prefix walk (~2 µs);
* ``Trie.prefixes`` (~15% faster than the iterator on hits) plus a second call for the ids; trie
  cache sizes (within noise); ``num_tries=2`` (6.5 instead of 9 bytes/name, ~15% slower); the trie and
  records copied into transparent huge pages (~5%, within noise, and no longer shared between
  processes).

Memory: ~9 bytes/name for the trie (``num_tries=1``, which measured ~25% faster than the default for
~4 bytes more) + 7 bytes of records: 16.3 bytes/name as served. A Python ``set`` of the same names costs
~80-100 bytes/name. Saved snapshots are memory-mapped, so loading 1M names takes milliseconds.

On disk: ``domains.marisa`` (the trie), ``domains.records`` (the packed records, nothing else: no
header, 7 bytes per trie key id) and ``domains.overflow.json``. Serving needs only the standard
library's ``mmap`` and ``struct`` to read the records: numpy (~15 MB of RSS) is imported by
:meth:`DomainMatcher.build` alone, where it scatters the records in C.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from array import array
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

import marisa_trie

from filterproxy.lists.parsers import ALLOW, EXACT, SUBS

if TYPE_CHECKING:
    from typing_extensions import Buffer

_NONE: list[DomainMatch] = []  # shared empty result (callers never mutate results)
_OVERFLOW = 0x80  # flag bit in a record: more records in the overflow dict
# One 7-byte record per name, indexed by trie key id: list index, source line, flags (packed, little-endian).
_RECORD = struct.Struct("<HIB")
_RECORD_SIZE = _RECORD.size  # 7
_UNPACK = _RECORD.unpack_from  # one C call → (list, line, flags) from a record's 7 bytes
RECORDS_FILE = "domains.records"


class DomainMatch(NamedTuple):
    """One stored rule that matches a query name."""

    list_idx: int
    line: int
    flags: int  # EXACT / SUBS / ALLOW bits of the rule
    name: str  # the stored name that matched (the query or a parent)
    exact: bool  # True when the stored name is the query itself


_new_match = tuple.__new__  # DomainMatch without its Python-level __new__: ~2x cheaper per match


def _key(name: str) -> str:
    return name[::-1] + "."


class DomainMatcher:
    """Immutable name → records index; build with :meth:`build`, persist with :meth:`save`/:meth:`load`."""

    def __init__(self, trie: marisa_trie.Trie, records: Buffer, overflow: dict[int, list[tuple[int, int, int]]]):
        """``records``: any bytes-like object (bytes, read-only mmap, uint8 array) of ``len(trie)`` packed
        7-byte records in key id order."""
        self._trie = trie
        self._prefixes = trie.prefixes
        self._iter = trie.iter_prefixes_with_ids
        self._buf = memoryview(records).cast("B")  # for _UNPACK(buf, 7 * key id); keeps ``records`` alive
        if self._buf.nbytes != _RECORD_SIZE * len(trie):
            raise ValueError(
                f"{self._buf.nbytes} bytes of domain records for {len(trie)} names "
                f"(expected {_RECORD_SIZE * len(trie)})"
            )
        self._overflow = overflow

    @classmethod
    def build(cls, records: Iterable[tuple[str, int, int, int]]) -> DomainMatcher:
        """Build from (canonical name, list index, line, flags) records."""
        import numpy as np  # only here: scattering 1M records in C; serving a saved index needs no numpy

        keys: list[str] = []
        cols = {"list": array("H"), "line": array("I"), "flags": array("B")}  # compact while building
        li, ln, fl = cols.values()
        for name, list_idx, line, flags in records:
            keys.append(_key(name))
            li.append(list_idx)
            ln.append(line)
            fl.append(flags)
        trie = marisa_trie.Trie(keys, num_tries=1)
        first = np.full(len(trie), -1, dtype=np.int64)  # each name's first record (index into cols)
        overflow: dict[int, list[tuple[int, int, int]]] = {}
        key_id = trie.key_id
        for i, k in enumerate(keys):
            kid = key_id(k)
            if first[kid] < 0:
                first[kid] = i
            else:
                overflow.setdefault(kid, []).append((li[i], ln[i], fl[i]))
        dtype = np.dtype([("list", "<u2"), ("line", "<u4"), ("flags", "u1")])  # the layout of _RECORD
        assert dtype.itemsize == _RECORD_SIZE
        rec = np.empty(len(trie), dtype=dtype)
        for field, col in cols.items():
            rec[field] = np.frombuffer(col, dtype=dtype[field])[first]
        rec["flags"][list(overflow)] |= _OVERFLOW
        # .data is memoryview(array) (numpy's stubs type the buffer protocol only for Python >= 3.12)
        return cls(trie, rec.view(np.uint8).data, overflow)

    def lookup(self, name: str) -> list[DomainMatch]:
        """Every rule whose name is ``name`` or a parent of it and whose semantics cover ``name``.

        ``name`` must be canonical (see :func:`filterproxy.names.normalize_host`). Longest name first.
        """
        q = name[::-1] + "."
        qlen = len(q)
        out = _NONE
        for h, kid in self._iter(q):  # stored names that are the query or a parent, shortest first
            li, ln, fl = _UNPACK(self._buf, 7 * kid)
            n = len(h)
            exact = n == qlen
            need = EXACT if exact else SUBS
            if fl & _OVERFLOW:  # rare: the name is in several lists
                group = self._group(kid, li, ln, fl & 0x7F, need, name[qlen - n :], exact)
                if group:
                    out = group + out
            elif fl & need:
                m = _new_match(DomainMatch, (li, ln, fl, name[qlen - n :], exact))
                if out is _NONE:
                    out = [m]
                else:
                    out.insert(0, m)  # the most specific rule first
        return out

    def _group(self, kid: int, li: int, ln: int, fl: int, need: int, stored: str, exact: bool) -> list[DomainMatch]:
        """Matches of one stored name listed several times: its first record, then the overflow ones."""
        group = [DomainMatch(li, ln, fl, stored, exact)] if fl & need else []
        group.extend(
            DomainMatch(o_li, o_ln, o_fl, stored, exact) for o_li, o_ln, o_fl in self._overflow[kid] if o_fl & need
        )
        return group

    def contains_any(self, name: str) -> bool:
        """Fast pre-check: does any stored name equal ``name`` or a parent of it (ignoring semantics)?"""
        return bool(self._prefixes(name[::-1] + "."))

    def __len__(self) -> int:
        return len(self._trie)

    def names(self) -> Iterable[str]:
        """Every stored name (for exports)."""
        for k in self._trie.iterkeys():
            yield k[-2::-1]

    def records(self) -> Iterable[tuple[str, int, int, int]]:
        """Every (name, list index, line, flags) record, for exports."""
        for k, kid in self._trie.iteritems():
            name = k[-2::-1]
            li, ln, fl = _UNPACK(self._buf, 7 * kid)
            yield name, li, ln, fl & 0x7F
            if fl & _OVERFLOW:
                for li, ln, f in self._overflow[kid]:
                    yield name, li, ln, f

    @property
    def nbytes(self) -> int:
        """Approximate memory of the index (trie + 7-byte records + overflow), for benchmarks and metrics."""
        return len(self._trie.tobytes()) + self._buf.nbytes + 64 * sum(len(v) for v in self._overflow.values())

    def save(self, directory: str) -> None:
        """Write the index into ``directory``: ``domains.marisa`` (trie), ``domains.records`` (the raw
        packed 7-byte records in key id order, no header) and ``domains.overflow.json``."""
        os.makedirs(directory, exist_ok=True)
        self._trie.save(os.path.join(directory, "domains.marisa"))
        with open(os.path.join(directory, RECORDS_FILE), "wb") as f:
            f.write(self._buf)
        with open(os.path.join(directory, "domains.overflow.json"), "w") as f:
            json.dump({str(k): v for k, v in self._overflow.items()}, f)

    @classmethod
    def load(cls, directory: str) -> DomainMatcher:
        """Memory-map a saved index (trie and ``domains.records``, read-only): ready in milliseconds
        whatever its size, and its pages are shared between processes.

        Only this format (raw packed records, no header); the snapshot's format number keeps older
        folders from reaching here (see :data:`filterproxy.lists.store.SNAPSHOT_FORMAT`). A records file
        whose size is not 7 bytes × the trie's names raises ValueError naming the file.
        """
        trie = marisa_trie.Trie()
        trie.mmap(os.path.join(directory, "domains.marisa"))
        path = os.path.join(directory, RECORDS_FILE)
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size != _RECORD_SIZE * len(trie):
                raise ValueError(
                    f"{path}: {size} bytes of domain records, expected {_RECORD_SIZE * len(trie)} "
                    f"({_RECORD_SIZE} bytes for each of {len(trie)} names)"
                )
            # an empty file cannot be mapped (no names: nothing to read anyway); the map outlives the fd
            records = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        with open(os.path.join(directory, "domains.overflow.json")) as f:
            overflow = {int(k): [tuple(x) for x in v] for k, v in json.load(f).items()}
        return cls(trie, records, overflow)


def allow_only(flags: int) -> bool:
    """True when a record is an exception rule."""
    return bool(flags & ALLOW)
