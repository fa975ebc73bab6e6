"""ProxyMutex: ATS's re-entrant continuation lock that knows its holder."""

from __future__ import annotations

import _thread
import re
import threading
from types import TracebackType
from typing import Final

from mypy_extensions import mypyc_attr

_get_ident: Final = threading.get_ident
_TIMEOUT_MAX: Final = threading.TIMEOUT_MAX
# The C RLock itself (``threading.RLock`` is a Python function returning one; a mutex is
# made per connection, twice): it tracks its owner and depth itself.
_RLock: Final = _thread.RLock

# ``_thread.RLock``'s repr: "<locked _thread.RLock object owner=140… count=2 at 0x…>".
_OWNER_COUNT: Final = re.compile(r"owner=(\d+) count=(\d+)")


@mypyc_attr(allow_interpreted_subclasses=True)
class ProxyMutex:
    """A re-entrant lock; ``try_lock`` never blocks.

    ``thread_holding`` is the ident of the holding OS thread (``None`` when free) and
    ``nthread_holding`` its recursion depth. Use ``with mutex:`` for scoped locking
    (blocking), or ``try_lock()``/``unlock()`` where blocking is not allowed (every
    event-loop path: a net thread must never wait for another thread's lock).

    The holder and the depth are the RLock's own (it keeps both, in C): taking and
    releasing the mutex does no bookkeeping in Python, which is what makes the
    ``try_lock``/``unlock`` pair of every event delivery cheap. ``held_by_me`` asks the
    RLock directly; ``thread_holding``/``nthread_holding`` (diagnostics: nothing on an
    event path reads them) read its state from its repr.
    """

    __slots__ = ("_lock", "__weakref__")

    def __init__(self) -> None:
        # No bound methods cached per mutex: looking ``acquire`` up on the C lock is as fast
        # as calling a stored one, and an idle connection keeps two mutexes.
        self._lock = _RLock()

    def try_lock(self) -> bool:
        """Take the lock if that needs no wait; True on success (also when already held)."""
        return self._lock.acquire(False)

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
                wait = timeout
        return self._lock.acquire(True, wait)

    def unlock(self) -> None:
        """Release one level. Raises ``RuntimeError`` if this thread does not hold it."""
        try:
            self._lock.release()
        except RuntimeError:
            raise RuntimeError(
                "ProxyMutex.unlock: the calling thread does not hold the mutex"
            ) from None

    def held_by_me(self) -> bool:
        """True if the calling thread holds the mutex."""
        return self._lock._is_owned()  # type: ignore[attr-defined]

    def _owner_count(self) -> tuple[int, int]:
        mo = _OWNER_COUNT.search(repr(self._lock))
        if mo is None:  # pragma: no cover - an RLock without CPython's repr
            return (_get_ident(), 1) if self._lock._is_owned() else (0, 0)  # type: ignore[attr-defined]
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
        self._lock.acquire()
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
