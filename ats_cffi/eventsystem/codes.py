"""Event codes with ATS's names and values (Event.h, Continuation.h, VConnection.h)."""

from __future__ import annotations

from enum import IntEnum
from typing import Final


class EventCode(IntEnum):
    """Codes a continuation's handler receives as ``event``.

    ``VC_EVENT_ERROR`` is an alias of ``EVENT_ERROR`` (3), as in ATS.
    """

    EVENT_NONE = 0
    EVENT_IMMEDIATE = 1
    EVENT_INTERVAL = 2
    EVENT_ERROR = 3
    EVENT_CALL = 4
    EVENT_POLL = 5

    VC_EVENT_NONE = 0
    VC_EVENT_IMMEDIATE = 1
    VC_EVENT_ERROR = 3
    VC_EVENT_READ_READY = 100
    VC_EVENT_WRITE_READY = 101
    VC_EVENT_READ_COMPLETE = 102
    VC_EVENT_WRITE_COMPLETE = 103
    VC_EVENT_EOS = 104
    VC_EVENT_INACTIVITY_TIMEOUT = 105
    VC_EVENT_ACTIVE_TIMEOUT = 106


class HandlerReturn(IntEnum):
    """What a handler returns (ATS's ``EVENT_DONE``/``EVENT_CONT``); callers ignore it."""

    EVENT_DONE = 0
    EVENT_CONT = 1


# The codes as plain ints, the values of the classes above: what a handler compares its
# ``event`` with. CPython compares an int with an int in its quickest path; with an IntEnum
# member (a subclass of int) it first asks the member's type to compare (a subtype check
# and a call more, about 100 instructions per test in a handler's if/elif chain).
EVENT_NONE: Final = EventCode.EVENT_NONE.value
EVENT_IMMEDIATE: Final = EventCode.EVENT_IMMEDIATE.value
EVENT_INTERVAL: Final = EventCode.EVENT_INTERVAL.value
EVENT_ERROR: Final = EventCode.EVENT_ERROR.value
EVENT_CALL: Final = EventCode.EVENT_CALL.value
EVENT_POLL: Final = EventCode.EVENT_POLL.value
EVENT_DONE: Final = HandlerReturn.EVENT_DONE.value
EVENT_CONT: Final = HandlerReturn.EVENT_CONT.value

VC_EVENT_NONE: Final = EventCode.VC_EVENT_NONE.value
VC_EVENT_IMMEDIATE: Final = EventCode.VC_EVENT_IMMEDIATE.value
VC_EVENT_ERROR: Final = EventCode.VC_EVENT_ERROR.value
VC_EVENT_READ_READY: Final = EventCode.VC_EVENT_READ_READY.value
VC_EVENT_WRITE_READY: Final = EventCode.VC_EVENT_WRITE_READY.value
VC_EVENT_READ_COMPLETE: Final = EventCode.VC_EVENT_READ_COMPLETE.value
VC_EVENT_WRITE_COMPLETE: Final = EventCode.VC_EVENT_WRITE_COMPLETE.value
VC_EVENT_EOS: Final = EventCode.VC_EVENT_EOS.value
VC_EVENT_INACTIVITY_TIMEOUT: Final = EventCode.VC_EVENT_INACTIVITY_TIMEOUT.value
VC_EVENT_ACTIVE_TIMEOUT: Final = EventCode.VC_EVENT_ACTIVE_TIMEOUT.value

#: First code of each subsystem's range (ATS's ``*_EVENT_EVENTS_START``).
NET_EVENT_EVENTS_START = 200
DNS_EVENT_EVENTS_START = 600
