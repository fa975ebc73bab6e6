"""Config records of the DNS layer: ``proxy.config.dns.*`` with ATS's names and defaults.

Read a record with ``dns_config.get(key)`` or as an attribute (``dns_config.lookup_timeout``);
change it with ``dns_config.set(key, value)``. The name servers, ``resolv_conf``, the hosts
file and the connection mode are read by ``dns_processor.start()``; the other records take
effect on the next use.

Where ats_cffi differs from ATS, the record says so:

- ``lookup_timeout`` takes fractions of a second (ATS: whole seconds);
- ``connection_mode`` defaults to 1 (TCP_RETRY: a truncated UDP answer is asked again over
  TCP) where ATS defaults to UDP only;
- ``proxy.config.hostdb.host_file.path`` (ATS's name) defaults to ``/etc/hosts``;
- ``cache_size`` and ``cache_ttl_max`` are ats_cffi's own (ATS caches in HostDB).

Every number record has a finite range (``Record.minimum``..``Record.maximum``): a value out
of it, NaN or infinity is a ``ValueError`` naming the key, as is a path record
(``resolv_conf``, ``host_file_path``) with a NUL character.
"""

from __future__ import annotations

from typing import Any

from ats_cffi.net.config import INT_RECORD_MAX, RecordStore, TypedRecord, coerce_typed
from ats_cffi.sys import PORT_MAX, ip_family

#: Most name servers a handler talks to (ATS's MAX_NAMED).
MAX_NAMED = 32
#: The DNS port (ATS's DOMAIN_SERVICE_PORT).
DOMAIN_SERVICE_PORT = 53

NameServer = tuple[str, int]


#: Longest ``lookup_timeout``: one hour (a question is never left unanswered longer).
MAX_TIMEOUT = 3600.0
#: Largest value of the count records (``max_dns_in_flight``, ``cache_size``).
MAX_COUNT = INT_RECORD_MAX
#: Longest ``cache_ttl_max``: the largest TTL a DNS answer can carry (RFC 2181 §8).
MAX_TTL = float(2**31 - 1)

#: The DNS records (kinds "int", "float", "str" and "nameservers").
Record = TypedRecord
RECORDS: tuple[Record, ...] = (
    Record("proxy.config.dns.lookup_timeout", "lookup_timeout", 20.0, "float", 0.001, MAX_TIMEOUT,
           "s; wait for an answer before the question is sent again (to the next server)"),
    Record("proxy.config.dns.retries", "retries", 5, "int", 0, 9,
           "times a question is sent again after a timeout or a server failure"),
    Record("proxy.config.dns.nameservers", "nameservers", (), "nameservers", 0, 0,
           "name servers: 'ip[:port] [ip6]:port ...' or a list of (ip, port); "
           "empty: those of resolv_conf"),
    Record("proxy.config.dns.resolv_conf", "resolv_conf", "/etc/resolv.conf", "str", 0, 0,
           "file whose 'nameserver' lines are used when nameservers is empty"),
    Record("proxy.config.dns.round_robin_nameservers", "round_robin_nameservers", 1, "int", 0, 1,
           "1: each new question goes to the next server; 0: to the current primary"),
    Record("proxy.config.dns.max_dns_in_flight", "max_dns_in_flight", 2048, "int", 1, MAX_COUNT,
           "questions one handler has on the wire at once; more wait their turn"),
    Record("proxy.config.dns.connection_mode", "connection_mode", 1, "int", 0, 2,
           "0: UDP only, 1: UDP and TCP after a truncated answer, 2: TCP only"),
    Record("proxy.config.hostdb.host_file.path", "host_file_path", "/etc/hosts", "str", 0, 0,
           "hosts file consulted before DNS (empty: none)"),
    Record("proxy.config.dns.cache_size", "cache_size", 1024, "int", 0, MAX_COUNT,
           "answers kept in the process-wide cache (0: no cache)"),
    Record("proxy.config.dns.cache_ttl_max", "cache_ttl_max", 86400.0, "float", 0, MAX_TTL,
           "s; longest time an answer is cached, whatever its TTL (0: no cache)"),
)  # fmt: skip


def parse_nameservers(value: Any, key: str = "proxy.config.dns.nameservers") -> tuple:
    """``((ip, port), ...)`` from ATS's text form (``"1.2.3.4 [::1]:5353, 10.0.0.1:53"``,
    separators space, comma, semicolon or tab) or from a sequence of ``(ip, port)`` pairs.

    ``ValueError`` naming ``key`` for an entry that is not a numeric IP with a port in
    1..65535; ``TypeError`` for another type. At most ``MAX_NAMED`` servers are kept.
    """
    if value is None:
        return ()
    if isinstance(value, str):
        items: list[Any] = []
        for token in value.replace(",", " ").replace(";", " ").replace("\t", " ").split():
            items.append(_split_host_port(token, key))
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        kind = type(value).__name__
        raise TypeError(f"{key}: expected a str or a list of (ip, port), not {kind}")
    out: list[NameServer] = []
    for item in items:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise TypeError(f"{key}: each name server must be an (ip, port) pair, not {item!r}")
        host, port = item
        if not isinstance(host, str) or not ip_family(host):
            raise ValueError(f"{key}: not a numeric IP address: {host!r}")
        if type(port) is not int or not 0 < port <= PORT_MAX:
            raise ValueError(f"{key}: port must be in 1..{PORT_MAX}, got {port!r}")
        out.append((host, port))
    return tuple(out[:MAX_NAMED])


def _split_host_port(token: str, key: str) -> NameServer:
    port = DOMAIN_SERVICE_PORT
    if token.startswith("["):
        end = token.find("]")
        if end < 0:
            raise ValueError(f"{key}: unmatched '[' in {token!r}")
        host, rest = token[1:end], token[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{key}: bad name server {token!r}")
            port = _port(rest[1:], token, key)
    elif token.count(":") == 1:
        host, p = token.split(":")
        port = _port(p, token, key)
    else:
        host = token  # IPv4 without a port, or a bare IPv6 address
    return host, port


def _port(text: str, token: str, key: str) -> int:
    # str.isdigit() alone takes "²" and "٥"; a long run of digits is no port either.
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        raise ValueError(f"{key}: bad port in {token!r}")
    return int(text)


class DNSConfig(RecordStore):
    """The live values of the DNS records."""

    records = RECORDS

    def _coerce(self, r: Record, value: Any) -> Any:
        if r.kind == "nameservers":
            return parse_nameservers(value, r.key)
        return coerce_typed(r, value)


dns_config = DNSConfig()
