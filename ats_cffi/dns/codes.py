"""DNS event codes (ATS's DNSProcessor.h) and the reasons a lookup can fail.

Delivery follows ATS: the asking continuation always receives ``DNS_EVENT_LOOKUP``. ATS
passes a ``HostEnt`` on success and a null pointer on failure; here the data is always a
:class:`~ats_cffi.dns.hostent.HostEnt`, whose ``good`` is false on failure and whose
``error`` (a :class:`DNSError`) says why. ``HostEnt.is_name_error()`` is ATS's
``isNameError()``.
"""

from __future__ import annotations

from enum import Enum, IntEnum
from typing import Final

from ats_cffi.eventsystem.codes import DNS_EVENT_EVENTS_START


class DNSEventCode(IntEnum):
    DNS_EVENT_LOOKUP = DNS_EVENT_EVENTS_START


# Plain ints, as eventsystem/codes.py's: what handlers compare ``event`` with.
DNS_EVENT_LOOKUP: Final = DNSEventCode.DNS_EVENT_LOOKUP.value


class DNSError(Enum):
    """Why a lookup failed (``HostEnt.error``)."""

    #: The name does not exist (rcode NXDOMAIN). Not retried.
    NXDOMAIN = "NXDOMAIN"
    #: The name exists but has no address of the asked family (NOERROR, no answer).
    NODATA = "NODATA"
    #: No name server answered within ``lookup_timeout`` on any of the ``retries + 1`` tries.
    TIMEOUT = "TIMEOUT"
    #: Every try got a server failure (SERVFAIL), or the last one did.
    SERVFAIL = "SERVFAIL"
    #: The server refused the query (REFUSED).
    REFUSED = "REFUSED"
    #: The server did not understand the query (FORMERR).
    FORMERR = "FORMERR"
    #: The server does not implement the query (NOTIMP).
    NOTIMP = "NOTIMP"
    #: An answer with another rcode, or one that could not be used (bad CNAME chain).
    BAD_ANSWER = "BAD_ANSWER"
    #: The last try could not be sent or its connection failed (e.g. ECONNREFUSED).
    NETWORK = "NETWORK"
    #: No name server is configured (and ``resolv.conf`` names none).
    NO_NAMESERVERS = "NO_NAMESERVERS"
    #: ``dns_processor.stop()`` ran while the lookup was pending.
    SHUTDOWN = "SHUTDOWN"


#: What each failure means, in the words a log line gives it.
_MEANINGS = {
    DNSError.NXDOMAIN: "no such name",
    DNSError.NODATA: "no address of the asked family",
    DNSError.TIMEOUT: "no name server answered",
    DNSError.SERVFAIL: "server failure",
    DNSError.REFUSED: "query refused",
    DNSError.FORMERR: "query not understood",
    DNSError.NOTIMP: "query not implemented",
    DNSError.BAD_ANSWER: "unusable answer",
    DNSError.NETWORK: "name server unreachable",
    DNSError.NO_NAMESERVERS: "no name server configured",
    DNSError.SHUTDOWN: "resolver stopped",
}


def describe_failure(name: str, error: DNSError) -> str:
    """``DNS lookup of 'name' failed: no such name (NXDOMAIN)``."""
    return f"DNS lookup of {name!r} failed: {_MEANINGS[error]} ({error.value})"


class DNSConnMode(IntEnum):
    """``proxy.config.dns.connection_mode`` (ATS's DNS_CONN_MODE)."""

    UDP_ONLY = 0
    #: UDP, and TCP for a question whose UDP answer was truncated.
    TCP_RETRY = 1
    TCP_ONLY = 2
