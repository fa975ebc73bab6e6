"""connect_re / connect_s: open, refused, timed out, cancelled; connect_s off net threads only."""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ats_cffi.eventsystem import Continuation, EventCode, MIOBuffer, ProxyMutex
from ats_cffi.net import NetVCOptions, net_stats
from ats_cffi.net.codes import NET_EVENT_OPEN, NET_EVENT_OPEN_FAILED

from .conftest import OPEN, wait_until


class Recorder(Continuation):
    """Collects (event, data) pairs delivered to it, from whichever thread."""

    def __init__(self) -> None:
        super().__init__(ProxyMutex())
        self.events: list[tuple[int, Any]] = []
        self.got = threading.Event()
        self.set_handler(self.handle)

    def handle(self, event: int, data: Any) -> None:
        self.events.append((event, data))
        self.got.set()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_connect_re_opens_a_vc_that_moves_bytes(net, listen) -> None:
    _, acceptor, port = listen()
    rec = Recorder()
    net.connect_re(rec, ("127.0.0.1", port))
    assert rec.got.wait(5)
    event, vc = rec.events[0]
    assert event == NET_EVENT_OPEN
    acceptor.wait()
    assert vc.get_remote_addr() == ("127.0.0.1", port)
    assert vc.get_local_addr()[0] == "127.0.0.1"
    # Write through the connected VC; read it on the accepted one via a plain VIO.
    done = threading.Event()
    buf = MIOBuffer(4096)
    reader = buf.alloc_reader()
    buf.write(b"hello from connect_re")
    writer = Continuation(ProxyMutex(), lambda ev, vio: done.set())
    with writer.mutex:
        vc.do_io_write(writer, len(b"hello from connect_re"), reader)
    assert done.wait(5)
    assert vc.write.vio.ndone == len(b"hello from connect_re")
    vc.do_io_close()


def test_connect_re_to_a_closed_port_fails_with_econnrefused(net) -> None:
    rec = Recorder()
    net.connect_re(rec, ("127.0.0.1", closed_port()))
    assert rec.got.wait(5)
    assert rec.events == [(NET_EVENT_OPEN_FAILED, -errno.ECONNREFUSED)]
    deadline = time.monotonic() + 2
    while net_stats.get(OPEN) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert net_stats.get(OPEN) == 0
    assert net_stats.get("proxy.process.net.connect_failures") == 1


@contextlib.contextmanager
def full_backlog() -> Iterator[tuple[socket.socket, int]]:
    """``(listener, port)``: a listener whose backlog is full and that never accepts, so a
    connect to it stays pending (the kernel drops the SYNs)."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(0)
    port = ls.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(("127.0.0.1", port))
            fillers.append(f)
        yield ls, port
    finally:
        for f in fillers:
            f.close()
        ls.close()


@pytest.fixture
def stalled_port() -> Iterator[int]:
    with full_backlog() as (_, port):
        yield port


def test_connect_that_cannot_complete_times_out(net, stalled_port) -> None:
    port = stalled_port
    rec = Recorder()
    t0 = time.monotonic()
    net.connect_re(rec, ("127.0.0.1", port), NetVCOptions(connect_timeout=0.3))
    assert rec.got.wait(5)
    elapsed = time.monotonic() - t0
    event, data = rec.events[0]
    if event == NET_EVENT_OPEN:
        data.do_io_close()
        pytest.skip("the kernel completed the connect despite the full backlog")
    assert (event, data) == (NET_EVENT_OPEN_FAILED, -errno.ETIMEDOUT)
    assert 0.25 <= elapsed < 3


def test_cancelled_connect_sends_no_event_and_leaves_nothing_open(net, listen) -> None:
    _, acceptor, port = listen()
    rec = Recorder()
    with rec.mutex:  # hold the mutex: the connect cannot report before cancel()
        action = net.connect_re(rec, ("127.0.0.1", port))
        action.cancel()
    time.sleep(0.2)
    # The connect was cancelled before it could start: no event, no socket, no peer.
    assert rec.events == []
    assert acceptor.vcs == []
    assert net_stats.get(OPEN) == 0


def test_cancel_while_connecting_closes_the_socket(net, stalled_port) -> None:
    port = stalled_port
    rec = Recorder()
    action = net.connect_re(rec, ("127.0.0.1", port), NetVCOptions(connect_timeout=5))
    deadline = time.monotonic() + 2
    while not action.vc.connecting and not rec.events and time.monotonic() < deadline:
        time.sleep(0.005)
    if rec.events:
        pytest.skip("the kernel completed the connect despite the full backlog")
    action.cancel()
    deadline = time.monotonic() + 2
    while net_stats.get(OPEN) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert net_stats.get(OPEN) == 0
    assert action.vc.fd == -1
    time.sleep(0.1)
    assert rec.events == []


def test_connect_s_returns_an_open_vc_from_a_plain_thread(net, listen) -> None:
    _, acceptor, port = listen()
    vc = net.connect_s(("127.0.0.1", port), timeout=5)
    try:
        assert vc.fd >= 0 and not vc.closed
        acceptor.wait()
        assert vc.get_remote_addr()[1] == port
    finally:
        vc.do_io_close()


def test_connect_s_raises_the_connect_errno(net) -> None:
    with pytest.raises(ConnectionRefusedError) as info:
        net.connect_s(("127.0.0.1", closed_port()), timeout=5)
    assert info.value.errno == errno.ECONNREFUSED
    assert "connect_s" in str(info.value)


def test_connect_s_refuses_to_run_on_a_net_thread(net, listen) -> None:
    _, _, port = listen()
    outcome: list[BaseException] = []
    done = threading.Event()

    def on_thread(event: int, e: Any) -> None:
        try:
            net.connect_s(("127.0.0.1", port), timeout=1)
        except BaseException as exc:
            outcome.append(exc)
        done.set()

    net.netthreads[0].schedule_imm(Continuation(ProxyMutex(), on_thread))
    assert done.wait(5)
    assert isinstance(outcome[0], RuntimeError)
    assert "event thread" in str(outcome[0])


def test_connect_over_ipv6_loopback(net, listen) -> None:
    _, acceptor, port = listen(local_address="::1")
    vc = net.connect_s(("::1", port), timeout=5)
    try:
        assert vc.get_remote_addr()[:2] == ("::1", port)
        acceptor.wait()
    finally:
        vc.do_io_close()


@pytest.mark.parametrize(
    ("addr", "exc", "match"),
    [
        ("127.0.0.1:80", TypeError, "connect_re: addr"),
        (("127.0.0.1", 0), ValueError, "connect_re: port"),
        (("127.0.0.1", "80"), ValueError, "connect_re: port"),
        ((127, 80), TypeError, "connect_re: host"),
    ],
)
def test_connect_re_rejects_bad_addresses(net, addr: Any, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        net.connect_re(Recorder(), addr)


def test_connect_re_rejects_a_non_continuation(net) -> None:
    with pytest.raises(TypeError, match="connect_re: cont"):
        net.connect_re(lambda ev, d: None, ("127.0.0.1", 80))


def test_connect_re_reports_a_vc_that_can_be_read_until_eos(net, listen) -> None:
    def on_vc(vc: Any) -> None:
        buf = MIOBuffer(1024)
        r = buf.alloc_reader()
        buf.write(b"greeting")
        vc.do_io_write(Continuation(ProxyMutex(), lambda ev, vio: vc.do_io_close()), 8, r)

    _, _, port = listen(on_vc)
    got = bytearray()
    eos = threading.Event()
    buf = MIOBuffer(1024)
    reader = buf.alloc_reader()

    def on_read(event: int, vio: Any) -> None:
        got.extend(reader.read())
        if event == EventCode.VC_EVENT_EOS:
            vio.vc_server.do_io_close()
            eos.set()
        else:
            vio.reenable()

    rcont = Continuation(ProxyMutex(), on_read)

    def on_open(event: int, vc: Any) -> None:
        assert event == NET_EVENT_OPEN
        vc.do_io_read(rcont, 1 << 20, buf)

    opener = Continuation(rcont.mutex, on_open)
    net.connect_re(opener, ("127.0.0.1", port))
    assert eos.wait(5)
    assert bytes(got) == b"greeting"


def test_connect_re_from_a_net_thread_stays_on_that_thread(net, listen) -> None:
    _, _, port = listen()
    rec = Recorder()
    seen: list[Any] = []

    def on_thread(event: int, e: Any) -> None:
        seen.append(e.ethread)
        net.connect_re(rec, ("127.0.0.1", port))

    for thread in net.netthreads:
        rec.got.clear()
        rec.events.clear()
        thread.schedule_imm(Continuation(ProxyMutex(), on_thread))
        assert rec.got.wait(5)
        event, vc = rec.events[0]
        assert event == NET_EVENT_OPEN
        assert vc.thread is thread
        vc.do_io_close()


@pytest.mark.parametrize(
    ("opts", "exc", "match"),
    [
        (NetVCOptions(local_address=("::1", 0)), ValueError, "local_address '::1' is not of"),
        (NetVCOptions(local_address=("127.0.0.1", 70000)), ValueError, "local_address port"),
        (NetVCOptions(local_address="127.0.0.1"), TypeError, "local_address must be a"),
        (NetVCOptions(local_address=("127.0.0.1\0x", 0)), ValueError, "numeric IP address"),
        (NetVCOptions(local_address=("localhost", 0)), ValueError, "numeric IP address"),
        (NetVCOptions(recv_bufsize=2**31), ValueError, "recv_bufsize must be in 0..2147483647"),
        (NetVCOptions(linger_seconds=-1), ValueError, "linger_seconds must be in"),
    ],
)
def test_connect_re_rejects_bad_options_before_opening_anything(
    net, opts: NetVCOptions, exc: type, match: str
) -> None:
    # These used to fail on the net thread after the socket was made: the fd leaked and the
    # continuation never heard back.
    rec = Recorder()
    with pytest.raises(exc, match=f"connect_re: NetVCOptions.*{match}"):
        net.connect_re(rec, ("127.0.0.1", closed_port()), opts)
    assert rec.events == []
    assert net_stats.get(OPEN) == 0


def test_connect_re_binds_a_good_local_address(net, listen) -> None:
    _, acceptor, port = listen()
    vc = net.connect_s(("127.0.0.1", port), timeout=5, options=NetVCOptions(
        local_address=("127.0.0.1", 0)))  # fmt: skip
    try:
        assert vc.get_local_addr()[0] == "127.0.0.1"
        acceptor.wait()
    finally:
        vc.do_io_close()


def test_a_connect_failure_waits_for_a_busy_mutex_without_blocking_the_net_thread(net) -> None:
    # The connect fails on the net thread (a reset to a SYN retransmitted after the listener
    # closed) while another thread holds the continuation's mutex: the net thread must go on
    # serving its other events, and the failure must arrive once the mutex is free.
    with full_backlog() as (ls, port):
        rec = Recorder()
        action = net.connect_re(rec, ("127.0.0.1", port), NetVCOptions(connect_timeout=10))
        assert wait_until(lambda: action.vc.connecting or rec.events, 2)
        if rec.events:
            pytest.skip("the kernel completed the connect despite the full backlog")
        thread = action.vc.thread
        with rec.mutex:
            ls.close()  # the next SYN retransmit (about 1 s) gets a reset
            deadline = time.monotonic() + 4
            while action.vc.connecting and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not action.vc.connecting, "the connect did not fail within 4 s"
            ran = threading.Event()
            thread.schedule_imm_signal(Continuation(ProxyMutex(), lambda e, d: ran.set()))
            assert ran.wait(2), "the net thread waited for the continuation's mutex"
            assert rec.events == []  # not delivered without the mutex
        assert rec.got.wait(2)
        assert rec.events == [(NET_EVENT_OPEN_FAILED, -errno.ECONNREFUSED)]
    assert wait_until(lambda: net_stats.get(OPEN) == 0, 2)


def test_cancel_from_an_event_thread_while_the_mutex_is_busy_closes_the_connect_later(
    net, stalled_port
) -> None:
    # On an event thread, cancel() does not wait for a mutex another thread holds: it marks
    # the connect cancelled at once and closes the socket once the mutex is free.
    rec = Recorder()
    action = net.connect_re(rec, ("127.0.0.1", stalled_port), NetVCOptions(connect_timeout=5))
    assert wait_until(lambda: action.vc.connecting or rec.events, 2)
    if rec.events:
        pytest.skip("the kernel completed the connect despite the full backlog")
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with rec.mutex:
            taken.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert taken.wait(5)
    took: list[float] = []

    def cancel_it(event: int, e: Any) -> None:
        t0 = time.monotonic()
        action.cancel()
        took.append(time.monotonic() - t0)

    net.netthreads[0].schedule_imm(Continuation(ProxyMutex(), cancel_it))
    try:
        assert wait_until(lambda: took, 2)
        assert took[0] < 0.2 and action.cancelled
        assert net_stats.get(OPEN) == 1  # closed only once the mutex is free
    finally:
        release.set()
        holder.join(5)
    assert wait_until(lambda: net_stats.get(OPEN) == 0, 2)
    assert rec.events == []
