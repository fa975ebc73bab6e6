"""EventIO: one fd's registration in a PollDescriptor, and what its readiness means.

Edge-trigger rules (DESIGN.md section 5). A socket is registered once, for its whole life,
with ``EPOLLIN|EPOLLOUT|EPOLLET``: the kernel then reports each *transition* to readable or
writable once. Interest is therefore not expressed to the kernel at all: ``modify(+e/-e)``
only records it, and the VC's ``triggered``/``enabled`` flags and the NetHandler's ready
lists carry the state from one pass to the next. ``refresh(e)`` is the one exception: it
issues ``EPOLL_CTL_MOD`` with the same mask, which makes the kernel re-evaluate the fd and
report readiness that is already pending as a new edge. The DNS path needs that, because its
handler may stop reading before EAGAIN, and an edge-triggered fd would otherwise stay silent
about the answers still queued.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from ats_cffi._native import lib
from ats_cffi.net.codes import EVENTIO_READ, EVENTIO_WRITE, EventIOType

if TYPE_CHECKING:
    from ats_cffi.net.poll import PollDescriptor

_EPOLLET: Final[int] = lib.EPOLLET


class EventIO:
    """Registration of ``fd`` in ``pd`` with a ``type`` and the object ``data`` it serves
    (a VC, a DNSConnection, a NetAccept, or the thread's eventfd)."""

    __slots__ = ("fd", "pd", "type", "data", "events", "token")

    def __init__(self, type: EventIOType, data: Any = None) -> None:
        self.fd = -1
        self.pd: PollDescriptor | None = None
        self.type = type
        self.data = data
        self.events = 0
        self.token = 0

    def start(
        self, pd: PollDescriptor, fd: int, events: int, extra: int = 0, defer: bool = False
    ) -> None:
        """Register ``fd`` edge-triggered for ``events`` (plus raw ``extra`` epoll bits, e.g.
        ``EPOLLEXCLUSIVE``). Raises ``OSError`` naming ``epoll_ctl``.

        ``defer``: queue the ``EPOLL_CTL_ADD`` until the thread's next ``epoll_wait``
        (``PollDescriptor.add``), so that an fd stopped before then (a connection the acceptor
        closes inside ``NET_EVENT_ACCEPT``) costs no ``epoll_ctl`` at all. Nothing is lost:
        the ADD reports readiness that is already pending. A queued ADD that fails reaches
        ``PollDescriptor.take_failed``."""
        self._register("EventIO.start", pd, fd, events, events | _EPOLLET | extra, defer)

    def start_level(self, pd: PollDescriptor, fd: int, events: int) -> None:
        """Register ``fd`` level-triggered for ``events`` (the asyncio loop's readers and
        writers: asyncio's meaning is "call me while the fd is ready"). Unlike an
        edge-triggered fd, its interest is the kernel's: change it with ``modify_level``.
        Raises ``OSError`` naming ``epoll_ctl``."""
        self._register("EventIO.start_level", pd, fd, events, events, False)

    def _register(
        self, call: str, pd: PollDescriptor, fd: int, events: int, mask: int, defer: bool
    ) -> None:
        # start/start_level: ``EPOLL_CTL_ADD`` of ``fd`` with the raw epoll ``mask``.
        if self.pd is not None:
            raise RuntimeError(f"{call}: already started")
        token = pd.register(self)
        try:
            pd.add(fd, mask, token, defer)
        except BaseException:
            pd.unregister(token)
            raise
        self.fd = fd
        self.pd = pd
        self.events = events
        self.token = token

    def modify_level(self, events: int) -> None:
        """Change a level-triggered registration's interest to ``events`` (``EPOLL_CTL_MOD``)."""
        pd = self.pd
        if pd is None:
            raise RuntimeError("EventIO.modify_level: not started")
        pd.modify(self.fd, events, self.token)
        self.events = events

    def modify(self, e: int) -> None:
        """Record interest: ``+EVENTIO_READ`` adds it, ``-EVENTIO_READ`` removes it.

        With edge trigger this is bookkeeping only: the registration never changes.
        """
        if e < 0:
            self.events &= ~(-e)
        else:
            self.events |= e

    def refresh(self, e: int) -> None:
        """Re-arm the edge for ``e`` (``EPOLL_CTL_MOD`` with the registered mask) so that
        readiness already pending is reported again."""
        pd = self.pd
        if pd is None or not (self.events & e):
            return
        pd.modify(self.fd, self.events | _EPOLLET, self.token)

    def stop(self, closing: bool = False) -> None:
        """Remove the registration; a second call does nothing. The fd stays open.

        ``closing``: the caller closes the fd right after (its only reference), which removes
        it from the epoll set: no ``EPOLL_CTL_DEL`` is made. Events the kernel queued before
        cannot reach anyone either way: the token is unregistered now and never reused."""
        pd, self.pd = self.pd, None
        if pd is None:
            return
        pd.unregister(self.token)
        fd = self.fd
        if fd >= 0:
            if closing:
                pd.drop(fd)
            else:
                try:
                    pd.delete(fd)
                except OSError:
                    pass  # closed (fd or epoll), or never added: nothing to remove

    def __repr__(self) -> str:
        return f"<EventIO {self.type.name} fd={self.fd} events={self.events:#x}>"


READ_WRITE: Final[int] = EVENTIO_READ | EVENTIO_WRITE
