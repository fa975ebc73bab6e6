"""PollDescriptor (one epoll fd and its result arrays) and PollCont (the poll step)."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from ats_cffi._native import ffi, lib
from ats_cffi.eventsystem.continuation import Continuation
from ats_cffi.eventsystem.mutex import ProxyMutex
from ats_cffi.net.codes import EVENTIO_READWRITE_VC
from ats_cffi.sys import Epoll

if TYPE_CHECKING:
    from ats_cffi.net.eventio import EventIO

log = logging.getLogger("ats.iocore_net")

#: Events taken from the kernel per epoll_wait (ATS's POLL_DESCRIPTOR_SIZE is larger; one
#: pass handles at most this many, the rest come on the next pass).
POLL_DESCRIPTOR_SIZE = 1024


class PollDescriptor:
    """One epoll instance with preallocated result arrays, and the token → EventIO map.

    Tokens are 64-bit integers handed out once per registration and never reused, so an
    event for a closed-and-reused fd number can never reach the new owner.
    """

    __slots__ = (
        "epoll",
        "ios",
        "result",
        "_next_token",
        "notify_c",
        "notify",
        "nnotify_c",
        "counters_c",
    )

    def __init__(self, size: int = POLL_DESCRIPTOR_SIZE) -> None:
        self.epoll = Epoll(size)
        self.ios: dict[int, EventIO] = {}
        self.result = 0
        self._next_token = 1
        # The spliced ends' side of a pass (net/splice.py): the tokens of the ends that need
        # Python, their count, and the native pumps' counters (reads, read bytes, writes,
        # written bytes) until the NetHandler adds them to its stats.
        self.notify_c = ffi.new("uint64_t[]", size)
        self.notify = memoryview(ffi.buffer(self.notify_c)).cast("B").cast("Q")
        self.nnotify_c = ffi.new("int *")
        self.counters_c = ffi.new("uint64_t[]", lib.ATS_CTR_COUNT)

    def register(self, eio: EventIO) -> int:
        token = self._next_token
        self._next_token = token + 1
        self.ios[token] = eio
        return token

    def unregister(self, token: int) -> None:
        self.ios.pop(token, None)

    def take_failed(self) -> list[tuple[EventIO, int]]:
        """The registrations whose deferred ``EPOLL_CTL_ADD`` failed at the last wait, with
        the errno, still registered here (``EventIO.start(defer=True)``)."""
        failed, self.epoll.failed = self.epoll.failed, []
        out = []
        for _fd, token, err in failed:
            eio = self.ios.get(token)
            if eio is not None:
                out.append((eio, err))
        return out

    def close(self) -> None:
        self.ios.clear()
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
        fds are pumped natively; their ends that need Python are in ``pd.notify``."""
        pd = self.poll_descriptor
        ep = pd.epoll
        pd.result = n = ep.wait_net(timeout_ms, pd.notify_c, pd.nnotify_c, pd.counters_c)
        if ep.failed:
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
