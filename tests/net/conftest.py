"""Fixtures for the net layer: a started net processor on real loopback sockets, on the
real clock or on the test's FakeClock (``start_net(clock=fake_clock)``, ``fake_net``)."""

from __future__ import annotations

import fcntl
import os
import random
import socket
import struct
import termios
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ats_cffi.eventsystem import (
    INT64_MAX,
    Continuation,
    EventProcessor,
    MIOBuffer,
    ProxyMutex,
)
from ats_cffi.eventsystem.codes import (
    VC_EVENT_EOS,
    VC_EVENT_ERROR,
    VC_EVENT_READ_READY,
    VC_EVENT_WRITE_READY,
)
from ats_cffi.net import AcceptOptions, net_config, net_processor, net_stats
from ats_cffi.net.codes import NET_EVENT_ACCEPT
from tests.conftest import FakeClock, settle, wait_until  # noqa: F401  (wait_until: re-exported)

OPEN = "proxy.process.net.connections_currently_open"
#: The InactivityCop's period on a FakeClock (1/16 s: its multiples add up exactly).
COP = 0.0625


@pytest.fixture
def start_net() -> Iterator[Callable[..., Any]]:
    """``start_net(n_threads=2, clock=None, **records)``: start ``net_processor`` with a
    fast InactivityCop (every 50 ms; every ``COP`` seconds on a given clock) and the given
    records (set before the threads start); shut down (every thread joined, every fd
    closed) after the test.

    With ``clock``, the net threads run on it (``net_processor.start``'s ``processor``: an
    EventProcessor made on that clock); on a FakeClock, each ``advance`` settles them."""
    started = []
    unhook: list[Callable[[], None]] = []

    def start(n_threads: int = 2, clock: Callable[[], float] | None = None, **records: Any) -> Any:
        net_config.reset()
        frequency = 0.05 if clock is None else COP
        net_config.set("proxy.config.net.inactivity_check_frequency", frequency)
        for key, value in records.items():
            net_config.set(key, value)
        net_stats.reset()
        if clock is None:
            net_processor.start(n_threads)
        else:
            net_processor.start(n_threads, processor=EventProcessor(clock))
            if isinstance(clock, FakeClock):
                unhook.append(clock.on_advance(lambda: settle(net_processor.netthreads)))
        started.append(n_threads)
        return net_processor

    yield start
    for remove in unhook:
        remove()
    if started:
        net_processor.shutdown()
    net_config.reset()


@pytest.fixture
def fake_net(start_net: Callable[..., Any], fake_clock: FakeClock) -> Any:
    """``net_processor`` with 2 net threads on ``fake_clock`` (the cop every ``COP``)."""
    return start_net(2, clock=fake_clock)


@pytest.fixture
def net(start_net: Callable[..., Any]) -> Any:
    """``net_processor`` started with 2 net threads and a fast InactivityCop (50 ms)."""
    return start_net(2)


@pytest.fixture
def one_net_thread(start_net: Callable[..., Any]) -> Any:
    """``net_processor`` with a single net thread, so that every VC shares one NetHandler."""
    return start_net(1)


class Acceptor(Continuation):
    """Hands every accepted VC to ``on_vc(vc)`` (on the VC's net thread) and keeps them."""

    def __init__(self, on_vc: Callable[[Any], None] | None = None) -> None:
        super().__init__(ProxyMutex())
        self.on_vc = on_vc
        self.vcs: list[Any] = []
        self.accepted = threading.Semaphore(0)
        self.set_handler(self.handle)

    def handle(self, event: int, vc: Any) -> None:
        assert event == NET_EVENT_ACCEPT
        self.vcs.append(vc)
        if self.on_vc is not None:
            self.on_vc(vc)
        self.accepted.release()

    def wait(self, n: int = 1, timeout: float = 5.0) -> None:
        for _ in range(n):
            assert self.accepted.acquire(timeout=timeout), "no connection accepted in time"


def _listener(net: Any) -> Iterator[Callable[..., tuple[Any, Any, int]]]:
    actions = []

    def make(on_vc: Callable[[Any], None] | None = None, **opts: Any) -> tuple[Any, Any, int]:
        acceptor = Acceptor(on_vc)
        opts.setdefault("local_address", "127.0.0.1")
        action = net.accept(acceptor, AcceptOptions(**opts))
        actions.append(action)
        return action, acceptor, action.na.port

    yield make
    for a in actions:
        a.cancel()


@pytest.fixture
def listen(net: Any) -> Iterator[Callable[..., tuple[Any, Any, int]]]:
    """``listen(on_vc=None, **opts)`` → (action, acceptor, port) on 127.0.0.1; cancelled after."""
    yield from _listener(net)


@pytest.fixture
def fake_listen(fake_net: Any) -> Iterator[Callable[..., tuple[Any, Any, int]]]:
    """``listen`` on ``fake_net``: the accepted VCs' threads run on ``fake_clock``."""
    yield from _listener(fake_net)


def on_thread(thread: Any, fn: Callable[[], Any]) -> Any:
    """``fn()`` run on net thread ``thread`` (between two of its passes: no pump is under
    way), its result returned here."""
    got: list[Any] = []
    done = threading.Event()

    class Ask(Continuation):
        def __init__(self) -> None:
            super().__init__(ProxyMutex())
            self.set_handler(self.ask)

        def ask(self, event: int, e: Any) -> None:
            try:
                got.append(fn())
            finally:
                done.set()

    thread.schedule_imm(Ask())
    assert done.wait(5), "the net thread did not run the question"
    assert got, "the question raised on the net thread"
    return got[0]


def client(port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection((host, port), timeout=timeout)
    return s


def recv_exactly(s: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        b = s.recv(n - len(out))
        if not b:
            break
        out += b
    return bytes(out)


#: ``tcpi_state`` values (linux/tcp_states.h): connected, and reset by the peer.
TCP_ESTABLISHED = 1
TCP_CLOSE = 7


def tcp_state(s: socket.socket | int) -> int:
    """The kernel's TCP state of socket ``s`` (a socket, or an fd this process holds)."""
    if isinstance(s, int):
        with socket.socket(fileno=os.dup(s)) as dup:
            return tcp_state(dup)
    return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


def reset_by_peer(s: socket.socket | int) -> bool:
    """True once ``s`` took its peer's reset (TCP_CLOSE): whatever was sent to that peer
    before has been dropped by its kernel, and none of it can reach a VC any more."""
    return tcp_state(s) == TCP_CLOSE


def asleep_in_the_kernel(thread: threading.Thread) -> bool:
    """True while ``thread`` sleeps in a system call that waits for the kernel (a poll, an
    accept, an epoll_wait), not for a lock or the GIL (a futex); read from /proc."""
    task = f"/proc/self/task/{thread.native_id}"
    try:
        with open(f"{task}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"{task}/wchan") as f:
            wchan = f.read()
    except OSError:  # the thread has ended
        return False
    return state == "S" and wchan not in ("", "0") and "futex" not in wchan


def unacked_bytes(s: socket.socket) -> int:
    """Bytes ``s`` has sent (or queued) that its peer's kernel has not acknowledged: 0 once
    everything sent sits in the peer's receive queue (SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(s.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]


def unread_bytes(fd: int) -> int:
    """Bytes waiting in socket ``fd``'s receive queue (FIONREAD)."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]


def payload_of(n: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(n)


class Echo(Continuation):
    """Writes back whatever it reads; closes on EOS/ERROR."""

    def __init__(
        self,
        vc: Any,
        mutex: ProxyMutex | None = None,
        block_size: int = 4096,
        water_mark: int = 0,
    ) -> None:
        super().__init__(mutex or ProxyMutex())
        self.vc = vc
        self.buf = MIOBuffer(block_size, water_mark)
        self.set_handler(self.handle)
        with self.mutex:  # type: ignore[union-attr]
            self.rvio = vc.do_io_read(self, INT64_MAX, self.buf)
            self.wvio = vc.do_io_write(self, INT64_MAX, self.buf.alloc_reader())

    def handle(self, event: int, vio: Any) -> None:
        if event == VC_EVENT_READ_READY:
            self.wvio.reenable()
        elif event == VC_EVENT_WRITE_READY:
            self.rvio.reenable()
        elif event in (VC_EVENT_EOS, VC_EVENT_ERROR):
            self.vc.do_io_close()


@pytest.fixture
def ca(tmp_path: Path) -> Iterator[Any]:
    """A test CA in ``tmp_path`` (``tls_certs.TestCA``), with the TLS records and stats
    reset before and after."""
    from ats_cffi.net.stats import tls_stats
    from ats_cffi.net.tls import tls_config

    from .tls_certs import TestCA

    tls_config.reset()
    tls_stats.reset()
    yield TestCA(tmp_path)
    tls_config.reset()
