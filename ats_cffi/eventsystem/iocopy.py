"""Copying bytes out of an IOBufferReader into Python objects (``IOBufferReader.read`` and
``memcpy``), through the reader's public steps only: ``read_avail``, ``first_block``,
``readable_blocks`` and ``advance``, and copying bytes into a block (``put_bytes``, what
``MIOBuffer.write`` does). The net core never copies this way: it hands blocks to native
code. A read that one block holds (an asyncio transport's ``data_received`` gets these) is
one copy, by ``ats_cffi._fastio.bytes_at``; a write into one block, by ``_fastio.put``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from ats_cffi.eventsystem.ioblock import check_int

if TYPE_CHECKING:
    from ats_cffi.eventsystem.ioblock import BlockPool
    from ats_cffi.eventsystem.iobuffer import IOBufferReader

__all__ = ["copy_into", "put_bytes", "read_bytes"]


def _slice_bytes(data: bytearray, off: int, n: int) -> bytes:
    return bytes(memoryview(data)[off : off + n])


def _bytes_at_function() -> Callable[[bytearray, int, int], bytes]:
    """``ats_cffi._fastio.bytes_at`` (one copy, one call), or a slice of a view before the
    C extensions are built (the buffer layer works without them)."""
    try:
        from ats_cffi._fastio import bytes_at
    except ImportError:
        return _slice_bytes
    return bytes_at


#: ``bytes(data[off:off + n])`` of a block's bytearray.
_bytes_at: Final = _bytes_at_function()


def _slice_put(dst: bytearray, off: int, src: Any) -> None:
    memoryview(dst)[off : off + len(src)] = src


def _put_function() -> Callable[[bytearray, int, Any], None]:
    """``ats_cffi._fastio.put`` (one memmove, one call), or a slice assignment before the
    C extensions are built."""
    try:
        from ats_cffi._fastio import put
    except ImportError:
        return _slice_put
    return put


#: ``dst[off:off + len(src)] = src`` for a block's bytearray ``dst`` and bytes or a
#: bytearray ``src`` that fits (``MIOBuffer.write``): a slice of the block's memoryview
#: made a slice object and two buffer views per write (about 570 instructions, callgrind
#: of bench_http's request), this one call.
put_bytes: Final = _put_function()


def read_bytes(
    reader: IOBufferReader, n: Any, pool: BlockPool | None = None, keep: bool = False
) -> bytes:
    """``reader.read(n)``: up to ``n`` bytes (all if negative) copied out and consumed;
    the blocks it finished go back to ``pool`` (the calling thread's: None looks it up),
    but for a lone one with ``keep`` (``IOBufferReader.advance``)."""
    avail = reader.read_avail()  # ValueError once the reader was deallocated
    count: int = n if type(n) is int else check_int("n", n)  # typed: compiled arithmetic
    if count < 0 or count > avail:
        count = avail
    if count == 0:
        return b""
    block, start = reader.first_block()
    if block.end - start >= count:  # all in one block (a message read whole): one copy
        out = _bytes_at(block.data, start, count)
        reader.advance(count, pool, keep)
        return out
    parts = []
    left = count
    for b, start, end in reader.readable_blocks():
        k = end - start if end - start < left else left
        parts.append(b.view[start : start + k])
        left -= k
        if not left:
            break
    out = parts[0].tobytes() if len(parts) == 1 else b"".join(parts)
    reader.advance(count, pool, keep)
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
