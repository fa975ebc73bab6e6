"""Suite-wide guards: no test may leave an fd or a thread behind."""

from __future__ import annotations

import gc
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from ats_cffi._compiled import MODULES
from ats_cffi._pure import compiled


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


#: A test that patches a method of a class that mypyc compiled (``ats_cffi/_compiled.py``):
#: compiled callers call the compiled method directly and never see the patch, so the test
#: runs interpreted only (``ATS_CFFI_PURE=1``, which ``.ci/run`` runs the suite with too).
interpreted_only = pytest.mark.skipif(
    compiled(),
    reason="patches a method of a mypyc-compiled class; runs with ATS_CFFI_PURE=1",
)


def pytest_configure(config: pytest.Config) -> None:
    """Refuse to test a stale build: a compiled module older than its source would test the
    code as it was (rebuild with ``python build_ffi.py``, or run with ``ATS_CFFI_PURE=1``)."""
    if not compiled():
        return
    import ats_cffi

    root = Path(ats_cffi.__file__).resolve().parent.parent  # the package imported, wherever
    # mypyc compiles them all into this one library (the per-module ones only forward).
    built = max(b.stat().st_mtime for b in (root / "ats_cffi").glob("_compiled__mypyc.*.so"))
    stale = [
        name
        for name in MODULES
        if (root / (name.replace(".", "/") + ".py")).stat().st_mtime > built
    ]
    if stale:
        raise pytest.UsageError(
            f"compiled modules older than their source: {', '.join(stale)}; "
            "rebuild them with `python build_ffi.py` (or test the source: ATS_CFFI_PURE=1)"
        )
