"""TransportDispatch: the one continuation of every VCTransport of a Loop, and its table of
them by fd.

A transport's VC delivers its events here, and this finds the transport by the VC's fd:
one object per loop where a continuation of each transport's own, with a handler bound to
the transport and its context, cost ~390 B per idle connection. The table is a list indexed
by fd (fds are small and dense): 8 bytes a slot, and a lookup without an int object.
Compiled (``ats_cffi/_compiled.py``), as the VC path that calls it: each event of every
transport passes here, and an interpreted dispatch would be one more Python frame per event.
For the same reason the two steps of nearly every round trip are here too: a read handed to
a plain ``Protocol``'s ``data_received`` (``handle_event``), and ``write``'s first try of the
socket with its counting (``send_counted``); the rest of each is ``transport.py``'s.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from typing import Any, Final

from ats_cffi import _fastio
from ats_cffi.eventsystem import codes as _codes
from ats_cffi.eventsystem.continuation import Continuation
from ats_cffi.eventsystem.ioblock import BlockPool
from ats_cffi.eventsystem.iobuffer import IOBufferReader
from ats_cffi.eventsystem.iocopy import read_bytes
from ats_cffi.eventsystem.mutex import ProxyMutex
from ats_cffi.net.netvconnection import NetState, NetVConnection
from ats_cffi.net.stats import StatBlock
from ats_cffi.net.vcio import count_write

#: ``Context.run`` itself: a call of it is one C call, not a method looked up by name.
_run: Final = contextvars.Context.run
_send_some: Final = _fastio.send_some
_READ_READY: Final = _codes.VC_EVENT_READ_READY
_EVENT_CONT: Final = _codes.EVENT_CONT
#: What the loop's exception handler is told when ``data_received`` raised.
DATA_RECEIVED_FAILED: Final = "Fatal error: protocol.data_received() call failed."


def send_counted(stats: StatBlock, fd: int, data: Any) -> int:
    """``_fastio.send_some(fd, data)`` counted in the NetHandler's ``stats`` as a VC's
    write step is (``calls_to_write``, ``write_bytes``, ``calls_to_write_nodata``)."""
    n: int = _send_some(fd, data)
    count_write(stats, n)
    return n


class TransportDispatch(Continuation):
    """``handle_event(event, vio)``: ``on_event(t, event, vio)`` in ``t._context``, for
    ``t`` the transport added for the fd of ``vio``'s VC. ``KeyError`` for a VC of no
    transport (the VC then closes: ``UnixNetVConnection._signal_and_update``).

    ``on_event`` is one function for every transport (``VCTransport._vc_event``). The loop's
    thread runs it all, under the loop's net mutex. A ``VC_EVENT_READ_READY`` of a transport
    whose ``_data_protocol`` is set (a plain ``Protocol``) and whose connection is not lost
    is handled here: all that ``reader`` (the loop's one read buffer) holds goes to
    ``data_received``; what it raises goes to the transport's ``_fatal_error``. ``pool``:
    the loop thread's block pool (its NetHandler's), where the read blocks go back."""

    __slots__ = ("on_event", "reader", "pool", "_by_fd")

    def __init__(
        self,
        mutex: ProxyMutex,
        on_event: Callable[[Any, int, Any], Any],
        reader: IOBufferReader,
        pool: BlockPool | None = None,
    ) -> None:
        super().__init__(mutex)
        self.on_event = on_event
        self.reader = reader
        self.pool = pool
        self._by_fd: list[Any] = []

    def handle_event(self, event: int = 0, data: Any = None) -> Any:
        vio: NetState = data
        vc: NetVConnection = vio.vc_server
        fd = vc.fd
        by_fd = self._by_fd
        t = by_fd[fd] if 0 <= fd < len(by_fd) else None
        if t is None:
            raise KeyError(fd)
        if event == _READ_READY and not t._conn_lost:
            protocol = t._data_protocol
            if protocol is not None:
                self._data_received(t, protocol)
                return _EVENT_CONT
        return _run(t._context, self.on_event, t, event, data)

    def _data_received(self, t: Any, protocol: Any) -> None:
        ctx = t._context
        try:
            # The loop's read buffer keeps its block (refilled by the next read, as
            # uvloop's loop-wide buffer): no trip through the pool per read.
            _run(ctx, protocol.data_received, read_bytes(self.reader, -1, self.pool, True))
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            _run(ctx, t._fatal_error, exc, DATA_RECEIVED_FAILED)

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
