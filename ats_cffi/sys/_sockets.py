"""Socket calls: create, bind, listen, connect, accept (one or a batch), names, options,
shutdown. Each raises ``OSError`` naming the call; a non-blocking connect in progress and
an empty backlog are return values."""

from __future__ import annotations

import errno
from typing import Any

from ats_cffi._native import ffi, lib
from ats_cffi.sys._address import Address, family_of, make, parse
from ats_cffi.sys._check import (
    AGAIN,
    C_INT,
    EINTR,
    IN_PROGRESS,
    INT_MAX,
    INT_SIZE,
    arg_error,
    check_fd,
    check_int,
    oserror,
)
from ats_cffi.sys._scratch import ACCEPT_BATCH_MAX, scratch

#: Default flags for accepted sockets: non-blocking and close-on-exec.
ACCEPT_FLAGS: int = lib.SOCK_NONBLOCK | lib.SOCK_CLOEXEC


def socket(family: int = lib.AF_INET, type: int = lib.SOCK_STREAM, proto: int = 0) -> int:
    """A new socket fd, non-blocking and close-on-exec."""
    for name, v in (("family", family), ("type", type), ("proto", proto)):
        check_int("socket", name, v, C_INT)
    fd = lib.socket(family, type | lib.SOCK_NONBLOCK | lib.SOCK_CLOEXEC, proto)
    if fd < 0:
        raise oserror("socket", ffi.errno)
    return fd


def bind(fd: int, address: Address) -> None:
    """Bind ``fd`` to ``address`` (the family is read from the socket)."""
    check_fd("bind", fd)
    s = scratch
    make(s, "bind", family_of(fd, "bind"), address)
    if lib.bind(fd, ffi.cast("struct sockaddr *", s.ss), s.len[0]) < 0:
        raise oserror("bind", ffi.errno)


def listen(fd: int, backlog: int = 1024) -> None:
    check_fd("listen", fd)
    check_int("listen", "backlog", backlog, C_INT)
    if lib.listen(fd, backlog) < 0:
        raise oserror("listen", ffi.errno)


def connect(fd: int, address: Address) -> int:
    """Start a connect: 0 when connected at once, :data:`IN_PROGRESS` when under way.

    Any other failure (ECONNREFUSED, ...) raises ``OSError`` naming ``connect``.
    """
    check_fd("connect", fd)
    s = scratch
    make(s, "connect", family_of(fd, "connect"), address)
    while True:
        if lib.connect(fd, ffi.cast("struct sockaddr *", s.ss), s.len[0]) == 0:
            return 0
        err = ffi.errno
        if err == errno.EINPROGRESS:
            return IN_PROGRESS
        if err != EINTR:
            raise oserror("connect", err)


def getsockname(fd: int) -> Address:
    """The address ``fd`` is bound to."""
    return _name_of("getsockname", lib.getsockname, fd)


def getpeername(fd: int) -> Address:
    """The address of ``fd``'s peer; ``OSError`` (ENOTCONN) when it has none."""
    return _name_of("getpeername", lib.getpeername, fd)


def _name_of(call: str, get: Any, fd: int) -> Address:
    check_fd(call, fd)
    s = scratch
    s.len[0] = ffi.sizeof("struct sockaddr_storage")
    if get(fd, ffi.cast("struct sockaddr *", s.ss), s.len) < 0:
        raise oserror(call, ffi.errno)
    return parse(s, call)


def getsockopt_int(fd: int, level: int, option: int) -> int:
    check_fd("getsockopt", fd)
    check_int("getsockopt", "level", level, C_INT)
    check_int("getsockopt", "option", option, C_INT)
    s = scratch
    s.len[0] = INT_SIZE
    s.intval[0] = 0
    if lib.getsockopt(fd, level, option, s.intval, s.len) < 0:
        raise oserror("getsockopt", ffi.errno)
    return s.intval[0]


def setsockopt_int(fd: int, level: int, option: int, value: int) -> None:
    if type(fd) is not int or type(value) is not int:
        check_fd("setsockopt", fd)
        check_int("setsockopt", "value", value)
    s = scratch
    try:
        s.intval[0] = value
        r = lib.setsockopt(fd, level, option, s.intval, INT_SIZE)
    except (TypeError, OverflowError) as exc:
        raise arg_error("setsockopt", exc, fd=fd, level=level, option=option, value=value) from None
    if r < 0:
        raise oserror("setsockopt", ffi.errno)


def setsockopt_linger(fd: int, on: bool, seconds: int) -> None:
    """Set ``SO_LINGER``; ``on`` with 0 seconds makes ``close()`` send a reset."""
    check_fd("setsockopt", fd)
    check_int("setsockopt(SO_LINGER)", "seconds", seconds, (0, INT_MAX))
    lg = ffi.new("int[2]", [1 if on else 0, seconds])
    if lib.setsockopt(fd, lib.SOL_SOCKET, lib.SO_LINGER, lg, ffi.sizeof("int[2]")) < 0:
        raise oserror("setsockopt(SO_LINGER)", ffi.errno)


def so_error(fd: int) -> int:
    """The pending socket error (``SO_ERROR``), cleared by reading it; 0 for none."""
    try:
        r = lib.ats_so_error(fd)
    except (TypeError, OverflowError) as exc:
        raise arg_error("getsockopt(SO_ERROR)", exc, fd=fd) from None
    if r < 0:
        raise oserror("getsockopt(SO_ERROR)", -r)
    return r


def shutdown(fd: int, how: int) -> None:
    check_fd("shutdown", fd)
    try:
        r = lib.shutdown(fd, how)
    except (TypeError, OverflowError) as exc:
        raise arg_error("shutdown", exc, how=how) from None
    if r < 0:
        raise oserror("shutdown", ffi.errno)


def accept4(fd: int, flags: int = ACCEPT_FLAGS) -> tuple[int, Address] | None:
    """Accept one connection: ``(new_fd, peer_address)``, or ``None`` on an empty backlog.

    ``flags`` default to ``SOCK_NONBLOCK | SOCK_CLOEXEC``. Errors other than EAGAIN
    (EMFILE, ECONNABORTED, ...) raise ``OSError`` naming ``accept4``.
    """
    s = scratch
    while True:
        try:
            r = lib.ats_accept4(fd, flags, s.ss, s.len)
        except (TypeError, OverflowError) as exc:
            raise arg_error("accept4", exc, fd=fd, flags=flags) from None
        if r >= 0:
            try:
                return r, parse(s, "accept4")
            except BaseException:
                lib.close(r)
                raise
        if r == AGAIN:
            return None
        if r != -EINTR:
            raise oserror("accept4", -r)


def accept_batch(
    fd: int,
    max_count: int,
    flags: int = ACCEPT_FLAGS,
    nodelay_failed: list[tuple[int, int]] | None = None,
) -> tuple[list[int], int]:
    """Accept up to ``max_count`` connections in one native call.

    Returns ``(fds, err)``: the accepted fds and the errno that ended the batch
    (``EAGAIN`` for an empty backlog, 0 when ``max_count`` was reached, or a real
    error such as ``EMFILE`` that the caller classifies).

    ``nodelay_failed`` a list: each accepted socket also gets ``TCP_NODELAY`` in the same
    native call (no ``setsockopt`` crossing per connection); an fd whose ``setsockopt``
    failed is still returned, and ``(fd, errno)`` is appended to the list.
    """
    if type(max_count) is not int:
        check_int("accept4", "max_count", max_count)
    if max_count <= 0 or max_count > ACCEPT_BATCH_MAX:
        raise ValueError(f"accept4: max_count must be in 1..{ACCEPT_BATCH_MAX}, got {max_count}")
    s = scratch
    nodelay = nodelay_failed is not None
    try:
        n = lib.ats_accept_batch(fd, flags, nodelay, s.fds, s.opt_errs, max_count, s.err,
                                 s.opt_failed)  # fmt: skip
    except (TypeError, OverflowError) as exc:
        raise arg_error("accept4", exc, fd=fd, flags=flags) from None
    fds: list[int] = ffi.unpack(s.fds, n)
    if nodelay_failed is not None and s.opt_failed[0]:
        errs = s.opt_errs
        nodelay_failed.extend((afd, errs[i]) for i, afd in enumerate(fds) if errs[i])
    return fds, s.err[0]
