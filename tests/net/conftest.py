"""Fixtures for the net layer: a started net processor on real loopback sockets."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ats_cffi.eventsystem import INT64_MAX, Continuation, MIOBuffer, ProxyMutex
from ats_cffi.eventsystem.codes import (
    VC_EVENT_EOS,
    VC_EVENT_ERROR,
    VC_EVENT_READ_READY,
    VC_EVENT_WRITE_READY,
)
from ats_cffi.net import AcceptOptions, net_config, net_processor, net_stats
from ats_cffi.net.codes import NET_EVENT_ACCEPT

OPEN = "proxy.process.net.connections_currently_open"


@pytest.fixture
def start_net() -> Iterator[Callable[..., Any]]:
    """``start_net(n_threads=2, **records)``: start ``net_processor`` with a fast (50 ms)
    InactivityCop and the given records (set before the threads start); shut down (every
    thread joined, every fd closed) after the test."""
    started = []

    def start(n_threads: int = 2, **records: Any) -> Any:
        net_config.reset()
        net_config.set("proxy.config.net.inactivity_check_frequency", 0.05)
        for key, value in records.items():
            net_config.set(key, value)
        net_stats.reset()
        net_processor.start(n_threads)
        started.append(n_threads)
        return net_processor

    yield start
    if started:
        net_processor.shutdown()
    net_config.reset()


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


@pytest.fixture
def listen(net: Any) -> Callable[..., tuple[Any, Any, int]]:
    """``listen(on_vc=None, **opts)`` → (action, acceptor, port) on 127.0.0.1; cancelled after."""
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


def wait_until(pred: Callable[[], Any], timeout: float = 5.0) -> bool:
    """Poll ``pred`` every 5 ms until it is true or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return bool(pred())
        time.sleep(0.005)
    return True


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
