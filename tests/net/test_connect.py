"""connect_re / connect_s: open, refused, timed out, cancelled; connect_s off net threads only.

The connect timeout and the retries of a busy mutex run on the fake clock (``fake_net``);
what the kernel does (a connect completing or refused, a SYN retransmitted) is awaited
with ``wait_until``."""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from ats_cffi.eventsystem import Continuation, EventCode, MIOBuffer, ProxyMutex, this_ethread
from ats_cffi.net import NetVCOptions, net_stats
from ats_cffi.net.codes import NET_EVENT_OPEN, NET_EVENT_OPEN_FAILED

from .conftest import OPEN, client, wait_until


class Recorder(Continuation):
    """Collects (event, data) pairs delivered to it, from whichever thread, and the reading
    of the delivering net thread's clock for each (``times``)."""

    def __init__(self) -> None:
        super().__init__(ProxyMutex())
        self.events: list[tuple[int, Any]] = []
        self.times: list[float] = []
        self.got = threading.Event()
        self.set_handler(self.handle)

    def handle(self, event: int, data: Any) -> None:
        self.events.append((event, data))
        t = this_ethread()
        self.times.append(t.clock() if t is not None else float("nan"))
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
    wait_until(lambda: net_stats.get(OPEN) == 0, what="the refused VC freed")
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


def stalled_connect(net: Any, port: int, timeout: float) -> tuple[Recorder, Any]:
    """``connect_re`` to ``port`` (a full backlog) with a connect timeout of ``timeout``;
    returns once the connect is under way (skips the test if the kernel completed it)."""
    rec = Recorder()
    action = net.connect_re(rec, ("127.0.0.1", port), NetVCOptions(connect_timeout=timeout))
    wait_until(lambda: action.vc.connecting or rec.events, what="the connect to start")
    if rec.events:
        if rec.events[0][0] == NET_EVENT_OPEN:
            rec.events[0][1].do_io_close()
        pytest.skip("the kernel completed the connect despite the full backlog")
    return rec, action


def test_connect_that_cannot_complete_times_out_at_its_deadline(
    fake_net, fake_clock, stalled_port
) -> None:
    start = fake_clock.now  # the clock does not move until the test moves it
    rec, action = stalled_connect(fake_net, stalled_port, 0.25)
    fake_clock.advance(0.25 - 1 / 64)
    assert rec.events == [] and action.vc.connecting, "timed out before its deadline"
    fake_clock.advance(1 / 64)
    assert rec.events == [(NET_EVENT_OPEN_FAILED, -errno.ETIMEDOUT)]
    assert rec.times == [start + 0.25]
    wait_until(lambda: net_stats.get(OPEN) == 0, what="the timed-out VC freed")


def test_cancelled_connect_sends_no_event_and_leaves_nothing_open(
    fake_net, fake_clock, fake_listen
) -> None:
    _, acceptor, port = fake_listen()
    rec = Recorder()
    with rec.mutex:  # hold the mutex: the connect cannot report before cancel()
        action = fake_net.connect_re(rec, ("127.0.0.1", port))
        action.cancel()
    fake_clock.advance(1.0)  # the connect's start, put off while the mutex was held, has run
    # The connect was cancelled before it could start: no event, no socket, no peer. The
    # peer a connect would have made would be accepted before this one (the backlog is
    # first in, first out): the first connection accepted is this one.
    assert action.vc.fd == -1
    with client(port) as c:
        acceptor.wait()
        fake_clock.settle()  # every accept handed to the net threads has been delivered
        assert [vc.get_remote_addr() for vc in acceptor.vcs] == [c.getsockname()]
        acceptor.vcs[0].do_io_close()
    assert rec.events == []
    wait_until(lambda: net_stats.get(OPEN) == 0, what="the accepted VC freed")


def test_cancel_while_connecting_closes_the_socket(fake_net, fake_clock, stalled_port) -> None:
    rec, action = stalled_connect(fake_net, stalled_port, 5)
    action.cancel()
    wait_until(lambda: net_stats.get(OPEN) == 0, what="the cancelled VC freed")
    assert action.vc.fd == -1
    fake_clock.advance(10)  # past the connect timeout too
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


def test_a_connect_failure_waits_for_a_busy_mutex_without_blocking_the_net_thread(
    fake_net, fake_clock
) -> None:
    # The connect fails on the net thread (a reset to a SYN retransmitted after the listener
    # closed) while another thread holds the continuation's mutex: the net thread must go on
    # serving its other events, and the failure must arrive once the mutex is free.
    with full_backlog() as (ls, port):
        rec, action = stalled_connect(fake_net, port, 10)
        thread = action.vc.thread
        with rec.mutex:
            ls.close()  # the next SYN retransmit (about 1 s, the kernel's) gets a reset
            wait_until(lambda: not action.vc.connecting, what="the connect to fail")
            ran = threading.Event()
            thread.schedule_imm_signal(Continuation(ProxyMutex(), lambda e, d: ran.set()))
            assert ran.wait(2), "the net thread waited for the continuation's mutex"
            fake_clock.advance(1.0)  # retried: the mutex is still busy
            assert rec.events == []  # not delivered without the mutex
        fake_clock.advance(1.0)  # the next retry finds it free
        assert rec.events == [(NET_EVENT_OPEN_FAILED, -errno.ECONNREFUSED)]
    wait_until(lambda: net_stats.get(OPEN) == 0, what="the failed VC freed")


def test_cancel_from_an_event_thread_while_the_mutex_is_busy_closes_the_connect_later(
    fake_net, fake_clock, stalled_port
) -> None:
    # On an event thread, cancel() does not wait for a mutex another thread holds: it marks
    # the connect cancelled at once and closes the socket once the mutex is free.
    rec, action = stalled_connect(fake_net, stalled_port, 5)
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with rec.mutex:
            taken.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert taken.wait(5)
    # Who held the mutex when cancel() returned: still the holder, who lets go only when
    # the test says so, if cancel() did not wait for it.
    held_by: list[int | None] = []

    def cancel_it(event: int, e: Any) -> None:
        action.cancel()
        held_by.append(rec.mutex.thread_holding)

    fake_net.netthreads[0].schedule_imm(Continuation(ProxyMutex(), cancel_it))
    try:
        wait_until(lambda: held_by, what="the event thread's cancel() to return")
        assert held_by == [holder.ident] and action.cancelled
        fake_clock.advance(1.0)  # retried meanwhile: the mutex is still busy
        assert net_stats.get(OPEN) == 1  # closed only once the mutex is free
    finally:
        release.set()
        holder.join(5)
    fake_clock.advance(1.0)  # the next retry finds it free
    assert net_stats.get(OPEN) == 0
    assert rec.events == []
