"""Copying bytes out of an IOBufferReader into Python objects (``IOBufferReader.read`` and
``memcpy``), through the reader's public steps only: ``read_avail``, ``readable_blocks``
and ``advance``. The net core never copies this way: it hands blocks to native code."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ats_cffi.eventsystem.ioblock import check_int

if TYPE_CHECKING:
    from ats_cffi.eventsystem.iobuffer import IOBufferReader

__all__ = ["copy_into", "read_bytes"]


def read_bytes(reader: IOBufferReader, n: Any) -> bytes:
    """``reader.read(n)``: up to ``n`` bytes (all if negative) copied out and consumed."""
    avail = reader.read_avail()  # ValueError once the reader was deallocated
    if type(n) is not int:
        check_int("n", n)
    if n < 0 or n > avail:
        n = avail
    if n == 0:
        return b""
    parts = []
    left = n
    for b, start, end in reader.readable_blocks():
        k = end - start if end - start < left else left
        parts.append(b.view[start : start + k])
        left -= k
        if not left:
            break
    out = parts[0].tobytes() if len(parts) == 1 else b"".join(parts)
    reader.advance(n)
    return out


def copy_into(reader: IOBufferReader, dest: Any, n: Any, offset: Any) -> int:
    """``reader.memcpy(dest, n, offset)``: bytes copied into ``dest``, none consumed."""
    avail = reader.read_avail()  # ValueError once the reader was deallocated
    try:
        mv = memoryview(dest)
    except TypeError:
        raise TypeError(
            f"dest must be a writable bytes-like object, not {type(dest).__name__}"
        ) from None
    if mv.readonly:
        raise TypeError("dest must be a writable bytes-like object, not a read-only one")
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    check_int("offset", offset)
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    cap = mv.nbytes
    if n is not None:
        check_int("n", n)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if n < cap:
            cap = n
    avail -= offset
    if avail <= 0 or cap == 0:
        return 0
    total = cap if cap < avail else avail
    done = 0
    skip = offset  # the bytes before ``offset`` are not copied
    for b, start, end in reader.readable_blocks():
        if skip >= end - start:
            skip -= end - start
            continue
        start += skip
        skip = 0
        k = end - start if end - start < total - done else total - done
        mv[done : done + k] = b.view[start : start + k]
        done += k
        if done == total:
            break
    return total
