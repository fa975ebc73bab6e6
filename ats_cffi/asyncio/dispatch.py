"""TransportDispatch: the one continuation of every VCTransport of a Loop, and its table of
them by fd.

A transport's VC delivers its events here, and this finds the transport by the VC's fd:
one object per loop where a continuation of each transport's own, with a handler bound to
the transport and its context, cost ~390 B per idle connection. The table is a list indexed
by fd (fds are small and dense): 8 bytes a slot, and a lookup without an int object.
Compiled (``ats_cffi/_compiled.py``), as the VC path that calls it: each event of every
transport passes here, and an interpreted dispatch would be one more Python frame per event.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from typing import Any, Final

from ats_cffi.eventsystem.continuation import Continuation
from ats_cffi.eventsystem.mutex import ProxyMutex
from ats_cffi.net.netvconnection import NetState, NetVConnection

#: ``Context.run`` itself: a call of it is one C call, not a method looked up by name.
_run: Final = contextvars.Context.run


class TransportDispatch(Continuation):
    """``handle_event(event, vio)``: ``on_event(t, event, vio)`` in ``t._context``, for
    ``t`` the transport added for the fd of ``vio``'s VC. ``KeyError`` for a VC of no
    transport (the VC then closes: ``UnixNetVConnection._signal_and_update``).

    ``on_event`` is one function for every transport (``VCTransport._vc_event``). The loop's
    thread runs it all, under the loop's net mutex."""

    __slots__ = ("on_event", "_by_fd")

    def __init__(self, mutex: ProxyMutex, on_event: Callable[[Any, int, Any], Any]) -> None:
        super().__init__(mutex)
        self.on_event = on_event
        self._by_fd: list[Any] = []

    def handle_event(self, event: int = 0, data: Any = None) -> Any:
        vio: NetState = data
        vc: NetVConnection = vio.vc_server
        fd = vc.fd
        by_fd = self._by_fd
        t = by_fd[fd] if 0 <= fd < len(by_fd) else None
        if t is None:
            raise KeyError(fd)
        return _run(t._context, self.on_event, t, event, data)

    def add(self, fd: int, transport: Any) -> None:
        """Make ``transport`` the one of ``fd`` (replacing any other)."""
        by_fd = self._by_fd
        if fd >= len(by_fd):
            by_fd.extend([None] * max(fd + 1 - len(by_fd), len(by_fd), 64))
        by_fd[fd] = transport

    def remove(self, fd: int, transport: Any) -> None:
        """Forget ``transport`` as the one of ``fd``, if it still is (a closed VC's fd may
        be another connection's by now)."""
        by_fd = self._by_fd
        if 0 <= fd < len(by_fd) and by_fd[fd] is transport:
            by_fd[fd] = None

    def get(self, fd: int) -> Any:
        """The transport of ``fd``, or None."""
        by_fd = self._by_fd
        return by_fd[fd] if 0 <= fd < len(by_fd) else None

    def transports(self) -> Iterator[Any]:
        """Every transport of the table (a snapshot: one may be removed meanwhile)."""
        return iter([t for t in self._by_fd if t is not None])
