"""The slice of ATS iocore/eventsystem the net layer stands on (DESIGN.md section 4)."""

from ats_cffi.eventsystem.codes import *  # noqa: F403
from ats_cffi.eventsystem.codes import EventCode, HandlerReturn
from ats_cffi.eventsystem.continuation import Continuation
from ats_cffi.eventsystem.current import DEDICATED, REGULAR, this_ethread
from ats_cffi.eventsystem.ethread import EThread
from ats_cffi.eventsystem.event import Action, Event
from ats_cffi.eventsystem.iobuffer import IOBufferBlock, IOBufferReader, MIOBuffer
from ats_cffi.eventsystem.mutex import ProxyMutex
from ats_cffi.eventsystem.processor import ET_CALL, ET_NET, EventProcessor, event_processor
from ats_cffi.eventsystem.vio import INT64_MAX, VIO, VIOOp

__all__ = [
    "DEDICATED", "ET_CALL", "ET_NET", "INT64_MAX", "REGULAR", "VIO", "Action", "Continuation",
    "EThread", "Event", "EventCode", "EventProcessor", "HandlerReturn", "IOBufferBlock",
    "IOBufferReader", "MIOBuffer", "ProxyMutex", "VIOOp", "event_processor", "this_ethread",
]  # fmt: skip
