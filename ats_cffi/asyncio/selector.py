"""NetSelector: the asyncio loop's selector, on its EThread's NetHandler.

asyncio's selector loop asks its selector two things: keep a set of fds with the events
their readers and writers wait for (``register``/``modify``/``unregister``), and wait
(``select(timeout)``). Here both go to the loop's own net thread:

- a registered fd is an ``EVENTIO_READINESS`` EventIO in the NetHandler's epoll,
  level-triggered (asyncio's meaning: "call me while the fd is ready", DESIGN.md
  section 12), beside the VCs' edge-triggered sockets;
- ``select(timeout)`` is one pass of the EThread (``run_pass``): its due events (the
  InactivityCop among them), then the NetHandler's wait and dispatch. The VCs' events go
  to their transports during that dispatch; what the pass collected for the registered fds
  (``readiness``) is what ``select`` returns.
"""

from __future__ import annotations

import selectors
from typing import TYPE_CHECKING, Any

from ats_cffi._native import lib
from ats_cffi.asyncio.loopcore import net_pass
from ats_cffi.net.codes import EVENTIO_READINESS
from ats_cffi.net.eventio import EventIO

if TYPE_CHECKING:
    from ats_cffi.asyncio.dispatch import TransportDispatch
    from ats_cffi.eventsystem.ethread import EThread
    from ats_cffi.net.nethandler import NetHandler

_EPOLLIN: int = lib.EPOLLIN
_EPOLLOUT: int = lib.EPOLLOUT
_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE


def _epoll_mask(events: int) -> int:
    mask = 0
    if events & _READ:
        mask |= _EPOLLIN
    if events & _WRITE:
        mask |= _EPOLLOUT
    return mask


class NetSelector(selectors._BaseSelectorImpl):  # type: ignore[misc,name-defined]
    """A ``selectors`` selector whose fds live in ``nh``'s epoll and whose ``select`` runs
    one pass of ``thread`` (the loop's EThread, ``nh`` its poll step), holding the writes
    of ``dispatch``'s transports until the pass ends (dispatch.py)."""

    def __init__(self, thread: EThread, nh: NetHandler, dispatch: TransportDispatch) -> None:
        super().__init__()
        self._thread = thread
        self._nh = nh
        self._dispatch = dispatch
        self._ios: dict[int, EventIO] = {}
        self._ready: list[tuple[selectors.SelectorKey, int]] = []

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = super().register(fileobj, events, data)
        eio = EventIO(EVENTIO_READINESS, self)
        try:
            eio.start_level(self._nh.pd, key.fd, _epoll_mask(events))
        except BaseException:
            super().unregister(fileobj)
            raise
        self._ios[key.fd] = eio
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        key = super().unregister(fileobj)
        eio = self._ios.pop(key.fd, None)
        if eio is not None:
            eio.stop()  # EPOLL_CTL_DEL; an fd already closed has left the epoll set
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        try:
            key = self._fd_to_key[self._fileobj_lookup(fileobj)]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        if events != key.events:
            if not events or events & ~(_READ | _WRITE):
                raise ValueError(f"Invalid events: {events!r}")
            self._ios[key.fd].modify_level(_epoll_mask(events))
            key = key._replace(events=events, data=data)
            self._fd_to_key[key.fd] = key
        elif data != key.data:
            key = key._replace(data=data)
            self._fd_to_key[key.fd] = key
        return key

    def readiness(self, fd: int, mask: int) -> None:
        """The NetHandler's dispatch: ``fd`` is ready as epoll's ``mask`` says."""
        key = self._fd_to_key.get(fd)
        if key is None:
            return
        events = 0
        if mask & ~_EPOLLOUT:  # readable, or an error/hang-up a read will report
            events |= _READ
        if mask & ~_EPOLLIN:
            events |= _WRITE
        events &= key.events
        if events:
            self._ready.append((key, events))

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        return net_pass(self._thread, self._dispatch, self._ready, timeout) or []

    def net_select(self) -> tuple[EThread, list[tuple[selectors.SelectorKey, int]]]:
        """What ``select`` passes to ``net_pass`` besides the dispatch (the loop's compiled
        pass calls it itself): the EThread and the list of what the pass found ready, one
        object for the selector's life (``net_pass`` and ``close`` empty it in place)."""
        return self._thread, self._ready

    def close(self) -> None:
        for eio in self._ios.values():
            eio.stop()
        self._ios.clear()
        self._ready.clear()
        super().close()
