"""ProxyMutex: ATS's re-entrant continuation lock that knows its holder."""

from __future__ import annotations

import _thread
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Final

from mypy_extensions import mypyc_attr


def _ident_function() -> Callable[[], int]:
    """``ats_cffi._fastio.get_ident`` (the ident of the calling thread, as
    ``threading.get_ident``, with no int made per call), or ``_thread.get_ident`` before the
    C extensions are built."""
    try:
        from ats_cffi._fastio import get_ident
    except ImportError:
        return _thread.get_ident
    return get_ident


#: ``threading.get_ident``, as cheap as it gets: what every "am I the holder" and "am I on
#: the VC's thread" test calls (several times per event).
get_ident: Final = _ident_function()
_get_ident: Final = get_ident
_allocate_lock: Final = _thread.allocate_lock
_monotonic: Final = time.monotonic
_TIMEOUT_MAX: Final = _thread.TIMEOUT_MAX


def _gil_enabled() -> bool:
    is_enabled = getattr(sys, "_is_gil_enabled", None)  # 3.13+: False on a free-threaded run
    return True if is_enabled is None else bool(is_enabled())


#: True when this module runs compiled (mypyc) under a GIL. A compiled method that reads and
#: writes only this class's own fields then runs as one step: the GIL passes to another
#: thread only between bytecodes, or in a call that releases it, and it has neither. Taking
#: a free mutex is then a compare and two stores, with no OS lock; an OS lock is made only
#: for a thread that must wait (``lock``). Otherwise (interpreted, or a free-threaded
#: build) each mutex has one plain OS lock, the token of "taken", which only the first
#: level acquires and the last level releases.
_NATIVE: Final[bool] = not __file__.endswith(".py") and _gil_enabled()


@mypyc_attr(allow_interpreted_subclasses=True)
class ProxyMutex:
    """A re-entrant lock; ``try_lock`` never blocks.

    ``thread_holding`` is the ident of the holding OS thread (``None`` when free) and
    ``nthread_holding`` its recursion depth. Use ``with mutex:`` for scoped locking
    (blocking), or ``try_lock()``/``unlock()`` where blocking is not allowed (every
    event-loop path: a net thread must never wait for another thread's lock).

    Holder and depth are two fields in every mode, written only by the holder (after it
    took the mutex, before it frees it): a thread reads ``_owner == me`` truly whatever
    other threads do, so re-entry is a compare and an increment, and ``held_by_me`` is
    exact. Another thread's reading of them is a snapshot. ``_NATIVE`` (above) chooses only
    how a free mutex is taken atomically (in ``try_lock``), how a thread waits for it
    (``_wait``) and how the last ``unlock`` hands it on.
    """

    __slots__ = ("_owner", "_depth", "_lock", "_waiters", "__weakref__")

    def __init__(self) -> None:
        #: Ident of the holding thread (0 when free) and its depth.
        self._owner = 0
        self._depth = 0
        #: Not ``_NATIVE``: the OS lock held while the mutex is taken (at any depth).
        self._lock: _thread.LockType | None = None if _NATIVE else _allocate_lock()
        #: ``_NATIVE``: one locked OS lock per thread waiting in ``lock``, all released
        #: when the mutex is freed.
        self._waiters: list[_thread.LockType] | None = None

    def try_lock(self) -> bool:
        """Take the lock if that needs no wait; True on success (also when already held)."""
        return ProxyMutex._try_as(self, _get_ident())

    def try_lock_as(self, me: int) -> bool:
        """``try_lock`` by the calling thread, whose ident ``me`` the caller knows: a
        NetHandler's pass gives its own thread's (``NetHandler.tid``) for each VC's turn,
        instead of a lookup of the ident per call. ``me`` must be the caller's ident. A
        subclass's ``try_lock`` runs instead, so that its override is honoured."""
        if type(self) is not ProxyMutex:
            return self.try_lock()
        if _NATIVE and not self._owner:  # free, the usual turn: ``_try_as``'s steps, here
            self._owner = me
            self._depth = 1
            return True
        return ProxyMutex._try_as(self, me)

    def _try_as(self, me: int) -> bool:
        # try_lock's work, for the thread whose ident is ``me``.
        if self._owner == me:
            self._depth += 1
            return True
        # Taking a free mutex is the mode's: _NATIVE, this compare and the stores below
        # are one step; otherwise the OS lock decides. Then the taker writes the fields.
        if _NATIVE:
            if self._owner:
                return False
        elif not self._lock.acquire(False):  # type: ignore[union-attr]
            return False
        self._owner = me
        self._depth = 1
        return True

    def _wait(self, me: int, wait: float) -> bool:
        """Take the mutex (``me`` does not hold it), waiting up to ``wait`` seconds (< 0:
        forever); False once that time is over."""
        if not _NATIVE:
            if not self._lock.acquire(True, wait):  # type: ignore[union-attr]
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
            if ProxyMutex._try_as(self, me):
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
                return ProxyMutex._try_as(self, me)

    def _wake_waiters(self) -> None:
        """``_NATIVE``: wake every thread waiting in ``lock`` (the mutex was just freed)."""
        waiters = self._waiters
        self._waiters = None
        if waiters:
            for waiter in waiters:
                waiter.release()

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

    def _take(self, wait: float) -> bool:
        # ProxyMutex's own try_lock: a subclass's override is for its callers, not for this.
        return ProxyMutex.try_lock(self) or (wait != 0 and self._wait(_get_ident(), wait))

    def unlock(self) -> None:
        """Release one level. Raises ``RuntimeError`` if this thread does not hold it."""
        ProxyMutex._unlock_as(self, _get_ident())

    def unlock_as(self, me: int) -> None:
        """``unlock`` by the calling thread, whose ident ``me`` the caller knows (as for
        ``try_lock_as``; a subclass's ``unlock`` runs instead)."""
        if type(self) is not ProxyMutex:
            self.unlock()
        elif _NATIVE and self._depth == 1 and self._owner == me and not self._waiters:
            self._depth = 0  # the last level, nobody waiting: ``_unlock_as``'s steps, here
            self._owner = 0
        else:
            ProxyMutex._unlock_as(self, me)

    def _unlock_as(self, me: int) -> None:
        # unlock's work, for the thread whose ident is ``me``.
        if self._owner != me:
            raise RuntimeError("ProxyMutex.unlock: the calling thread does not hold the mutex")
        depth = self._depth - 1
        self._depth = depth
        if depth:
            return
        # Cleared before the mutex is handed on: the next holder writes its own ident.
        self._owner = 0
        if not _NATIVE:
            self._lock.release()  # type: ignore[union-attr]
        elif self._waiters:
            self._wake_waiters()

    def held_by_me(self) -> bool:
        """True if the calling thread holds the mutex."""
        return self._owner == _get_ident()

    def _owner_count(self) -> tuple[int, int]:
        """(holder ident, depth), (0, 0) when free: a snapshot. Not ``_NATIVE``, another
        thread can read the two fields in the middle of a take or a free: a pair with one
        of them 0 counts as free."""
        owner = self._owner
        depth = self._depth
        return (owner, depth) if owner and depth else (0, 0)

    @property
    def thread_holding(self) -> int | None:
        """Ident of the thread holding the mutex, None when it is free (a snapshot)."""
        return self._owner_count()[0] or None

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
        owner, depth = self._owner_count()
        return f"<ProxyMutex holder={owner or None} depth={depth}>"
