"""ProxyMutex: ATS's re-entrant continuation lock that knows its holder."""

from __future__ import annotations

import threading
from types import TracebackType

_get_ident = threading.get_ident


class ProxyMutex:
    """A re-entrant lock; ``try_lock`` never blocks.

    ``thread_holding`` is the ident of the holding OS thread (``None`` when free) and
    ``nthread_holding`` its recursion depth. Use ``with mutex:`` for scoped locking
    (blocking), or ``try_lock()``/``unlock()`` where blocking is not allowed (every
    event-loop path: a net thread must never wait for another thread's lock).
    """

    __slots__ = ("_lock", "thread_holding", "nthread_holding", "__weakref__")

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.thread_holding: int | None = None
        self.nthread_holding = 0

    def try_lock(self) -> bool:
        """Take the lock if that needs no wait; True on success (also when already held)."""
        if self._lock.acquire(False):
            self.thread_holding = _get_ident()
            self.nthread_holding += 1
            return True
        return False

    def lock(self, timeout: float = -1) -> bool:
        """Take the lock, waiting up to ``timeout`` seconds (-1: forever)."""
        if self._lock.acquire(True, timeout):
            self.thread_holding = _get_ident()
            self.nthread_holding += 1
            return True
        return False

    def unlock(self) -> None:
        """Release one level. Raises ``RuntimeError`` if this thread does not hold it."""
        if self.thread_holding != _get_ident():
            raise RuntimeError("ProxyMutex.unlock: the calling thread does not hold the mutex")
        self.nthread_holding -= 1
        if self.nthread_holding == 0:
            self.thread_holding = None
        self._lock.release()

    def held_by_me(self) -> bool:
        return self.thread_holding == _get_ident()

    def __enter__(self) -> ProxyMutex:
        self.lock()
        return self

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.unlock()

    def __repr__(self) -> str:
        return f"<ProxyMutex holder={self.thread_holding} depth={self.nthread_holding}>"
