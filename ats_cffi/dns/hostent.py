"""HostEnt: the result of a lookup, the data of ``DNS_EVENT_LOOKUP`` (ATS's HostEnt)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, replace

from ats_cffi.dns.codes import DNSError

#: Where an answer came from (``HostEnt.source``).
SOURCE_DNS = "dns"
SOURCE_CACHE = "cache"
SOURCE_HOSTS = "hosts"
SOURCE_LITERAL = "literal"


@dataclass(frozen=True)
class HostEnt:
    """Addresses of ``name``, or why there are none.

    ``addrs`` are numeric addresses of ``family`` (``AF_INET`` or ``AF_INET6``), in the
    order the server (or hosts file) gave them; ``ttl`` is the seconds they stay valid (the
    smallest TTL of the answer and its CNAME chain; for a cache hit, what is left of it; for
    a negative answer, NXDOMAIN or NODATA, the negative TTL of its SOA (RFC 2308), 0 when
    it had none).
    ``aliases`` are the CNAME owners met on the way. ``error`` is None when ``good``.
    ``source`` is ``"dns"``, ``"cache"``, ``"hosts"`` or ``"literal"`` (the name was an
    IP address).
    """

    name: str
    family: int
    addrs: tuple[str, ...] = ()
    ttl: int = 0
    error: DNSError | None = None
    source: str = SOURCE_DNS
    aliases: tuple[str, ...] = ()

    @property
    def good(self) -> bool:
        return self.error is None

    def is_name_error(self) -> bool:
        """True when the name does not exist (NXDOMAIN), as ATS's ``isNameError()``."""
        return self.error is DNSError.NXDOMAIN

    def with_source(self, source: str, ttl: int | None = None) -> HostEnt:
        return replace(self, source=source, ttl=self.ttl if ttl is None else ttl)

    @classmethod
    def failure(cls, name: str, family: int, error: DNSError, ttl: int = 0) -> HostEnt:
        return cls(name, family, ttl=ttl, error=error)

    def __repr__(self) -> str:
        fam = {socket.AF_INET: "A", socket.AF_INET6: "AAAA"}.get(self.family, str(self.family))
        if self.good:
            return f"<HostEnt {self.name} {fam} {list(self.addrs)} ttl={self.ttl} {self.source}>"
        return f"<HostEnt {self.name} {fam} {self.error.name}>"  # type: ignore[union-attr]
