"""NetAccept: the three accept modes under concurrent clients, per-pass limits, throttling,
TCP_DEFER_ACCEPT, IPv6, cancel."""

from __future__ import annotations

import os
import socket
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from ats_cffi._native import lib
from ats_cffi.eventsystem import Continuation, EventCode, ProxyMutex, this_ethread
from ats_cffi.net import AcceptOptions, net_stats
from ats_cffi.net.accept import accept_error_seriousness
from tests.net.conftest import (
    OPEN,
    TCP_ESTABLISHED,
    Echo,
    asleep_in_the_kernel,
    client,
    recv_exactly,
    tcp_state,
    wait_until,
)

THROTTLED = "proxy.process.net.connections_throttled_in"


class CountingEcho(Echo):
    """An Echo that records which net thread runs it."""

    threads: Counter[str] = Counter()
    lock = threading.Lock()

    def __init__(self, vc: Any) -> None:
        super().__init__(vc)
        with CountingEcho.lock:
            CountingEcho.threads[this_ethread().name] += 1


def echo_round(port: int, i: int, host: str = "127.0.0.1") -> bool:
    payload = f"client {i:05d} ".encode() * 7
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(payload)
        return recv_exactly(s, len(payload)) == payload


MODES = {
    "accept_threads=2": dict(accept_threads=2),
    "per_thread": dict(accept_threads=0),
    "per_thread_reuseport": dict(accept_threads=0, reuseport=True),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_each_accept_mode_serves_2000_concurrent_clients_spread_over_the_net_threads(
    net, listen, mode: str
) -> None:
    CountingEcho.threads = Counter()
    _, acceptor, port = listen(on_vc=CountingEcho, **MODES[mode])
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: echo_round(port, i), range(2000)))
    assert results.count(True) == 2000
    assert wait_until(lambda: sum(CountingEcho.threads.values()) == 2000)
    assert len(acceptor.vcs) == 2000
    # Both net threads got connections.
    assert len(CountingEcho.threads) == 2, CountingEcho.threads
    assert min(CountingEcho.threads.values()) >= 20, CountingEcho.threads
    assert net_stats.get("proxy.process.tcp.total_accepts") == 2000
    assert wait_until(lambda: net_stats.get(OPEN) == 0)


def test_a_backlog_of_200_is_fully_accepted_with_one_additional_accept_per_pass(
    start_net,
) -> None:
    net = start_net(1, **{"proxy.config.net.additional_accepts": 1})
    from tests.net.conftest import Acceptor

    acceptor = Acceptor()
    action = net.accept(acceptor, AcceptOptions(local_address="127.0.0.1", accept_threads=0))
    port = action.na.port
    release = threading.Event()
    # Hold the only net thread, so that the 200 connections pile up behind one edge.
    net.netthreads[0].schedule_imm(Continuation(ProxyMutex(), lambda ev, e: release.wait(10)))
    clients = []
    try:
        for _ in range(200):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", port))
            clients.append(c)
        # Every handshake done: all 200 wait in the backlog, behind one edge.
        wait_until(
            lambda: all(tcp_state(c) == TCP_ESTABLISHED for c in clients),
            what="the 200 connections established",
        )
        release.set()
        acceptor.wait(200, timeout=10)
        assert len(acceptor.vcs) == 200
    finally:
        release.set()
        for vc in acceptor.vcs:
            vc.do_io_close()
        for c in clients:
            c.close()
        action.cancel()


@pytest.mark.parametrize("mode", ["accept_threads=2", "per_thread"])
def test_throttle_holds_the_limit_and_sends_the_message_then_serves_again(
    start_net, mode: str
) -> None:
    net = start_net(2, **{"proxy.config.net.connections_throttle": 50})
    from tests.net.conftest import Acceptor

    acceptor = Acceptor(on_vc=Echo)
    opts = AcceptOptions(local_address="127.0.0.1", throttle_message=b"busy\r\n", **MODES[mode])
    action = net.accept(acceptor, opts)
    port = action.na.port
    backdoor = Acceptor(on_vc=Echo)
    bd_action = net.accept(backdoor, AcceptOptions(local_address="127.0.0.1", backdoor=True))
    holders: list[socket.socket] = []
    peak = [0]
    stop_sampling = threading.Event()

    def sample() -> None:
        while not stop_sampling.wait(0.001):  # a sample a millisecond: the peak's resolution
            peak[0] = max(peak[0], net_stats.get(OPEN))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for _ in range(200):
            holders.append(client(port))
        # A client is either held (echo works) or got the message and was closed.
        served = refused = 0
        for h in holders:
            h.settimeout(2)
            try:
                h.sendall(b"ping")
                got = h.recv(16)
            except (ConnectionResetError, BrokenPipeError):
                got = b""
            if got == b"ping":
                served += 1
            else:
                assert got in (b"busy\r\n", b""), got
                refused += 1
        assert served + refused == 200
        assert 0 < served <= 50
        assert net_stats.get(THROTTLED) == refused
        assert peak[0] <= 50
        # The backdoor listener is exempt while the throttle is on.
        with client(bd_action.na.port) as b:
            b.sendall(b"backdoor")
            assert recv_exactly(b, 8) == b"backdoor"
    finally:
        stop_sampling.set()
        sampler.join()
        for h in holders:
            h.close()
    # After the holders leave, new clients are served again.
    assert wait_until(lambda: net_stats.get(OPEN) == 0)
    assert echo_round(port, 1)
    action.cancel()
    bd_action.cancel()


def test_defer_accept_is_set_on_the_listen_socket_and_a_request_sent_with_the_connect_is_answered(
    net, listen
) -> None:
    action, acceptor, port = listen(on_vc=Echo, defer_accept=2, accept_threads=0)
    got = lib.TCP_DEFER_ACCEPT
    from ats_cffi import sys as s

    assert s.getsockopt_int(action.na.server_fd, lib.IPPROTO_TCP, got) >= 2
    with client(port) as c:
        c.sendall(b"request sent with the connect")
        assert recv_exactly(c, 29) == b"request sent with the connect"
    acceptor.wait()
    assert acceptor.vcs[0].read.vio.ndone == 29


def test_ipv6_loopback_listener_serves_clients(net, listen) -> None:
    _, _, port = listen(on_vc=Echo, local_address="::1")
    assert echo_round(port, 6, host="::1")


def test_localhost_only_binds_the_loopback_address(net, listen) -> None:
    action, _, port = listen(on_vc=Echo, local_address=None, localhost_only=True)
    assert action.na.local_addr == ("127.0.0.1", port)
    assert echo_round(port, 7)


@pytest.mark.parametrize("mode", list(MODES) + ["periodic"])
def test_cancel_stops_accepting_closes_the_socket_and_joins_accept_threads(net, mode: str) -> None:
    from tests.net.conftest import Acceptor

    opts = dict(MODES.get(mode, {}))
    if mode == "periodic":
        opts["frequent_accept"] = False
    acceptor = Acceptor(on_vc=Echo)
    action = net.accept(acceptor, AcceptOptions(local_address="127.0.0.1", **opts))
    port = action.na.port
    assert echo_round(port, 1)
    threads_before = {t.name for t in threading.enumerate()}
    accept_threads = {n for n in threads_before if n.startswith("[ACCEPT")}
    assert len(accept_threads) == (2 if mode == "accept_threads=2" else 0)
    action.cancel()
    assert not any(t.name.startswith("[ACCEPT") for t in threading.enumerate())
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    assert action.na.server_fds == []
    assert net_stats.get("proxy.process.net.accepts_currently_open") == 0


@pytest.mark.parametrize("mode", list(MODES) + ["periodic"])
def test_the_accept_continuation_can_cancel_its_accept_from_its_handler(net, mode: str) -> None:
    # "Take one connection, then stop listening": the cancel runs inside the accept pass. It
    # used to deadlock the net thread on the listener's fd lock in every mode but the
    # accept threads'.
    opts = dict(MODES.get(mode, {}))
    if mode == "periodic":
        opts["frequent_accept"] = False
    holder: dict[str, Any] = {}
    handled = threading.Event()

    def on_accept(event: int, vc: Any) -> None:
        vc.do_io_close()
        wait_until(lambda: "action" in holder, what="the accept call to return")
        holder["action"].cancel()
        holder["thread"] = this_ethread()
        handled.set()

    cont = Continuation(ProxyMutex(), on_accept)
    holder["action"] = action = net.accept(cont, AcceptOptions(local_address="127.0.0.1", **opts))
    port = action.na.port
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        assert handled.wait(5), "the handler did not return from cancel()"
    ran = threading.Event()
    holder["thread"].schedule_imm_signal(Continuation(ProxyMutex(), lambda e, d: ran.set()))
    assert ran.wait(5), "the net thread is stuck"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    assert action.na.server_fds == []


def _listening_fd() -> tuple[int, Callable[[], None]]:
    """A listening socket's fd for main_accept, and a function that stops it listening
    behind the listener's back (``shutdown`` through a dup: accept4 then fails with EINVAL,
    and the listen socket reports an edge). main_accept refuses an fd that is not
    listening, so this is how a fatal accept error comes now."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen()
    fd = ls.detach()
    dup = socket.socket(fileno=os.dup(fd))

    def stop_listening() -> None:
        # Let the accept threads wait on it first (none, when the net threads accept).
        accept_threads = [t for t in threading.enumerate() if t.name.startswith("[ACCEPT")]
        wait_until(
            lambda: all(asleep_in_the_kernel(t) for t in accept_threads),
            what="the accept threads to wait for a connection",
        )
        dup.shutdown(socket.SHUT_RDWR)
        dup.close()

    return fd, stop_listening


@pytest.mark.parametrize("accept_threads", [0, 1])
def test_the_accept_continuation_can_cancel_its_accept_on_event_error(
    net, accept_threads: int
) -> None:
    # EVENT_ERROR comes on the thread that accepts: a net thread (inside the accept pass) or
    # an accept thread (which cancel() used to try to join: RuntimeError, listener left open).
    holder: dict[str, Any] = {}
    errors: list[BaseException] = []
    handled = threading.Event()

    def on_error(event: int, data: Any) -> None:
        wait_until(lambda: "action" in holder, what="the main_accept call to return")
        try:
            holder["action"].cancel()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        handled.set()

    cont = Continuation(ProxyMutex(), on_error)
    fd, stop_listening = _listening_fd()
    holder["action"] = action = net.main_accept(
        cont, fd, AcceptOptions(accept_threads=accept_threads)
    )
    stop_listening()  # accept4 now fails with EINVAL, a fatal error
    assert handled.wait(5), "the handler did not return from cancel()"
    assert errors == []
    assert wait_until(lambda: not any(t.name.startswith("[ACCEPT") for t in threading.enumerate()))
    assert action.na.server_fds == []


def test_accept_on_an_already_listening_socket_with_main_accept(net) -> None:
    from tests.net.conftest import Acceptor

    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    fd = ls.detach()
    acceptor = Acceptor(on_vc=Echo)
    action = net.main_accept(acceptor, fd, AcceptOptions(accept_threads=0))
    try:
        assert echo_round(action.na.port, 3)
    finally:
        action.cancel()


def test_a_port_in_use_raises_oserror_naming_bind(net) -> None:
    from tests.net.conftest import Acceptor

    first = net.accept(Acceptor(), AcceptOptions(local_address="127.0.0.1"))
    try:
        with pytest.raises(OSError, match="bind") as info:
            net.accept(Acceptor(), AcceptOptions(local_address="127.0.0.1", port=first.na.port))
        assert info.value.errno == 98  # EADDRINUSE
    finally:
        first.cancel()


@pytest.mark.parametrize(
    ("opts", "exc", "match"),
    [
        (dict(port=70000), ValueError, "port"),
        (dict(port="80"), TypeError, "port"),
        (dict(accept_threads=-1), ValueError, "accept_threads"),
        (dict(accept_threads=5000), ValueError, "accept_threads must be None or an int in"),
        (dict(backlog=2**31), ValueError, "backlog"),
        (dict(recv_bufsize=2**31), ValueError, "recv_bufsize"),
        (dict(ip_family=99), ValueError, "ip_family"),
        (dict(throttle_message="text"), TypeError, "throttle_message"),
        (dict(local_address=1), TypeError, "local_address"),
    ],
)
def test_bad_accept_options_raise_clear_errors(net, opts: dict, exc: type, match: str) -> None:
    from tests.net.conftest import Acceptor

    with pytest.raises(exc, match=match):
        net.accept(Acceptor(), AcceptOptions(**opts))


def test_accept_error_seriousness_classes_follow_ats() -> None:
    import errno

    assert accept_error_seriousness(errno.ECONNABORTED) == 2
    for e in (errno.EAGAIN, errno.ECONNRESET, errno.EPIPE):
        assert accept_error_seriousness(e) == 1
    for e in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
        assert accept_error_seriousness(e) == 0
    for e in (errno.EBADF, errno.EINVAL, errno.ENOTSOCK):
        assert accept_error_seriousness(e) == -1


def test_fatal_accept_error_reaches_the_accept_continuation_as_event_error(net) -> None:
    got: list[tuple[int, Any]] = []
    done = threading.Event()

    def handler(event: int, data: Any) -> None:
        got.append((event, data))
        done.set()

    cont = Continuation(ProxyMutex(), handler)
    fd, stop_listening = _listening_fd()
    action = net.main_accept(cont, fd, AcceptOptions(accept_threads=1))
    stop_listening()  # accept4 now fails with EINVAL, a fatal error
    try:
        assert done.wait(5)
        assert got[0] == (EventCode.EVENT_ERROR, -22)
    finally:
        action.cancel()


@pytest.mark.parametrize("mode", list(MODES))
def test_a_vc_closed_inside_net_event_accept_never_reaches_epoll(net, listen, mode) -> None:
    from ats_cffi.net.nethandler import get_net_handler

    _, acceptor, port = listen(on_vc=lambda vc: vc.do_io_close(), **MODES[mode])
    for _ in range(20):
        with client(port) as c:
            c.settimeout(5)
            assert c.recv(1) == b""  # closed by the server
    acceptor.wait(20)
    assert wait_until(lambda: net_stats.get(OPEN) == 0)
    for t in net.netthreads:
        pd = get_net_handler(t).pd
        # Only the thread's own registrations (eventfd, listen sockets) are left.
        assert all(eio.type.name != "EVENTIO_READWRITE_VC" for eio in pd.registered())
        assert not pd.pending


@pytest.mark.parametrize("mode", list(MODES))
def test_bytes_sent_before_the_vc_is_registered_are_read(net, listen, mode) -> None:
    """The client sends with the connect; the acceptor asks to read only later, from
    another event: the deferred registration must still report the bytes."""

    def later(vc: Any) -> None:
        vc.thread.schedule_in(Continuation(vc.mutex, lambda ev, e: Echo(vc)), 0.05)

    _, _, port = listen(on_vc=later, **MODES[mode])
    for i in range(10):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(b"hello %d" % i)
            assert recv_exactly(c, 7) == b"hello %d" % i


def test_shutdown_right_after_connects_leaves_no_accepted_fd_open() -> None:
    # The accept thread hands each batch to its net thread through an event; a shutdown
    # that stopped the net thread before it ran that event left the batch's fds open.
    # (The suite's guard counts the fds after the test.)
    from ats_cffi.net import net_processor

    for _ in range(30):
        net_processor.start(1)
        try:
            cont = Continuation(ProxyMutex(), lambda event, vc: None)
            action = net_processor.accept(
                cont, AcceptOptions(local_address="127.0.0.1", accept_threads=1)
            )
            clients = [
                socket.create_connection(("127.0.0.1", action.na.port), timeout=5)
                for _ in range(20)
            ]
        finally:
            net_processor.shutdown()
        for c in clients:
            c.close()


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize(
    ("opts", "nodelay", "keepalive"),
    [
        ({}, 1, 0),  # the default: TCP_NODELAY only, set by the accept batch's native call
        ({"sockopt_flags": 0}, 0, 0),
        ({"sockopt_flags": 3}, 1, 1),  # TCP_NODELAY and SO_KEEPALIVE: set per VC
        ({"recv_bufsize": 65536}, 1, 0),
    ],
)
def test_accepted_sockets_get_the_options_asked_for_in_each_mode(
    net, listen, mode: str, opts: dict, nodelay: int, keepalive: int
) -> None:
    from ats_cffi import sys as _sys

    got: list[tuple[int, int]] = []

    def on_vc(vc: Any) -> None:
        got.append(
            (
                _sys.getsockopt_int(vc.fd, socket.IPPROTO_TCP, socket.TCP_NODELAY),
                _sys.getsockopt_int(vc.fd, socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            )
        )
        vc.do_io_close()

    _, acceptor, port = listen(on_vc=on_vc, **MODES[mode], **opts)
    for _ in range(5):
        with client(port) as c:
            c.settimeout(5)
            assert c.recv(1) == b""
    acceptor.wait(5)
    assert [(bool(n), bool(k)) for n, k in got] == [(bool(nodelay), bool(keepalive))] * 5
