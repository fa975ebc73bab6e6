"""ats_cffi: Apache Traffic Server's network I/O core in Python over a cffi epoll extension.

The public API of every layer, re-exported (DESIGN.md section 2): the event system
(continuations, events, threads, buffers, VIOs), the net layer (``net_processor``,
``AcceptOptions``, ``UnixNetVConnection``, records and stats) and DNS (``dns_processor``).
The Pythonic system-call layer is ``ats_cffi.sys``; the raw cffi module ``ats_cffi._native``.
"""

from __future__ import annotations

import os as _os

if _os.environ.get("ATS_CFFI_PURE"):
    # Run the mypyc-compiled modules from their source instead (before any is imported).
    from ats_cffi._pure import prefer_source

    prefer_source()

from ats_cffi.dns import DNS_EVENT_LOOKUP, HostEnt, dns_config, dns_processor, dns_stats
from ats_cffi.eventsystem import (
    ET_CALL,
    ET_NET,
    INT64_MAX,
    VIO,
    Action,
    Continuation,
    EThread,
    Event,
    EventCode,
    EventProcessor,
    HandlerReturn,
    IOBufferReader,
    MIOBuffer,
    ProxyMutex,
    VIOOp,
    event_processor,
    this_ethread,
)
from ats_cffi.net import (
    AcceptOptions,
    NetVCOptions,
    Splice,
    UnixNetProcessor,
    UnixNetVConnection,
    net_config,
    net_processor,
    net_stats,
)
from ats_cffi.net.codes import (
    IO_SHUTDOWN_READ,
    IO_SHUTDOWN_READWRITE,
    IO_SHUTDOWN_WRITE,
    NetEventCode,
)

__version__ = "0.1.0"

__all__ = [
    "DNS_EVENT_LOOKUP", "ET_CALL", "ET_NET", "INT64_MAX", "IO_SHUTDOWN_READ",
    "IO_SHUTDOWN_READWRITE", "IO_SHUTDOWN_WRITE", "VIO", "AcceptOptions", "Action",
    "Continuation", "EThread", "Event", "EventCode", "EventProcessor", "HandlerReturn",
    "HostEnt", "IOBufferReader", "MIOBuffer", "NetEventCode", "NetVCOptions", "ProxyMutex",
    "Splice", "UnixNetProcessor", "UnixNetVConnection", "VIOOp", "dns_config", "dns_processor",
    "dns_stats", "event_processor", "net_config", "net_processor", "net_stats", "this_ethread",
    "__version__",
]  # fmt: skip
