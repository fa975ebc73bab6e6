"""Connection throttling (ATS's check_net_throttle / check_emergency_throttle /
change_net_connections_throttle)."""

from __future__ import annotations

import resource
from enum import IntEnum

from ats_cffi.net.config import net_config
from ats_cffi.net.stats import CONNECTIONS_CURRENTLY_OPEN, net_stats

#: fds kept free for logs, config reloads and the like (ATS's THROTTLE_FD_HEADROOM).
THROTTLE_FD_HEADROOM = 128 + 64
#: Headroom under RLIMIT_NOFILE at which accepted connections are closed at once.
EMERGENCY_FD_HEADROOM = 16


class ThrottleType(IntEnum):
    ACCEPT = 0
    CONNECT = 1


#: The effective limit (set by change_net_connections_throttle; 0: off).
net_connections_throttle = 0
#: fd number at and above which a new connection is closed at once (0: no limit). Read from
#: RLIMIT_NOFILE by change_net_connections_throttle, not per accept (a syscall each).
_emergency_fd = 0


def change_net_connections_throttle() -> int:
    """Derive the effective limit from ``connections_throttle`` and ``RLIMIT_NOFILE`` minus a
    headroom; returns it."""
    global net_connections_throttle, _emergency_fd
    configured = net_config.connections_throttle
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    _emergency_fd = soft - EMERGENCY_FD_HEADROOM if soft != resource.RLIM_INFINITY else 0
    fd_limit = soft - THROTTLE_FD_HEADROOM if soft != resource.RLIM_INFINITY else 0
    if configured <= 0:
        net_connections_throttle = 0
    elif fd_limit > 0:
        net_connections_throttle = min(configured, fd_limit)
    else:
        net_connections_throttle = configured
    return net_connections_throttle


def check_net_throttle(t: ThrottleType = ThrottleType.ACCEPT) -> bool:
    """True when new connections must be refused: open connections × 1.1 reach the limit."""
    limit = net_connections_throttle
    if limit <= 0:
        return False
    return net_stats.sum_unlocked(CONNECTIONS_CURRENTLY_OPEN) * 1.1 >= limit


def check_emergency_throttle(fd: int) -> bool:
    """True when ``fd`` is so close to ``RLIMIT_NOFILE`` (as read by the last
    ``change_net_connections_throttle``) that it must be closed at once."""
    return 0 < _emergency_fd <= fd


def batch_may_throttle(fds: list[int], exempt: bool = False) -> bool:
    """False when none of the just-accepted ``fds`` can be refused, checked once for the
    batch: no fd reaches the emergency headroom, and (unless ``exempt``, a backdoor
    listener) the open connections plus the whole batch stay under the throttle. True: check
    each fd (``check_emergency_throttle`` / ``check_net_throttle``)."""
    e = _emergency_fd
    if e > 0 and max(fds) >= e:
        return True
    if exempt:
        return False
    limit = net_connections_throttle
    if limit <= 0:
        return False
    return (net_stats.sum_unlocked(CONNECTIONS_CURRENTLY_OPEN) + len(fds)) * 1.1 >= limit
