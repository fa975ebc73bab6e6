"""Reads and writes: the convenience calls on any bytes-like object, and the hot-path calls
on a cdata the caller made once (``read_fill``, ``write_block``, ``writev_blocks``), which
allocate nothing. EAGAIN is :data:`AGAIN`, EINTR is retried, any other error raises
``OSError`` naming the call (after bytes moved, the hot-path calls return it instead)."""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from typing import Any

from ats_cffi import _fastio
from ats_cffi._native import ffi, lib
from ats_cffi.sys._check import (
    AGAIN,
    EAGAIN,
    EINTR,
    arg_error,
    check_fd,
    check_int,
    check_size,
    oserror,
    type_error,
    would_block,
)
from ats_cffi.sys._scratch import scratch

_CData = ffi.CData
_ENOTSOCK = errno.ENOTSOCK
_ECONNRESET = errno.ECONNRESET


def _retried(call: str, fn: Callable[[int, Any, int], int], fd: int, buf: Any, n: int) -> int:
    """``fn(fd, buf, n)`` (``read``, ``writev``), called again after EINTR: its count, or
    :data:`AGAIN`; a bad ``fd`` raises ``TypeError``/``ValueError``, another error
    ``OSError``, each naming ``call``."""
    while True:
        try:
            r = fn(fd, buf, n)
        except (TypeError, OverflowError) as exc:
            raise arg_error(call, exc, fd=fd) from None
        if r >= 0:
            return r
        if would_block(call):
            return AGAIN


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
        check_size("read", "nbytes", nbytes)
        size = min(size, nbytes)
    return _retried("read", lib.read, fd, cbuf, size)


def read(fd: int, nbytes: int) -> bytes | int:
    """Read up to ``nbytes``: the bytes (``b""`` at EOF) or :data:`AGAIN`."""
    check_size("read", "nbytes", nbytes)
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
        if err == EAGAIN or err == _ECONNRESET:
            return False
        if err != EINTR:
            raise oserror("recv", err)


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
    s = scratch
    try:
        n = lib.ats_read_fill(fd, base, offset, length, 0, s.last)
    except (TypeError, OverflowError) as exc:  # a bad fd, or a cdata array of another type
        raise _span_error("read", exc, fd) from None
    return _moved("read", n, s.last[0])


# ------------------------------------------------------------------------- writes


def write(fd: int, data: Any) -> int:
    """``send()`` (no SIGPIPE) a bytes-like object once: the count written or :data:`AGAIN`.
    On an fd that is not a socket (a pipe, a file), a plain ``write()``."""
    try:
        cbuf = ffi.from_buffer(data)
    except TypeError as exc:
        raise type_error("write", exc) from None
    while True:
        try:
            r = lib.send(fd, cbuf, len(cbuf), lib.MSG_NOSIGNAL)
        except (TypeError, OverflowError) as exc:
            raise arg_error("write", exc, fd=fd) from None
        if r < 0 and ffi.errno == _ENOTSOCK:
            r = lib.write(fd, cbuf, len(cbuf))
        if r >= 0:
            return r
        if would_block("write"):
            return AGAIN


def send_some(fd: int, data: Any) -> int:
    """Hot path (an asyncio transport's write): one ``send()`` (no SIGPIPE) of a bytes-like
    object, retried after EINTR: the count sent, or ``-errno`` (``-EAGAIN`` when the socket
    is full; an error of the socket is a value here too). ``ats_cffi._fastio``'s: a
    ``bytes`` object is passed as it is, another through the buffer protocol, and the call
    costs no cffi crossing. ``TypeError`` (naming ``send_some``) for data that is not
    bytes-like."""
    return _fastio.send_some(fd, data)


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
    s = scratch
    try:
        n = lib.ats_write_all(fd, base, offset, length, s.last)
    except (TypeError, OverflowError) as exc:  # a bad fd, or a cdata array of another type
        raise _span_error("write", exc, fd) from None
    return _moved("write", n, s.last[0])


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
            raise type_error("writev", exc) from None
        keep.append(c)
        iov[i].iov_base = c
        iov[i].iov_len = len(c)
    return _retried("writev", lib.writev, fd, iov, n)


def writev_blocks(fd: int, bases: Any, offsets: Any, lengths: Any, count: int) -> tuple[int, int]:
    """Hot path: writev of ``count`` blocks held in preallocated ``char *[]``,
    ``size_t[]`` arrays, repeated until done or EAGAIN: ``(n, last)`` as
    :func:`write_block`."""
    check_int("writev", "count", count)
    if count < 0:
        raise ValueError(f"writev: count must be >= 0, got {count}")
    for name, arr in (("bases", bases), ("offsets", offsets), ("lengths", lengths)):
        if count > len(arr):
            raise ValueError(f"writev: count {count} exceeds the {len(arr)} entries of {name}")
    s = scratch
    n = lib.ats_writev_blocks(fd, bases, offsets, lengths, count, s.last)
    return _moved("writev", n, s.last[0])


# --------------------------------------------------------------- the hot paths' spans


def _moved(call: str, n: int, last: int) -> tuple[int, int]:
    """``(n, last)`` of a hot-path loop that moved ``n`` bytes and ended with ``last``: an
    error (not EAGAIN) before any byte moved raises ``OSError`` naming ``call``."""
    if last < 0 and last != AGAIN and n == 0:
        raise oserror(call, -last)
    return n, last


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
    check_size(call, "offset", offset)
    check_size(call, "length", length)
    try:
        size = len(base)
    except TypeError:
        raise TypeError(f"{call}: base must be a cdata array (ffi.from_buffer)") from None
    if offset + length > size:
        raise ValueError(f"{call}: offset {offset} + length {length} exceeds the buffer ({size})")
