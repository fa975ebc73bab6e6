"""ProxyMutex: ATS's re-entrant continuation lock that knows its holder."""

from __future__ import annotations

import _thread
import sys
import time
from types import TracebackType
from typing import Final

from mypy_extensions import mypyc_attr

_get_ident: Final = _thread.get_ident
_allocate_lock: Final = _thread.allocate_lock
_monotonic: Final = time.monotonic
_TIMEOUT_MAX: Final = _thread.TIMEOUT_MAX


def _gil_enabled() -> bool:
    is_enabled = getattr(sys, "_is_gil_enabled", None)  # 3.13+: False on a free-threaded run
    return True if is_enabled is None else bool(is_enabled())


#: True when this module runs compiled (mypyc) under a GIL. A compiled method that reads and
#: writes only this class's own fields then runs as one step: the GIL passes to another
#: thread only between bytecodes, or in a call that releases it, and it has neither. Taking
#: and releasing a free mutex is then a check and two stores, with no OS lock; an OS lock is
#: made only for a thread that must wait (``lock``). Interpreted, or on a free-threaded
#: build, every mutex keeps an OS lock and taking it free goes through that lock.
_NATIVE: Final[bool] = not __file__.endswith(".py") and _gil_enabled()


@mypyc_attr(allow_interpreted_subclasses=True)
class ProxyMutex:
    """A re-entrant lock; ``try_lock`` never blocks.

    ``thread_holding`` is the ident of the holding OS thread (``None`` when free) and
    ``nthread_holding`` its recursion depth. Use ``with mutex:`` for scoped locking
    (blocking), or ``try_lock()``/``unlock()`` where blocking is not allowed (every
    event-loop path: a net thread must never wait for another thread's lock).

    The holder and the depth are two fields, written only by the holding thread (ATS's
    ``thread_holding``/``nthread_holding``): a re-entrant take or release is a compare and
    an increment. Taking it free needs the OS lock, except when ``_NATIVE`` (above), which
    makes the ``try_lock``/``unlock`` pair of every event delivery cost about as much as a
    method call.
    """

    __slots__ = ("_owner", "_depth", "_lock", "_waiters", "__weakref__")

    def __init__(self) -> None:
        #: Ident of the holding thread, 0 when free; its depth.
        self._owner = 0
        self._depth = 0
        #: The OS lock held while the mutex is (``None`` when ``_NATIVE``).
        self._lock: _thread.LockType | None = None if _NATIVE else _allocate_lock()
        #: ``_NATIVE``: one locked OS lock per thread waiting in ``lock``, released (all of
        #: them) when the mutex is freed.
        self._waiters: list[_thread.LockType] | None = None

    def _take_free(self, me: int) -> bool:
        """Take the mutex if it is free, without waiting (``me`` does not hold it)."""
        if _NATIVE:
            if self._owner:
                return False
        else:
            lk = self._lock
            assert lk is not None
            if not lk.acquire(False):
                return False
        self._owner = me
        self._depth = 1
        return True

    def _take(self, wait: float) -> bool:
        """Take the mutex, waiting up to ``wait`` seconds (< 0: forever)."""
        me = _get_ident()
        if self._owner == me:
            self._depth += 1
            return True
        if self._take_free(me):
            return True
        if wait == 0:
            return False
        if not _NATIVE:
            lk = self._lock
            assert lk is not None
            if not lk.acquire(True, wait):
                return False
            self._owner = me
            self._depth = 1
            return True
        deadline = _monotonic() + wait if wait > 0 else 0.0
        while True:
            waiter = _allocate_lock()
            waiter.acquire()
            waiters = self._waiters
            if waiters is None:
                waiters = self._waiters = []
            waiters.append(waiter)
            # The append and this attempt are one step with respect to unlock (``_NATIVE``):
            # a release before it lets this attempt succeed, one after it wakes the waiter.
            if self._take_free(me):
                waiters.remove(waiter)
                return True
            if deadline:
                remaining = deadline - _monotonic()
                woken = remaining > 0 and waiter.acquire(True, remaining)
            else:
                woken = waiter.acquire()
            if not woken:
                waiters = self._waiters
                if waiters is not None and waiter in waiters:
                    waiters.remove(waiter)
                return self._take_free(me)

    def try_lock(self) -> bool:
        """Take the lock if that needs no wait; True on success (also when already held)."""
        me = _get_ident()
        if self._owner == me:
            self._depth += 1
            return True
        return self._take_free(me)

    def lock(self, timeout: object = -1) -> bool:
        """Take the lock, waiting up to ``timeout`` seconds (-1, or more than the OS can
        wait, inf included: forever); True once taken. ``TypeError``/``ValueError`` for a
        timeout that is not a number, NaN, or negative but -1."""
        wait = -1.0
        if timeout != -1:
            if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
                raise TypeError(
                    f"ProxyMutex.lock: timeout must be a number, not {type(timeout).__name__}"
                )
            if not timeout >= 0:
                raise ValueError(f"ProxyMutex.lock: timeout must be >= 0 or -1, got {timeout}")
            if timeout < _TIMEOUT_MAX:
                wait = float(timeout)
        return self._take(wait)

    def unlock(self) -> None:
        """Release one level. Raises ``RuntimeError`` if this thread does not hold it."""
        if self._owner != _get_ident():
            raise RuntimeError("ProxyMutex.unlock: the calling thread does not hold the mutex")
        depth = self._depth - 1
        self._depth = depth
        if depth:
            return
        self._owner = 0
        if _NATIVE:
            waiters = self._waiters
            if waiters:
                self._waiters = None
                for waiter in waiters:
                    waiter.release()
        else:
            lk = self._lock
            assert lk is not None
            lk.release()

    def held_by_me(self) -> bool:
        """True if the calling thread holds the mutex."""
        return self._owner == _get_ident()

    @property
    def thread_holding(self) -> int | None:
        """Ident of the thread holding the mutex, None when it is free (a snapshot)."""
        owner = self._owner
        return owner if owner else None

    @property
    def nthread_holding(self) -> int:
        """How many times the holder has taken the mutex (0 when free; a snapshot)."""
        return self._depth if self._owner else 0

    def __enter__(self) -> ProxyMutex:
        self._take(-1.0)
        return self

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.unlock()

    def __repr__(self) -> str:
        owner = self._owner
        depth = self._depth if owner else 0
        return f"<ProxyMutex holder={owner if owner else None} depth={depth}>"
