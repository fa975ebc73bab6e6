"""Shared fixtures and helpers for the event system's thread tests.

Every wait is bounded (``WAIT``): a broken loop fails a test, it never hangs it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ats_cffi.eventsystem import Continuation, EThread, EventProcessor, ProxyMutex

#: Upper bound of every wait for something the event threads should do promptly.
WAIT = 5.0


class FakeClock:
    """A clock that moves only when told to (injected as ``clock=``)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recorder(Continuation):
    """Records every event it receives as ``(event code, cookie, thread ident, time)``.

    ``wait_count(n)`` waits (bounded) until at least ``n`` deliveries have happened.
    """

    def __init__(self) -> None:
        super().__init__(handler=self.on_event)
        self.calls: list[tuple[int, Any, int, float]] = []
        self._cond = threading.Condition()

    def on_event(self, event: int, e: Any) -> int:
        with self._cond:
            self.calls.append((event, e.cookie, threading.get_ident(), time.monotonic()))
            self._cond.notify_all()
        return 0

    @property
    def count(self) -> int:
        return len(self.calls)

    @property
    def cookies(self) -> list[Any]:
        return [c[1] for c in self.calls]

    def wait_count(self, n: int, timeout: float = WAIT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.calls) >= n, timeout)


class HeldElsewhere:
    """Holds a mutex on a helper thread until ``release()``."""

    def __init__(self, mutex: ProxyMutex) -> None:
        self.mutex = mutex
        self._taken = threading.Event()
        self._release = threading.Event()
        self.thread = threading.Thread(target=self._run, name="holder")
        self.thread.start()
        assert self._taken.wait(WAIT)

    def _run(self) -> None:
        with self.mutex:
            self._taken.set()
            self._release.wait(WAIT)

    def release(self) -> None:
        self._release.set()
        self.thread.join(WAIT)
        assert not self.thread.is_alive()


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll ``predicate`` every millisecond until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def run_on(thread: EThread, fn: Callable[[], Any], timeout: float = WAIT) -> Any:
    """Run ``fn()`` on ``thread`` as an immediate event and return its result.

    Since each thread runs its queue in order, it also drains what was queued before.
    """
    done = threading.Event()
    box: list[Any] = []

    def handler(event: int, e: Any) -> None:
        try:
            box.append(("ok", fn()))
        except BaseException as exc:  # handed back to the test thread
            box.append(("err", exc))
        done.set()

    thread.schedule_imm(Continuation(handler=handler))
    assert done.wait(timeout), f"{thread.name} did not run the event within {timeout}s"
    kind, value = box[0]
    if kind == "err":
        raise value
    return value


def fd_targets() -> dict[int, str]:
    """This process's fds and what each points at (from /proc/self/fd)."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the fd listdir itself used
            pass
    return out


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def processor() -> Iterator[Callable[..., EventProcessor]]:
    """Factory: ``processor(n_threads=1, clock=None, start=True)``; every processor it made
    is shut down after the test."""
    made: list[EventProcessor] = []

    def make(
        n_threads: int = 1, clock: Callable[[], float] | None = None, start: bool = True
    ) -> EventProcessor:
        ep = EventProcessor(clock) if clock is not None else EventProcessor()
        made.append(ep)
        if start:
            ep.start(n_threads)
        return ep

    yield make
    for ep in made:
        ep.shutdown(timeout=WAIT)


@pytest.fixture
def loose_thread(fake_clock: FakeClock) -> Iterator[EThread]:
    """An EThread that is never started, on the fake clock: the test drives ``run_pass``.

    Its ``tid`` is None, so every schedule onto it takes the cross-thread queue.
    ``join()`` releases its epoll fd and eventfd.
    """
    t = EThread(clock=fake_clock)
    yield t
    t.join()
