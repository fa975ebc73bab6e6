"""Timeouts and the InactivityCop (DESIGN.md section 7), in short real times against the
fixture's 50 ms cop."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ats_cffi.eventsystem import INT64_MAX, Continuation, MIOBuffer, ProxyMutex
from ats_cffi.eventsystem.codes import (
    VC_EVENT_ACTIVE_TIMEOUT,
    VC_EVENT_EOS,
    VC_EVENT_ERROR,
    VC_EVENT_INACTIVITY_TIMEOUT,
    VC_EVENT_READ_READY,
)
from ats_cffi.net import AcceptOptions, get_net_handler, net_stats
from tests.net.conftest import OPEN, Acceptor, client, wait_until

LOCK_FAILURES = "proxy.process.net.inactivity_cop_lock_acquire_failure"
DEFAULT_APPLIED = "proxy.process.net.default_inactivity_timeout_applied"
INACTIVITY_TIMEOUTS = "proxy.process.net.inactivity_timeouts"


class Watcher(Continuation):
    """Reads (and drops) everything and records ``(event, seconds since t0)``. Closes on
    EOS/ERROR, and on a timeout only if ``close_on_timeout``."""

    def __init__(self, vc: Any, close_on_timeout: bool = False) -> None:
        super().__init__(ProxyMutex())
        self.vc = vc
        self.close_on_timeout = close_on_timeout
        self.buf = MIOBuffer(4096)
        self.reader = self.buf.alloc_reader()
        self.events: list[tuple[int, float]] = []
        self.t0 = time.monotonic()
        self.set_handler(self.handle)
        self.vio = vc.do_io_read(self, INT64_MAX, self.buf)

    def handle(self, event: int, vio: Any) -> None:
        self.events.append((event, time.monotonic() - self.t0))
        if event == VC_EVENT_READ_READY:
            self.reader.consume(self.reader.read_avail())
        elif event in (VC_EVENT_EOS, VC_EVENT_ERROR):
            self.vc.do_io_close()
        elif self.close_on_timeout:
            self.vc.do_io_close()

    def times(self, event: int) -> list[float]:
        return [t for e, t in self.events if e == event]

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


def test_inactivity_timeout_fires_once_at_about_the_set_time(listen):
    acceptor, port, watchers = watch(listen, lambda vc: vc.set_inactivity_timeout(0.3))
    with client(port):
        acceptor.wait()
        w = watchers[0]
        assert wait_until(lambda: w.times(VC_EVENT_INACTIVITY_TIMEOUT), timeout=3.0)
        time.sleep(0.5)
        fired = w.times(VC_EVENT_INACTIVITY_TIMEOUT)
        assert len(fired) == 1, fired
        assert 0.25 <= fired[0] <= 1.5, fired
        assert not w.times(VC_EVENT_ACTIVE_TIMEOUT)
        assert net_stats.get(INACTIVITY_TIMEOUTS) == 1
        w.close()


def test_active_timeout_fires_once_at_about_the_set_time_even_while_busy(listen):
    acceptor, port, watchers = watch(listen, lambda vc: vc.set_active_timeout(0.3))
    with client(port) as c:
        acceptor.wait()
        w = watchers[0]
        t_end = time.monotonic() + 0.9
        while time.monotonic() < t_end:
            c.sendall(b"x")
            time.sleep(0.03)
        fired = w.times(VC_EVENT_ACTIVE_TIMEOUT)
        assert len(fired) == 1, fired
        assert 0.25 <= fired[0] <= 1.5, fired
        assert any(t > fired[0] for t in w.times(VC_EVENT_READ_READY)), "the VC stays usable"
        assert not w.times(VC_EVENT_INACTIVITY_TIMEOUT)
        w.close()


def test_activity_pushes_the_inactivity_deadline_until_the_peer_stops(listen):
    acceptor, port, watchers = watch(listen, lambda vc: vc.set_inactivity_timeout(0.3))
    with client(port) as c:
        acceptor.wait()
        w = watchers[0]
        for _ in range(7):  # every 0.1 s for 0.6 s: never 0.3 s of silence
            c.sendall(b"x")
            time.sleep(0.1)
        last_send = time.monotonic() - 0.1 - w.t0
        assert not w.times(VC_EVENT_INACTIVITY_TIMEOUT), "timed out while active"
        assert wait_until(lambda: w.times(VC_EVENT_INACTIVITY_TIMEOUT), timeout=3.0)
        fired = w.times(VC_EVENT_INACTIVITY_TIMEOUT)
        assert len(fired) == 1
        assert fired[0] >= 0.6
        assert 0.25 <= fired[0] - last_send <= 1.5, (fired, last_send)
        w.close()


def test_cop_visits_only_vcs_without_epoll_events_since_its_last_run(start_net):
    net = start_net(1)
    watchers: list[Watcher] = []
    acceptor, port = listen_on(net, lambda vc: watchers.append(Watcher(vc)))
    cop = get_net_handler(net.netthreads[0]).cop
    assert cop is not None
    stop = threading.Event()

    def measure(seconds: float) -> tuple[int, int]:
        v0, r0 = cop.visited, cop.runs
        time.sleep(seconds)
        return cop.visited - v0, cop.runs - r0

    with client(port) as busy:

        def keep_busy() -> None:
            while not stop.is_set():
                busy.sendall(b"b")
                time.sleep(0.005)

        sender = threading.Thread(target=keep_busy)
        sender.start()
        try:
            acceptor.wait()
            time.sleep(0.15)
            visited, runs = measure(0.5)
            assert runs >= 5
            assert visited <= runs // 3, f"the busy VC was visited {visited} times in {runs} runs"
            with client(port):
                acceptor.wait()
                time.sleep(0.15)
                visited, runs = measure(0.5)
                assert runs >= 5
                # The idle VC once per run; the busy one (almost) never.
                assert runs - 1 <= visited <= runs + runs // 3, (visited, runs)
                assert wait_until(lambda: watchers[1].vc.in_cop, timeout=1.0)
                watchers[1].close()
        finally:
            stop.set()
            sender.join(5.0)
        watchers[0].close()


def test_cop_counts_lock_failures_and_times_out_once_the_lock_is_free(listen):
    acceptor, port, watchers = watch(listen, lambda vc: vc.set_inactivity_timeout(0.2))
    with client(port):
        acceptor.wait()
        w = watchers[0]
        before = net_stats.get(LOCK_FAILURES)
        assert w.vc.mutex.lock(timeout=1.0)
        try:
            time.sleep(0.5)  # the timeout is due at 0.2 s, but the cop cannot lock the VC
            failures = net_stats.get(LOCK_FAILURES) - before
            assert not w.times(VC_EVENT_INACTIVITY_TIMEOUT)
        finally:
            released = time.monotonic() - w.t0
            w.vc.mutex.unlock()
        assert failures >= 3, failures
        assert wait_until(lambda: w.times(VC_EVENT_INACTIVITY_TIMEOUT), timeout=1.0)
        assert w.times(VC_EVENT_INACTIVITY_TIMEOUT)[0] >= released
        w.close()


def test_default_inactivity_timeout_applies_to_vcs_with_pending_io_and_none_set(start_net):
    net = start_net(2, default_inactivity_timeout=0.3)
    watchers: list[Watcher] = []
    roles = [lambda vc: watchers.append(Watcher(vc, close_on_timeout=True)), lambda vc: None]
    acceptor, port = listen_on(net, lambda vc: roles.pop(0)(vc))
    with client(port) as reading:
        acceptor.wait()  # accepted one after the other: the roles go in this order
        with client(port) as no_io:
            acceptor.wait()
            w = watchers[0]
            assert wait_until(lambda: w.times(VC_EVENT_INACTIVITY_TIMEOUT), timeout=3.0)
            fired = w.times(VC_EVENT_INACTIVITY_TIMEOUT)
            assert 0.25 <= fired[0] <= 1.5, fired
            assert reading.recv(1) == b"", "the watcher closed on its timeout"
            time.sleep(0.4)
            assert net_stats.get(DEFAULT_APPLIED) == 1, "only the VC with pending I/O"
            assert net_stats.get(OPEN) == 1
            idle = next(vc for vc in acceptor.vcs if vc is not w.vc)
            assert idle.fd >= 0 and not idle.closed
            idle.do_io_close()
            assert no_io.recv(1) == b""
    assert wait_until(lambda: net_stats.get(OPEN) == 0)
