"""Bad input to the net layer is refused at the call (DESIGN.md section 10): the error names
the call and the argument, and nothing is left behind (no fd, no VC, no thread, no stale
registration, no skewed gauge) and no caller's fd is closed."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from ats_cffi.eventsystem import Continuation, ProxyMutex, event_processor
from ats_cffi.eventsystem.processor import ET_NET
from ats_cffi.net import (
    AcceptOptions,
    NetVCOptions,
    UnixNetVConnection,
    net_config,
    net_processor,
    net_stats,
)
from ats_cffi.net import processor as net_processor_mod
from ats_cffi.net.accept import NetAccept
from ats_cffi.net.codes import IO_SHUTDOWN_WRITE
from tests.conftest import settle

from .conftest import wait_until

pytestmark = pytest.mark.timeout(30)

OPEN = "proxy.process.net.connections_currently_open"
ACCEPTS = "proxy.process.net.accepts_currently_open"


def n_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def fd_is_open(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError:
        return False
    return True


def listening_socket() -> socket.socket:
    """A plain listening TCP socket on 127.0.0.1, any free port."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(64)
    return ls


@pytest.fixture
def server() -> Iterator[tuple[str, int]]:
    """A plain listening socket on 127.0.0.1 (the connects' peer; nothing accepts)."""
    ls = listening_socket()
    yield ls.getsockname()
    ls.close()


@pytest.fixture
def server6() -> Iterator[tuple[str, int]]:
    ls = socket.socket(socket.AF_INET6)
    ls.bind(("::1", 0))
    ls.listen(64)
    yield ls.getsockname()[:2]
    ls.close()


class Recorder(Continuation):
    def __init__(self) -> None:
        super().__init__(ProxyMutex())
        self.events: list[tuple[int, Any]] = []
        self.set_handler(self.handle)

    def handle(self, event: int, data: Any) -> None:
        self.events.append((event, data))


# ---------------------------------------------------------------------- 1. connect_s


@pytest.mark.parametrize(
    "timeout",
    [float("inf"), 2**63, 10**400, float("nan"), 0, -1],
    ids=["inf", "2**63", "10**400", "nan", "0", "-1"],
)
def test_connect_s_bad_timeout_refused_before_connecting(net: Any, server: Any, timeout: Any):
    fds0, open0 = n_fds(), net_stats.get(OPEN)
    with pytest.raises(ValueError, match="connect_s: timeout"):
        net.connect_s(server, timeout)
    settle(net.netthreads)  # a connect started anyway would have made its socket by now
    assert n_fds() == fds0
    assert net_stats.get(OPEN) == open0


@pytest.mark.parametrize("timeout", ["1", None, True])
def test_connect_s_timeout_type(net: Any, server: Any, timeout: Any):
    with pytest.raises(TypeError, match="connect_s: timeout"):
        net.connect_s(server, timeout)


def test_connect_s_options_type(net: Any, server: Any):
    with pytest.raises(TypeError, match="connect_s: options"):
        net.connect_s(server, 1, "x")


def test_connect_s_does_not_change_callers_options(net: Any, server: Any):
    o = NetVCOptions()
    vc = net.connect_s(server, 2, o)
    vc.do_io_close()
    assert o.connect_timeout is None


class _Interrupted(Exception):
    pass


def test_connect_s_interrupted_wait_leaks_nothing(
    net: Any, server: Any, monkeypatch: pytest.MonkeyPatch
):
    """Whatever ends connect_s's wait after the connect started, the VC that opens is closed."""

    class Event(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            super().wait(5.0)  # the connect completes (it sets this event), then
            raise _Interrupted

    class Threading:
        def __getattr__(self, name: str) -> Any:
            return Event if name == "Event" else getattr(threading, name)

    fds0, open0 = n_fds(), net_stats.get(OPEN)
    monkeypatch.setattr(net_processor_mod, "threading", Threading())
    with pytest.raises(_Interrupted):
        net.connect_s(server, 2)
    monkeypatch.undo()
    assert wait_until(lambda: net_stats.get(OPEN) == open0 and n_fds() == fds0, 3.0), (
        f"leaked: fds {n_fds() - fds0}, connections {net_stats.get(OPEN) - open0}"
    )


# ---------------------------------------------------------------------- 2. start


MAX_NET_THREADS = 3072  # ATS's MAX_THREADS_IN_EACH_TYPE (net/processor.py)
BAD_N = [0, -1, "2", 1.5, None, True, float("nan"), 10**30, MAX_NET_THREADS + 1]


def test_start_bad_n_refused_up_front_and_leaves_nothing():
    hooks = event_processor.groups[ET_NET].spawn_hooks
    n_hooks, n_slots = len(hooks), len(event_processor._slot_factories)
    for n in BAD_N:
        with pytest.raises((TypeError, ValueError), match="start: n_net_threads"):
            net_processor.start(n)
    assert len(hooks) == n_hooks
    assert len(event_processor._slot_factories) == n_slots
    assert not net_processor.started
    # The next good start runs the net init once per thread (one InactivityCop), not once
    # per refused call.
    calls = []
    real = net_processor_mod.initialize_thread_for_net
    try:
        net_processor_mod.initialize_thread_for_net = lambda t: (calls.append(t), real(t))
        net_processor.start(1)
    finally:
        net_processor_mod.initialize_thread_for_net = real
        net_processor.shutdown()
    assert len(calls) == 1


def test_start_bad_processor(net: Any):
    with pytest.raises(TypeError, match="start: processor"):
        net_processor.start(1, processor="x")  # type: ignore[arg-type]


def test_start_out_of_fds_undoes_everything():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (n_fds() + 12, hard))
    try:
        with pytest.raises(OSError):
            net_processor.start(40)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert not net_processor.started
    assert event_processor.n_threads_for_type(ET_NET) == 0
    assert not event_processor.groups[ET_NET].spawn_hooks
    net_processor.start(1)  # not "already running"
    net_processor.shutdown()


# ---------------------------------------------------------------------- 3. main_accept fd


def _bound_not_listening() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s


def _udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


def _unix_listener() -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.bind(f"\0ats_cffi_test_bad_input_{os.getpid()}")
    s.listen()
    return s


@pytest.mark.parametrize(
    "make, match",
    [
        (_bound_not_listening, "not listening"),
        (_udp, "SOCK_STREAM"),
        (_unix_listener, "AF_INET or AF_INET6"),
    ],
)
@pytest.mark.parametrize("accept_threads", [0, 1])
def test_main_accept_refuses_non_listening_tcp_fd(
    net: Any, make: Any, match: str, accept_threads: int
):
    s = make()
    try:
        c = Recorder()
        with pytest.raises(ValueError, match=f"main_accept: fd {s.fileno()} .*{match}"):
            net.main_accept(c, s.fileno(), AcceptOptions(accept_threads=accept_threads))
        assert s.getblocking()  # untouched
        settle(net.netthreads)  # an accept started anyway would have reported by now
        assert c.events == []
        assert net_stats.get(ACCEPTS) == 0
    finally:
        s.close()


def test_main_accept_refusal_keeps_callers_fd(net: Any):
    s = listening_socket()
    try:
        with pytest.raises(ValueError, match="etype"):
            net.main_accept(Recorder(), s.fileno(), AcceptOptions(etype=99))
        assert fd_is_open(s.fileno()) and s.getblocking()
    finally:
        s.close()


def test_main_accept_late_refusal_hands_fd_back(net: Any, monkeypatch: pytest.MonkeyPatch):
    """A failure after the listener took the fd: the fd is the caller's again, open, with its
    old flags; the gauge and the stat blocks are as before."""

    def boom(*a: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(NetAccept, "init_accept_per_thread", boom)
    n_blocks = len(net_stats._blocks)
    s = listening_socket()
    try:
        with pytest.raises(RuntimeError, match="boom"):
            net.main_accept(Recorder(), s.fileno(), AcceptOptions(accept_threads=0))
        assert fd_is_open(s.fileno()) and s.getblocking()
        assert net_stats.get(ACCEPTS) == 0
        assert len(net_stats._blocks) == n_blocks
    finally:
        s.close()


def test_main_accept_good_fd_still_works(net: Any):
    s = listening_socket()
    fd = s.detach()  # the listener owns it from now on
    port = socket.socket(fileno=os.dup(fd))
    port_no = port.getsockname()[1]
    port.close()
    c = Recorder()
    a = net.main_accept(c, fd, AcceptOptions(accept_threads=0))
    try:
        with socket.create_connection(("127.0.0.1", port_no), timeout=2):
            assert wait_until(lambda: c.events, 3.0)
        for _, vc in c.events:
            vc.do_io_close()
    finally:
        a.cancel()


# ---------------------------------------------------------------------- 4. accept gauge


def test_refused_and_cancelled_listeners_leave_no_gauge_or_block(net: Any):
    n_blocks = len(net_stats._blocks)
    for _ in range(3):
        with pytest.raises(ValueError):
            net.accept(Recorder(), AcceptOptions(local_address="999.1.1.1"))
        with pytest.raises(OSError):
            net.main_accept(Recorder(), -1)
    assert net_stats.get(ACCEPTS) == 0
    assert len(net_stats._blocks) == n_blocks
    for _ in range(3):
        a = net.accept(Recorder(), AcceptOptions(local_address="127.0.0.1"))
        assert net_stats.get(ACCEPTS) == 1
        a.cancel()
    assert net_stats.get(ACCEPTS) == 0
    assert len(net_stats._blocks) == n_blocks


def test_retired_listener_counts_stay_in_totals(net: Any):
    """Counts kept in a listener's block survive its retirement (totals never go back)."""
    a = net.accept(Recorder(), AcceptOptions(local_address="127.0.0.1"))
    a.na.stats[net_stats._index["proxy.process.net.connect_failures"]] += 5
    before = net_stats.get("proxy.process.net.connect_failures")
    a.cancel()
    assert net_stats.get("proxy.process.net.connect_failures") == before


# ---------------------------------------------------------------------- 5. connect_re


def _addr6(server6: Any, *rest: Any) -> tuple:
    return (server6[0], server6[1], *rest)


@pytest.mark.parametrize(
    "kind, exc, match",
    [
        ("flow_str", TypeError, "addr flowinfo"),
        ("flow_neg", ValueError, "addr flowinfo"),
        ("scope_big", ValueError, "addr scope_id"),
        ("local_flow", TypeError, "local_address flowinfo"),
        ("tos6", ValueError, "packet_tos"),
        ("tos4", ValueError, "packet_tos"),
        ("ct_nan", ValueError, "connect_timeout"),
        ("ct_inf", ValueError, "connect_timeout"),
        ("ct_huge", ValueError, "connect_timeout"),
        ("ct_str", TypeError, "connect_timeout"),
    ],
)
def test_connect_re_refuses_at_call(
    net: Any, server: Any, server6: Any, kind: str, exc: type, match: str
):
    addr: tuple = server
    opts = None
    if kind == "flow_str":
        addr = _addr6(server6, "x", None)
    elif kind == "flow_neg":
        addr = _addr6(server6, -1, 0)
    elif kind == "scope_big":
        addr = _addr6(server6, 0, 2**64)
    elif kind == "local_flow":
        opts = NetVCOptions(local_address=("127.0.0.1", 0, "x", None))  # type: ignore[arg-type]
    elif kind == "tos6":
        addr, opts = server6, NetVCOptions(packet_tos=256)
    elif kind == "tos4":
        opts = NetVCOptions(packet_tos=256)
    else:
        value = {"ct_nan": float("nan"), "ct_inf": float("inf"), "ct_huge": 10**400}.get(kind, "1")
        opts = NetVCOptions(connect_timeout=value)  # type: ignore[arg-type]
    c = Recorder()
    fds0 = n_fds()
    with pytest.raises(exc, match=f"connect_re: .*{match}"):
        net.connect_re(c, addr, opts)
    settle(net.netthreads)  # a connect started anyway would have made its socket by now
    assert n_fds() == fds0
    assert c.events == []


def test_connect_re_good_4tuple_and_tos(net: Any, server6: Any):
    # The largest valid values are taken: the connect opens (connect_s raises otherwise).
    vc = net.connect_s(_addr6(server6, 0, 0), 2, NetVCOptions(packet_tos=255))
    assert vc.fd >= 0 and vc.get_remote_addr()[0] == "::1"
    vc.do_io_close()


def test_accept_options_packet_tos(net: Any):
    with pytest.raises(ValueError, match="main_accept: AcceptOptions.packet_tos"):
        net.accept(Recorder(), AcceptOptions(local_address="::1", packet_tos=256))


# ---------------------------------------------------------------------- 6. shutdown


@pytest.mark.parametrize(
    "timeout, exc",
    [(float("nan"), ValueError), (-2, ValueError), (-0.5, ValueError),
     ("x", TypeError), (b"1", TypeError), (True, TypeError)],
)  # fmt: skip
def test_shutdown_bad_timeout_refused_before_stopping(net: Any, server: Any, timeout: Any, exc):
    with pytest.raises(exc, match="shutdown: timeout"):
        net_processor.shutdown(timeout)
    assert net_processor.started
    vc = net.connect_s(server, 2)  # still fully working
    vc.do_io_close()


@pytest.mark.parametrize("timeout", [None, -1, float("inf"), 10**400, 5])
def test_shutdown_takes_no_limit_as_the_event_processor_does(net: Any, timeout: Any):
    # One rule for every wait on threads (EventProcessor.shutdown, ProxyMutex.lock).
    threads = event_processor.threads()
    assert threads
    net_processor.shutdown(timeout)
    assert not net_processor.started and not any(t.is_alive for t in threads)


# ---------------------------------------------------------------------- 7. config


def test_config_huge_int_on_float_record_names_key():
    try:
        with pytest.raises(ValueError, match="proxy.config.net.connect_timeout"):
            net_config.set("proxy.config.net.connect_timeout", 10**400)
        with pytest.raises(ValueError, match="inactivity_check_frequency"):
            net_config.set("proxy.config.net.inactivity_check_frequency", 10**30)
        net_config.set("proxy.config.net.inactivity_check_frequency", 3600)
    finally:
        net_config.reset()


def test_config_unknown_attribute_refused():
    with pytest.raises(AttributeError, match="poll_timout"):
        net_config.poll_timout = 5  # type: ignore[attr-defined]
    assert not hasattr(net_config, "poll_timout")
    try:
        net_config.poll_timeout = 5
        assert net_config.get("proxy.config.net.poll_timeout") == 5
    finally:
        net_config.reset()


# ---------------------------------------------------------------------- 8. messages


def test_accept_options_messages(net: Any):
    with pytest.raises(ValueError, match="main_accept: AcceptOptions.ip_family"):
        net.accept(Recorder(), AcceptOptions(ip_family=2.0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="main_accept: AcceptOptions.etype"):
        net.accept(Recorder(), AcceptOptions(local_address="127.0.0.1", etype=99))
    assert net_stats.get(ACCEPTS) == 0


# ---------------------------------------------------------------------- 9. minor


@pytest.mark.parametrize("flag", ["reuseport", "frequent_accept", "backdoor", "localhost_only"])
def test_accept_option_flags_must_be_bool(net: Any, flag: str):
    with pytest.raises(TypeError, match=f"AcceptOptions.{flag}"):
        net.accept(Recorder(), AcceptOptions(local_address="127.0.0.1", **{flag: "no"}))


@pytest.mark.parametrize("vc_class", [object, int, "UnixNetVConnection", UnixNetVConnection()])
def test_accept_option_vc_class_must_be_a_vc_subclass(net: Any, vc_class: Any):
    with pytest.raises(TypeError, match="AcceptOptions.vc_class must be a subclass"):
        net.accept(Recorder(), AcceptOptions(local_address="127.0.0.1", vc_class=vc_class))
    assert net_stats.get(ACCEPTS) == 0


def test_vc_options_type():
    with pytest.raises(TypeError, match="UnixNetVConnection: options"):
        UnixNetVConnection("x")  # type: ignore[arg-type]


def test_vc_call_arguments(net: Any, server: Any):
    vc = net.connect_s(server, 2)
    try:
        for bad, exc in (("x", TypeError), (None, TypeError), (1.5, TypeError),
                         (2**64, ValueError), (-2, ValueError), (True, TypeError)):  # fmt: skip
            with pytest.raises(exc, match="do_io_close: alerrno"):
                vc.do_io_close(bad)
        assert vc.lerrno == 0 and not vc.closed
        for bad in (True, 0.0, "1"):
            with pytest.raises(ValueError, match="do_io_shutdown: howto"):
                vc.do_io_shutdown(bad)
        vc.do_io_shutdown(IO_SHUTDOWN_WRITE)
        # Timeouts: finite only (inf and ints beyond a float alike are refused).
        for call in (vc.set_active_timeout, vc.set_inactivity_timeout):
            for bad in (float("inf"), 10**400, float("nan")):
                with pytest.raises(ValueError, match=f"{call.__name__}: timeout"):
                    call(bad)
            call(10**30)  # far, but a deadline
        assert vc.active_timeout_in == vc.inactivity_timeout_in == 1e30
    finally:
        vc.do_io_close(errno.ECONNRESET)
    assert vc.lerrno == errno.ECONNRESET


def test_vc_input_pending_peeks_and_refuses_a_closed_vc(net: Any):
    ls = listening_socket()
    try:
        vc = net.connect_s(ls.getsockname(), 2)  # nobody reads it: its bytes stay in the socket
        peer, _ = ls.accept()
        with peer:
            assert vc.input_pending() is False
            peer.sendall(b"abc")
            assert vc.input_pending() is True
            assert vc.input_pending() is True  # a peek: nothing was taken
            vc.do_io_close()
            with pytest.raises(RuntimeError, match="input_pending: the VC is closed"):
                vc.input_pending()
    finally:
        ls.close()
