"""ATS iocore/net: NetHandler over edge-triggered epoll, UnixNetVConnection, NetAccept,
the InactivityCop, connect_re/connect_s (DESIGN.md sections 5-7), and Splice (a blind tunnel
pumped natively)."""

from ats_cffi.net.accept import AcceptOptions, NetAccept
from ats_cffi.net.codes import *  # noqa: F403
from ats_cffi.net.config import NetConfig, net_config
from ats_cffi.net.connect import ConnectAction
from ats_cffi.net.eventio import EventIO
from ats_cffi.net.nethandler import InactivityCop, NetHandler, get_net_handler
from ats_cffi.net.netvc import NetVCOptions, UnixNetVConnection
from ats_cffi.net.poll import PollCont, PollDescriptor
from ats_cffi.net.processor import (
    UnixNetProcessor,
    initialize_thread_for_net,
    net_processor,
)
from ats_cffi.net.splice import Splice
from ats_cffi.net.stats import NetStats, net_stats
from ats_cffi.net.throttle import (
    change_net_connections_throttle,
    check_emergency_throttle,
    check_net_throttle,
)

__all__ = [
    "AcceptOptions", "ConnectAction", "EventIO", "InactivityCop", "NetAccept", "NetConfig",
    "NetHandler", "NetStats", "NetVCOptions", "PollCont", "PollDescriptor", "Splice",
    "UnixNetProcessor",
    "UnixNetVConnection", "change_net_connections_throttle", "check_emergency_throttle",
    "check_net_throttle", "get_net_handler", "initialize_thread_for_net", "net_config",
    "net_processor", "net_stats",
]  # fmt: skip
