"""Socket addresses: ``Address`` tuples (as the ``socket`` module's) to and from the
``struct sockaddr`` the kernel takes and fills in, through the per-thread scratch."""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from ats_cffi._native import ffi, lib
from ats_cffi.sys._check import INT_SIZE, UINT32, check_int, oserror
from ats_cffi.sys._scratch import HOST_LEN, Scratch, scratch

#: ``(host, port)`` for IPv4, ``(host, port, flowinfo, scope_id)`` for IPv6, a path for
#: ``AF_UNIX``.
Address = tuple[str, int] | tuple[str, int, int, int] | str

#: The largest TCP/UDP port number.
PORT_MAX = 65535


def parse(s: Scratch, call: str) -> Address:
    """The address in ``s.ss``/``s.len`` (a sockaddr the kernel filled in): ``OSError``
    naming ``call`` for a family other than ``AF_INET``, ``AF_INET6`` and ``AF_UNIX``."""
    fam = lib.ats_sockaddr_parse(s.ss, s.len[0], s.host, HOST_LEN, s.port, s.flow, s.scope)
    if fam < 0:
        raise oserror(call, -fam)
    host = ffi.string(s.host).decode("utf-8", "surrogateescape")
    if fam == lib.AF_INET:
        return (host, s.port[0])
    if fam == lib.AF_INET6:
        return (host, s.port[0], s.flow[0], s.scope[0])
    return host


def make(s: Scratch, call: str, family: int, address: Any) -> None:
    """Fill ``s.ss``/``s.len`` with ``address`` for ``family``: ``TypeError``/``ValueError``
    naming ``call`` for a bad address (the host goes to C as a NUL-terminated string, so a
    NUL in it, which would cut it short, is a ``ValueError``; so is a non-ASCII host)."""
    if family == lib.AF_UNIX:
        if not isinstance(address, (str, bytes)):
            raise TypeError(f"{call}: an AF_UNIX address must be a path, not {address!r}")
        host = os.fsencode(address)
        if b"\0" in host:
            raise ValueError(f"{call}: an AF_UNIX path must not contain a NUL: {address!r}")
        port = flow = scope = 0
    else:
        if not isinstance(address, tuple) or len(address) not in (2, 4):
            raise TypeError(f"{call}: address must be (host, port) or (host, port, flow, scope)")
        host, port = address[0], address[1]
        flow, scope = (address[2], address[3]) if len(address) == 4 else (0, 0)
        if not isinstance(host, str):
            raise TypeError(f"{call}: host must be a str, not {type(host).__name__}")
        check_int(call, "port", port, (0, PORT_MAX))
        if len(address) == 4:
            check_int(call, "flow", flow, UINT32)
            check_int(call, "scope", scope, UINT32)
        if "\0" in host:
            raise ValueError(f"{call}: host must not contain a NUL character: {host!r}")
        if not host.isascii():  # cannot be a numeric address
            raise ValueError(f"{call}: not a numeric address for this family: {address!r}")
        if host == "" or host == "localhost":
            host = "127.0.0.1" if family == lib.AF_INET else ("::1" if host else "::")
            if family == lib.AF_INET and address[0] == "":
                host = "0.0.0.0"
        host = host.encode("ascii")
    r = lib.ats_sockaddr_make(family, host, port, flow, scope, s.ss, s.len)
    if r < 0:
        if r == -errno.EINVAL:
            raise ValueError(f"{call}: not a numeric address for this family: {address!r}")
        raise oserror(call, -r)


def ip_family(host: str) -> int:
    """``AF_INET``/``AF_INET6`` when ``host`` is a numeric address of that family, else 0."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return int(family)
        except (OSError, ValueError):
            pass
    return 0


def family_of(fd: int, call: str) -> int:
    """The address family of socket ``fd`` (``SO_DOMAIN``); ``OSError`` naming ``call``."""
    s = scratch
    s.len[0] = INT_SIZE
    if lib.getsockopt(fd, lib.SOL_SOCKET, lib.SO_DOMAIN, s.intval, s.len) < 0:
        raise oserror(call, ffi.errno)
    return s.intval[0]
