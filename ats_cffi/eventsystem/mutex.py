"""ProxyMutex: ATS's re-entrant continuation lock that knows its holder."""

from __future__ import annotations

import _thread
import re
import sys
import time
from types import TracebackType
from typing import Final

from mypy_extensions import mypyc_attr

_get_ident: Final = _thread.get_ident
_allocate_lock: Final = _thread.allocate_lock
_RLock: Final = _thread.RLock
_monotonic: Final = time.monotonic
_TIMEOUT_MAX: Final = _thread.TIMEOUT_MAX

# ``_thread.RLock``'s repr: "<locked _thread.RLock object owner=140… count=2 at 0x…>".
_OWNER_COUNT: Final = re.compile(r"owner=(\d+) count=(\d+)")


def _gil_enabled() -> bool:
    is_enabled = getattr(sys, "_is_gil_enabled", None)  # 3.13+: False on a free-threaded run
    return True if is_enabled is None else bool(is_enabled())


#: True when this module runs compiled (mypyc) under a GIL. A compiled method that reads and
#: writes only this class's own fields then runs as one step: the GIL passes to another
#: thread only between bytecodes, or in a call that releases it, and it has neither. The
#: mutex is then two fields, holder and depth, and taking or releasing it is a compare and a
#: store or two, with no OS lock; an OS lock is made only for a thread that must wait
#: (``lock``). Otherwise (interpreted, or a free-threaded build) each mutex is a C RLock,
#: which keeps its holder and depth itself.
_NATIVE: Final[bool] = not __file__.endswith(".py") and _gil_enabled()


@mypyc_attr(allow_interpreted_subclasses=True)
class ProxyMutex:
    """A re-entrant lock; ``try_lock`` never blocks.

    ``thread_holding`` is the ident of the holding OS thread (``None`` when free) and
    ``nthread_holding`` its recursion depth. Use ``with mutex:`` for scoped locking
    (blocking), or ``try_lock()``/``unlock()`` where blocking is not allowed (every
    event-loop path: a net thread must never wait for another thread's lock).

    Holder and depth live in two fields when ``_NATIVE`` (above), written only by the
    holder, which makes the ``try_lock``/``unlock`` pair of every event delivery cost about
    a method call; otherwise in the RLock (``thread_holding``/``nthread_holding``, which
    nothing on an event path reads, then parse its repr).
    """

    __slots__ = ("_owner", "_depth", "_lock", "_waiters", "__weakref__")

    def __init__(self) -> None:
        #: ``_NATIVE``: ident of the holding thread (0 when free) and its depth.
        self._owner = 0
        self._depth = 0
        #: Not ``_NATIVE``: the RLock that is the mutex.
        self._lock: _thread.RLock | None = None if _NATIVE else _RLock()
        #: ``_NATIVE``: one locked OS lock per thread waiting in ``lock``, all released
        #: when the mutex is freed.
        self._waiters: list[_thread.LockType] | None = None

    def _rlock(self) -> _thread.RLock:
        lk = self._lock
        assert lk is not None  # (not _NATIVE)
        return lk

    def _take_free(self, me: int) -> bool:
        """``_NATIVE``: take the mutex if it is free (``me`` does not hold it)."""
        if self._owner:
            return False
        self._owner = me
        self._depth = 1
        return True

    def _take(self, wait: float) -> bool:
        """Take the mutex, waiting up to ``wait`` seconds (< 0: forever)."""
        if not _NATIVE:
            return self._rlock().acquire(True, wait)
        me = _get_ident()
        if self._owner == me:
            self._depth += 1
            return True
        if self._take_free(me):
            return True
        if wait == 0:
            return False
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
        if not _NATIVE:
            return self._lock.acquire(False)  # type: ignore[union-attr]
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
        if not _NATIVE:
            try:
                self._lock.release()  # type: ignore[union-attr]
            except RuntimeError:
                raise RuntimeError(
                    "ProxyMutex.unlock: the calling thread does not hold the mutex"
                ) from None
            return
        if self._owner != _get_ident():
            raise RuntimeError("ProxyMutex.unlock: the calling thread does not hold the mutex")
        depth = self._depth - 1
        self._depth = depth
        if depth:
            return
        self._owner = 0
        waiters = self._waiters
        if waiters:
            self._waiters = None
            for waiter in waiters:
                waiter.release()

    def held_by_me(self) -> bool:
        """True if the calling thread holds the mutex."""
        if not _NATIVE:
            return self._rlock()._is_owned()  # type: ignore[attr-defined,no-any-return]
        return self._owner == _get_ident()

    def _owner_count(self) -> tuple[int, int]:
        """(holder ident, depth), (0, 0) when free: a snapshot."""
        if _NATIVE:
            owner = self._owner
            return (owner, self._depth) if owner else (0, 0)
        lk = self._rlock()
        mo = _OWNER_COUNT.search(repr(lk))
        if mo is None:  # pragma: no cover - an RLock without CPython's repr
            return (_get_ident(), 1) if lk._is_owned() else (0, 0)  # type: ignore[attr-defined]
        count = int(mo[2])
        return (int(mo[1]) if count else 0), count

    @property
    def thread_holding(self) -> int | None:
        """Ident of the thread holding the mutex, None when it is free (a snapshot)."""
        owner, count = self._owner_count()
        return owner if count else None

    @property
    def nthread_holding(self) -> int:
        """How many times the holder has taken the mutex (0 when free; a snapshot)."""
        return self._owner_count()[1]

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
        owner, count = self._owner_count()
        return f"<ProxyMutex holder={owner if count else None} depth={count}>"
