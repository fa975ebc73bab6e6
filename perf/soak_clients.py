"""The soak's clients (perf/soak.py), one thread each, every loop bounded in count and in
time: well-behaved ones (echo/tunnel: random-sized messages, each byte checked; http:
keep-alive ``GET /`` loops), abusive ones (resets mid-transfer, half-closes, slow readers,
garbage to http, idle floods and a burst past the service's fd limit) and the ones that
run into the final SIGTERM. Each keeps its own ``counts``; the soak sums them once joined.

Counts every kind shares: ``sent``/``verified`` (bytes, echo/tunnel) or ``sent``/``answered``
(requests, http), ``corrupt`` (bytes or responses that came back wrong), ``lost`` (sent,
and the connection ended without their answer) and ``refused`` (a connection closed before
its first answer: the throttle refusing at accept; cross-checked with the service's
``connections_throttled_in``).
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable

from soak_io import (
    OP_TIMEOUT,
    REQUEST,
    HttpSink,
    Probe,
    PumpOptions,
    StreamSink,
    connect,
    expect_eof,
    message_size,
    open_many,
    probe_all,
    pump,
    reset_close,
    server_closed,
)

#: Bounds of every loop, beside its deadline.
MAX_CONNECTIONS = 100_000
MAX_PER_CONNECTION = 200
MAX_CYCLES = 1000


class Client(threading.Thread):
    """A client thread: ``body`` runs until ``until`` (monotonic) or ``stop``; an exception
    is recorded in ``errors`` (a check fails on it), never raised."""

    group = "client"

    def __init__(self, port: int, seed: int, until: float, stop: threading.Event) -> None:
        super().__init__(daemon=True, name=f"soak-{self.group}-{seed}")
        self.port = port
        self.seed = seed
        self.until = until
        self.stop_event = stop
        self.counts: Counter[str] = Counter()
        self.errors: list[str] = []

    def running(self) -> bool:
        return time.monotonic() < self.until and not self.stop_event.is_set()

    def rng_for(self, conn: int) -> random.Random:
        """The seeded generator of one connection (its sizes and its payload)."""
        return random.Random(f"{self.group}/{self.seed}/{conn}")

    def run(self) -> None:
        try:
            self.body()
        except Exception as exc:  # noqa: BLE001 - a check reports it
            self.errors.append(f"{self.name}: {exc!r}")

    def body(self) -> None:
        """Connection after connection until the deadline, each given to ``connection``."""
        for conn in range(MAX_CONNECTIONS):
            if not self.running():
                return
            sock = connect(self.port)
            if sock is None:
                self.counts["connect_failed"] += 1
                time.sleep(0.05)
                continue
            self.counts["connections"] += 1
            try:
                self.connection(sock, self.rng_for(conn))
            finally:
                sock.close()

    def connection(self, sock: socket.socket, rng: random.Random) -> None:
        raise NotImplementedError

    def note_end(self, ended: str, served: bool, sent: int, answered: int) -> None:
        """Count how a connection ended early: refused (nothing answered on it yet) or
        ``lost`` what was sent and not answered."""
        if not served and answered == 0 and ended in ("eof", "reset"):
            self.counts["refused"] += 1
            return
        self.counts["lost"] += sent - answered
        self.counts["broken"] += 1
        self.errors.append(f"{self.name}: connection ended ({ended}) after {answered}/{sent}")


class StreamClient(Client):
    """Well-behaved echo/tunnel client: 1-40 messages of 1 B..256 KiB per connection, each
    a fresh part of the connection's seeded stream, every byte checked in order."""

    group = "clients"
    options = PumpOptions()

    def message(self, rng: random.Random) -> bytes:
        return rng.randbytes(message_size(rng))

    def connection(self, sock: socket.socket, rng: random.Random) -> None:
        served = False
        for _ in range(rng.randint(1, 40)):
            if not self.running():
                return
            if not self.exchange(sock, self.message(rng), served):
                return
            served = True

    def exchange(self, sock: socket.socket, payload: bytes, served: bool) -> bool:
        """One message and its echo; False when the connection is over."""
        sink = StreamSink(payload)
        done = pump(sock, payload, sink, self.options)
        if done.ended and not served and sink.verified == 0 and not sink.corrupt:
            self.note_end(done.ended, served, done.sent, 0)
            return False
        self.counts["sent"] += done.sent
        self.counts["verified"] += sink.verified
        self.counts["corrupt"] += sink.corrupt
        if done.ended:
            self.note_end(done.ended, True, done.sent - sink.corrupt, sink.verified)
            return False
        self.counts["messages"] += 1
        return True


class SlowReader(StreamClient):
    """Sends 256 KiB..1 MiB and reads its echo 4 KiB every 2 ms (back-pressure on the
    service); checked as the well-behaved ones. Past its deadline it reads at full speed."""

    group = "slow readers"

    def message(self, rng: random.Random) -> bytes:
        return rng.randbytes(rng.randint(256 * 1024, 1024 * 1024))

    def connection(self, sock: socket.socket, rng: random.Random) -> None:
        self.options = PumpOptions(read_gap=0.002, slow_until=self.until)
        self.exchange(sock, self.message(rng), False)


class HalfCloser(StreamClient):
    """Sends 1 B..256 KiB, then ``shutdown(SHUT_WR)``: every byte must come back, then EOF."""

    group = "half-closes"
    options = PumpOptions(half_close=True)

    def connection(self, sock: socket.socket, rng: random.Random) -> None:
        if self.exchange(sock, self.message(rng), False):
            why, extra = expect_eof(sock)
            self.counts["eof" if why == "eof" else "no_eof"] += 1
            self.counts["corrupt"] += extra
            if why != "eof":
                self.errors.append(f"{self.name}: after a half-close: {why} ({extra} B extra)")


class Resetter(StreamClient):
    """Sends part of 64 KiB..1 MiB (what the echo sent back by then must match), then
    resets the connection (SO_LINGER 0) with data in flight both ways."""

    group = "resets"

    def connection(self, sock: socket.socket, rng: random.Random) -> None:
        payload = rng.randbytes(rng.randint(64 * 1024, 1024 * 1024))
        sink = StreamSink(payload)
        done = pump(sock, payload, sink, PumpOptions(abort_at=rng.randint(1, len(payload))))
        self.counts["corrupt"] += sink.corrupt
        self.counts["bytes_before_reset"] += done.sent
        self.counts["resets"] += 1
        reset_close(sock)


class HttpClient(Client):
    """Well-behaved http client: keep-alive, 1-200 batches of 1-4 pipelined ``GET /`` per
    connection, each response checked (200, ``Hello, World!``)."""

    group = "clients"

    def connection(self, sock: socket.socket, rng: random.Random) -> None:
        served = False
        for _ in range(rng.randint(1, MAX_PER_CONNECTION)):
            if not self.running():
                return
            if server_closed(sock):
                self.counts["closed_idle"] += 1
                return
            k = rng.randint(1, 4)
            sink = HttpSink(k)
            done = pump(sock, REQUEST * k, sink)
            if not self.account(done.ended, sink, k, served):
                return
            served = True

    def account(self, ended: str, sink: HttpSink, k: int, served: bool) -> bool:
        """Count a batch of ``k`` requests; False when the connection is over."""
        if ended and not served and sink.answered == 0 and not sink.bad:
            self.note_end(ended, served, k, 0)
            return False
        self.counts["sent"] += k
        self.counts["answered"] += sink.answered
        self.counts["corrupt"] += sink.bad
        if sink.bad:
            self.errors.append(f"{self.name}: bad response {sink.first_bad!r}")
        if ended:
            self.note_end(ended, True, k - sink.bad, sink.answered)
            return False
        self.counts["messages"] += 1
        return not sink.closing


class HttpSlowReader(HttpClient):
    """500-2000 pipelined requests, responses read 4 KiB every 2 ms."""

    group = "slow readers"

    def connection(self, sock: socket.socket, rng: random.Random) -> None:
        k = rng.randint(500, 2000)
        sink = HttpSink(k)
        done = pump(sock, REQUEST * k, sink, PumpOptions(read_gap=0.002, slow_until=self.until))
        self.account(done.ended, sink, k, False)


class HttpHalfCloser(HttpClient):
    """1-20 pipelined requests, then ``shutdown(SHUT_WR)``: every response, then EOF."""

    group = "half-closes"

    def connection(self, sock: socket.socket, rng: random.Random) -> None:
        k = rng.randint(1, 20)
        sink = HttpSink(k)
        done = pump(sock, REQUEST * k, sink, PumpOptions(half_close=True))
        if self.account(done.ended, sink, k, False) or sink.closing:
            why, extra = expect_eof(sock)
            self.counts["eof" if why == "eof" else "no_eof"] += 1
            self.counts["corrupt"] += extra
            if why != "eof":
                self.errors.append(f"{self.name}: after a half-close: {why} ({extra} B extra)")


class HttpResetter(HttpClient):
    """1-50 pipelined requests and half of another, then a reset while the responses are
    in flight."""

    group = "resets"

    def connection(self, sock: socket.socket, rng: random.Random) -> None:
        k = rng.randint(1, 50)
        data = REQUEST * k + REQUEST[: rng.randint(1, len(REQUEST) - 1)]
        sink = HttpSink(min(k, rng.randint(0, 3)))
        done = pump(sock, data, sink, PumpOptions(abort_at=len(data)))
        self.counts["bytes_before_reset"] += done.sent
        if not done.ended:
            done = pump(sock, b"", sink)  # the first responses (at most 3), checked
        if done.ended == "stall":
            self.errors.append(f"{self.name}: no response in {OP_TIMEOUT} s")
        self.counts["corrupt"] += sink.bad
        self.counts["resets"] += 1
        reset_close(sock)


class Garbage(HttpClient):
    """Random bytes (1 B..2 KiB, never a request) to http: ``400`` then EOF."""

    group = "garbage"

    def connection(self, sock: socket.socket, rng: random.Random) -> None:
        data = b"\x01" + rng.randbytes(rng.randint(0, 2047))
        sock.setblocking(True)
        sock.settimeout(5.0)
        sock.sendall(data)
        got = b""
        why = ""
        try:
            while len(got) < 65536 and (chunk := sock.recv(65536)):
                got += chunk
        except OSError as exc:
            why = repr(exc)
        if not got:  # closed before a byte of an answer: refused at accept
            self.note_end("reset" if why else "eof", False, 1, 0)
            return
        ok = not why and got.startswith(b"HTTP/1.1 400 ") and got.endswith(b"Bad Request\n")
        self.counts["garbage"] += 1
        self.counts["answered_400" if ok else "corrupt"] += 1
        if not ok:
            self.errors.append(f"{self.name}: garbage answered {got[:200]!r} {why}")


class Overload(Client):
    """Cycles until its deadline: an idle flood (``idle`` connections, every other one
    carrying one message first, held idle ``hold`` s, then closed, half with a FIN and half
    with a reset), then a burst of ``burst`` connections at once, past the service's fd
    limit: each sends one message and is answered (served) or closed unanswered (refused),
    then all are reset. ``progress()`` (the well-behaved clients' messages so far) is read
    around each burst: they must go on being served through it."""

    group = "overload"

    def __init__(
        self,
        port: int,
        until: float,
        stop: threading.Event,
        probe: Probe,
        sizes: tuple[int, int, float, float],
        progress: Callable[[], int],
    ) -> None:
        super().__init__(port, 0, until, stop)
        self.probe = probe
        self.idle, self.burst, self.hold, self.pause = sizes
        self.progress = progress

    def body(self) -> None:
        for _ in range(MAX_CYCLES):
            if not self.running():
                return
            self.idle_flood()
            self.stop_event.wait(min(self.pause, max(0.0, self.until - time.monotonic())))
            if not self.running():
                return
            self.burst_once()
            self.counts["cycles"] += 1
            self.stop_event.wait(min(self.pause, max(0.0, self.until - time.monotonic())))

    def idle_flood(self) -> None:
        socks, failed = open_many(self.port, self.idle, self.running)
        self.counts["idle_opened"] += len(socks)
        self.counts["idle_connect_failed"] += failed
        try:
            for k, v in probe_all(socks[::2], self.probe, OP_TIMEOUT / 2).items():
                self.counts[f"idle_{k}"] += v
            self.stop_event.wait(min(self.hold, max(0.0, self.until - time.monotonic())))
        finally:
            for i, s in enumerate(socks):
                s.close() if i % 2 else reset_close(s)

    def burst_once(self) -> None:
        before = self.progress()
        t0 = time.monotonic()
        socks, failed = open_many(self.port, self.burst, lambda: time.monotonic() < t0 + 10)
        self.counts["burst_opened"] += len(socks)
        self.counts["burst_connect_failed"] += failed
        try:
            for k, v in probe_all(socks, self.probe, OP_TIMEOUT / 2).items():
                self.counts[f"burst_{k}"] += v
        finally:
            for s in socks:
                reset_close(s)
        self.counts["burst_progress"] += self.progress() - before
        self.counts["burst_ms"] += int((time.monotonic() - t0) * 1000)


class DrainStream(StreamClient):
    """One connection, opened before the SIGTERM: messages until ``sigterm`` is set, then
    the one in flight and one more; every byte must come back before it closes."""

    group = "drain"

    def __init__(self, port: int, seed: int, until: float, sigterm: threading.Event) -> None:
        super().__init__(port, seed, until, threading.Event())
        self.sigterm = sigterm

    def body(self) -> None:
        sock = connect(self.port)
        if sock is None:
            self.counts["connect_failed"] += 1
            return
        rng = self.rng_for(0)
        with sock:
            for i in range(MAX_CONNECTIONS):
                if time.monotonic() > self.until:
                    self.errors.append(f"{self.name}: still sending at its deadline")
                    return
                after = self.sigterm.is_set()
                if not self.exchange(sock, self.message(rng), i > 0):
                    return
                if after:
                    self.counts["after_sigterm"] += 1
                    return


class DrainHttp(HttpClient):
    """One keep-alive connection opened before the SIGTERM, one ``GET /`` after another
    until the server closes: each request written must be answered (the last one with
    ``Connection: close``), or the server closed while none was out (``closed_idle``:
    seen before sending, as a careful client does)."""

    group = "drain"

    def __init__(self, port: int, seed: int, until: float) -> None:
        super().__init__(port, seed, until, threading.Event())

    def body(self) -> None:
        sock = connect(self.port)
        if sock is None:
            self.counts["connect_failed"] += 1
            return
        with sock:
            for _ in range(MAX_CONNECTIONS):
                if time.monotonic() > self.until:
                    self.errors.append(f"{self.name}: still going at its deadline")
                    return
                if server_closed(sock):
                    self.counts["closed_idle"] += 1
                    return
                sink = HttpSink(1)
                done = pump(sock, REQUEST, sink)
                if done.ended and done.sent == 0:  # closed as we wrote: nothing was sent
                    self.counts["closed_idle"] += 1
                    return
                if not self.account(done.ended, sink, 1, True):
                    self.counts["said_close"] += sink.closing
                    return
