"""Suite-wide guards: no test may leave an fd or a thread behind."""

from __future__ import annotations

import gc
import os
import socket
import threading
import time

import pytest


def open_fds() -> set[int]:
    """The fds this process holds now (read from /proc/self/fd)."""
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        fds.add(int(name))
    return fds


def _settle(before_fds: set[int], before_threads: set[threading.Thread]) -> tuple[set, set]:
    deadline = time.monotonic() + 2.0
    while True:
        gc.collect()
        extra_fds = open_fds() - before_fds
        extra_threads = {
            t for t in threading.enumerate() if t not in before_threads and t.is_alive()
        }
        if (not extra_fds and not extra_threads) or time.monotonic() > deadline:
            return extra_fds, extra_threads
        time.sleep(0.01)


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest):
    """Fail the test if it leaves an fd or a thread open."""
    gc.collect()
    before_fds = open_fds()
    before_threads = set(threading.enumerate())
    yield
    extra_fds, extra_threads = _settle(before_fds, before_threads)
    details = []
    for fd in sorted(extra_fds):
        try:
            details.append(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            details.append(str(fd))
    assert not extra_fds, f"{request.node.name} leaked fds: {details}"
    assert not extra_threads, f"{request.node.name} leaked threads: {extra_threads}"


# Plain sockets shared by the sys-layer tests (tests/test_sys*.py).


@pytest.fixture
def pair():
    """A connected pair of non-blocking AF_UNIX stream sockets."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def listener():
    """A non-blocking listening socket on 127.0.0.1 (any free port)."""
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind(("127.0.0.1", 0))
    ls.listen(64)
    ls.setblocking(False)
    yield ls
    ls.close()
