"""What the soak's clients (perf/soak_clients.py) say on a socket: a full-duplex pump that
writes a payload while it reads the answer into a sink that checks it (every byte of an echo
in order, or whole HTTP responses), the probe of one message that the idle floods and the
fd-limit burst send on many sockets at once, and the small socket helpers. Loopback only.
"""

from __future__ import annotations

import random
import select
import selectors
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

HOST = "127.0.0.1"
#: SO_LINGER on with 0 s: close() sends a reset and drops what is unsent.
LINGER0 = struct.pack("ii", 1, 0)
#: Longest one exchange (a message and its echo, a batch of requests) may take before it
#: counts as stalled: the service stopped answering.
OP_TIMEOUT = 20.0
CONNECT_TIMEOUT = 5.0
MAX_MESSAGE = 256 * 1024
SEND_CHUNK = 256 * 1024
READ_CHUNK = 256 * 1024
#: A slow reader takes this much per read, one read per ``read_gap`` seconds.
SLOW_CHUNK = 4096
REQUEST = b"GET / HTTP/1.1\r\nHost: soak\r\n\r\n"
BODY = b"Hello, World!"


def ready(sock: socket.socket, read: bool, write: bool, timeout: float) -> tuple[bool, bool]:
    """Wait up to ``timeout`` s for ``sock`` to be readable (or ended) or writable (poll:
    this process holds more fds than select() takes)."""
    p = select.poll()
    mask = (select.POLLIN if read else 0) | (select.POLLOUT if write else 0)
    if mask:
        p.register(sock, mask)
    events = p.poll(max(timeout, 0.0) * 1000)
    ev = events[0][1] if events else 0
    ended = bool(ev & (select.POLLERR | select.POLLHUP))
    return bool(ev & select.POLLIN) or (read and ended), bool(ev & select.POLLOUT) or (
        write and ended
    )


def connect(port: int, timeout: float = CONNECT_TIMEOUT) -> socket.socket | None:
    """A connection to 127.0.0.1:``port``, or None when it cannot be made."""
    try:
        return socket.create_connection((HOST, port), timeout=timeout)
    except OSError:
        return None


def reset_close(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0): what is in flight is dropped."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
    except OSError:
        pass
    sock.close()


def message_size(rng: random.Random) -> int:
    """1 B .. 256 KiB, log-uniform (as many small messages as large ones)."""
    return min(MAX_MESSAGE, int(2 ** rng.uniform(0, 18)))


def server_closed(sock: socket.socket) -> bool:
    """An EOF (or a reset) already waits: the server closed the connection while it had no
    request of ours (the keep-alive race a careful client checks before it sends)."""
    if not ready(sock, True, False, 0)[0]:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def expect_eof(sock: socket.socket, timeout: float = OP_TIMEOUT) -> tuple[str, int]:
    """Wait for the server's EOF: ``("eof", 0)``, ``("extra", n)`` for n bytes that came
    instead, ``("reset", 0)`` or ``("no-eof", 0)`` after ``timeout`` s."""
    sock.setblocking(False)
    deadline = time.monotonic() + timeout
    extra = 0
    while (left := deadline - time.monotonic()) > 0:
        if not ready(sock, True, False, left)[0]:
            continue
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            continue
        except OSError:
            return ("reset", extra)
        if not data:
            return ("extra", extra) if extra else ("eof", 0)
        extra += len(data)
    return ("no-eof", extra)


class Sink(Protocol):
    def want(self) -> int:
        """How many more bytes to read at most (0: the answer is complete)."""
        ...

    def feed(self, data: bytes) -> bool:
        """Take bytes read; False when they are wrong (the connection is then dropped)."""
        ...


class StreamSink:
    """The echo of ``payload``: every byte, in order."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.verified = 0
        self.corrupt = 0

    def want(self) -> int:
        return len(self.payload) - self.verified

    def feed(self, data: bytes) -> bool:
        v = self.verified
        expected = self.payload[v : v + len(data)]
        if expected == data:
            self.verified = v + len(data)
            return True
        self.corrupt += sum(a != b for a, b in zip(expected, data)) + len(data) - len(expected)
        return False


class HttpSink:
    """``expected`` whole responses (head, Content-Length body), each ``200`` with
    ``Hello, World!``; notes a ``Connection: close``."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.buf = bytearray()
        self.answered = 0
        self.bad = 0
        self.closing = False
        self.first_bad = b""

    def want(self) -> int:
        return 0 if self.answered >= self.expected else READ_CHUNK

    def feed(self, data: bytes) -> bool:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = bytes(self.buf[:end]).lower()
            _, found, rest = head.partition(b"\r\ncontent-length:")
            length = int(rest.split(b"\r\n")[0]) if found else -1
            if length < 0 or not head.startswith(b"http/1.1 200 "):
                return self._bad(head)
            if len(self.buf) < end + 4 + length:
                return True
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            if body != BODY:
                return self._bad(head + b" / " + body[:80])
            self.answered += 1
            self.closing = self.closing or b"\r\nconnection: close" in head
        return True

    def _bad(self, what: bytes) -> bool:
        self.bad += 1
        self.first_bad = self.first_bad or what[:200]
        return False


@dataclass
class Pumped:
    """What a ``pump`` did: bytes written, and why it stopped early ("" if it did not:
    "eof", "reset", "stall" or "corrupt")."""

    sent: int = 0
    ended: str = ""


@dataclass
class PumpOptions:
    """``half_close``: shut the write side once everything is written; ``abort_at``: stop
    (for a reset) once that many bytes are written; ``read_gap``: until ``slow_until``
    (monotonic), read ``SLOW_CHUNK`` bytes at most once per ``read_gap`` seconds."""

    half_close: bool = False
    abort_at: int | None = None
    read_gap: float = 0.0
    slow_until: float = 0.0


PLAIN = PumpOptions()


def pump(sock: socket.socket, payload: bytes, sink: Sink, opt: PumpOptions = PLAIN) -> Pumped:
    """Write ``payload`` while reading into ``sink`` until it wants no more (full duplex: a
    large message never waits on its own echo), within ``OP_TIMEOUT`` seconds."""
    sock.setblocking(False)
    out = Pumped()
    view = memoryview(payload)
    stop_at = len(payload) if opt.abort_at is None else min(opt.abort_at, len(payload))
    hard = time.monotonic() + OP_TIMEOUT
    next_read = 0.0
    shut = False
    while True:
        if opt.abort_at is not None and out.sent >= stop_at:
            return out
        if opt.half_close and out.sent >= stop_at and not shut:
            shut = _shutdown_write(sock)
        want = sink.want()
        if want <= 0 and out.sent >= stop_at:
            return out
        now = time.monotonic()
        if now >= hard:
            out.ended = "stall"
            return out
        slow = opt.read_gap > 0 and now < opt.slow_until
        can_read = want > 0 and (not slow or now >= next_read)
        wait = hard - now if can_read or not slow else min(hard, next_read) - now
        r, w = ready(sock, can_read, out.sent < stop_at, wait)
        if w:
            try:
                out.sent += sock.send(view[out.sent : min(stop_at, out.sent + SEND_CHUNK)])
            except BlockingIOError:
                pass
            except OSError:
                out.ended = "reset"
                return out
        if r:
            out.ended = _read_into(sock, sink, min(want, SLOW_CHUNK if slow else READ_CHUNK))
            if out.ended == "again":
                out.ended = ""
            elif out.ended:
                return out
            elif slow:
                next_read = time.monotonic() + opt.read_gap


def _shutdown_write(sock: socket.socket) -> bool:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    return True


def _read_into(sock: socket.socket, sink: Sink, n: int) -> str:
    """One read of up to ``n`` bytes into ``sink``: "" (fed), "again", "eof", "reset" or
    "corrupt"."""
    try:
        data = sock.recv(n)
    except BlockingIOError:
        return "again"
    except OSError:
        return "reset"
    if not data:
        return "eof"
    return "" if sink.feed(data) else "corrupt"


class Probe:
    """One message sent on each of many sockets, and how to judge what comes back: an
    echo's (the same bytes) or http's (one ``200`` response)."""

    def __init__(self, http: bool) -> None:
        self.http = http

    def message(self, i: int) -> bytes:
        return REQUEST if self.http else b"probe %08d\n" % i

    def judge(self, i: int, got: bytes) -> str | None:
        """ "served", "bad", or None while more is to come."""
        if self.http:
            sink = HttpSink(1)
            if not sink.feed(got):
                return "bad"
            return "served" if sink.answered == 1 else None
        want = self.message(i)
        if len(got) < len(want):
            return None if want.startswith(got) else "bad"
        return "served" if got == want else "bad"


def probe_all(socks: list[socket.socket], probe: Probe, timeout: float) -> Counter[str]:
    """Send ``probe``'s message on every socket, then read each until its answer is judged
    or the connection ends without one (refused: the server closed it at accept). Counts
    ``served``, ``refused``, ``bad`` and ``unresolved`` (no answer nor end in time)."""
    out: Counter[str] = Counter()
    sel = selectors.DefaultSelector()
    got: dict[int, bytes] = {}
    try:
        for i, s in enumerate(socks):
            try:
                s.setblocking(False)
                s.send(probe.message(i))
            except OSError:
                out["refused"] += 1
                continue
            got[i] = b""
            sel.register(s, selectors.EVENT_READ, i)
        deadline = time.monotonic() + timeout
        while got and (left := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(left):
                i = key.data
                verdict = _probe_read(socks[i], probe, i, got)
                if verdict is not None:
                    out[verdict] += 1
                    del got[i]
                    sel.unregister(socks[i])
        out["unresolved"] += len(got)
    finally:
        sel.close()
    return out


def _probe_read(s: socket.socket, probe: Probe, i: int, got: dict[int, bytes]) -> str | None:
    try:
        data = s.recv(65536)
    except BlockingIOError:
        return None
    except OSError:
        data = b""
    if not data:
        return "refused" if not got[i] else "bad"
    got[i] += data
    return probe.judge(i, got[i])


def open_many(port: int, n: int, until: Callable[[], bool]) -> tuple[list[socket.socket], int]:
    """Up to ``n`` connections, opened one after another while ``until()`` is true; returns
    them and how many connects failed."""
    socks: list[socket.socket] = []
    failed = 0
    for _ in range(n):
        if not until():
            break
        s = connect(port, timeout=2.0)
        if s is None:
            failed += 1
        else:
            socks.append(s)
    return socks, failed
