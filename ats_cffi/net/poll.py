"""PollDescriptor (one epoll fd and its result arrays) and PollCont (the poll step)."""

from __future__ import annotations

import errno
import logging
import os
from array import array
from typing import TYPE_CHECKING, Any, Final

from ats_cffi import _fastio
from ats_cffi._native import ffi, lib
from ats_cffi.eventsystem.continuation import Continuation
from ats_cffi.eventsystem.mutex import ProxyMutex
from ats_cffi.net.codes import EVENTIO_READWRITE_VC
from ats_cffi.sys import Epoll
from ats_cffi.sys._check import EINTR, oserror

if TYPE_CHECKING:
    from ats_cffi.net.eventio import EventIO

log = logging.getLogger("ats.iocore_net")
_net_wait: Final = _fastio.net_wait
_add_all: Final = _fastio.epoll_add_all
_epoll_ctl: Final = _fastio.epoll_ctl  # (with the GIL held: a MOD or DEL does not block)
_CTL_MOD: Final[int] = lib.EPOLL_CTL_MOD
_CTL_DEL: Final[int] = lib.EPOLL_CTL_DEL
_EINTR: Final[int] = EINTR

#: Events taken from the kernel per epoll_wait (ATS's POLL_DESCRIPTOR_SIZE is larger; one
#: pass handles at most this many, the rest come on the next pass).
POLL_DESCRIPTOR_SIZE = 1024


#: A token's low 32 bits: its registration's slot (``PollDescriptor.slots``); the bits above
#: (up to bit 62: bit 63 marks a spliced end, net/splice.py): its generation.
SLOT_MASK: Final = 0xFFFFFFFF
SLOT_BITS: Final = 32
#: Generations run from 1 up to here, then start again at 1 (see ``register``).
GENERATIONS: Final = 1 << 31


class PollDescriptor:
    """One epoll instance with preallocated result arrays, and the registrations by token.

    A token is a slot number and a generation: ``slots[slot]`` is the EventIO and
    ``slot_tokens[slot]`` the token it was registered with (0: the slot is free). An event
    reaches its EventIO only if its token is the slot's current one: an event the kernel
    queued before a ``stop`` reaches no one, even when a new registration has taken the
    slot since (every registration gets the next generation). The NetHandler's dispatch
    looks its events up in C (``_fastio.ready_events``), once per pass, without an int
    object per event; a list and an array of 8-byte tokens cost less per connection than a
    dict keyed by ints.
    """

    __slots__ = (
        "epoll",
        "slots",
        "slot_tokens",
        "free_slots",
        "result",
        "_generation",
        "notify_c",
        "notify",
        "nnotify_c",
        "counters_c",
        "tokens",
        "masks",
        "pending",
        "failed",
        "net_args",
        "epfd",
    )

    def __init__(self, size: int = POLL_DESCRIPTOR_SIZE) -> None:
        self.epoll = Epoll(size)
        self.slots: list[EventIO | None] = []
        self.slot_tokens = array("Q")
        self.free_slots: list[int] = []
        self.result = 0
        self._generation = 1
        # The spliced ends' side of a pass (net/splice.py): the tokens of the ends that need
        # Python, their count, and the native pumps' counters (reads, read bytes, writes,
        # written bytes) until the NetHandler adds them to its stats.
        self.notify_c = ffi.new("uint64_t[]", size)
        self.notify = memoryview(ffi.buffer(self.notify_c)).cast("B").cast("Q")
        self.nnotify_c = ffi.new("int *")
        self.counters_c = ffi.new("uint64_t[]", lib.ATS_CTR_COUNT)
        # The epoll's result arrays (the same objects for its life) and the wait's arguments
        # (None once closed): read on every pass, kept here as this compiled class's
        # fields, not looked up on the interpreted Epoll.
        ep = self.epoll
        self.tokens: Any = ep.tokens
        self.masks: Any = ep.masks
        #: fd -> (events, token, token given to ``add``): the queued ADDs (``add`` with
        #: ``defer``), issued by the next ``flush`` (the poll step's, before its wait).
        self.pending: dict[int, tuple[int, int, int]] = {}
        #: The queued ADDs that failed when issued, as ``(fd, token, errno)``.
        self.failed: list[tuple[int, int, int]] = []
        self.net_args: tuple[int, ...] | None = ep.set_net_wait(
            self.notify_c, self.nnotify_c, self.counters_c
        )
        #: The epoll's fd for ``modify`` and ``delete`` (-1 once closed): their
        #: ``epoll_ctl`` is called here, compiled, not through the interpreted Epoll.
        self.epfd: int = ep.fd

    def register(self, eio: EventIO) -> int:
        """A new token for ``eio``: a free slot (or a new one) and the next generation. The
        generations wrap after 2**31 registrations: a stale event could then only reach a
        new owner if its slot were freed and taken 2**31 times within one pass."""
        gen = self._generation
        self._generation = gen + 1 if gen + 1 < GENERATIONS else 1
        if self.free_slots:
            slot = self.free_slots.pop()
            self.slots[slot] = eio
        else:
            slot = len(self.slots)
            if slot > SLOT_MASK:
                raise OSError(errno.EMFILE, "PollDescriptor.register: no slot left")
            self.slots.append(eio)
            self.slot_tokens.append(0)
        token = gen << SLOT_BITS | slot
        self.slot_tokens[slot] = token
        return token

    def unregister(self, token: int) -> None:
        """Free ``token``'s slot (nothing if it is not registered)."""
        slot = token & SLOT_MASK
        if slot < len(self.slots) and self.slot_tokens[slot] == token:
            self.slots[slot] = None
            self.slot_tokens[slot] = 0
            self.free_slots.append(slot)

    def lookup(self, token: int) -> EventIO | None:
        """The EventIO registered with ``token``, or None."""
        slot = token & SLOT_MASK
        if slot < len(self.slots) and self.slot_tokens[slot] == token:
            return self.slots[slot]
        return None

    def registered(self) -> list[EventIO]:
        """Every EventIO registered now."""
        return [eio for eio in self.slots if eio is not None]

    def add(self, fd: int, events: int, token: int, defer: bool) -> None:
        """``EPOLL_CTL_ADD`` of ``fd`` with the raw epoll ``events`` and ``token``. ``OSError``
        naming ``epoll_ctl`` (EEXIST if an ADD of ``fd`` is queued, EBADF once closed).

        ``defer``: queue the ADD until the next ``flush`` (the poll step's, before its
        wait), so that an fd dropped before then (a connection its acceptor closes inside
        ``NET_EVENT_ACCEPT``) costs no ``epoll_ctl`` at all. Nothing is lost: nothing can
        observe the epoll set before the wait, and an ADD reports readiness that is already
        pending (with ``EPOLLET`` too). While it is queued, ``modify`` edits it and
        ``delete``/``drop`` forget it. A queued ADD that fails is recorded in ``failed``."""
        pending = self.pending
        if pending and fd in pending:
            raise oserror("epoll_ctl", errno.EEXIST)
        if not defer:
            self.epoll.add(fd, events, token)
        elif self.net_args is None:  # closed
            raise oserror("epoll_ctl", errno.EBADF)
        else:
            pending[fd] = (events, token, token)

    def modify(self, fd: int, events: int, token: int) -> bool:
        """``EPOLL_CTL_MOD`` of ``fd`` (or of its queued ADD): with edge trigger, a MOD with
        the same mask reports readiness that is already pending once more. True if it edited
        a queued ADD (no event of ``fd`` was reported yet: the ADD will report them)."""
        pending = self.pending
        if pending and fd in pending:
            pending[fd] = (events, token, pending[fd][2])
            return True
        self._ctl(_CTL_MOD, fd, events, token)
        return False

    def delete(self, fd: int) -> None:
        """``EPOLL_CTL_DEL`` of ``fd``, or forget its queued ADD."""
        pending = self.pending
        if pending and fd in pending:
            del pending[fd]
        else:
            self._ctl(_CTL_DEL, fd, 0, 0)

    def _ctl(self, op: int, fd: int, events: int, token: int) -> None:
        # ``OSError`` naming ``epoll_ctl``: the kernel's errno, or EBADF once closed.
        epfd = self.epfd
        r: int = _epoll_ctl(epfd, op, fd, events, token) if epfd >= 0 else -errno.EBADF
        if r < 0:
            raise oserror("epoll_ctl", -r)

    def drop(self, fd: int) -> None:
        """Forget ``fd``, which the caller is about to close: its queued ADD (if any) is
        dropped, and no syscall is made, since closing an fd's last reference removes it
        from every epoll set (an fd shared with a ``dup`` needs ``delete`` instead)."""
        pending = self.pending
        if pending and fd in pending:  # (``pop`` is a method call by name, compiled)
            del pending[fd]

    def flush(self) -> int:
        """Issue the queued ADDs now (one call into C for all); returns how many failed
        (recorded in ``failed``)."""
        pending = self.pending
        if not pending:
            return 0
        try:
            return _add_all(self.epfd, pending, self.failed)  # type: ignore[no-any-return]
        finally:
            pending.clear()

    def take_failed(self) -> list[tuple[EventIO, int]]:
        """The registrations whose deferred ``EPOLL_CTL_ADD`` failed at the last flush, with
        the errno, still registered here (``EventIO.start(defer=True)``)."""
        out = []
        failed = self.failed[:]
        self.failed.clear()
        for _fd, token, err in failed:
            eio = self.lookup(token)
            if eio is not None:
                out.append((eio, err))
        return out

    def close(self) -> None:
        self.slots.clear()
        del self.slot_tokens[:]
        self.free_slots.clear()
        self.pending.clear()
        self.net_args = None
        self.epfd = -1
        self.epoll.close()


class PollCont(Continuation):
    """The continuation that waits on a thread's PollDescriptor (ATS's PollCont)."""

    def __init__(self, mutex: ProxyMutex | None, poll_timeout: int = 10) -> None:
        super().__init__(mutex)
        self.poll_descriptor = PollDescriptor()
        self.poll_timeout = poll_timeout
        self.set_handler(self.poll_event)

    def do_poll(self, timeout_ms: int) -> int:
        """``epoll_wait`` up to ``timeout_ms``; the results stay in the descriptor. Spliced
        fds are pumped natively; their ends that need Python are in ``pd.notify``. One call
        into C (``_fastio.net_wait``, the GIL released while it waits) after the queued
        ADDs are issued. ``OSError`` naming ``epoll_wait`` when it fails (EBADF once the
        descriptor is closed)."""
        pd = self.poll_descriptor
        if pd.pending:
            pd.flush()
        args = pd.net_args
        if args is None:
            raise oserror("epoll_wait", errno.EBADF)
        while True:
            n: int = _net_wait(args, timeout_ms)
            if n >= 0:
                break
            if n != -_EINTR:  # interrupted: the signal's handlers ran (net_wait)
                raise oserror("epoll_wait", -n)
        pd.result = n
        if pd.failed:
            self.registrations_failed()
        return n

    def registrations_failed(self) -> None:
        """Deferred registrations that failed (ENOMEM, ENOSPC: rare): each VC hears of it
        through its NetHandler (``start_io_failed``); anything else is logged."""
        for eio, err in self.poll_descriptor.take_failed():
            data = eio.data
            nh = getattr(data, "nh", None)
            if eio.type is EVENTIO_READWRITE_VC and nh is not None:
                nh.start_io_failed(data, err)
            else:
                log.error("epoll_ctl(ADD) of %r failed: %s", eio, os.strerror(err))

    def poll_event(self, event: int, data: Any) -> int:
        return self.do_poll(self.poll_timeout)

    def close(self) -> None:
        self.poll_descriptor.close()
