"""Stats that match reality, and bad input that raises a clear error (DESIGN.md section 10)."""

from __future__ import annotations

import errno
import random
import threading
from collections.abc import Callable
from typing import Any

import pytest

from ats_cffi.eventsystem import INT64_MAX, VIO, Continuation, MIOBuffer, ProxyMutex
from ats_cffi.eventsystem.codes import VC_EVENT_ERROR
from ats_cffi.net import AcceptOptions, UnixNetVConnection, net_stats
from ats_cffi.net.codes import IO_SHUTDOWN_READ
from tests.conftest import interpreted_only, settle
from tests.net.conftest import (
    OPEN,
    Acceptor,
    Echo,
    client,
    recv_exactly,
    unacked_bytes,
    wait_until,
)

READ_BYTES = "proxy.process.net.read_bytes"
WRITE_BYTES = "proxy.process.net.write_bytes"
TOTAL_ACCEPTS = "proxy.process.tcp.total_accepts"


def test_connections_currently_open_follows_the_clients_up_and_back_to_zero(net, listen):
    _, acceptor, port = listen(on_vc=Echo)
    n = 8
    clients = [client(port) for _ in range(n)]
    try:
        acceptor.wait(n)
        assert wait_until(lambda: net_stats.get(OPEN) == n)
        settle(net.netthreads)  # and stays there
        assert net_stats.get(OPEN) == n
        assert net_stats.get(TOTAL_ACCEPTS) == n
        for s in clients[: n // 2]:
            s.close()
        assert wait_until(lambda: net_stats.get(OPEN) == n - n // 2)
    finally:
        for s in clients:
            s.close()
    assert wait_until(lambda: net_stats.get(OPEN) == 0)
    settle(net.netthreads)  # and stays there
    assert net_stats.get(OPEN) == 0


def test_read_and_write_bytes_count_exactly_the_bytes_of_an_echo_exchange(listen):
    _, acceptor, port = listen(on_vc=Echo)
    payload = random.Random(3).randbytes(200_000)
    with client(port) as c:
        sender = threading.Thread(target=c.sendall, args=(payload,))
        sender.start()
        try:
            echoed = recv_exactly(c, len(payload))
        finally:
            sender.join(5.0)
    assert echoed == payload
    assert wait_until(lambda: net_stats.get(OPEN) == 0)
    assert net_stats.get(READ_BYTES) == len(payload)
    assert net_stats.get(WRITE_BYTES) == len(payload)


class Idle(Continuation):
    def __init__(self) -> None:
        super().__init__(ProxyMutex(), lambda event, data: None)


def _dead_reader() -> Any:
    r = MIOBuffer().alloc_reader()
    r.dealloc()
    return r


BAD_CALLS: list[tuple[str, Callable[[Any, Continuation], Any], type[Exception], str]] = [
    ("do_io_read-negative-nbytes",
     lambda vc, c: vc.do_io_read(c, -1, MIOBuffer()), ValueError, "do_io_read"),
    ("do_io_read-nbytes-above-int64-max",
     lambda vc, c: vc.do_io_read(c, INT64_MAX + 1, MIOBuffer()), ValueError, "do_io_read"),
    ("do_io_read-float-nbytes",
     lambda vc, c: vc.do_io_read(c, 1.5, MIOBuffer()), TypeError, "do_io_read"),
    ("do_io_write-negative-nbytes",
     lambda vc, c: vc.do_io_write(c, -5, MIOBuffer().alloc_reader()), ValueError, "do_io_write"),
    ("do_io_read-buf-not-an-MIOBuffer",
     lambda vc, c: vc.do_io_read(c, 10, bytearray(10)), TypeError, "MIOBuffer"),
    ("do_io_read-given-a-reader",
     lambda vc, c: vc.do_io_read(c, 10, MIOBuffer().alloc_reader()), TypeError, "MIOBuffer"),
    ("do_io_write-given-a-buffer",
     lambda vc, c: vc.do_io_write(c, 10, MIOBuffer()), TypeError, "IOBufferReader"),
    ("do_io_write-deallocated-reader",
     lambda vc, c: vc.do_io_write(c, 10, _dead_reader()), ValueError, "deallocated"),
    ("do_io_read-cont-not-a-continuation",
     lambda vc, c: vc.do_io_read(object(), 10, MIOBuffer()), TypeError, "Continuation"),
    ("do_io_write-cont-a-plain-function",
     lambda vc, c: vc.do_io_write(lambda e, d: None, 10, MIOBuffer().alloc_reader()),
     TypeError, "Continuation"),
    ("do_io_shutdown-howto-out-of-range",
     lambda vc, c: vc.do_io_shutdown(7), ValueError, "howto"),
    ("do_io_shutdown-howto-negative",
     lambda vc, c: vc.do_io_shutdown(-1), ValueError, "howto"),
    ("do_io_shutdown-howto-a-string",
     lambda vc, c: vc.do_io_shutdown("read"), ValueError, "howto"),
    ("set_inactivity_timeout-negative",
     lambda vc, c: vc.set_inactivity_timeout(-1), ValueError, "set_inactivity_timeout"),
    ("set_inactivity_timeout-nan",
     lambda vc, c: vc.set_inactivity_timeout(float("nan")), ValueError, "set_inactivity_timeout"),
    ("set_active_timeout-negative",
     lambda vc, c: vc.set_active_timeout(-0.5), ValueError, "set_active_timeout"),
    ("set_inactivity_timeout-too-large",
     lambda vc, c: vc.set_inactivity_timeout(10**400), ValueError, "set_inactivity_timeout"),
    ("set_active_timeout-too-large",
     lambda vc, c: vc.set_active_timeout(10**400), ValueError, "set_active_timeout"),
    ("set_active_timeout-a-string",
     lambda vc, c: vc.set_active_timeout("1"), TypeError, "set_active_timeout"),
    ("reenable-a-vio-of-no-vc",
     lambda vc, c: vc.reenable(VIO()), ValueError, "reenable"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "exc", "needle"), [b[1:] for b in BAD_CALLS],
                         ids=[b[0] for b in BAD_CALLS])  # fmt: skip
def test_bad_argument_raises_a_clear_error_and_leaves_the_vc_working(
    listen, call: Callable[[Any, Continuation], Any], exc: type[Exception], needle: str
):
    _, acceptor, port = listen()
    with client(port) as c:
        acceptor.wait()
        vc = acceptor.vcs[0]
        cont = Idle()
        with cont.mutex:
            with pytest.raises(exc, match=needle):
                call(vc, cont)
            assert not vc.closed and vc.fd >= 0
            assert vc.inactivity_timeout_in == 0 and vc.active_timeout_in == 0
            Echo(vc, cont.mutex)  # the VC still works after the refused call
        c.sendall(b"after")
        assert recv_exactly(c, 5) == b"after"
    assert wait_until(lambda: net_stats.get(OPEN) == 0)


@pytest.mark.parametrize(
    "call",
    [
        lambda vc, c: vc.do_io_read(c, 10, MIOBuffer()),
        lambda vc, c: vc.do_io_write(c, 10, MIOBuffer().alloc_reader()),
        lambda vc, c: vc.do_io_shutdown(IO_SHUTDOWN_READ),
    ],
    ids=["do_io_read", "do_io_write", "do_io_shutdown"],
)
def test_io_on_a_closed_vc_raises_runtime_error_naming_the_call(listen, call):
    _, acceptor, port = listen()
    with client(port) as c:
        acceptor.wait()
        vc = acceptor.vcs[0]
        cont = Idle()
        with cont.mutex:
            vc.do_io_close()
            with pytest.raises(RuntimeError, match="closed"):
                call(vc, cont)
        assert c.recv(1) == b""
    assert wait_until(lambda: net_stats.get(OPEN) == 0)


def test_close_twice_is_harmless(net, listen):
    _, acceptor, port = listen()
    with client(port) as c:
        acceptor.wait()
        vc = acceptor.vcs[0]
        vc.do_io_close()
        vc.do_io_close()
        assert c.recv(1) == b""
    assert wait_until(lambda: net_stats.get(OPEN) == 0)
    settle(net.netthreads)  # a second free would come by now
    assert net_stats.get(OPEN) == 0


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_config_records_reject_non_finite_values_naming_the_key(value: float) -> None:
    from ats_cffi.net import net_config

    with pytest.raises(ValueError, match="proxy.config.net.connect_timeout"):
        net_config.set("proxy.config.net.connect_timeout", value)
    with pytest.raises(ValueError, match="proxy.config.net.poll_timeout"):
        net_config.set("proxy.config.net.poll_timeout", value)


def test_dynamic_records_are_marked() -> None:
    from ats_cffi.net import net_config

    keys = net_config.dynamic_keys()
    assert "proxy.config.net.connections_throttle" in keys
    assert "proxy.config.accept_threads" not in keys


def test_a_write_vio_whose_reader_was_deallocated_gets_an_error_event(listen):
    # Misuse: the continuation frees the reader under its live write VIO. It hears
    # VC_EVENT_ERROR (EINVAL) instead of an exception escaping into the net loop.
    _, acceptor, port = listen()
    events: list[int] = []
    with client(port) as c:
        acceptor.wait()
        vc = acceptor.vcs[0]
        cont = Continuation(ProxyMutex(), lambda e, vio: events.append(e))
        buf = MIOBuffer(4096)
        reader = buf.alloc_reader()
        with cont.mutex:
            reader.dealloc()
            vc.do_io_write(cont, 10, buf.alloc_reader())  # a live reader: accepted...
            vc.write.vio.buffer = reader  # ...then swapped for the dead one, as a bug would
            buf.write(b"0123456789")
            vc.write.vio.reenable()
        assert wait_until(lambda: events)
        assert events == [VC_EVENT_ERROR] and vc.lerrno == errno.EINVAL
        with cont.mutex:
            vc.do_io_close()
        assert c.recv(1) == b""
    assert wait_until(lambda: net_stats.get(OPEN) == 0)


@interpreted_only
def test_a_vc_whose_turn_raises_is_closed_and_the_others_keep_going(one_net_thread, monkeypatch):
    # If processing one VC raises (a bug), that VC is closed and the VCs after it in the same
    # pass still get their turn: none is left marked ready on no list.
    acceptor = Acceptor()
    action = one_net_thread.accept(acceptor, AcceptOptions(local_address="127.0.0.1"))
    port = action.na.port
    with client(port) as a, client(port) as b:
        acceptor.wait(2)
        for vc in acceptor.vcs:
            Echo(vc)
        original = UnixNetVConnection.net_read_io
        raised: list[Any] = []

        def first_one_raises(vc: Any, nh: Any) -> None:
            if armed.is_set() and not raised:
                raised.append(vc)
                raise RuntimeError("injected")
            original(vc, nh)

        monkeypatch.setattr(UnixNetVConnection, "net_read_io", first_one_raises)
        armed = threading.Event()
        held, release = threading.Event(), threading.Event()
        thread = acceptor.vcs[0].thread

        def hold(event: int, e: Any) -> None:
            held.set()
            release.wait(5)  # both clients' bytes arrive meanwhile: one pass sees both

        thread.schedule_imm_signal(Continuation(ProxyMutex(), hold))
        assert held.wait(2)
        armed.set()
        a.sendall(b"from a")
        b.sendall(b"from b")
        wait_until(lambda: unacked_bytes(a) == unacked_bytes(b) == 0, what="both in the sockets")
        release.set()
        assert wait_until(lambda: raised)
        failed, ok = (a, b) if raised[0] is acceptor.vcs[0] else (b, a)
        want = b"from a" if ok is a else b"from b"
        assert recv_exactly(ok, len(want)) == want
        try:  # closed, with its bytes unread: a reset or an EOF
            assert failed.recv(16) == b""
        except ConnectionResetError:
            pass
        ok.sendall(b"again")
        assert recv_exactly(ok, 5) == b"again"
    action.cancel()
    assert wait_until(lambda: net_stats.get(OPEN) == 0)
