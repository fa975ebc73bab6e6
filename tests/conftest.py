"""Suite-wide guards (no test may leave an fd or a thread behind) and the two ways a test
waits: the fake clock, for time, and ``wait_until``, for what only the kernel can make happen.

Time in tests. A test never sleeps for time to pass nor asserts how long something took
(CONTRIBUTING.md). Threads that a test starts on a :class:`FakeClock` (``EThread`` and
``EventProcessor`` take ``clock=``; ``net_processor.start(processor=EventProcessor(clock))``)
see time move only when the test calls ``advance``; the fixtures that start them register
a hook (``settle``), so that ``advance`` lets every thread finish what it was doing at the
old reading, and returns once each has run what the new one made due.
The test then asserts what happened, and at which reading of the clock.
``wait_until`` is for the rest: a real kernel event (bytes arriving on a socket, a peer's
close, a thread ending), polled at a short interval under a generous bound.
"""

from __future__ import annotations

import gc
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from ats_cffi._compiled import MODULES
from ats_cffi._pure import compiled
from ats_cffi.eventsystem import Continuation, EThread, ProxyMutex

#: Upper bound of every wait for something a thread or the kernel should do promptly: a
#: broken loop fails its test after it, never hangs it.
WAIT = 5.0
#: How often ``wait_until`` polls.
POLL_INTERVAL = 0.001


class FakeClock:
    """A clock that moves only when told to (injected as ``clock=``).

    ``advance``/``advance_to`` call every hook registered with ``on_advance`` (the fixtures
    that run threads on the clock register one that settles them), once before moving and
    once after: what a thread was doing when the test called ``advance`` (a handler that
    has just sent a query, say, and is about to arm its timeout) ends at the old reading,
    and what the new reading makes due has run when ``advance`` returns.
    """

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._hooks: list[Callable[[], None]] = []

    def __call__(self) -> float:
        return self.now

    def _run_hooks(self) -> None:
        for hook in list(self._hooks):
            hook()

    def advance(self, seconds: float) -> None:
        """Let the threads finish at the current reading, move ``seconds`` (>= 0) on, and
        let them run what became due."""
        assert seconds >= 0, f"a clock does not go back ({seconds})"
        self._run_hooks()
        if seconds:
            self.now += seconds
            self._run_hooks()

    def settle(self) -> None:
        """Run the hooks without moving: every thread on this clock has then run what is
        due now, and what was queued onto it before."""
        self.advance(0.0)

    def advance_to(self, now: float) -> None:
        """Move on to the reading ``now`` (not before the current one)."""
        self.advance(now - self.now)

    def tick(self, seconds: float, step: float) -> None:
        """Advance ``seconds`` (a whole number of ``step``) one ``step`` at a time: a
        periodic event of period ``step`` then runs once a step, as it would while that
        much time passed (one ``advance`` runs it once, however far it goes)."""
        n = round(seconds / step)
        assert n >= 0 and abs(n * step - seconds) < 1e-9, f"{seconds} is not n * {step}"
        for _ in range(n):
            self.advance(step)

    def on_advance(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Call ``hook()`` around each advance; returns the function that unregisters it."""
        self._hooks.append(hook)
        return lambda: self._hooks.remove(hook)


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = WAIT,
    what: str | None = None,
    interval: float = POLL_INTERVAL,
) -> bool:
    """Poll ``predicate`` every ``interval`` seconds until it is true; True then.

    For a real kernel event that no clock drives (bytes arriving, a peer's close, a thread
    ending); fails the test (``AssertionError`` naming ``what``) after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            if predicate():
                return True
            waited_for = what or getattr(predicate, "__qualname__", repr(predicate))
            raise AssertionError(f"waited {timeout} s for {waited_for}, in vain")
        time.sleep(interval)
    return True


class CountingMutex(ProxyMutex):
    """A ProxyMutex that counts the attempts to take it without waiting (``tries``): an
    event loop's delivery attempts, or a net thread's."""

    def __init__(self) -> None:
        super().__init__()
        self.tries = 0

    def try_lock(self) -> bool:
        self.tries += 1
        return super().try_lock()


def yield_to_other_threads() -> None:
    """Give up the GIL (a zero sleep) so that another thread runs now: race tests only."""
    time.sleep(0)


def widen_race_window() -> None:
    """Stay a moment inside a handler, off the GIL, so that another thread's call (a
    ``cancel``, a delivery on another thread) lands while it runs: race tests only. No
    assertion depends on how long it lasts."""
    time.sleep(0.0005)


def run_on(thread: EThread, fn: Callable[[], Any], timeout: float = WAIT) -> Any:
    """Run ``fn()`` on ``thread`` as an immediate event and return its result.

    Since each thread runs its queue in order, it also drains what was queued before.
    """
    return run_on_each([thread], fn, timeout)[0]


def run_on_each(
    threads: Iterable[EThread], fn: Callable[[], Any], timeout: float = WAIT
) -> list[Any]:
    """Run ``fn()`` on each of ``threads`` at once (an immediate event: scheduled from
    another thread, it wakes the thread) and return the results in order; re-raise the
    first exception."""
    threads = list(threads)
    done = [threading.Event() for _ in threads]
    box: list[tuple[str, Any]] = [("err", None)] * len(threads)

    def runner(i: int) -> Continuation:
        def handler(event: int, e: Any) -> None:
            try:
                box[i] = ("ok", fn())
            except BaseException as exc:  # handed back to the test thread
                box[i] = ("err", exc)
            done[i].set()

        return Continuation(handler=handler)

    for i, t in enumerate(threads):
        t.schedule_imm(runner(i))
    for t, d in zip(threads, done):
        assert d.wait(timeout), f"{t.name} did not run the event within {timeout} s"
    for kind, value in box:
        if kind == "err":
            raise value
    return [value for _, value in box]


def settle(threads: Iterable[EThread], timeout: float = WAIT) -> None:
    """Return once each running thread of ``threads`` has run every timer due at its
    clock's current reading, and the events those timers queued.

    Two rounds of ``run_on_each``: the first reaches the thread (its signal wakes it from
    ``epoll_wait``) and runs in the pass that also takes the due timers, just before them;
    the second runs on the next pass, after them and after what they queued.
    """
    alive = [t for t in threads if t.is_alive]
    for _ in range(2):
        run_on_each(alive, lambda: None, timeout)


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
