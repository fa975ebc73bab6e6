"""The system's resolver files: ``resolv.conf`` (name servers) and the hosts file.

Both are read once, by ``dns_processor.start()``; a missing or unreadable file counts as
empty (and is logged), as the C library does.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable

from ats_cffi.dns.config import DOMAIN_SERVICE_PORT, MAX_NAMED, NameServer
from ats_cffi.sys import ip_family

log = logging.getLogger("ats.dns")


def normalize_name(name: str) -> str:
    """The form names are compared in: lower case, no trailing dot."""
    return name.rstrip(".").lower()


def parse_resolv_conf(text: str) -> tuple[NameServer, ...]:
    """The ``nameserver`` addresses of a ``resolv.conf`` text, port 53, in file order.

    Lines that are not ``nameserver <numeric IP>`` are ignored, as are link-local IPv6
    servers with a zone (``fe80::1%eth0``), which need an interface to be reached.
    At most ``MAX_NAMED`` are kept.
    """
    out: list[NameServer] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        host = fields[1]
        if ip_family(host):
            out.append((host, DOMAIN_SERVICE_PORT))
        else:
            log.debug("resolv.conf: ignoring name server %r", host)
    return tuple(out[:MAX_NAMED])


def read_resolv_conf(path: str) -> tuple[NameServer, ...]:
    """``parse_resolv_conf`` of the file at ``path``; empty when it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_resolv_conf(f.read())
    except OSError as exc:
        log.warning("cannot read %s: %s", path, exc)
        return ()


class HostsFile:
    """Name → addresses of a hosts file (``/etc/hosts`` format): ``address name alias...``.

    A name listed on several lines gets every address, in file order. Names are compared
    as ``normalize_name`` makes them.
    """

    def __init__(self, lines: Iterable[str] = ()) -> None:
        self.v4: dict[str, list[str]] = {}
        self.v6: dict[str, list[str]] = {}
        for line in lines:
            fields = line.split("#", 1)[0].split()
            if len(fields) < 2:
                continue
            addr = fields[0]
            family = ip_family(addr)
            if family == socket.AF_INET:
                table = self.v4
            elif family == socket.AF_INET6:
                table = self.v6
            else:
                continue
            for name in fields[1:]:
                addrs = table.setdefault(normalize_name(name), [])
                if addr not in addrs:
                    addrs.append(addr)

    @classmethod
    def read(cls, path: str) -> HostsFile:
        """The hosts file at ``path`` (empty when ``path`` is empty or cannot be read)."""
        if not path:
            return cls()
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return cls(f.read().splitlines())
        except OSError as exc:
            log.warning("cannot read hosts file %s: %s", path, exc)
            return cls()

    def lookup(self, name: str, family: int) -> list[str]:
        """The addresses of normalized ``name`` for ``family`` (empty if not listed)."""
        table = self.v4 if family == socket.AF_INET else self.v6
        return table.get(name, [])

    def __len__(self) -> int:
        return len(self.v4.keys() | self.v6.keys())
