"""The Pythonic face of ``ats_cffi._native`` (DESIGN.md sections 2, 9, 10).

Failures become ``OSError(errno, "<call>: <strerror>")`` naming the system call;
``EINTR`` is retried; ``EAGAIN`` on the hot paths is the return value :data:`AGAIN`
(a negative errno-style sentinel), never an exception.

Two kinds of I/O calls are offered: convenience calls taking any bytes-like object
(:func:`read_into`, :func:`write`, :func:`writev`), which wrap the buffer for C on
every call, and the hot-path calls taking a cdata pointer made once by the caller
plus an offset and a length (:func:`read_fill`, :func:`write_block`,
:func:`writev_blocks`), which allocate nothing.
"""

from __future__ import annotations

import errno as _errno
import os
import socket as _socket
import threading
from collections.abc import Sequence
from typing import Any

from ats_cffi._native import ffi, lib

__all__ = [
    "AGAIN",
    "IN_PROGRESS",
    "Address",
    "Epoll",
    "EventFD",
    "accept4",
    "accept_batch",
    "bind",
    "check_fd",
    "close",
    "connect",
    "getpeername",
    "getsockname",
    "getsockopt_int",
    "input_pending",
    "ip_family",
    "listen",
    "read",
    "read_fill",
    "read_into",
    "setsockopt_int",
    "setsockopt_linger",
    "shutdown",
    "so_error",
    "socket",
    "write",
    "write_block",
    "writev",
    "writev_blocks",
]

#: Returned instead of raising when a non-blocking call would block.
AGAIN: int = -_errno.EAGAIN
#: Returned by :func:`connect` on a non-blocking socket whose connect is under way.
IN_PROGRESS: int = -_errno.EINPROGRESS

_EINTR = _errno.EINTR
_EAGAIN = _errno.EAGAIN
_CTL_ADD = lib.EPOLL_CTL_ADD
_CTL_MOD = lib.EPOLL_CTL_MOD
_CTL_DEL = lib.EPOLL_CTL_DEL

Address = tuple[str, int] | tuple[str, int, int, int] | str

#: Default flags for accepted sockets: non-blocking and close-on-exec.
ACCEPT_FLAGS: int = lib.SOCK_NONBLOCK | lib.SOCK_CLOEXEC


def _oserror(call: str, err: int) -> OSError:
    return OSError(err, f"{call}: {os.strerror(err)}")


def _type_error(call: str, exc: Exception) -> TypeError:
    return TypeError(f"{call}: {exc}")


# The ranges of a C ``int`` (fds, levels, options, flags, ...) and of a ``uint32_t``.
_INT_MIN = -(2**31)
_INT_MAX = 2**31 - 1
_C_INT = (_INT_MIN, _INT_MAX)
_UINT32 = (0, 2**32 - 1)
_INT_SIZE = ffi.sizeof("int")


def _check_int(call: str, name: str, value: Any, bounds: tuple[int, int] | None = None) -> None:
    """``TypeError`` unless ``value`` is an int (not a bool); with ``bounds`` (``lo, hi``),
    ``ValueError`` unless ``lo <= value <= hi`` (``_C_INT`` for a C ``int`` argument)."""
    if type(value) is not int:
        raise TypeError(f"{call}: {name} must be an int, not {type(value).__name__}")
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        raise ValueError(f"{call}: {name} must be in {bounds[0]}..{bounds[1]}, got {value}")


def _check_size(call: str, name: str, value: Any) -> None:
    _check_int(call, name, value)
    if value < 0:
        raise ValueError(f"{call}: {name} must be >= 0, got {value}")


def check_fd(call: str, fd: Any) -> None:
    """Raise ``TypeError`` unless ``fd`` is an int, ``ValueError`` unless it fits in a C
    ``int`` (a negative one fails later as EBADF)."""
    if type(fd) is not int:
        raise TypeError(f"{call}: fd must be an int, not {type(fd).__name__}")
    if not -0x80000000 <= fd <= 0x7FFFFFFF:  # _INT_MIN.._INT_MAX, as constants
        raise ValueError(f"{call}: fd must be in {_INT_MIN}..{_INT_MAX}, got {fd}")


def _arg_error(call: str, exc: Exception, **args: Any) -> Exception:
    """The error to raise after cffi rejected one of ``args`` (C ``int`` arguments) with
    ``exc``: the ``TypeError``/``ValueError`` of the first one that is not an int in the C
    ``int`` range, naming it, else ``exc`` as a ``TypeError`` naming ``call``. The calls made
    per event check nothing up front and call this only on failure, so the checks cost
    nothing when the arguments are good."""
    for name, value in args.items():
        try:
            _check_int(call, name, value, _C_INT)
        except (TypeError, ValueError) as err:
            return err
    return _type_error(call, exc)


# --------------------------------------------------------------------------- epoll


class Epoll:
    """An epoll instance (close-on-exec) with preallocated result arrays.

    After ``n = ep.wait(timeout_ms)``, ``ep.tokens[i]`` and ``ep.masks[i]`` for
    ``i < n`` are the token given at registration and the event mask: plain
    memoryviews, so reading them costs no cffi access per field.
    Raises ``OSError`` naming ``epoll_create1``/``epoll_ctl``/``epoll_wait``.

    ``add_deferred`` queues an ``EPOLL_CTL_ADD`` that is issued at the start of the next
    ``wait``/``wait_net`` (or by ``flush``): nothing can observe the epoll set before then,
    and an ADD reports readiness that is already pending (with ``EPOLLET`` too), so no event
    is lost; an fd removed (``delete``/``drop``) before that costs no syscall at all. While
    an ADD is queued, ``modify`` edits it and ``delete`` drops it. A queued ADD that fails
    when issued is recorded in ``failed`` as ``(fd, token, errno)`` for the caller to take.
    """

    __slots__ = (
        "_fd",
        "max_events",
        "_evs",
        "_tokens_c",
        "_masks_c",
        "tokens",
        "masks",
        "_pending",
        "failed",
    )

    def __init__(self, max_events: int = 1024) -> None:
        _check_int("Epoll", "max_events", max_events)
        if max_events <= 0:
            raise ValueError(f"Epoll: max_events must be > 0, got {max_events}")
        self._fd = -1
        fd = lib.epoll_create1(lib.EPOLL_CLOEXEC)
        if fd < 0:
            raise _oserror("epoll_create1", ffi.errno)
        self._fd = fd
        self.max_events = max_events
        self._evs = ffi.new("struct epoll_event[]", max_events)
        self._tokens_c = ffi.new("uint64_t[]", max_events)
        self._masks_c = ffi.new("uint32_t[]", max_events)
        self.tokens = memoryview(ffi.buffer(self._tokens_c)).cast("B").cast("Q")
        self.masks = memoryview(ffi.buffer(self._masks_c)).cast("B").cast("I")
        # fd -> (events, token, token given to add_deferred): the queued ADDs.
        self._pending: dict[int, tuple[int, int, int]] = {}
        self.failed: list[tuple[int, int, int]] = []

    @property
    def fd(self) -> int:
        """The epoll file descriptor, -1 once closed."""
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def ctl(self, op: int, fd: int, events: int, token: int | None = None) -> None:
        """``epoll_ctl(op, fd)`` with ``events`` and a 64-bit ``token`` (default: ``fd``)."""
        if token is None:
            token = fd
        pending = self._pending
        if pending and type(fd) is int and fd in pending:
            if op == _CTL_MOD:
                _check_int("epoll_ctl", "events", events)
                _check_int("epoll_ctl", "token", token)
                pending[fd] = (events, token, pending[fd][2])
                return
            if op == _CTL_DEL:
                del pending[fd]
                return
            raise _oserror("epoll_ctl", _errno.EEXIST)
        try:
            r = lib.ats_epoll_ctl(self._fd, op, fd, events, token)
        except (TypeError, OverflowError) as exc:
            raise TypeError(f"epoll_ctl: {exc}") from None
        if r < 0:
            raise _oserror("epoll_ctl", -r)

    def add(self, fd: int, events: int, token: int | None = None) -> None:
        """Register ``fd`` (``EPOLL_CTL_ADD``)."""
        self.ctl(_CTL_ADD, fd, events, token)

    def add_deferred(self, fd: int, events: int, token: int) -> None:
        """Queue the registration of ``fd`` for the next ``wait`` (see the class doc).
        ``OSError`` (EEXIST) if an ADD of ``fd`` is already queued, EBADF once closed."""
        if type(fd) is not int or type(events) is not int or type(token) is not int:
            check_fd("epoll_ctl", fd)
            _check_int("epoll_ctl", "events", events)
            _check_int("epoll_ctl", "token", token)
        if self._fd < 0:
            raise _oserror("epoll_ctl", _errno.EBADF)
        if fd in self._pending:
            raise _oserror("epoll_ctl", _errno.EEXIST)
        self._pending[fd] = (events, token, token)

    def modify(self, fd: int, events: int, token: int | None = None) -> None:
        """Change or re-arm ``fd`` (``EPOLL_CTL_MOD``): with edge trigger, a MOD with the
        same mask reports readiness that is already pending once more."""
        self.ctl(_CTL_MOD, fd, events, token)

    def delete(self, fd: int) -> None:
        """Unregister ``fd`` (``EPOLL_CTL_DEL``)."""
        self.ctl(_CTL_DEL, fd, 0, 0)

    def drop(self, fd: int) -> None:
        """Forget ``fd``, which the caller is about to close: its queued ADD (if any) is
        dropped, and no syscall is made, since closing an fd's last reference removes it
        from every epoll set (an fd shared with a ``dup`` needs ``delete`` instead)."""
        if self._pending:
            self._pending.pop(fd, None)

    def flush(self) -> int:
        """Issue the queued ADDs now; returns how many failed (recorded in ``failed``)."""
        pending = self._pending
        if not pending:
            return 0
        self._pending = {}
        ctl = lib.ats_epoll_ctl
        epfd = self._fd
        nfailed = 0
        for fd, (events, token, token0) in pending.items():
            r = ctl(epfd, _CTL_ADD, fd, events, token)
            if r < 0:
                self.failed.append((fd, token0, -r))
                nfailed += 1
        return nfailed

    def wait(self, timeout_ms: int = -1) -> int:
        """Wait up to ``timeout_ms`` (-1: forever, 0: poll) and return the number of events."""
        if self._pending:
            self.flush()
        while True:
            try:
                n = lib.ats_epoll_wait(
                    self._fd, self._evs, self.max_events, timeout_ms, self._tokens_c, self._masks_c
                )
            except (TypeError, OverflowError) as exc:
                raise TypeError(f"epoll_wait: timeout_ms: {exc}") from None
            if n >= 0:
                return n
            if n != -_EINTR:
                raise _oserror("epoll_wait", -n)

    def wait_net(self, timeout_ms: int, notify: Any, nnotify: Any, counters: Any) -> int:
        """``wait`` for a NetHandler pass (``ats_net_wait``): events whose token has bit 63
        set belong to spliced fds (``ats_cffi.net.splice``) and are handled natively, not
        returned. The tokens of the spliced ends that need Python go to ``notify``
        (``nnotify[0]`` of them); the native pumps add to ``counters`` (``uint64_t[4]``).
        Returns the number of the other events, in ``tokens``/``masks`` as for ``wait``."""
        if self._pending:
            self.flush()
        while True:
            n = lib.ats_net_wait(
                self._fd,
                self._evs,
                self.max_events,
                timeout_ms,
                self._tokens_c,
                self._masks_c,
                notify,
                nnotify,
                counters,
            )
            if n >= 0:
                return n
            if n != -_EINTR:
                raise _oserror("epoll_wait", -n)

    def close(self) -> None:
        """Close the epoll fd (queued ADDs are dropped); a second call does nothing."""
        self._pending = {}
        fd, self._fd = self._fd, -1
        if fd >= 0:
            lib.close(fd)

    def __enter__(self) -> Epoll:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            self.close()

    def __repr__(self) -> str:
        return f"<Epoll fd={self._fd} max_events={self.max_events}>"


# ------------------------------------------------------------------------- eventfd


class EventFD:
    """A non-blocking, close-on-exec eventfd.

    ``write(n)`` adds to the counter; ``read()`` returns the counter and resets it
    (semaphore mode: returns 1 and decrements), or ``None`` when it is zero.
    Raises ``OSError`` naming ``eventfd``/``eventfd read``/``eventfd write``.
    """

    __slots__ = ("_fd", "semaphore", "_value")

    def __init__(self, initval: int = 0, semaphore: bool = False) -> None:
        _check_size("eventfd", "initval", initval)
        if initval > 0xFFFFFFFF:
            raise ValueError(f"eventfd: initval must fit in 32 bits, got {initval}")
        self._fd = -1
        flags = lib.EFD_NONBLOCK | lib.EFD_CLOEXEC
        if semaphore:
            flags |= lib.EFD_SEMAPHORE
        fd = lib.eventfd(initval, flags)
        if fd < 0:
            raise _oserror("eventfd", ffi.errno)
        self._fd = fd
        self.semaphore = bool(semaphore)
        self._value = ffi.new("uint64_t *")

    @property
    def fd(self) -> int:
        return self._fd

    def write(self, value: int = 1) -> bool:
        """Add ``value`` (> 0) to the counter; False if the counter is full (EAGAIN)."""
        _check_int("eventfd write", "value", value)
        if value <= 0 or value >= 0xFFFFFFFFFFFFFFFF:
            raise ValueError(f"eventfd write: value must be in 1..2**64-2, got {value}")
        while True:
            r = lib.ats_eventfd_write(self._fd, value)
            if r == 0:
                return True
            if r == -_EAGAIN:
                return False
            if r != -_EINTR:
                raise _oserror("eventfd write", -r)

    def read(self) -> int | None:
        """Take the counter (or 1 in semaphore mode); ``None`` when it is zero."""
        while True:
            r = lib.ats_eventfd_read(self._fd, self._value)
            if r == 0:
                return int(self._value[0])
            if r == -_EAGAIN:
                return None
            if r != -_EINTR:
                raise _oserror("eventfd read", -r)

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            lib.close(fd)

    def __enter__(self) -> EventFD:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            self.close()

    def __repr__(self) -> str:
        return f"<EventFD fd={self._fd} semaphore={self.semaphore}>"


# ----------------------------------------------------------------------- addresses


class _Scratch(threading.local):
    """Per-thread sockaddr buffers, made once per thread (calls release the GIL)."""

    def __init__(self) -> None:
        self.ss = ffi.new("struct sockaddr_storage *")
        self.len = ffi.new("socklen_t *")
        self.host = ffi.new("char[]", 128)
        self.port = ffi.new("int *")
        self.flow = ffi.new("uint32_t *")
        self.scope = ffi.new("uint32_t *")
        self.intval = ffi.new("int *")
        self.fds = ffi.new("int[]", 256)
        self.err = ffi.new("int *")
        self.last = ffi.new("ssize_t *")


_scratch = _Scratch()
_lib_close = lib.close


def _parse(s: _Scratch, call: str) -> Address:
    fam = lib.ats_sockaddr_parse(s.ss, s.len[0], s.host, 128, s.port, s.flow, s.scope)
    if fam < 0:
        raise _oserror(call, -fam)
    host = ffi.string(s.host).decode("utf-8", "surrogateescape")
    if fam == lib.AF_INET:
        return (host, s.port[0])
    if fam == lib.AF_INET6:
        return (host, s.port[0], s.flow[0], s.scope[0])
    return host


def _make(s: _Scratch, call: str, family: int, address: Any) -> None:
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
        _check_int(call, "port", port, (0, 65535))
        if len(address) == 4:
            _check_int(call, "flow", flow, _UINT32)
            _check_int(call, "scope", scope, _UINT32)
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
        if r == -_errno.EINVAL:
            raise ValueError(f"{call}: not a numeric address for this family: {address!r}")
        raise _oserror(call, -r)


def ip_family(host: str) -> int:
    """``AF_INET``/``AF_INET6`` when ``host`` is a numeric address of that family, else 0."""
    for family in (_socket.AF_INET, _socket.AF_INET6):
        try:
            _socket.inet_pton(family, host)
            return int(family)
        except (OSError, ValueError):
            pass
    return 0


def _family(fd: int, call: str) -> int:
    s = _scratch
    s.len[0] = ffi.sizeof("int")
    if lib.getsockopt(fd, lib.SOL_SOCKET, lib.SO_DOMAIN, s.intval, s.len) < 0:
        raise _oserror(call, ffi.errno)
    return s.intval[0]


# ------------------------------------------------------------------------- sockets


def socket(family: int = lib.AF_INET, type: int = lib.SOCK_STREAM, proto: int = 0) -> int:
    """A new socket fd, non-blocking and close-on-exec."""
    for name, v in (("family", family), ("type", type), ("proto", proto)):
        _check_int("socket", name, v, _C_INT)
    fd = lib.socket(family, type | lib.SOCK_NONBLOCK | lib.SOCK_CLOEXEC, proto)
    if fd < 0:
        raise _oserror("socket", ffi.errno)
    return fd


def bind(fd: int, address: Address) -> None:
    """Bind ``fd`` to ``address`` (the family is read from the socket)."""
    check_fd("bind", fd)
    s = _scratch
    _make(s, "bind", _family(fd, "bind"), address)
    if lib.bind(fd, ffi.cast("struct sockaddr *", s.ss), s.len[0]) < 0:
        raise _oserror("bind", ffi.errno)


def listen(fd: int, backlog: int = 1024) -> None:
    check_fd("listen", fd)
    _check_int("listen", "backlog", backlog, _C_INT)
    if lib.listen(fd, backlog) < 0:
        raise _oserror("listen", ffi.errno)


def connect(fd: int, address: Address) -> int:
    """Start a connect: 0 when connected at once, :data:`IN_PROGRESS` when under way.

    Any other failure (ECONNREFUSED, ...) raises ``OSError`` naming ``connect``.
    """
    check_fd("connect", fd)
    s = _scratch
    _make(s, "connect", _family(fd, "connect"), address)
    while True:
        if lib.connect(fd, ffi.cast("struct sockaddr *", s.ss), s.len[0]) == 0:
            return 0
        err = ffi.errno
        if err == _errno.EINPROGRESS:
            return IN_PROGRESS
        if err != _EINTR:
            raise _oserror("connect", err)


def getsockname(fd: int) -> Address:
    check_fd("getsockname", fd)
    s = _scratch
    s.len[0] = ffi.sizeof("struct sockaddr_storage")
    if lib.getsockname(fd, ffi.cast("struct sockaddr *", s.ss), s.len) < 0:
        raise _oserror("getsockname", ffi.errno)
    return _parse(s, "getsockname")


def getpeername(fd: int) -> Address:
    check_fd("getpeername", fd)
    s = _scratch
    s.len[0] = ffi.sizeof("struct sockaddr_storage")
    if lib.getpeername(fd, ffi.cast("struct sockaddr *", s.ss), s.len) < 0:
        raise _oserror("getpeername", ffi.errno)
    return _parse(s, "getpeername")


def getsockopt_int(fd: int, level: int, option: int) -> int:
    check_fd("getsockopt", fd)
    _check_int("getsockopt", "level", level, _C_INT)
    _check_int("getsockopt", "option", option, _C_INT)
    s = _scratch
    s.len[0] = _INT_SIZE
    s.intval[0] = 0
    if lib.getsockopt(fd, level, option, s.intval, s.len) < 0:
        raise _oserror("getsockopt", ffi.errno)
    return s.intval[0]


def setsockopt_int(fd: int, level: int, option: int, value: int) -> None:
    if type(fd) is not int or type(value) is not int:
        check_fd("setsockopt", fd)
        _check_int("setsockopt", "value", value)
    s = _scratch
    try:
        s.intval[0] = value
        r = lib.setsockopt(fd, level, option, s.intval, _INT_SIZE)
    except (TypeError, OverflowError) as exc:
        raise _arg_error(
            "setsockopt", exc, fd=fd, level=level, option=option, value=value
        ) from None
    if r < 0:
        raise _oserror("setsockopt", ffi.errno)


def setsockopt_linger(fd: int, on: bool, seconds: int) -> None:
    """Set ``SO_LINGER``; ``on`` with 0 seconds makes ``close()`` send a reset."""
    check_fd("setsockopt", fd)
    _check_int("setsockopt(SO_LINGER)", "seconds", seconds, (0, _INT_MAX))
    lg = ffi.new("int[2]", [1 if on else 0, seconds])
    if lib.setsockopt(fd, lib.SOL_SOCKET, lib.SO_LINGER, lg, ffi.sizeof("int[2]")) < 0:
        raise _oserror("setsockopt(SO_LINGER)", ffi.errno)


def so_error(fd: int) -> int:
    """The pending socket error (``SO_ERROR``), cleared by reading it; 0 for none."""
    try:
        r = lib.ats_so_error(fd)
    except (TypeError, OverflowError) as exc:
        raise _arg_error("getsockopt(SO_ERROR)", exc, fd=fd) from None
    if r < 0:
        raise _oserror("getsockopt(SO_ERROR)", -r)
    return r


def shutdown(fd: int, how: int) -> None:
    check_fd("shutdown", fd)
    try:
        r = lib.shutdown(fd, how)
    except (TypeError, OverflowError) as exc:
        raise _arg_error("shutdown", exc, how=how) from None
    if r < 0:
        raise _oserror("shutdown", ffi.errno)


def close(fd: int) -> None:
    """Close ``fd``. Not retried on EINTR: on Linux the fd is released anyway."""
    if type(fd) is not int:
        check_fd("close", fd)
    try:
        r = _lib_close(fd)
    except OverflowError as exc:
        raise _arg_error("close", exc, fd=fd) from None
    if r < 0:
        err = ffi.errno
        if err != _EINTR:
            raise _oserror("close", err)


def accept4(fd: int, flags: int = ACCEPT_FLAGS) -> tuple[int, Address] | None:
    """Accept one connection: ``(new_fd, peer_address)``, or ``None`` on an empty backlog.

    ``flags`` default to ``SOCK_NONBLOCK | SOCK_CLOEXEC``. Errors other than EAGAIN
    (EMFILE, ECONNABORTED, ...) raise ``OSError`` naming ``accept4``.
    """
    s = _scratch
    while True:
        try:
            r = lib.ats_accept4(fd, flags, s.ss, s.len)
        except (TypeError, OverflowError) as exc:
            raise _arg_error("accept4", exc, fd=fd, flags=flags) from None
        if r >= 0:
            try:
                return r, _parse(s, "accept4")
            except BaseException:
                lib.close(r)
                raise
        if r == AGAIN:
            return None
        if r != -_EINTR:
            raise _oserror("accept4", -r)


def accept_batch(fd: int, max_count: int, flags: int = ACCEPT_FLAGS) -> tuple[list[int], int]:
    """Accept up to ``max_count`` connections in one native call.

    Returns ``(fds, err)``: the accepted fds and the errno that ended the batch
    (``EAGAIN`` for an empty backlog, 0 when ``max_count`` was reached, or a real
    error such as ``EMFILE`` that the caller classifies).
    """
    if type(max_count) is not int:
        _check_int("accept4", "max_count", max_count)
    if max_count <= 0 or max_count > 256:
        raise ValueError(f"accept4: max_count must be in 1..256, got {max_count}")
    s = _scratch
    try:
        n = lib.ats_accept_batch(fd, flags, s.fds, max_count, s.err)
    except (TypeError, OverflowError) as exc:
        raise _arg_error("accept4", exc, fd=fd, flags=flags) from None
    return ffi.unpack(s.fds, n), s.err[0]


# -------------------------------------------------------------------------- reads


def read_into(fd: int, buffer: Any, nbytes: int | None = None) -> int:
    """``read()`` into a writable bytes-like ``buffer`` (at most ``nbytes``).

    Returns the byte count (0 at EOF) or :data:`AGAIN`.
    """
    try:
        cbuf = ffi.from_buffer(buffer, require_writable=True)
    except (TypeError, BufferError) as exc:
        raise TypeError(f"read: buffer must be a writable bytes-like object: {exc}") from None
    size = len(cbuf)
    if nbytes is not None:
        _check_size("read", "nbytes", nbytes)
        size = min(size, nbytes)
    while True:
        try:
            r = lib.read(fd, cbuf, size)
        except (TypeError, OverflowError) as exc:
            raise _arg_error("read", exc, fd=fd) from None
        if r >= 0:
            return r
        err = ffi.errno
        if err == _EAGAIN:
            return AGAIN
        if err != _EINTR:
            raise _oserror("read", err)


def read(fd: int, nbytes: int) -> bytes | int:
    """Read up to ``nbytes``: the bytes (``b""`` at EOF) or :data:`AGAIN`."""
    _check_size("read", "nbytes", nbytes)
    buf = bytearray(nbytes)
    r = read_into(fd, buf)
    if r < 0:
        return r
    return bytes(buf[:r])


#: One byte for :func:`input_pending` to peek into (what lands there is never read).
_PEEK = ffi.new("char[1]")
_PEEK_FLAGS = lib.MSG_PEEK | lib.MSG_DONTWAIT


def input_pending(fd: int) -> bool:
    """True if the socket holds received bytes nobody has read yet (a one-byte
    ``recv(MSG_PEEK | MSG_DONTWAIT)``, which consumes nothing). False when it holds none,
    at EOF, and after a reset (``ECONNRESET``: nothing is left to read)."""
    check_fd("recv", fd)
    while True:
        r = lib.recv(fd, _PEEK, 1, _PEEK_FLAGS)
        if r >= 0:
            return r > 0
        err = ffi.errno
        if err == _EAGAIN or err == _errno.ECONNRESET:
            return False
        if err != _EINTR:
            raise _oserror("recv", err)


def read_fill(fd: int, base: Any, offset: int, length: int) -> tuple[int, int]:
    """Hot path: read into ``base[offset:offset+length]`` until full, EOF or EAGAIN.

    ``base`` is the writable destination: a cdata ``char[]`` the caller made once, with
    ``ffi.new("char[]", n)`` or ``ffi.from_buffer(buf, require_writable=True)`` (nothing is
    allocated per call; a cdata over read-only memory, from ``ffi.from_buffer(bytes)``,
    cannot be told apart and must not be passed), or a writable bytes-like object
    (``bytearray``, a writable ``memoryview``), wrapped for C on every call. ``bytes``, a
    read-only ``memoryview`` or anything else raise ``TypeError``.

    Returns ``(nread, last)``:
    ``last > 0`` means the space was filled (more may be waiting), 0 means EOF,
    :data:`AGAIN` means the socket is drained. An error raises ``OSError`` when nothing was
    read; after ``n > 0`` bytes it is returned as ``last = -errno`` so the bytes are not lost.
    ``ValueError`` when ``offset``/``length`` fall outside ``base``.
    """
    if not isinstance(base, _CData):  # the common case (a cdata made once) pays this test
        base = _span_base("read", base, True)
    _check_span("read", base, offset, length)
    s = _scratch
    try:
        n = lib.ats_read_fill(fd, base, offset, length, 0, s.last)
    except (TypeError, OverflowError) as exc:  # a bad fd, or a cdata array of another type
        raise _span_error("read", exc, fd) from None
    last = s.last[0]
    if last < 0 and last != AGAIN and n == 0:
        raise _oserror("read", -last)
    return n, last


# ------------------------------------------------------------------------- writes


_CData = ffi.CData


def _span_base(call: str, base: Any, writable: bool) -> Any:
    """A bytes-like ``base`` as a cdata for C, wrapped with ``ffi.from_buffer``
    (``writable``: it must be writable)."""
    try:
        return ffi.from_buffer(base, require_writable=writable)
    except (TypeError, BufferError) as exc:
        kind = "a writable" if writable else "a"
        raise TypeError(
            f"{call}: base must be a cdata char array (ffi.new/ffi.from_buffer) or {kind} "
            f"bytes-like object, not {type(base).__name__}: {exc}"
        ) from None


def _span_error(call: str, exc: Exception, fd: Any) -> Exception:
    """The error to raise after cffi rejected a read_fill/write_block call: a bad ``fd``
    named, else ``base`` not a char array."""
    try:
        check_fd(call, fd)
    except (TypeError, ValueError) as err:
        return err
    return TypeError(f"{call}: base must be a char array: {exc}")


def _check_span(call: str, base: Any, offset: int, length: int) -> None:
    _check_size(call, "offset", offset)
    _check_size(call, "length", length)
    try:
        size = len(base)
    except TypeError:
        raise TypeError(f"{call}: base must be a cdata array (ffi.from_buffer)") from None
    if offset + length > size:
        raise ValueError(f"{call}: offset {offset} + length {length} exceeds the buffer ({size})")


def write(fd: int, data: Any) -> int:
    """``send()`` (no SIGPIPE) a bytes-like object once: the count written or :data:`AGAIN`."""
    try:
        cbuf = ffi.from_buffer(data)
    except TypeError as exc:
        raise _type_error("write", exc) from None
    while True:
        try:
            r = lib.send(fd, cbuf, len(cbuf), lib.MSG_NOSIGNAL)
        except (TypeError, OverflowError) as exc:
            raise _arg_error("write", exc, fd=fd) from None
        if r >= 0:
            return r
        err = ffi.errno
        if err == _EAGAIN:
            return AGAIN
        if err == _errno.ENOTSOCK:
            r = lib.write(fd, cbuf, len(cbuf))
            if r >= 0:
                return r
            err = ffi.errno
            if err == _EAGAIN:
                return AGAIN
        if err != _EINTR:
            raise _oserror("write", err)


def write_block(fd: int, base: Any, offset: int, length: int) -> tuple[int, int]:
    """Hot path: write ``base[offset:offset+length]`` until done or EAGAIN: ``(n, last)``.

    ``base`` is a cdata ``char[]`` the caller made once (``ffi.new``/``ffi.from_buffer``:
    nothing is allocated per call) or any bytes-like object, wrapped for C on every call.
    ``last > 0``: all written; :data:`AGAIN`: the socket is full; ``-errno`` after a partial
    write (an error with nothing written raises ``OSError``).
    """
    if not isinstance(base, _CData):
        base = _span_base("write", base, False)
    _check_span("write", base, offset, length)
    s = _scratch
    try:
        n = lib.ats_write_all(fd, base, offset, length, s.last)
    except (TypeError, OverflowError) as exc:  # a bad fd, or a cdata array of another type
        raise _span_error("write", exc, fd) from None
    last = s.last[0]
    if last < 0 and last != AGAIN and n == 0:
        raise _oserror("write", -last)
    return n, last


def writev(fd: int, buffers: Sequence[Any]) -> int:
    """``writev()`` a sequence of bytes-like objects once: the count written or :data:`AGAIN`."""
    try:
        n = len(buffers)
    except TypeError:
        n = -1
    if n < 0 or isinstance(buffers, (bytes, bytearray, memoryview, str)):
        raise TypeError(
            "writev: buffers must be a sequence of bytes-like objects, "
            f"not {type(buffers).__name__}"
        )
    if n == 0:
        return 0
    iov = ffi.new("struct iovec[]", n)
    keep = []
    for i, b in enumerate(buffers):
        try:
            c = ffi.from_buffer(b)
        except TypeError as exc:
            raise _type_error("writev", exc) from None
        keep.append(c)
        iov[i].iov_base = c
        iov[i].iov_len = len(c)
    while True:
        try:
            r = lib.writev(fd, iov, n)
        except (TypeError, OverflowError) as exc:
            raise _arg_error("writev", exc, fd=fd) from None
        if r >= 0:
            return r
        err = ffi.errno
        if err == _EAGAIN:
            return AGAIN
        if err != _EINTR:
            raise _oserror("writev", err)


def writev_blocks(fd: int, bases: Any, offsets: Any, lengths: Any, count: int) -> tuple[int, int]:
    """Hot path: writev of ``count`` blocks held in preallocated ``char *[]``,
    ``size_t[]`` arrays, repeated until done or EAGAIN: ``(n, last)`` as
    :func:`write_block`."""
    _check_int("writev", "count", count)
    if count < 0:
        raise ValueError(f"writev: count must be >= 0, got {count}")
    for name, arr in (("bases", bases), ("offsets", offsets), ("lengths", lengths)):
        if count > len(arr):
            raise ValueError(f"writev: count {count} exceeds the {len(arr)} entries of {name}")
    s = _scratch
    n = lib.ats_writev_blocks(fd, bases, offsets, lengths, count, s.last)
    last = s.last[0]
    if last < 0 and last != AGAIN and n == 0:
        raise _oserror("writev", -last)
    return n, last
