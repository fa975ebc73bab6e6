"""Edge-trigger rules of the net loop (DESIGN.md section 5): bytes already in the socket are
never stranded, a stopped VC resumes byte-exactly, one VC cannot starve another, and
``EventIO.refresh`` re-reports pending readiness."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ats_cffi._native import lib
from ats_cffi.eventsystem import INT64_MAX, Continuation, MIOBuffer, ProxyMutex
from ats_cffi.eventsystem.codes import (
    VC_EVENT_EOS,
    VC_EVENT_ERROR,
    VC_EVENT_READ_COMPLETE,
    VC_EVENT_READ_READY,
)
from ats_cffi.net import (
    AcceptOptions,
    EventIO,
    PollDescriptor,
    net_config,
    net_processor,
    net_stats,
)
from ats_cffi.net.codes import EVENTIO_DNS_CONNECTION, EVENTIO_READ
from tests.net.conftest import (
    OPEN,
    Acceptor,
    Echo,
    client,
    payload_of,
    recv_exactly,
    wait_until,
)


class Sink(Continuation):
    """Reads its VC into ``data``. While ``hold`` is set it leaves the bytes in the buffer, so
    the buffer fills and the VC stops reading (back-pressure). ``hold_at`` lists the byte
    counts at which it starts holding by itself. Records every event it receives."""

    def __init__(
        self,
        vc: Any,
        nbytes: int = INT64_MAX,
        block_size: int = 4096,
        water_mark: int = 0,
        hold: bool = False,
        hold_at: list[int] | None = None,
        keep: bool = True,
    ) -> None:
        super().__init__(ProxyMutex())
        self.vc = vc
        self.buf = MIOBuffer(block_size, water_mark)
        self.reader = self.buf.alloc_reader()
        self.data = bytearray()
        self.received = 0  # bytes taken out of the buffer (``data`` may be left empty)
        self.keep = keep
        self.events: list[int] = []
        self.hold = hold
        self.hold_at = list(hold_at or [])
        self.set_handler(self.handle)
        self.vio = vc.do_io_read(self, nbytes, self.buf)

    def take(self) -> None:
        n = self.reader.read_avail()
        if self.keep:
            self.data += self.reader.read(n)
        else:
            self.reader.consume(n)
        self.received += n

    def handle(self, event: int, vio: Any) -> None:
        self.events.append(event)
        if event in (VC_EVENT_READ_READY, VC_EVENT_READ_COMPLETE) and not self.hold:
            self.take()
            if self.hold_at and self.received >= self.hold_at[0]:
                self.hold_at.pop(0)
                self.hold = True
        elif event in (VC_EVENT_EOS, VC_EVENT_ERROR):
            self.vc.do_io_close()

    def resume(self) -> None:
        """From any thread: take what the buffer holds, stop holding and re-enable."""
        with self.mutex:
            self.take()
            self.hold = False
            self.vio.reenable()


def sinks_listener(listen: Any, **sink_args: Any) -> tuple[Acceptor, int, list[Sink]]:
    sinks: list[Sink] = []
    _, acceptor, port = listen(on_vc=lambda vc: sinks.append(Sink(vc, **sink_args)))
    return acceptor, port, sinks


@pytest.fixture
def quiet_net() -> Iterator[Any]:
    """Two net threads with nothing scheduled sooner than 1 s (the default cop period):
    an idle net thread then sleeps in ``epoll_wait`` until something signals it."""
    net_config.reset()
    net_stats.reset()
    net_processor.start(2)
    try:
        yield net_processor
    finally:
        net_processor.shutdown()
        net_config.reset()


def test_new_read_from_another_thread_gets_bytes_left_in_socket_without_new_edge(listen):
    acceptor, port, sinks = sinks_listener(listen, nbytes=10)
    payload = payload_of(1000)
    with client(port) as c:
        c.sendall(payload)  # all at once, then silence: no further edge will come
        acceptor.wait()
        sink = sinks[0]
        assert wait_until(lambda: VC_EVENT_READ_COMPLETE in sink.events)
        time.sleep(0.1)
        with sink.mutex:
            assert bytes(sink.data) == payload[:10]
            assert sink.vc.read.triggered, "stopping at nbytes must keep the edge"
            sink.vio = sink.vc.do_io_read(sink, len(payload) - 10, sink.buf)
        assert wait_until(lambda: len(sink.data) == len(payload), timeout=2.0)
        assert bytes(sink.data) == payload
        assert sink.events.count(VC_EVENT_READ_COMPLETE) == 2


def test_reenable_from_scheduled_event_reads_bytes_left_in_socket_while_buffer_was_full(listen):
    acceptor, port, sinks = sinks_listener(listen, hold=True)
    payload = payload_of(50_000)
    with client(port) as c:
        c.sendall(payload)
        acceptor.wait()
        sink = sinks[0]
        # The first 4 KiB block fills and is kept: the VC stops reading with bytes waiting.
        assert wait_until(lambda: sink.events and not sink.vc.read.enabled)
        time.sleep(0.1)
        with sink.mutex:
            assert sink.reader.read_avail() == 4096
            assert sink.vc.read.triggered

        def resume(event: int, e: Any) -> None:
            sink.take()
            sink.hold = False
            sink.vio.reenable()

        sink.vc.thread.schedule_in(Continuation(sink.mutex, resume), 0.02)
        assert wait_until(lambda: len(sink.data) == len(payload), timeout=2.0)
        assert bytes(sink.data) == payload


def test_vc_that_stops_reading_while_peer_keeps_sending_resumes_exactly_where_it_stopped(
    listen,
):
    acceptor, port, sinks = sinks_listener(listen, hold_at=[300_000, 1_000_000, 2_500_000])
    payload = payload_of(4_000_000)
    errors: list[BaseException] = []
    with client(port) as c:

        def send() -> None:
            try:
                c.sendall(payload)
            except OSError as exc:
                errors.append(exc)

        sender = threading.Thread(target=send)
        sender.start()
        try:
            acceptor.wait()
            sink = sinks[0]
            for _ in range(3):
                assert wait_until(lambda: sink.hold and not sink.vc.read.enabled)
                time.sleep(0.05)  # the peer keeps pushing into the socket meanwhile
                sink.resume()  # from this thread, not the VC's
            assert wait_until(lambda: len(sink.data) == len(payload), timeout=10.0)
        finally:
            sender.join(10.0)
        assert not errors
        assert not sink.hold_at, "every pause happened"
        assert bytes(sink.data) == payload


def test_flooding_vc_does_not_starve_another_vc_on_the_same_thread(one_net_thread):
    # The flooded sink's buffer never fills (huge water mark) and its small blocks make it
    # read slower than the peer sends: only the per-pass read quota makes it yield.
    roles: list[Callable[[Any], Any]] = [
        lambda vc: Sink(vc, block_size=4096, water_mark=1 << 40, keep=False),
        Echo,
    ]
    conts: list[Any] = []
    acceptor = Acceptor(lambda vc: conts.append(roles.pop(0)(vc)))
    port = one_net_thread.accept(acceptor, AcceptOptions(local_address="127.0.0.1")).na.port
    stop = threading.Event()
    chunk = b"f" * (1 << 20)

    with client(port) as a, client(port) as b:
        acceptor.wait()  # a was accepted first: it is the sink

        def flood() -> None:
            try:
                while not stop.is_set():
                    a.sendall(chunk)
            except OSError:
                pass

        flooder = threading.Thread(target=flood)
        flooder.start()
        try:
            acceptor.wait()
            sink = conts[0]
            assert wait_until(lambda: sink.received > 4 << 20)
            latencies = []
            before = sink.received
            for i in range(20):
                msg = b"ping %d" % i
                t0 = time.monotonic()
                b.sendall(msg)
                assert recv_exactly(b, len(msg)) == msg
                latencies.append(time.monotonic() - t0)
            during = sink.received - before
        finally:
            stop.set()
            flooder.join(10.0)
    assert during > 0, "the flood went on during the round trips"
    assert max(latencies) < 0.5, latencies


def test_refresh_reports_readiness_that_is_already_pending_again():
    pd = PollDescriptor(8)
    a, b = socket.socketpair()
    eio = EventIO(EVENTIO_DNS_CONNECTION)
    try:
        b.send(b"answer")
        eio.start(pd, a.fileno(), EVENTIO_READ)
        ep = pd.epoll
        assert ep.wait(0) == 1
        assert ep.tokens[0] == eio.token and ep.masks[0] & lib.EPOLLIN
        assert ep.wait(0) == 0, "edge-triggered: the edge is reported once"
        eio.refresh(EVENTIO_READ)
        assert ep.wait(0) == 1, "refresh re-reports the byte still waiting"
        assert ep.tokens[0] == eio.token and ep.masks[0] & lib.EPOLLIN
        assert ep.wait(0) == 0
    finally:
        eio.stop()
        pd.close()
        a.close()
        b.close()


def test_refresh_of_an_interest_no_longer_recorded_reports_nothing():
    pd = PollDescriptor(8)
    a, b = socket.socketpair()
    eio = EventIO(EVENTIO_DNS_CONNECTION)
    try:
        b.send(b"x")
        eio.start(pd, a.fileno(), EVENTIO_READ)
        assert pd.epoll.wait(0) == 1
        eio.modify(-EVENTIO_READ)
        eio.refresh(EVENTIO_READ)
        assert pd.epoll.wait(0) == 0
    finally:
        eio.stop()
        pd.close()
        a.close()
        b.close()


def test_reenable_from_another_thread_is_processed_promptly_and_exactly_once(quiet_net):
    sinks: list[Sink] = []
    acceptor = Acceptor(lambda vc: sinks.append(Sink(vc, hold=True)))
    port = quiet_net.accept(acceptor, AcceptOptions(local_address="127.0.0.1")).na.port
    payload = payload_of(4096 + 1000)
    with client(port) as c:
        c.sendall(payload)
        acceptor.wait()
        sink = sinks[0]
        assert wait_until(lambda: sink.events and not sink.vc.read.enabled)
        time.sleep(0.1)  # the net thread is asleep now, with 1000 bytes left in the socket
        with sink.mutex:
            assert sink.reader.read_avail() == 4096
            sink.take()
            sink.hold = False
            before = len(sink.events)
        start = threading.Barrier(4)

        def kick() -> None:
            start.wait()
            sink.vio.reenable()

        kickers = [threading.Thread(target=kick) for _ in range(4)]
        t0 = time.monotonic()
        for t in kickers:
            t.start()
        for t in kickers:
            t.join(5.0)
        assert wait_until(lambda: len(sink.data) == len(payload), timeout=2.0)
        latency = time.monotonic() - t0
        time.sleep(0.1)
        assert sink.events[before:] == [VC_EVENT_READ_READY]
        assert bytes(sink.data) == payload
        assert latency < 0.3, f"the net thread was not woken: {latency:.3f} s"


def test_data_and_fin_behind_one_edge_give_the_data_then_eos(one_net_thread) -> None:
    # A short read normally proves the socket drained; with the FIN already queued behind
    # the same edge it does not, and only EPOLLRDHUP tells. Hold the only net thread so the
    # data and the FIN arrive together.
    events: list[int] = []
    got = bytearray()
    done = threading.Event()

    def on_vc(vc: Any) -> None:
        buf = MIOBuffer(4096)
        reader = buf.alloc_reader()

        def handle(event: int, vio: Any) -> None:
            events.append(event)
            got.extend(reader.read())
            if event == VC_EVENT_EOS:
                vc.do_io_close()
                done.set()
            else:
                vio.reenable()

        vc.do_io_read(Continuation(ProxyMutex(), handle), INT64_MAX, buf)

    acceptor = Acceptor(on_vc)
    opts = AcceptOptions(local_address="127.0.0.1", accept_threads=0)
    action = one_net_thread.accept(acceptor, opts)
    port = action.na.port
    with client(port) as c:
        acceptor.wait()
        release = threading.Event()
        one_net_thread.netthreads[0].schedule_imm(
            Continuation(ProxyMutex(), lambda ev, e: release.wait(5))
        )
        time.sleep(0.05)
        c.sendall(b"last words")
        c.shutdown(socket.SHUT_WR)
        time.sleep(0.05)
        release.set()
        assert done.wait(5), f"no EOS after the data; events {events}"
    action.cancel()
    assert bytes(got) == b"last words"
    assert events[-1] == VC_EVENT_EOS


@pytest.mark.parametrize("spliced", [False, True], ids=["vio", "splice"])
def test_a_mutex_held_elsewhere_is_retried_after_the_retry_delay_not_spun_on(
    one_net_thread, spliced: bool
) -> None:
    # Another thread holds the continuation's mutex while bytes (or the splice's EOS) wait
    # for it: the net thread must retry every net.retry_delay (10 ms), not queue the VC for
    # the very next pass, which made every pass non-blocking (a core spinning on the lock).
    from ats_cffi.net.splice import Splice

    conts: list[Any] = []
    events: list[int] = []

    def on_vc(vc: Any) -> None:
        if spliced:
            owner = Continuation(ProxyMutex(), lambda e, d: events.append(e))
            with owner.mutex:
                Splice(owner, vc)
            conts.append(owner)
        else:
            conts.append(Sink(vc))

    acceptor = Acceptor(on_vc)
    action = one_net_thread.accept(acceptor, AcceptOptions(local_address="127.0.0.1"))
    with client(action.na.port) as c:
        acceptor.wait()
        owner = conts[0]
        runs = net_stats.get("proxy.process.net.net_handler_run")
        with owner.mutex:  # this thread holds it while the peer sends and half-closes
            c.sendall(b"hello")
            if spliced:
                assert recv_exactly(c, 5) == b"hello"  # the bytes move natively
                c.shutdown(socket.SHUT_WR)  # the EOS needs the owner's mutex
            time.sleep(0.5)
            passes = net_stats.get("proxy.process.net.net_handler_run") - runs
        # ~50 retries and the idle polls; a spin made hundreds of thousands of passes.
        assert passes < 1000, f"{passes} NetHandler passes in 0.5 s while the mutex was held"
        if spliced:
            assert wait_until(lambda: events == [VC_EVENT_EOS])
            with owner.mutex:
                acceptor.vcs[0].do_io_close()
        else:
            assert wait_until(lambda: bytes(owner.data) == b"hello")
            with owner.mutex:
                owner.vc.do_io_close()
    action.cancel()
    assert wait_until(lambda: net_stats.get(OPEN) == 0)
