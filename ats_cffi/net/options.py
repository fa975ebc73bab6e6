"""NetVCOptions: the socket options of an outgoing or accepted connection (ATS's
``NetVCOptions``), checked with their names.

Its own module, outside the mypyc-compiled ``netvc`` (``ats_cffi/_compiled.py``): its
fields hold what a caller gave until ``validate`` has named what is wrong with them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from ats_cffi import sys as _sys
from ats_cffi._native import lib
from ats_cffi.net.config import (
    INT_RECORD_MAX,
    SOCK_OPT_KEEP_ALIVE,
    SOCK_OPT_LINGER_ON,
    SOCK_OPT_NO_DELAY,
)

_FLOAT_MAX = sys.float_info.max


@dataclass
class NetVCOptions:
    """Socket options applied to a VC's socket (ATS's NetVCOptions).

    ``sockopt_flags`` bits: 1 TCP_NODELAY, 2 SO_KEEPALIVE, 4 SO_LINGER with
    ``linger_seconds``. Buffer sizes of 0 keep the kernel's defaults. ``packet_tos`` and
    ``packet_mark`` of 0 are not set. ``connect_timeout`` (s) bounds ``connect_re``
    (None: the ``proxy.config.net.connect_timeout`` record, 0: none).
    """

    sockopt_flags: int = SOCK_OPT_NO_DELAY
    recv_bufsize: int = 0
    send_bufsize: int = 0
    linger_seconds: int = 0
    packet_tos: int = 0
    packet_mark: int = 0
    connect_timeout: float | None = None
    local_address: tuple[str, int] | None = None

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
            if not 0 <= la[1] <= 65535:
                raise ValueError(
                    f"{call}: NetVCOptions.local_address port must be in 0..65535, got {la[1]}"
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
