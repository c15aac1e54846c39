"""Batched UDP I/O for the DNS hot path: ``recvmmsg(2)`` / ``sendmmsg(2)`` through ctypes (Linux).

Python's ``socket`` module has no batched calls, and on the UDP hot path the two syscalls per query
(``recvfrom`` + ``sendto``) are ~80 % of the thread's time (py-spy, cache-hit traffic). One
``recvmmsg`` returns every datagram already queued (up to :data:`BATCH`, waiting only for the first:
``MSG_WAITFORONE``, within the socket's ``SO_RCVTIMEO``), and one ``sendmmsg`` sends the replies of a
batch, each to the address its query came from (the reply's ``msg_name`` points at the query's).

All buffers are allocated once; the hot path touches them through memoryviews and ``struct``
(``ctypes`` attribute access costs ~0.3 µs a field). Nothing here parses DNS.

Used by :class:`filterproxy.dns.server.DnsServer` when :func:`available` (glibc or musl with the two
calls); ``FILTERPROXY_DNS_MMSG=0`` in the environment keeps the plain ``recvfrom``/``sendto`` loop.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import struct

BATCH = 64  # datagrams per call
SLOT = 4096  # bytes per datagram buffer (queries larger than this are truncated, as recvfrom(4096) does)
NAME = 32  # bytes per address buffer (sockaddr_in6 is 28)
MSG_WAITFORONE = 0x10000


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.c_void_p),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ctypes.c_uint)]


_libc = None


def _load():
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            rec, snd = lib.recvmmsg, lib.sendmmsg
        except (OSError, AttributeError):
            _libc = False
            return _libc
        rec.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
        rec.restype = ctypes.c_int
        snd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
        snd.restype = ctypes.c_int
        _libc = (rec, snd)
    return _libc


def available() -> bool:
    """True when batched I/O can be used (Linux libc with recvmmsg/sendmmsg, not disabled by env)."""
    if os.environ.get("FILTERPROXY_DNS_MMSG", "1").strip().lower() in ("0", "no", "off", "false"):
        return False
    return bool(_load())


class BatchSocket:
    """Batched receive/send on one UDP socket (see the module docstring).

    After :meth:`recv` returned ``n``: datagram ``i`` is ``rbuf[i * SLOT: i * SLOT + length(i)]`` and its
    source address is ``names[i * NAME: ...]``; :meth:`addr` builds the ``(host, port, ...)`` tuple the
    socket module uses (slow path only). Replies are written with :meth:`put` and sent by :meth:`flush`.
    """

    def __init__(self, sock: socket.socket):
        rec_snd = _load()
        if not rec_snd:
            raise OSError("recvmmsg/sendmmsg are not available")
        self._recvmmsg, self._sendmmsg = rec_snd
        self.sock = sock
        self.fd = sock.fileno()
        self.family = sock.family
        self._rbuf = ctypes.create_string_buffer(BATCH * SLOT)
        self._sbuf = ctypes.create_string_buffer(BATCH * SLOT)
        self._names = ctypes.create_string_buffer(BATCH * NAME)
        self._riov = (_IoVec * BATCH)()
        self._siov = (_IoVec * BATCH)()
        self._rmsg = (_MMsgHdr * BATCH)()
        self._smsg = (_MMsgHdr * BATCH)()
        iov_size = ctypes.sizeof(_IoVec)
        self.namelen = 28 if self.family == socket.AF_INET6 else 16
        for i in range(BATCH):
            self._riov[i].base = ctypes.addressof(self._rbuf) + i * SLOT
            self._riov[i].len = SLOT
            self._siov[i].base = ctypes.addressof(self._sbuf) + i * SLOT
            r = self._rmsg[i].hdr
            r.name = ctypes.addressof(self._names) + i * NAME
            r.namelen = NAME
            r.iov = ctypes.addressof(self._riov) + i * iov_size
            r.iovlen = 1
            s = self._smsg[i].hdr
            s.namelen = self.namelen
            s.iov = ctypes.addressof(self._siov) + i * iov_size
            s.iovlen = 1
        self.msize = ctypes.sizeof(_MMsgHdr)
        self.len_off = _MMsgHdr.len.offset
        self.rmv = memoryview(self._rmsg).cast("B")
        self.smv = memoryview(self._smsg).cast("B")
        self.siv = memoryview(self._siov).cast("B")
        self.rbuf = memoryview(self._rbuf).cast("B")
        self.sbuf = memoryview(self._sbuf).cast("B")
        self.names = memoryview(self._names).cast("B")
        self._raddr = ctypes.addressof(self._rmsg)
        self._saddr = ctypes.addressof(self._smsg)
        self._naddr = ctypes.addressof(self._names)
        self._iov_len_off = _IoVec.len.offset
        self._u32 = struct.Struct("I")
        self._size = struct.Struct("N")
        self._ptr = struct.Struct("P")
        self._iov_size = self.iov_size = iov_size
        self.iov_len_off = _IoVec.len.offset
        self.name_base = ctypes.addressof(self._names)  # address of datagram i's source: name_base + i * NAME
        self.pending = 0  # replies put since the last flush
        # The same buffers as arrays of native words, for the hot loop: an index is ~40 ns where a
        # struct unpack_from/pack_into is ~110 ns, and the loop makes four per cached answer.
        #   lens[i * len_step + len_at]      msg_len of datagram i (bytes received)
        #   ipv4[i * NAME // 4 + 1]          its IPv4 source address (sockaddr_in.sin_addr), a dict key
        #   iov_lens[j * iov_step + iov_at]  iov_len of reply j
        #   msg_names[j * msg_step]          msg_name of reply j (its destination: a source address)
        #   rids[i * SLOT // 2], sids[...]   the 2-byte ID at the start of datagram i / reply j
        w, n, p = 4, self._size.size, self._ptr.size
        if self.msize % w or self.len_off % w or iov_size % n or self.iov_len_off % n or self.msize % p:
            raise OSError("unexpected mmsghdr/iovec layout")  # the server falls back to its plain loop
        self.lens, self.len_step, self.len_at = self.rmv.cast("I"), self.msize // w, self.len_off // w
        self.ipv4 = self.names.cast("I")
        # typeshed lists no overload for "N" (size_t), a native format memoryview.cast accepts
        self.iov_lens = self.siv.cast("N")  # type: ignore[call-overload]
        self.iov_step, self.iov_at = iov_size // n, self.iov_len_off // n
        self.msg_names, self.msg_step = self.smv.cast("P"), self.msize // p
        self.rids, self.sids = self.rbuf.cast("H"), self.sbuf.cast("H")

    # ---------------------------------------------------------------- receiving
    def recv(self) -> int:
        """Datagrams received (blocking for the first, up to SO_RCVTIMEO): 0 on timeout or signal."""
        # each filled msg_namelen now holds the length of the address the kernel wrote: always the same for
        # the socket's family (16, or 28 for AF_INET6 and its v4-mapped addresses), so no reset is needed
        n = self._recvmmsg(self.fd, self._raddr, BATCH, MSG_WAITFORONE, None)
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return 0
            raise OSError(err, os.strerror(err))
        return n

    def length(self, i: int) -> int:
        return self._u32.unpack_from(self.rmv, i * self.msize + self.len_off)[0]

    def data(self, i: int) -> bytes:
        off = i * SLOT
        return bytes(self.rbuf[off : off + self.length(i)])

    def addr_key(self, i: int) -> bytes:
        """The source address bytes (no port): a dict key for the client table."""
        off = i * NAME
        if self.family == socket.AF_INET6:
            return bytes(self.names[off + 8 : off + 24])
        return bytes(self.names[off + 4 : off + 8])

    def ip(self, i: int) -> str:
        off = i * NAME
        if self.family == socket.AF_INET6:
            return socket.inet_ntop(socket.AF_INET6, bytes(self.names[off + 8 : off + 24]))
        return socket.inet_ntop(socket.AF_INET, bytes(self.names[off + 4 : off + 8]))

    def addr(self, i: int, ip: str | None = None) -> tuple:
        """The source address as ``socket.recvfrom`` returns it (``ip``: its text form, when known)."""
        off = i * NAME
        nm = self.names
        port = nm[off + 2] << 8 | nm[off + 3]
        if self.family == socket.AF_INET6:
            flow = int.from_bytes(nm[off + 4 : off + 8], "big")
            scope = self._u32.unpack_from(nm, off + 24)[0]
            return ip or self.ip(i), port, flow, scope
        return ip or self.ip(i), port

    # ---------------------------------------------------------------- sending
    def put(self, i: int, qid: bytes, body: bytes) -> bool:
        """Queue ``qid + body`` as the reply to datagram ``i``; False when it does not fit a slot."""
        size = 2 + len(body)
        if size > SLOT or self.pending >= BATCH:
            return False
        j = self.pending
        off = j * SLOT
        sb = self.sbuf
        sb[off : off + 2] = qid
        sb[off + 2 : off + size] = body
        self._size.pack_into(self.siv, j * self._iov_size + self._iov_len_off, size)
        self._ptr.pack_into(self.smv, j * self.msize, self._naddr + i * NAME)
        self.pending = j + 1
        return True

    def flush(self) -> None:
        """Send the queued replies. A reply the kernel refuses (full buffer, unreachable client) is dropped,
        as UDP may; the others still go."""
        total, done = self.pending, 0
        self.pending = 0
        while done < total:
            k = self._sendmmsg(self.fd, self._saddr + done * self.msize, total - done, 0)
            if k > 0:
                done += k
                continue
            err = ctypes.get_errno() if k < 0 else 0
            if err == errno.EINTR:
                continue
            if err in (errno.EAGAIN, errno.EWOULDBLOCK, 0):
                break  # send buffer full: UDP may drop
            done += 1  # this destination fails (unreachable, filtered): skip it, send the others
