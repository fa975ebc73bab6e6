"""The connections throttle counts connections both ways (ATS): outbound connects are
refused at the limit with ``-ENET_THROTTLING`` (``connections_throttled_out``), a connect
made on a net thread counts at once, a listener that announces ``connects_per_accept``
has them counted at accept, a low ``ulimit -n`` still leaves a throttle, and repeated
failures are logged once per interval with a count (``RateLimitedLog``). The active queue
(``max_requests_in``) refuses a request when full, unless one in it has timed out."""

from __future__ import annotations

import logging
import resource
import socket
import threading
from typing import Any

import pytest

from ats_cffi.eventsystem import Continuation, EventCode, MIOBuffer, ProxyMutex
from ats_cffi.net import AcceptOptions, net_stats, throttle
from ats_cffi.net.codes import ENET_THROTTLING, NET_EVENT_OPEN, NET_EVENT_OPEN_FAILED, net_strerror
from ats_cffi.net.ratelog import RateLimitedLog

from .conftest import OPEN, Acceptor, client, on_thread, wait_until
from .test_connect import Recorder

THROTTLED_OUT = "proxy.process.net.connections_throttled_out"
THROTTLED_IN = "proxy.process.net.connections_throttled_in"


def test_net_strerror_names_the_net_errnos_and_the_systems() -> None:
    assert net_strerror(-ENET_THROTTLING) == "connections throttled"
    assert net_strerror(-111) == "Connection refused"


def test_a_low_fd_limit_leaves_a_throttle_a_quarter_under_it(start_net) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
    try:
        start_net(1)
        assert throttle.net_connections_throttle == 96  # ATS's 192 would leave none
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_connects_are_refused_at_the_limit_and_counted_out(start_net) -> None:
    net = start_net(1, **{"proxy.config.net.connections_throttle": 4})
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    port = listener.getsockname()[1]
    recs = [Recorder() for _ in range(6)]
    try:
        for r in recs:
            net.connect_re(r, ("127.0.0.1", port))
        assert wait_until(lambda: all(r.events for r in recs))
        events = [r.events[0][0] for r in recs]
        assert events.count(NET_EVENT_OPEN) == 4  # open x 1.0 reaches 4: the rest refused
        refused = [r.events[0] for r in recs if r.events[0][0] == NET_EVENT_OPEN_FAILED]
        assert refused == [(NET_EVENT_OPEN_FAILED, -ENET_THROTTLING)] * 2
        assert net_stats.get(THROTTLED_OUT) == 2
        for r in recs:
            if r.events[0][0] == NET_EVENT_OPEN:
                vc = r.events[0][1]
                with vc.mutex:
                    vc.do_io_close()
        assert wait_until(lambda: net_stats.get(OPEN) == 0)
    finally:
        listener.close()


def test_a_connect_on_a_net_thread_counts_open_before_its_socket_exists(start_net) -> None:
    net = start_net(1)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    rec = Recorder()
    thread = net.netthreads[0]

    def connect_and_count() -> int:
        action = net.connect_re(rec, ("127.0.0.1", port))
        counted = net_stats.get(OPEN)
        action.cancel()  # before its socket: uncounted again when its start runs
        return counted

    try:
        assert on_thread(thread, connect_and_count) == 1
        assert wait_until(lambda: net_stats.get(OPEN) == 0, what="the cancelled connect")
        assert rec.events == []
    finally:
        listener.close()


class Onward(Continuation):
    """Accepts and, for each accepted VC, connects onward at once (a tunnel's upstream)."""

    def __init__(self, net: Any, upstream: int) -> None:
        super().__init__(ProxyMutex())
        self.net, self.upstream = net, upstream
        self.accepted: list[Any] = []
        self.failed = 0
        self.opened: list[Any] = []
        self.set_handler(self.handle)

    def handle(self, event: int, data: Any) -> None:
        if event == NET_EVENT_OPEN_FAILED:
            self.failed += 1
        elif event == NET_EVENT_OPEN:
            self.opened.append(data)
        else:  # NET_EVENT_ACCEPT
            self.accepted.append(data)
            self.net.connect_re(self, ("127.0.0.1", self.upstream))


@pytest.mark.parametrize("onward", [0, 1])
def test_connects_per_accept_refuses_at_accept_what_could_not_connect_onward(
    start_net, onward: int
) -> None:
    net = start_net(1, **{"proxy.config.net.connections_throttle": 20})
    upstream = socket.create_server(("127.0.0.1", 0), backlog=64)
    cont = Onward(net, upstream.getsockname()[1])
    # Accepting on the net thread (as the command does): each accept batch's sessions start,
    # and count their connects, before the next batch is checked.
    opts = AcceptOptions(local_address="127.0.0.1", accept_threads=0, connects_per_accept=onward)
    action = net.accept(cont, opts)
    clients = []
    release = threading.Event()
    held = threading.Event()

    def hold() -> None:
        held.set()
        release.wait(5)

    try:
        # All 40 wait in the backlog while the net thread is held: one accept batch.
        waiter = threading.Thread(target=on_thread, args=(net.netthreads[0], hold))
        waiter.start()
        assert held.wait(5)
        for _ in range(40):
            clients.append(client(action.na.port))
        release.set()
        waiter.join()
        assert wait_until(
            lambda: len(cont.accepted) + net_stats.get(THROTTLED_IN) == 40, what="the accepts"
        )
        assert wait_until(lambda: len(cont.opened) + cont.failed == len(cont.accepted))
        # Limit 20, both ways: accepts stop at (open + onward) x 1.1 >= 20, connects at
        # open >= 20.
        if onward:  # every accepted client got its upstream: none refused after the accept
            assert (cont.failed, len(cont.opened), len(cont.accepted)) == (0, 9, 9)
        else:  # 19 accepted without counting their upstreams: 18 connects refused
            assert (len(cont.accepted), len(cont.opened), cont.failed) == (19, 1, 18)
    finally:
        action.cancel()
        for vc in cont.accepted + cont.opened:
            with vc.mutex:
                vc.do_io_close()
        for c in clients:
            c.close()
        upstream.close()
        assert wait_until(lambda: net_stats.get(OPEN) == 0, what="every VC closed")


def test_accept_options_check_connects_per_accept(start_net) -> None:
    net = start_net(1)
    for bad in (-1, 65, "1", 1.0):
        with pytest.raises(ValueError, match="connects_per_accept"):
            net.accept(Acceptor(), AcceptOptions(connects_per_accept=bad))


def test_a_repeated_failure_is_logged_once_per_interval_with_a_count(caplog) -> None:
    now = [100.0]
    rl = RateLimitedLog(logging.getLogger("t.rate"), logging.WARNING, 60.0, lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="t.rate"):
        assert rl("connect to %s failed", "x")
        for _ in range(5):
            now[0] += 10
            assert not rl("connect to %s failed", "x")
        now[0] += 10.5  # 60.5 s after the first line
        assert rl("connect to %s failed", "y")
        assert not rl("connect to %s failed", "z")
    assert [r.getMessage() for r in caplog.records] == [
        "connect to x failed",
        "connect to y failed (5 more since the last)",
    ]
    assert rl.suppressed == 1


class Idle(Continuation):
    """Reads from its VC and records the events it gets."""

    def __init__(self, vc: Any) -> None:
        super().__init__(ProxyMutex())
        self.vc = vc
        self.events: list[int] = []
        self.set_handler(lambda event, data: self.events.append(event))
        with self.mutex:  # type: ignore[union-attr]
            vc.do_io_read(self, 1 << 20, MIOBuffer(4096))


def test_the_active_queue_makes_room_by_closing_a_request_whose_timeout_passed(
    start_net,
) -> None:
    net = start_net(1, **{"proxy.config.net.max_requests_in": 1})
    sessions: list[Idle] = []
    acceptor = Acceptor(on_vc=lambda vc: sessions.append(Idle(vc)))
    action = net.accept(acceptor, AcceptOptions(local_address="127.0.0.1", accept_threads=0))
    with client(action.na.port), client(action.na.port):
        assert wait_until(lambda: len(sessions) == 2)
        a, b = sessions

        def queue(expire_first: bool) -> tuple[bool, bool]:
            with a.mutex, b.mutex:  # type: ignore[union-attr]
                first = a.vc.add_to_active_queue()
                if expire_first:  # a's request stalled past its inactivity timeout
                    a.vc.set_inactivity_timeout(1)
                    a.vc.next_inactivity_timeout_at = a.vc.nh.now - 1
                return first, b.vc.add_to_active_queue()

        assert on_thread(a.vc.thread, lambda: queue(False)) == (True, False)  # full
        assert net_stats.get("proxy.process.net.max.requests_throttled_in") == 1
        assert on_thread(a.vc.thread, lambda: queue(True)) == (True, True)
        assert a.events == [EventCode.VC_EVENT_INACTIVITY_TIMEOUT] and b.events == []
    action.cancel()
