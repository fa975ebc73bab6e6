"""ThreadCache: one object per thread (a freelist), found in a few steps on the thread that
used it last.

``threading.local`` costs a few hundred instructions per lookup, paid on every IOBuffer
block or parser a connection takes and gives back. A ThreadCache keeps the last
``(thread ident, object)`` pair as one tuple (replaced whole, so a thread never reads a
pair half written) and falls back to the thread-local only when another thread asks:
threads alternate at GIL switches and blocking calls, not per event. A thread that ends
and one that later gets its ident may share the object, never at the same time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Final

from ats_cffi.eventsystem.mutex import get_ident

_get_ident: Final = get_ident

__all__ = ["ThreadCache"]


class ThreadCache:
    """The calling thread's object, made by ``make()`` at the thread's first ``get``."""

    __slots__ = ("make", "local", "last")

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make
        self.local = threading.local()
        self.last: tuple[int, Any] = (0, None)

    def get(self) -> Any:
        """The calling thread's object."""
        last = self.last
        tid: int = _get_ident()
        if last[0] == tid:
            return last[1]
        obj = getattr(self.local, "obj", None)
        if obj is None:
            obj = self.local.obj = self.make()
        self.last = (tid, obj)
        return obj

    def set(self, obj: Any) -> None:
        """Make ``obj`` the calling thread's object."""
        self.local.obj = obj
        self.last = (_get_ident(), obj)
