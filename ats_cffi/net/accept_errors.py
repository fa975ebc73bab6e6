"""The classes of accept errors (ATS's ``accept_error_seriousness``) and what each asks of
an accept loop: ignore, retry at once, back off, or stop the listener."""

from __future__ import annotations

import errno

#: ECONNABORTED: the peer gave up before the accept; nothing to do.
IGNORE = 2
#: Try again at once.
TRANSIENT = 1
#: Out of fds or memory: back off ``net.throttle_delay`` ms (never a busy loop), log once.
RESOURCE = 0
#: Anything else: ``EVENT_ERROR`` with ``-errno`` to the accept continuation; it stops.
FATAL = -1

_SERIOUSNESS = {
    errno.ECONNABORTED: IGNORE,
    errno.EAGAIN: TRANSIENT,
    errno.ECONNRESET: TRANSIENT,
    errno.EPIPE: TRANSIENT,
    errno.EINTR: TRANSIENT,
    errno.EPROTO: TRANSIENT,
    errno.EMFILE: RESOURCE,
    errno.ENFILE: RESOURCE,
    errno.ENOBUFS: RESOURCE,
    errno.ENOMEM: RESOURCE,
}


def accept_error_seriousness(err: int) -> int:
    """ATS's classes: 2 ignore, 1 transient (retry), 0 resource (back off), -1 fatal."""
    return _SERIOUSNESS.get(err, FATAL)
