"""Shared fixtures and helpers for the event system's thread tests.

Every wait is bounded (``WAIT``): a broken loop fails a test, it never hangs it. Time is
the fake clock's (``tests/conftest.py``): a processor made on it by the ``processor``
fixture is settled by every ``fake_clock.advance``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ats_cffi.eventsystem import Continuation, EThread, EventProcessor, ProxyMutex
from tests.conftest import (  # noqa: F401  (re-exported: the tests here import them from here)
    WAIT,
    FakeClock,
    run_on,
    settle,
    wait_until,
)


class Recorder(Continuation):
    """Records every event it receives as ``(event code, cookie, thread ident, time)``, the
    time being the delivering thread's clock (a fake clock's reading, on one).

    ``wait_count(n)`` waits (bounded) until at least ``n`` deliveries have happened.
    """

    def __init__(self) -> None:
        super().__init__(handler=self.on_event)
        self.calls: list[tuple[int, Any, int, float]] = []
        self._cond = threading.Condition()

    def on_event(self, event: int, e: Any) -> int:
        with self._cond:
            self.calls.append((event, e.cookie, threading.get_ident(), e.ethread.clock()))
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
def processor() -> Iterator[Callable[..., EventProcessor]]:
    """Factory: ``processor(n_threads=1, clock=None, start=True, settled=True)``; every
    processor it made is shut down after the test. On a FakeClock, each ``advance`` settles
    its threads (``settle``) unless ``settled`` is False: then only the test wakes them."""
    made: list[EventProcessor] = []
    unhook: list[Callable[[], None]] = []

    def make(
        n_threads: int = 1,
        clock: Callable[[], float] | None = None,
        start: bool = True,
        settled: bool = True,
    ) -> EventProcessor:
        ep = EventProcessor(clock) if clock is not None else EventProcessor()
        made.append(ep)
        if isinstance(clock, FakeClock) and settled:
            unhook.append(clock.on_advance(lambda: settle(ep.threads())))
        if start:
            ep.start(n_threads)
        return ep

    yield make
    for remove in unhook:
        remove()
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
