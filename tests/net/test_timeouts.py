"""Timeouts and the InactivityCop (DESIGN.md section 7), on the fake clock: the cop runs
every ``COP`` seconds of it, and the tests step it through a timeout's deadline, asserting
at which reading each event came (never how long it took)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ats_cffi.eventsystem import INT64_MAX, Continuation, MIOBuffer, ProxyMutex, this_ethread
from ats_cffi.eventsystem.codes import (
    VC_EVENT_ACTIVE_TIMEOUT,
    VC_EVENT_EOS,
    VC_EVENT_ERROR,
    VC_EVENT_INACTIVITY_TIMEOUT,
    VC_EVENT_READ_READY,
)
from ats_cffi.net import AcceptOptions, get_net_handler, net_stats
from tests.net.conftest import COP, OPEN, Acceptor, client, wait_until

LOCK_FAILURES = "proxy.process.net.inactivity_cop_lock_acquire_failure"
DEFAULT_APPLIED = "proxy.process.net.default_inactivity_timeout_applied"
INACTIVITY_TIMEOUTS = "proxy.process.net.inactivity_timeouts"


class Watcher(Continuation):
    """Reads (and drops) everything and records ``(event, seconds since t0)`` on its net
    thread's clock (t0: when it was made, with the VC). Closes on EOS/ERROR, and on a
    timeout only if ``close_on_timeout``."""

    def __init__(self, vc: Any, close_on_timeout: bool = False) -> None:
        super().__init__(ProxyMutex())
        self.vc = vc
        self.close_on_timeout = close_on_timeout
        self.buf = MIOBuffer(4096)
        self.reader = self.buf.alloc_reader()
        self.events: list[tuple[int, float]] = []
        self.clock = this_ethread().clock  # made on the VC's net thread
        self.t0 = self.clock()
        self.set_handler(self.handle)
        self.vio = vc.do_io_read(self, INT64_MAX, self.buf)

    def handle(self, event: int, vio: Any) -> None:
        self.events.append((event, self.clock() - self.t0))
        if event == VC_EVENT_READ_READY:
            self.reader.consume(self.reader.read_avail())
        elif event in (VC_EVENT_EOS, VC_EVENT_ERROR):
            self.vc.do_io_close()
        elif self.close_on_timeout:
            self.vc.do_io_close()

    def times(self, event: int) -> list[float]:
        return [t for e, t in self.events if e == event]

    def read_byte_from(self, peer: Any) -> float:
        """Have ``peer`` send one byte and wait until this VC has read it (a real socket's
        bytes: polled); the reading of the clock when it did."""
        n = len(self.times(VC_EVENT_READ_READY))
        peer.sendall(b"x")
        wait_until(lambda: len(self.times(VC_EVENT_READ_READY)) > n, what="the byte to be read")
        return self.times(VC_EVENT_READ_READY)[-1]

    def close(self) -> None:
        with self.mutex:
            self.vc.do_io_close()


def watch(listen: Any, setup: Callable[[Any], None], **kw: Any) -> tuple[Acceptor, int, list]:
    """Listen; each accepted VC gets a Watcher, then ``setup(vc)`` (on its net thread)."""
    watchers: list[Watcher] = []

    def on_vc(vc: Any) -> None:
        watchers.append(Watcher(vc, **kw))
        setup(vc)

    _, acceptor, port = listen(on_vc=on_vc)
    return acceptor, port, watchers


def listen_on(net: Any, on_vc: Callable[[Any], None] | None = None) -> tuple[Acceptor, int]:
    acceptor = Acceptor(on_vc)
    action = net.accept(acceptor, AcceptOptions(local_address="127.0.0.1"))
    return acceptor, action.na.port


def test_inactivity_timeout_fires_once_at_the_first_cop_run_past_its_deadline(
    fake_listen, fake_clock
):
    acceptor, port, watchers = watch(fake_listen, lambda vc: vc.set_inactivity_timeout(0.25))
    with client(port):
        acceptor.wait()
        w = watchers[0]
        fake_clock.tick(0.25, COP)  # up to the deadline: visited by every cop run, not due
        assert not w.times(VC_EVENT_INACTIVITY_TIMEOUT)
        fake_clock.tick(COP, COP)
        assert w.times(VC_EVENT_INACTIVITY_TIMEOUT) == [0.25 + COP]
        fake_clock.tick(0.5, COP)
        assert w.times(VC_EVENT_INACTIVITY_TIMEOUT) == [0.25 + COP], "once"
        assert not w.times(VC_EVENT_ACTIVE_TIMEOUT)
        assert net_stats.get(INACTIVITY_TIMEOUTS) == 1
        w.close()


def test_active_timeout_fires_once_at_its_deadline_even_while_busy(fake_listen, fake_clock):
    acceptor, port, watchers = watch(fake_listen, lambda vc: vc.set_active_timeout(0.25))
    with client(port) as c:
        acceptor.wait()
        w = watchers[0]
        for _ in range(12):  # a byte in every cop period: never idle
            w.read_byte_from(c)
            fake_clock.tick(COP, COP)
            if fake_clock.now - w.t0 < 0.25 + COP:
                assert not w.times(VC_EVENT_ACTIVE_TIMEOUT), "fired before its deadline"
        assert w.times(VC_EVENT_ACTIVE_TIMEOUT) == [0.25 + COP]
        assert any(t > 0.25 + COP for t in w.times(VC_EVENT_READ_READY)), "the VC stays usable"
        assert not w.times(VC_EVENT_INACTIVITY_TIMEOUT)
        w.close()


def test_activity_pushes_the_inactivity_deadline_until_the_peer_stops(fake_listen, fake_clock):
    acceptor, port, watchers = watch(fake_listen, lambda vc: vc.set_inactivity_timeout(0.25))
    with client(port) as c:
        acceptor.wait()
        w = watchers[0]
        for _ in range(10):  # a byte every cop period for 0.625 s: never 0.25 s of silence
            last_read = w.read_byte_from(c)
            fake_clock.tick(COP, COP)
        assert not w.times(VC_EVENT_INACTIVITY_TIMEOUT), "timed out while active"
        fake_clock.tick(last_read + 0.25 - (fake_clock.now - w.t0), COP)
        assert not w.times(VC_EVENT_INACTIVITY_TIMEOUT), "fired before 0.25 s of silence"
        fake_clock.tick(COP, COP)
        assert w.times(VC_EVENT_INACTIVITY_TIMEOUT) == [last_read + 0.25 + COP]
        w.close()


def test_cop_visits_only_vcs_without_epoll_events_since_its_last_run(start_net, fake_clock):
    net = start_net(1, clock=fake_clock)
    watchers: list[Watcher] = []
    acceptor, port = listen_on(net, lambda vc: watchers.append(Watcher(vc)))
    cop = get_net_handler(net.netthreads[0]).cop
    assert cop is not None

    with client(port) as busy:
        acceptor.wait()

        def busy_runs(n: int) -> tuple[int, int]:
            """``n`` cop runs, the busy VC reading a byte before each; (visits, runs)."""
            v0, r0 = cop.visited, cop.runs
            for _ in range(n):
                watchers[0].read_byte_from(busy)
                fake_clock.advance(COP)
            return cop.visited - v0, cop.runs - r0

        busy_runs(2)
        assert busy_runs(8) == (0, 8), "the busy VC was visited"
        with client(port):
            acceptor.wait()
            busy_runs(2)  # the first run after the accept lists the idle VC
            # The idle VC once per run; the busy one never.
            assert busy_runs(8) == (8, 8)
            assert watchers[1].vc.in_cop
            watchers[1].close()
        watchers[0].close()


def test_cop_counts_lock_failures_and_times_out_once_the_lock_is_free(fake_listen, fake_clock):
    acceptor, port, watchers = watch(fake_listen, lambda vc: vc.set_inactivity_timeout(0.25))
    with client(port):
        acceptor.wait()
        w = watchers[0]
        cop = get_net_handler(w.vc.nh.thread).cop
        before, visited = net_stats.get(LOCK_FAILURES), cop.visited
        assert w.vc.mutex.lock(timeout=1.0)
        try:
            fake_clock.tick(0.5, COP)  # due at 0.25, but the cop cannot lock the VC
            failures = net_stats.get(LOCK_FAILURES) - before
            assert not w.times(VC_EVENT_INACTIVITY_TIMEOUT)
        finally:
            released = fake_clock.now - w.t0
            w.vc.mutex.unlock()
        assert failures == cop.visited - visited >= 6, "a failure at each visit"
        fake_clock.tick(COP, COP)
        assert w.times(VC_EVENT_INACTIVITY_TIMEOUT) == [released + COP]
        w.close()


def test_default_inactivity_timeout_applies_to_vcs_with_pending_io_and_none_set(
    start_net, fake_clock
):
    net = start_net(2, clock=fake_clock, default_inactivity_timeout=0.25)
    watchers: list[Watcher] = []
    roles = [lambda vc: watchers.append(Watcher(vc, close_on_timeout=True)), lambda vc: None]
    acceptor, port = listen_on(net, lambda vc: roles.pop(0)(vc))
    with client(port) as reading:
        acceptor.wait()  # accepted one after the other: the roles go in this order
        with client(port) as no_io:
            acceptor.wait()
            w = watchers[0]
            while not net_stats.get(DEFAULT_APPLIED):  # the cop's first visit applies it
                assert fake_clock.now - w.t0 < 10 * COP, "the default was never applied"
                fake_clock.advance(COP)
            applied = fake_clock.now - w.t0
            fake_clock.tick(0.25, COP)
            assert not w.times(VC_EVENT_INACTIVITY_TIMEOUT), "fired before the default"
            fake_clock.tick(COP, COP)
            assert w.times(VC_EVENT_INACTIVITY_TIMEOUT) == [applied + 0.25 + COP]
            assert reading.recv(1) == b"", "the watcher closed on its timeout"
            fake_clock.tick(0.5, COP)
            assert net_stats.get(DEFAULT_APPLIED) == 1, "only the VC with pending I/O"
            assert net_stats.get(OPEN) == 1
            idle = next(vc for vc in acceptor.vcs if vc is not w.vc)
            assert idle.fd >= 0 and not idle.closed
            idle.do_io_close()
            assert no_io.recv(1) == b""
    assert wait_until(lambda: net_stats.get(OPEN) == 0, what="every VC freed")


def test_a_vc_closed_during_another_vcs_cop_turn_gets_no_event(fake_listen, fake_clock):
    # Both idle past their deadline in one cop run; whichever times out first closes the
    # other too (a tunnel closing its peer): the other, closed, hears nothing more.
    watchers: list[Watcher] = []

    class Pair(Watcher):
        def handle(self, event: int, vio: Any) -> None:
            super().handle(event, vio)
            if event == VC_EVENT_INACTIVITY_TIMEOUT:
                for w in watchers:
                    w.vc.do_io_close()

    def on_vc(vc: Any) -> None:
        watchers.append(Pair(vc))
        vc.set_inactivity_timeout(0.25)

    _, acceptor, port = fake_listen(on_vc=on_vc)
    with client(port), client(port):
        acceptor.wait(2)
        assert wait_until(lambda: len(watchers) == 2)
        open_before = net_stats.get(OPEN)
        fake_clock.tick(0.25 + COP, COP)
        assert wait_until(lambda: net_stats.get(OPEN) == open_before - 2)
        timed_out = [w for w in watchers if w.events]
        assert len(timed_out) == 1, [w.events for w in watchers]
        assert timed_out[0].events == [(VC_EVENT_INACTIVITY_TIMEOUT, 0.25 + COP)]
        assert net_stats.get(INACTIVITY_TIMEOUTS) == 1
