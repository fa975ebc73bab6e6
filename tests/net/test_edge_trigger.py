"""Edge-trigger rules of the net loop (DESIGN.md section 5): bytes already in the socket are
never stranded, a stopped VC resumes byte-exactly, one VC cannot starve another, and
``EventIO.refresh`` re-reports pending readiness.

No test sleeps for the kernel: each waits (``wait_until``) for the state it needs (every
byte sent acknowledged, so sitting in the VC's socket; a thread asleep in its poll step),
and the retry delay runs on the fake clock."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ats_cffi._native import lib
from ats_cffi.eventsystem import (
    INT64_MAX,
    Continuation,
    EventProcessor,
    MIOBuffer,
    ProxyMutex,
    this_ethread,
)
from ats_cffi.eventsystem.codes import (
    VC_EVENT_EOS,
    VC_EVENT_ERROR,
    VC_EVENT_READ_COMPLETE,
    VC_EVENT_READ_READY,
    VC_EVENT_WRITE_COMPLETE,
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
from tests.conftest import CountingMutex, run_on, settle
from tests.net.conftest import (
    OPEN,
    Acceptor,
    Echo,
    client,
    payload_of,
    recv_exactly,
    unacked_bytes,
    unread_bytes,
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
        mutex: ProxyMutex | None = None,
    ) -> None:
        super().__init__(mutex or ProxyMutex())
        self.vc = vc
        self.buf = MIOBuffer(block_size, water_mark)
        self.reader = self.buf.alloc_reader()
        self.data = bytearray()
        self.received = 0  # bytes taken out of the buffer (``data`` may be left empty)
        self.largest_take = 0  # most bytes taken at once (one event's worth)
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
        self.largest_take = max(self.largest_take, n)

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


def all_in_the_vcs_socket(c: socket.socket, vc: Any) -> None:
    """Wait until every byte ``c`` sent sits in ``vc``'s socket (acknowledged) and ``vc``'s
    net thread has run a pass since: the edge they made has been reported, and no other
    will come for them."""
    wait_until(lambda: unacked_bytes(c) == 0, what="every byte sent acknowledged")
    settle([vc.thread])


class HourLongPoll:
    """A net thread's poll step that sleeps an hour whenever the NetHandler would wait: a
    timer or the poll timeout cannot end that sleep in a test's time, only an event on the
    epoll (the thread's eventfd among them). ``asleep`` is set while it waits."""

    def __init__(self, nh: Any) -> None:
        self.nh = nh
        self.asleep = False

    def wait_for_activity(self, timeout_ms: int) -> None:
        if timeout_ms:
            self.asleep = True
            self.nh.wait_for_activity(3_600_000)
            self.asleep = False
        else:
            self.nh.wait_for_activity(0)

    def close(self) -> None:
        self.nh.close()


@pytest.fixture
def quiet_net(fake_clock) -> Iterator[tuple[Any, dict[Any, HourLongPoll]]]:
    """``(net_processor, polls)``: two net threads on the fake clock, which never moves (no
    timer is ever due), each with an ``HourLongPoll`` (``polls[thread]``) and a poll
    timeout of an hour: an idle net thread sleeps in ``epoll_wait`` until something
    signals it."""
    net_config.reset()
    net_config.set("proxy.config.net.poll_timeout", 3_600_000)
    net_stats.reset()
    net_processor.start(2, processor=EventProcessor(fake_clock))
    try:

        def install() -> HourLongPoll:
            t = this_ethread()
            poll = HourLongPoll(t.tail_cb)
            t.tail_cb = poll
            return poll

        yield net_processor, {t: run_on(t, install) for t in net_processor.netthreads}
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
        all_in_the_vcs_socket(c, sink.vc)
        with sink.mutex:
            assert bytes(sink.data) == payload[:10]
            assert sink.vc.read.triggered, "stopping at nbytes must keep the edge"
            sink.vio = sink.vc.do_io_read(sink, len(payload) - 10, sink.buf)
        assert wait_until(lambda: len(sink.data) == len(payload), timeout=2.0)
        assert bytes(sink.data) == payload
        assert sink.events.count(VC_EVENT_READ_COMPLETE) == 2


def test_reenable_from_scheduled_event_reads_bytes_left_in_socket_while_buffer_was_full(
    fake_listen, fake_clock
):
    acceptor, port, sinks = sinks_listener(fake_listen, hold=True)
    payload = payload_of(50_000)
    with client(port) as c:
        c.sendall(payload)
        acceptor.wait()
        sink = sinks[0]
        # The first 4 KiB block fills and is kept: the VC stops reading with bytes waiting.
        assert wait_until(lambda: sink.events and not sink.vc.read.enabled)
        all_in_the_vcs_socket(c, sink.vc)
        with sink.mutex:
            assert sink.reader.read_avail() == 4096
            assert sink.vc.read.triggered

        def resume(event: int, e: Any) -> None:
            sink.take()
            sink.hold = False
            sink.vio.reenable()

        sink.vc.thread.schedule_in(Continuation(sink.mutex, resume), 0.02)
        fake_clock.advance(0.02)
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
                # The peer keeps pushing into the socket meanwhile: the resume finds bytes.
                wait_until(lambda: unread_bytes(sink.vc.fd) > 0, what="bytes in the socket")
                sink.resume()  # from this thread, not the VC's
            assert wait_until(lambda: len(sink.data) == len(payload), timeout=10.0)
        finally:
            sender.join(10.0)
        assert not errors
        assert not sink.hold_at, "every pause happened"
        assert bytes(sink.data) == payload


def test_a_write_side_that_is_off_keeps_its_edge_and_writes_once_started(listen):
    # Each read's epoll event carries EPOLLOUT too: the write side of a VC that writes
    # nothing keeps the edge (triggered), and is not left queued; a write started later,
    # with no new edge to come, goes out (the dispatch does not queue a side that is off:
    # its reenable must).
    acceptor, port, sinks = sinks_listener(listen)
    with client(port) as c:
        c.sendall(b"ping")
        acceptor.wait()
        sink = sinks[0]
        assert wait_until(lambda: bytes(sink.data) == b"ping")
        all_in_the_vcs_socket(c, sink.vc)
        w = sink.vc.write
        with sink.mutex:
            assert w.triggered and not w.enabled and not w.in_ready
        done: list[int] = []
        out = MIOBuffer(4096)
        reader = out.alloc_reader()
        out.write(b"pong")
        with sink.mutex:
            sink.vc.do_io_write(Continuation(sink.mutex, lambda e, v: done.append(e)), 4, reader)
        assert recv_exactly(c, 4) == b"pong"
        assert wait_until(lambda: done == [VC_EVENT_WRITE_COMPLETE])


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
            before = sink.received
            # Each answered (a starved echo would time out here): at least 20, and on until
            # the sink read more meanwhile (the flooding thread may get no CPU for a while
            # when the machine is busy: then the sink has nothing to read for that while).
            for i in range(1000):
                msg = b"ping %d" % i
                b.sendall(msg)
                assert recv_exactly(b, len(msg)) == msg
                if i >= 19 and sink.received > before:
                    break
            during = sink.received - before
        finally:
            stop.set()
            flooder.join(10.0)
    assert during > 0, "the flood went on during the round trips"
    # What makes the flooded VC yield: it reads at most its quota per turn (one event).
    quota = net_config.max_read_per_pass
    assert 0 < sink.largest_take <= quota, (sink.largest_take, quota)


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


def test_reenable_from_another_thread_wakes_the_net_thread_and_is_processed_once(quiet_net):
    net, polls = quiet_net
    sinks: list[Sink] = []
    acceptor = Acceptor(lambda vc: sinks.append(Sink(vc, hold=True)))
    port = net.accept(acceptor, AcceptOptions(local_address="127.0.0.1")).na.port
    payload = payload_of(4096 + 1000)
    with client(port) as c:
        c.sendall(payload)
        acceptor.wait()
        sink = sinks[0]
        assert wait_until(lambda: sink.events and not sink.vc.read.enabled)
        # The net thread asleep for an hour, with 1000 bytes left in the socket: only the
        # re-enable's signal can wake it.
        all_in_the_vcs_socket(c, sink.vc)
        poll = polls[sink.vc.thread]
        wait_until(lambda: poll.asleep, what="the net thread asleep in its poll step")
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
        for t in kickers:
            t.start()
        for t in kickers:
            t.join(5.0)
        assert wait_until(lambda: len(sink.data) == len(payload), timeout=2.0)
        settle([sink.vc.thread])  # a second turn of the VC would have come by now
        assert sink.events[before:] == [VC_EVENT_READ_READY]
        assert bytes(sink.data) == payload


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
        holding, release = threading.Event(), threading.Event()

        def hold(event: int, e: Any) -> None:
            holding.set()
            release.wait(5)

        one_net_thread.netthreads[0].schedule_imm(Continuation(ProxyMutex(), hold))
        assert holding.wait(5)
        c.sendall(b"last words")
        c.shutdown(socket.SHUT_WR)
        # The data and the FIN both in the server's socket before the thread looks.
        wait_until(lambda: unacked_bytes(c) == 0, what="the data and the FIN acknowledged")
        release.set()
        assert done.wait(5), f"no EOS after the data; events {events}"
    action.cancel()
    assert bytes(got) == b"last words"
    assert events[-1] == VC_EVENT_EOS


@pytest.mark.parametrize("spliced", [False, True], ids=["vio", "splice"])
def test_a_mutex_held_elsewhere_is_retried_after_the_retry_delay_not_spun_on(
    start_net, fake_clock, spliced: bool
) -> None:
    # Another thread holds the continuation's mutex while bytes (or the splice's EOS) wait
    # for it: the net thread must retry every net.retry_delay (10 ms), not queue the VC for
    # the very next pass, which made every pass non-blocking (a core spinning on the lock).
    # On the fake clock, passes without time passing try the mutex no more.
    from ats_cffi.net.splice import Splice

    net = start_net(1, clock=fake_clock)
    delay = net_config.retry_delay / 1000.0
    conts: list[Any] = []
    events: list[int] = []

    def on_vc(vc: Any) -> None:
        if spliced:
            owner = Continuation(CountingMutex(), lambda e, d: events.append(e))
            with owner.mutex:
                Splice(owner, vc)
            conts.append(owner)
        else:
            conts.append(Sink(vc, mutex=CountingMutex()))

    acceptor = Acceptor(on_vc)
    action = net.accept(acceptor, AcceptOptions(local_address="127.0.0.1"))
    with client(action.na.port) as c:
        acceptor.wait()
        owner = conts[0]
        m = owner.mutex
        with m:  # this thread holds it while the peer sends and half-closes
            tries = m.tries
            c.sendall(b"hello")
            if spliced:
                assert recv_exactly(c, 5) == b"hello"  # the bytes move natively
                c.shutdown(socket.SHUT_WR)  # the EOS needs the owner's mutex
            wait_until(lambda: m.tries > tries, what="the net thread to try the mutex")
            tries = m.tries
            for _ in range(10):  # twenty passes and more, at the same reading of the clock
                fake_clock.settle()
            assert m.tries == tries, "tried again without waiting for the retry delay"
            for k in range(1, 6):  # a retry each time the delay has passed
                fake_clock.advance(1.5 * delay)
                assert m.tries == tries + k
        fake_clock.advance(1.5 * delay)  # the next retry takes it
        if spliced:
            assert events == [VC_EVENT_EOS]
            with owner.mutex:
                acceptor.vcs[0].do_io_close()
        else:
            assert bytes(owner.data) == b"hello"
            with owner.mutex:
                owner.vc.do_io_close()
    action.cancel()
    assert wait_until(lambda: net_stats.get(OPEN) == 0)
