"""Net event codes (ATS's Net.h) and EventIO types."""

from __future__ import annotations

import os
from enum import IntEnum
from typing import Final

from ats_cffi._native import lib
from ats_cffi.eventsystem.codes import NET_EVENT_EVENTS_START


class NetEventCode(IntEnum):
    NET_EVENT_OPEN = NET_EVENT_EVENTS_START
    NET_EVENT_OPEN_FAILED = NET_EVENT_EVENTS_START + 1
    NET_EVENT_ACCEPT = NET_EVENT_EVENTS_START + 2
    NET_EVENT_ACCEPT_SUCCEED = NET_EVENT_EVENTS_START + 3
    NET_EVENT_ACCEPT_FAILED = NET_EVENT_EVENTS_START + 4


# Plain ints, as eventsystem/codes.py's: what handlers compare ``event`` with.
NET_EVENT_OPEN: Final = NetEventCode.NET_EVENT_OPEN.value
NET_EVENT_OPEN_FAILED: Final = NetEventCode.NET_EVENT_OPEN_FAILED.value
NET_EVENT_ACCEPT: Final = NetEventCode.NET_EVENT_ACCEPT.value
NET_EVENT_ACCEPT_SUCCEED: Final = NetEventCode.NET_EVENT_ACCEPT_SUCCEED.value
NET_EVENT_ACCEPT_FAILED: Final = NetEventCode.NET_EVENT_ACCEPT_FAILED.value


#: ATS's net errnos (I_Net.h), beyond the system's: ``NET_EVENT_OPEN_FAILED`` carries
#: ``-ENET_THROTTLING`` for a connect refused by the connections throttle.
NET_ERRNO = 20000
ENET_THROTTLING = NET_ERRNO + 1
_NET_ERRORS = {ENET_THROTTLING: "connections throttled"}


class OpenError(int):
    """What ``NET_EVENT_OPEN_FAILED`` may carry instead of a bare ``-errno`` when the errno
    alone would name the wrong cause: the same int (it compares equal to ``-errno.X``),
    with ``reason``, what failed in words (a DNS result and the name looked up)."""

    reason: str

    def __new__(cls, value: int, reason: str) -> OpenError:
        self = super().__new__(cls, value)
        self.reason = reason
        return self


def net_strerror(err: int) -> str:
    """The text of ``err`` (or ``-err``): an ``OpenError``'s reason, one of the net errnos,
    else ``os.strerror``."""
    reason = getattr(err, "reason", None)
    if reason is not None:
        return reason  # type: ignore[no-any-return]
    err = abs(err)
    text = _NET_ERRORS.get(err)
    return text if text is not None else os.strerror(err)


class EventIOType(IntEnum):
    """What an EventIO's readiness means to the NetHandler that dispatches it."""

    EVENTIO_NONE = 0
    EVENTIO_NETACCEPT = 1
    EVENTIO_READWRITE_VC = 2
    EVENTIO_DNS_CONNECTION = 3
    EVENTIO_ASYNC_SIGNAL = 5
    #: An fd watched level-triggered for an owner that collects its readiness (the asyncio
    #: loop's ``add_reader``/``add_writer``; not an ATS type).
    EVENTIO_READINESS = 6


EVENTIO_NETACCEPT = EventIOType.EVENTIO_NETACCEPT
EVENTIO_READWRITE_VC = EventIOType.EVENTIO_READWRITE_VC
EVENTIO_DNS_CONNECTION = EventIOType.EVENTIO_DNS_CONNECTION
EVENTIO_ASYNC_SIGNAL = EventIOType.EVENTIO_ASYNC_SIGNAL
EVENTIO_READINESS = EventIOType.EVENTIO_READINESS

#: Interest bits of EventIO.start/modify/refresh (epoll's, as in ATS on Linux).
EVENTIO_READ: int = lib.EPOLLIN
EVENTIO_WRITE: int = lib.EPOLLOUT
EVENTIO_ERROR: int = lib.EPOLLERR | lib.EPOLLPRI | lib.EPOLLHUP


class ShutdownHowTo(IntEnum):
    IO_SHUTDOWN_READ = 0
    IO_SHUTDOWN_WRITE = 1
    IO_SHUTDOWN_READWRITE = 2


IO_SHUTDOWN_READ = ShutdownHowTo.IO_SHUTDOWN_READ
IO_SHUTDOWN_WRITE = ShutdownHowTo.IO_SHUTDOWN_WRITE
IO_SHUTDOWN_READWRITE = ShutdownHowTo.IO_SHUTDOWN_READWRITE
