"""The options of a connection (``NetVCOptions``: the socket options of an outgoing or
accepted connection) and of a listener (``AcceptOptions``: where to listen and how to
accept), as ATS's, each checked with its names by ``validate``.

Its own module, outside the mypyc-compiled ``netvc`` (``ats_cffi/_compiled.py``): their
fields hold what a caller gave until ``validate`` has named what is wrong with them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from ats_cffi import sys as _sys
from ats_cffi._native import lib
from ats_cffi.eventsystem.processor import ET_NET
from ats_cffi.net.config import (
    INT_RECORD_MAX,
    MAX_ACCEPT_THREADS,
    SOCK_OPT_KEEP_ALIVE,
    SOCK_OPT_LINGER_ON,
    SOCK_OPT_NO_DELAY,
    net_config,
)
from ats_cffi.sys import PORT_MAX

_FLOAT_MAX = sys.float_info.max


@dataclass
class NetVCOptions:
    """Socket options applied to a VC's socket (ATS's NetVCOptions).

    ``sockopt_flags`` bits: 1 TCP_NODELAY, 2 SO_KEEPALIVE, 4 SO_LINGER with
    ``linger_seconds``. Buffer sizes of 0 keep the kernel's defaults. ``packet_tos`` and
    ``packet_mark`` of 0 are not set. ``connect_timeout`` (s) bounds ``connect_re``
    (None: the ``proxy.config.net.connect_timeout`` record, 0: none).

    ``tls``: a ``ClientContext`` (net/tls/): ``connect_re`` opens an SSLNetVConnection,
    whose continuation hears ``NET_EVENT_OPEN`` once the TCP connect is done and its first
    bytes once the handshake is. ``sni_servername``: the name sent in the SNI and verified
    (ATS's name; None: the host name connected to, or for a numeric address that address,
    verified as one without SNI).
    """

    sockopt_flags: int = SOCK_OPT_NO_DELAY
    recv_bufsize: int = 0
    send_bufsize: int = 0
    linger_seconds: int = 0
    packet_tos: int = 0
    packet_mark: int = 0
    connect_timeout: float | None = None
    local_address: tuple[str, int] | None = None
    tls: Any = None
    sni_servername: str | None = None

    def validate(self, call: str, family: int | None = None) -> None:
        """``TypeError``/``ValueError`` naming ``call`` and the option for a bad value;
        ``family`` (of the address to connect to): ``local_address`` must be of it."""
        for name in ("sockopt_flags", "recv_bufsize", "send_bufsize", "linger_seconds",
                     "packet_tos", "packet_mark"):  # fmt: skip
            v = getattr(self, name)
            if type(v) is not int:
                raise TypeError(f"{call}: NetVCOptions.{name} must be an int")
            hi = 255 if name == "packet_tos" else INT_RECORD_MAX  # a byte; else a C int
            if not 0 <= v <= hi:
                raise ValueError(f"{call}: NetVCOptions.{name} must be in 0..{hi}, got {v}")
        _check_tls(call, "NetVCOptions", self.tls, server=False)
        sni = self.sni_servername
        if sni is not None and (not isinstance(sni, str) or not 0 < len(sni) < 256 or "\0" in sni):
            raise ValueError(
                f"{call}: NetVCOptions.sni_servername must be a host name, not {sni!r}"
            )
        ct = self.connect_timeout
        if ct is not None:
            if isinstance(ct, bool) or not isinstance(ct, (int, float)):
                raise TypeError(
                    f"{call}: NetVCOptions.connect_timeout must be a number or None, "
                    f"not {type(ct).__name__}"
                )
            if not 0 <= ct < _FLOAT_MAX:  # NaN, inf and ints beyond a float fail this
                raise ValueError(
                    f"{call}: NetVCOptions.connect_timeout must be a finite number >= 0, got {ct!r}"
                )
        la = self.local_address
        if la is not None:
            if (
                not isinstance(la, tuple)
                or len(la) not in (2, 4)
                or not isinstance(la[0], str)
                or type(la[1]) is not int
            ):
                raise TypeError(
                    f"{call}: NetVCOptions.local_address must be a (host, port) tuple, not {la!r}"
                )
            if not 0 <= la[1] <= PORT_MAX:
                raise ValueError(
                    f"{call}: NetVCOptions.local_address port must be in 0..{PORT_MAX}, got {la[1]}"
                )
            for what, v in zip(("flowinfo", "scope_id"), la[2:]):
                if type(v) is not int:
                    raise TypeError(
                        f"{call}: NetVCOptions.local_address {what} must be an int, "
                        f"not {type(v).__name__}"
                    )
                if not 0 <= v <= 0xFFFFFFFF:
                    raise ValueError(
                        f"{call}: NetVCOptions.local_address {what} must be in 0..2**32-1, got {v}"
                    )
            la_family = _sys.ip_family(la[0]) if "\0" not in la[0] else 0
            if not la_family:
                raise ValueError(
                    f"{call}: NetVCOptions.local_address must be a numeric IP address, "
                    f"not {la[0]!r}"
                )
            if family is not None and la_family != family:
                raise ValueError(
                    f"{call}: NetVCOptions.local_address {la[0]!r} is not of the family of "
                    "the address to connect to"
                )

    def apply(self, fd: int, family: int) -> None:
        """Set the options on ``fd``. Raises ``OSError`` naming ``setsockopt``."""
        f = self.sockopt_flags
        if f & SOCK_OPT_NO_DELAY:
            _sys.setsockopt_int(fd, lib.IPPROTO_TCP, lib.TCP_NODELAY, 1)
        if f & SOCK_OPT_KEEP_ALIVE:
            _sys.setsockopt_int(fd, lib.SOL_SOCKET, lib.SO_KEEPALIVE, 1)
        if f & SOCK_OPT_LINGER_ON:
            _sys.setsockopt_linger(fd, True, self.linger_seconds)
        if self.recv_bufsize:
            _sys.setsockopt_int(fd, lib.SOL_SOCKET, lib.SO_RCVBUF, self.recv_bufsize)
        if self.send_bufsize:
            _sys.setsockopt_int(fd, lib.SOL_SOCKET, lib.SO_SNDBUF, self.send_bufsize)
        if self.packet_tos:
            if family == lib.AF_INET6:
                _sys.setsockopt_int(fd, lib.IPPROTO_IPV6, lib.IPV6_TCLASS, self.packet_tos)
            else:
                _sys.setsockopt_int(fd, lib.IPPROTO_IP, lib.IP_TOS, self.packet_tos)
        if self.packet_mark:
            _sys.setsockopt_int(fd, lib.SOL_SOCKET, lib.SO_MARK, self.packet_mark)


#: Most outbound connections an accepted one may announce (``connects_per_accept``).
MAX_CONNECTS_PER_ACCEPT = 64


@dataclass
class AcceptOptions:
    """Where and how to listen (ATS's NetProcessor::AcceptOptions).

    ``local_address`` None listens on all addresses of ``ip_family`` (or only loopback with
    ``localhost_only``). ``accept_threads``/``defer_accept``/``backlog`` None take the
    ``proxy.config.accept_threads`` / ``net.defer_accept`` / ``net.listen_backlog`` records.
    ``throttle_message`` is sent to a connection refused by the throttle before it is closed.
    ``connects_per_accept``: the outbound connections each accepted one will open (a
    proxy's upstream, 1 for a tunnel): the accept throttle counts them with it, so that a
    client the process could not connect onward is refused at accept. (Within an accept
    batch; beyond it, the connects count once their sessions call ``connect_re`` on a net
    thread, at once when the accept runs there, ``accept_threads=0``.)
    ``tls``: a ``ServerContext`` (net/tls/): the accepted connections are
    SSLNetVConnections, whose continuation hears their first bytes after the handshake.
    ``vc_class``: a subclass of UnixNetVConnection that the accepted connections are made
    as (called with the VC options), as ATS's protocols bring their own VCs (None:
    UnixNetVConnection; not with ``tls``).
    """

    port: int = 0
    local_address: str | None = None
    localhost_only: bool = False
    ip_family: int = lib.AF_INET
    accept_threads: int | None = None
    frequent_accept: bool = True
    recv_bufsize: int = 0
    send_bufsize: int = 0
    sockopt_flags: int = SOCK_OPT_NO_DELAY
    packet_mark: int = 0
    packet_tos: int = 0
    defer_accept: int | None = None
    backdoor: bool = False
    f_inbound_transparent: bool = False
    etype: int = ET_NET
    backlog: int | None = None
    reuseport: bool = False
    throttle_message: bytes | None = None
    connects_per_accept: int = 0
    tls: Any = None
    vc_class: Any = None

    def validate(self, call: str) -> None:
        if type(self.port) is not int:
            raise TypeError(f"{call}: AcceptOptions.port must be an int")
        if not 0 <= self.port <= PORT_MAX:
            raise ValueError(
                f"{call}: AcceptOptions.port must be in 0..{PORT_MAX}, got {self.port}"
            )
        if type(self.ip_family) is not int or self.ip_family not in (lib.AF_INET, lib.AF_INET6):
            raise ValueError(f"{call}: AcceptOptions.ip_family must be AF_INET or AF_INET6")
        if self.local_address is not None and not isinstance(self.local_address, str):
            raise TypeError(f"{call}: AcceptOptions.local_address must be a str or None")
        for name in ("recv_bufsize", "send_bufsize", "sockopt_flags", "packet_mark",
                     "packet_tos"):  # fmt: skip
            v = getattr(self, name)
            hi = 255 if name == "packet_tos" else INT_RECORD_MAX  # a byte; else a C int
            if type(v) is not int or not 0 <= v <= hi:
                raise ValueError(f"{call}: AcceptOptions.{name} must be an int in 0..{hi}")
        for name in ("localhost_only", "frequent_accept", "backdoor", "reuseport",
                     "f_inbound_transparent"):  # fmt: skip
            v = getattr(self, name)
            if type(v) is not bool and not (type(v) is int and v in (0, 1)):
                raise TypeError(f"{call}: AcceptOptions.{name} must be a bool (or 0/1), not {v!r}")
        if type(self.etype) is not int:
            raise TypeError(f"{call}: AcceptOptions.etype must be an int")
        c = self.connects_per_accept
        if type(c) is not int or not 0 <= c <= MAX_CONNECTS_PER_ACCEPT:
            raise ValueError(
                f"{call}: AcceptOptions.connects_per_accept must be an int in "
                f"0..{MAX_CONNECTS_PER_ACCEPT}, got {c!r}"
            )
        for name in ("accept_threads", "defer_accept", "backlog"):
            v = getattr(self, name)
            hi = MAX_ACCEPT_THREADS if name == "accept_threads" else INT_RECORD_MAX
            if v is not None and (type(v) is not int or not 0 <= v <= hi):
                raise ValueError(f"{call}: AcceptOptions.{name} must be None or an int in 0..{hi}")
        if self.throttle_message is not None and not isinstance(self.throttle_message, bytes):
            raise TypeError(f"{call}: AcceptOptions.throttle_message must be bytes or None")
        if self.f_inbound_transparent:
            raise ValueError(f"{call}: AcceptOptions.f_inbound_transparent is not supported")
        _check_tls(call, "AcceptOptions", self.tls, server=True)
        _check_vc_class(call, self.vc_class, self.tls)

    def family(self) -> int:
        if self.local_address is not None and ":" in self.local_address:
            return lib.AF_INET6
        return self.ip_family

    def bind_address(self) -> tuple[str, int]:
        if self.local_address is not None:
            return (self.local_address, self.port)
        v6 = self.family() == lib.AF_INET6
        if self.localhost_only:
            return ("::1" if v6 else "127.0.0.1", self.port)
        return ("::" if v6 else "0.0.0.0", self.port)

    def n_accept_threads(self) -> int:
        n = self.accept_threads
        return net_config.accept_threads if n is None else n

    def defer_seconds(self) -> int:
        d = self.defer_accept
        return net_config.defer_accept if d is None else d

    def vc_options(self) -> NetVCOptions:
        return NetVCOptions(
            sockopt_flags=self.sockopt_flags,
            recv_bufsize=self.recv_bufsize,
            send_bufsize=self.send_bufsize,
            packet_tos=self.packet_tos,
            packet_mark=self.packet_mark,
        )


def _check_vc_class(call: str, vc_class: Any, tls: Any) -> None:
    """``vc_class`` is None or a subclass of UnixNetVConnection, and not with ``tls``."""
    if vc_class is None:
        return
    from ats_cffi.net.netvc import UnixNetVConnection

    if not isinstance(vc_class, type) or not issubclass(vc_class, UnixNetVConnection):
        raise TypeError(
            f"{call}: AcceptOptions.vc_class must be a subclass of UnixNetVConnection "
            f"or None, not {vc_class!r}"
        )
    if tls is not None:
        raise ValueError(f"{call}: AcceptOptions.vc_class cannot be set with tls")


def _check_tls(call: str, where: str, tls: Any, server: bool) -> None:
    """``tls`` is None or the right side's context (``TypeError`` naming ``call``)."""
    if tls is None:
        return
    from ats_cffi.net.tls.context import ClientContext, ServerContext

    kind = ServerContext if server else ClientContext
    if not isinstance(tls, kind):
        raise TypeError(f"{call}: {where}.tls must be a {kind.__name__} or None, not {tls!r}")
