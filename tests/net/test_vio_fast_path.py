"""The VIO data path's inlined steps (net_read_io / write_to_net): the lock rule on every
event, bytes exact across block boundaries, the counters, and a continuation mutex whose
``try_lock``/``unlock`` are overridden."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from ats_cffi.eventsystem import INT64_MAX, Continuation, MIOBuffer, ProxyMutex
from ats_cffi.eventsystem.codes import (
    VC_EVENT_EOS,
    VC_EVENT_ERROR,
    VC_EVENT_READ_READY,
    VC_EVENT_WRITE_COMPLETE,
    VC_EVENT_WRITE_READY,
)
from ats_cffi.net import net_stats
from tests.conftest import interpreted_only
from tests.net.conftest import OPEN, Echo, client, payload_of, recv_exactly, wait_until

CALLS_TO_READ = "proxy.process.net.calls_to_read"
CALLS_TO_WRITE = "proxy.process.net.calls_to_write"
READ_BYTES = "proxy.process.net.read_bytes"
WRITE_BYTES = "proxy.process.net.write_bytes"


class TracedMutex(ProxyMutex):
    """Counts the net thread's try_lock/unlock calls (the lock rule goes through them)."""

    def __init__(self) -> None:
        super().__init__()
        self.tries = 0
        self.unlocks = 0

    def try_lock(self) -> bool:
        self.tries += 1
        return super().try_lock()

    def unlock(self) -> None:
        self.unlocks += 1
        super().unlock()


class CheckingEcho(Echo):
    """An echo over one small-block buffer (reads and writes cross block boundaries) that
    checks, on every event, that the VIO's mutex is held by the delivering thread."""

    def __init__(self, vc: Any, block_size: int, water_mark: int, mutex: ProxyMutex) -> None:
        self.events: list[int] = []
        self.violations: list[str] = []
        super().__init__(vc, mutex, block_size, water_mark)

    def handle(self, event: int, vio: Any) -> None:
        self.events.append(event)
        m = vio.mutex
        if m is not self.mutex or not m.held_by_me() or m.nthread_holding < 1:
            self.violations.append(f"event {event}: {m!r} not held by the delivering thread")
        if m.thread_holding != threading.get_ident():
            self.violations.append(f"event {event}: holder {m.thread_holding}")
        super().handle(event, vio)


@pytest.mark.parametrize(
    ("block_size", "water_mark", "chunk"),
    [(8, 0, 5), (8, 64, 37), (4096, 0, 1000), (1000, 3000, 1000)],
)
def test_echo_is_exact_and_every_event_is_delivered_with_the_mutex_held(
    listen, block_size: int, water_mark: int, chunk: int
) -> None:
    echoes: list[CheckingEcho] = []
    mutex = TracedMutex()
    _, acceptor, port = listen(
        on_vc=lambda vc: echoes.append(CheckingEcho(vc, block_size, water_mark, mutex))
    )
    payload = payload_of(20_000, seed=block_size + chunk)
    with client(port) as c:
        acceptor.wait()
        for i in range(0, len(payload), chunk):
            piece = payload[i : i + chunk]
            c.sendall(piece)
            assert recv_exactly(c, len(piece)) == piece  # one round trip at a time
    assert wait_until(lambda: net_stats.get(OPEN) == 0)
    (echo,) = echoes
    assert echo.violations == []
    assert VC_EVENT_READ_READY in echo.events and VC_EVENT_WRITE_READY in echo.events
    assert echo.events[-1] == VC_EVENT_EOS
    # The overridden try_lock/unlock were the ones used (one try_lock covers at most two
    # events: WRITE_READY before and after a write), in pairs (plus the do_io block's).
    assert 2 * mutex.tries >= len(echo.events)
    # (The VC is freed inside its last event: the net thread may still be unwinding it.)
    assert wait_until(lambda: mutex.thread_holding is None)
    assert mutex.unlocks == mutex.tries + 1
    # The counters: every byte once each way, at least one read and one write call per chunk.
    n_chunks = -(-len(payload) // chunk)
    assert net_stats.get(READ_BYTES) == net_stats.get(WRITE_BYTES) == len(payload)
    assert net_stats.get(CALLS_TO_READ) >= n_chunks + 1  # + the EOF
    assert net_stats.get(CALLS_TO_WRITE) >= n_chunks


class Responder(Continuation):
    """Answers each chunk it reads with ``reply`` through a write VIO whose ``nbytes`` grows
    (the HTTP server's pattern: WRITE_COMPLETE after each response, reenable for the next)."""

    def __init__(self, vc: Any, reply: bytes) -> None:
        super().__init__(ProxyMutex())
        self.vc = vc
        self.reply = reply
        self.rbuf = MIOBuffer(64)
        self.reader = self.rbuf.alloc_reader()
        self.wbuf = MIOBuffer(16)
        self.completes = 0
        self.set_handler(self.handle)
        with self.mutex:  # type: ignore[union-attr]
            self.rvio = vc.do_io_read(self, INT64_MAX, self.rbuf)
            self.wvio = vc.do_io_write(self, 0, self.wbuf.alloc_reader())

    def handle(self, event: int, vio: Any) -> None:
        if event == VC_EVENT_READ_READY:
            n = self.reader.read_avail()
            self.reader.consume(n)
            for _ in range(n):
                self.wvio.nbytes += self.wbuf.write(self.reply)
            self.vc.reenable(self.wvio)
            self.rvio.reenable()
        elif event == VC_EVENT_WRITE_COMPLETE:
            self.completes += 1
        elif event in (VC_EVENT_EOS, VC_EVENT_ERROR):
            self.vc.do_io_close()


@pytest.mark.parametrize("reply", [b"x" * 16, b"y" * 5, b"z" * 40])
def test_responses_that_fill_blocks_exactly_or_span_them_arrive_whole(listen, reply) -> None:
    # 16-byte blocks: a reply of 16 ends a write exactly at a block's end (the reader then
    # steps onto the next block), 5 leaves partial blocks, 40 spans three (writev).
    responders: list[Responder] = []
    _, acceptor, port = listen(on_vc=lambda vc: responders.append(Responder(vc, reply)))
    with client(port) as c:
        acceptor.wait()
        for k in (1, 3, 2, 7):
            c.sendall(b"q" * k)
            assert recv_exactly(c, k * len(reply)) == reply * k
    assert wait_until(lambda: net_stats.get(OPEN) == 0)
    (r,) = responders
    assert r.completes >= 4
    assert r.wvio.ndone == 13 * len(reply) or r.vc.closed


def test_a_write_of_more_blocks_than_one_writev_takes_arrives_whole(listen) -> None:
    # The Responder's write buffer has 16-byte blocks: each 20,000-byte reply is 1,250 of
    # them, 64 (IOV_MAX) per writev: the write step goes on where each call stopped.
    from ats_cffi.net.vcio import IOV_MAX

    responders: list[Responder] = []
    reply = payload_of(20_000, seed=7)
    assert len(reply) // 16 > 4 * IOV_MAX
    _, acceptor, port = listen(on_vc=lambda vc: responders.append(Responder(vc, reply)))
    with client(port) as c:
        acceptor.wait()
        c.sendall(b"qqq")
        assert recv_exactly(c, 3 * len(reply)) == reply * 3
    assert wait_until(lambda: net_stats.get(OPEN) == 0)
    assert responders[0].wvio.ndone == 3 * len(reply) or responders[0].vc.closed


@interpreted_only
def test_a_write_within_one_block_takes_the_one_block_path(listen, monkeypatch) -> None:
    # A new buffer's reader stands on its empty first block, and a reader that consumed a
    # block written full stands at its end: the write still goes out of the one block that
    # holds the bytes (one write()), not through the writev path.
    from ats_cffi.net import vcio

    spans: list[int] = []
    slow = vcio._writev_chain

    def traced(fd: int, block: Any, off: int, towrite: int) -> Any:
        spans.append(towrite)
        return slow(fd, block, off, towrite)

    monkeypatch.setattr(vcio, "_writev_chain", traced)
    responders: list[Responder] = []
    reply = b"r" * 8  # two replies fill a 16-byte block exactly
    _, acceptor, port = listen(on_vc=lambda vc: responders.append(Responder(vc, reply)))
    with client(port) as c:
        acceptor.wait()
        for _ in range(6):
            c.sendall(b"q")
            assert recv_exactly(c, len(reply)) == reply
    assert wait_until(lambda: net_stats.get(OPEN) == 0)
    assert responders[0].completes == 6 and spans == []


def test_a_write_vio_handed_over_in_write_ready_reaches_the_new_owner_under_its_mutex(
    listen,
) -> None:
    # The WRITE_READY sent before a write hands the VIO to another continuation (do_io_write
    # on the VC's thread): the events that follow must be delivered with the new owner's
    # mutex held, not the old one's.
    seen: list[tuple[int, bool]] = []

    class Second(Continuation):
        def __init__(self) -> None:
            super().__init__(ProxyMutex())
            self.set_handler(lambda e, vio: seen.append((e, self.mutex.held_by_me())))

    second = Second()

    class First(Continuation):
        def __init__(self, vc: Any) -> None:
            super().__init__(ProxyMutex())
            self.vc = vc
            self.buf = MIOBuffer(4096, 4096)
            self.reader = self.buf.alloc_reader()
            self.buf.write(b"hello")
            self.set_handler(self.handle)
            with self.mutex:  # wants more than it holds: WRITE_READY comes before the write
                vc.do_io_write(self, 1000, self.reader)

        def handle(self, event: int, vio: Any) -> None:
            if event == VC_EVENT_WRITE_READY and vio.cont is self:
                self.vc.do_io_write(second, 5, self.reader)

    firsts: list[First] = []
    _, acceptor, port = listen(on_vc=lambda vc: firsts.append(First(vc)))
    with client(port) as c:
        acceptor.wait()
        assert recv_exactly(c, 5) == b"hello"
        assert wait_until(lambda: seen)
        assert seen == [(VC_EVENT_WRITE_COMPLETE, True)]
        with second.mutex:
            firsts[0].vc.do_io_close()
    assert wait_until(lambda: net_stats.get(OPEN) == 0)
