"""Connection throttling (ATS's check_net_throttle / check_emergency_throttle /
change_net_connections_throttle).

Connections count both ways, as in ATS: accepted ones and outbound ones (``connect_re``)
are both in ``connections_currently_open``. An accept is refused once the open connections
times ``ACCEPT_HEADROOM`` reach the limit, a connect once they reach it
(``CONNECT_HEADROOM``): the gap keeps room for the outbound connections that accepted
clients need (a tunnel's upstreams), so that a client the process could not serve is
refused at accept rather than failing later.
"""

from __future__ import annotations

import logging
import resource
from enum import IntEnum

from ats_cffi.net.config import net_config
from ats_cffi.net.ratelog import RateLimitedLog
from ats_cffi.net.stats import CONNECTIONS_CURRENTLY_OPEN, net_stats

log = logging.getLogger("ats.net.throttle")

#: fds kept free for logs, config reloads and the like (ATS's THROTTLE_FD_HEADROOM), or a
#: quarter of RLIMIT_NOFILE when that is smaller (a low ``ulimit -n``, where ATS's headroom
#: would leave no connection at all, or turn the throttle off).
THROTTLE_FD_HEADROOM = 128 + 64
#: ATS's NET_THROTTLE_ACCEPT_HEADROOM and NET_THROTTLE_CONNECT_HEADROOM.
ACCEPT_HEADROOM = 1.1
CONNECT_HEADROOM = 1.0
#: Headroom under RLIMIT_NOFILE at which accepted connections are closed at once.
EMERGENCY_FD_HEADROOM = 16

#: The effective limit and the emergency fd number, set by ``change_net_connections_throttle``
#: (when the net processor or an asyncio loop starts, and on a records change); 0: none.
net_connections_throttle = 0
_emergency_fd = 0


class ThrottleType(IntEnum):
    ACCEPT = 0
    CONNECT = 1


#: ATS's check_throttle_warning, per kind (and for the fd headroom): one line a minute at
#: most, with a count.
_warnings = {t: RateLimitedLog(log) for t in ThrottleType}
_fd_warning = RateLimitedLog(log)


def throttle_warning(t: ThrottleType, fd: int = -1) -> None:
    """Log that a connection of kind ``t`` was refused by the throttle, or (``fd`` >= 0)
    that accepted fd ``fd`` came within the emergency headroom of RLIMIT_NOFILE; rate
    limited."""
    if fd >= 0:
        _fd_warning(
            "accepted fd %d is within %d of RLIMIT_NOFILE: connections refused",
            fd,
            EMERGENCY_FD_HEADROOM,
        )
        return
    _warnings[t](
        "too many connections (%d open, limit %d): %s throttled",
        net_stats.sum_unlocked(CONNECTIONS_CURRENTLY_OPEN),
        net_connections_throttle,
        "accepts" if t == ThrottleType.ACCEPT else "connects",
    )


def change_net_connections_throttle() -> int:
    """Derive the effective limit from ``connections_throttle`` and ``RLIMIT_NOFILE`` minus a
    headroom; returns it."""
    global net_connections_throttle, _emergency_fd
    configured = net_config.connections_throttle
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    _emergency_fd = soft - EMERGENCY_FD_HEADROOM if soft != resource.RLIM_INFINITY else 0
    fd_limit = soft - min(THROTTLE_FD_HEADROOM, soft // 4) if soft != resource.RLIM_INFINITY else 0
    if configured <= 0:
        net_connections_throttle = 0
    elif fd_limit > 0:
        net_connections_throttle = min(configured, fd_limit)
    else:
        net_connections_throttle = configured
    return net_connections_throttle


def check_net_throttle(t: ThrottleType = ThrottleType.ACCEPT, pending: int = 0) -> bool:
    """True when a new connection of kind ``t`` must be refused: the open connections (both
    ways), plus ``pending`` ones about to open, times ``ACCEPT_HEADROOM`` (accepts) or
    ``CONNECT_HEADROOM`` (connects) reach the limit."""
    limit = net_connections_throttle
    if limit <= 0:
        return False
    headroom = CONNECT_HEADROOM if t == ThrottleType.CONNECT else ACCEPT_HEADROOM
    return (net_stats.sum_unlocked(CONNECTIONS_CURRENTLY_OPEN) + pending) * headroom >= limit


def check_emergency_throttle(fd: int) -> bool:
    """True when ``fd`` is so close to ``RLIMIT_NOFILE`` (as read by the last
    ``change_net_connections_throttle``) that it must be closed at once."""
    return 0 < _emergency_fd <= fd


def batch_may_throttle(top_fd: int, count: int, exempt: bool = False, weight: int = 1) -> bool:
    """False when none of ``count`` just-accepted fds, the highest ``top_fd``, can be
    refused, checked once for the batch: no fd reaches the emergency headroom, and (unless
    ``exempt``, a backdoor listener) the open connections plus the whole batch, each fd
    counting ``weight`` connections (itself and the ones it will open), stay under the
    throttle. True: check each fd (``check_emergency_throttle`` / ``check_net_throttle``).
    (The caller, compiled, finds ``top_fd``: ``max`` of a list costs more here than the
    rest of the check.)"""
    e = _emergency_fd
    if e > 0 and top_fd >= e:
        return True
    if exempt:
        return False
    limit = net_connections_throttle
    if limit <= 0:
        return False
    open_after = net_stats.sum_unlocked(CONNECTIONS_CURRENTLY_OPEN) + count * weight
    return open_after * ACCEPT_HEADROOM >= limit
