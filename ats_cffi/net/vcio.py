"""Moving bytes between a socket and IOBuffers: the byte half of a VC's read and write steps.

``read_into_buffer`` and ``write_from_reader`` only move bytes and count them in the
thread's net stats; what the moved bytes mean (VIO progress, events, the edge-trigger
flags) is ``UnixNetVConnection``'s (``net_read_io``, ``write_to_net``), as ATS keeps
``read_signal_and_update`` apart from the ``readv`` loop. Both run on the VC's net thread
with the VIO's mutex held, use the NetHandler's native scratch (``nh.last``, the iovec
arrays, made once per thread) and the buffer's trusted methods (``commit``, ``advance``):
one native call per run of free or filled space, no allocation, and EAGAIN is a value.
A plain socket's reads and writes go through ``ats_cffi._fastio`` (a block passed as its
bytearray, a chain of blocks as its first block, the GIL kept: ``_fastio.c`` says why); a
TLS connection's through cffi.

A write step that empties its buffer leaves it its block for the connection's next bytes
(``keep_emptied``); the NetHandler's sweep (``sweep_kept``) takes back those of idle
connections, and a VC closed on its thread gives its own back (``drop_kept``).

Results are ``(moved, last)``: the bytes moved, and the result of the last syscall: > 0
when it moved bytes, 0 for EOF (reads), ``sys.AGAIN`` when the socket would block, another
``-errno`` for an error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from ats_cffi import _fastio
from ats_cffi import sys as _sys
from ats_cffi._native import ffi, lib
from ats_cffi.eventsystem.ioblock import BlockPool, IOBufferBlock, take_block
from ats_cffi.eventsystem.iobuffer import IOBufferReader, MIOBuffer
from ats_cffi.net import stats as st
from ats_cffi.net.stats import StatBlock

if TYPE_CHECKING:
    from ats_cffi.net.nethandler import NetHandler
    from ats_cffi.net.netvconnection import NetState

_AGAIN: Final[int] = _sys.AGAIN
#: Blocks gathered into one ``writev`` (the C helper's ``iovec`` array has as many).
IOV_MAX: Final[int] = lib.ATS_IOV_MAX
#: The net thread's spare block, which a read spills into past the tail block's free space
#: (uvloop reads into one 256 KiB buffer per loop; 128 KiB covers the water marks in use).
SPILL_SIZE: Final = 128 * 1024
#: A tail block with this much room or more is read into alone, with a plain ``read``: the
#: spill's second iovec makes a ``readv``, which costs the kernel more per call than a
#: ``read`` (perf, 1 KiB round trips: ~0.2 us of ~7 us of system time), for the rare read
#: that brings more (the asyncio loop's one 256 KiB buffer; uvloop reads 64 KiB a call).
_READ_ALONE: Final = SPILL_SIZE
#: The most bytes a write step that empties its buffer may have moved for the buffer to
#: keep its block (``keep_emptied``). After a larger message the block goes back to the
#: thread's freelist, whose last block given is the next taken, still in the CPU's cache:
#: the next connection's read lands in memory that was just written from, as uvloop's in
#: its one loop-wide buffer. Kept blocks would each be written at their own address (10 KiB
#: x 100 connections echo: 1 MiB of them, and 8% more server CPU per round trip than with
#: the freelist's block, in an A/B); up to a page, keeping saves the freelist's take and
#: give (about 415 instructions a round trip).
KEEP_MAX: Final = 4096
#: The most that one read straight into a new ``bytes`` (``read_to_bytes``) asks for: below
#: glibc's mmap threshold (128 KiB), so that the object comes from the heap and the tail
#: the read did not fill goes back to it at once. asyncio and uvloop read up to 256 KiB.
BYTES_READ_MAX: Final = 126 * 1024
_read_spill: Final = _fastio.read_spill
_read_tail: Final = _fastio.read_tail
_read_to_bytes: Final = _fastio.read_to_bytes
_last: Final = _fastio.last
_copy: Final = ffi.memmove
_write_left: Final = _fastio.write_left
_writev_chain: Final = _fastio.writev_chain
_tls_read: Final = lib.ats_tls_read
_tls_write_blocks: Final = lib.ats_tls_write_blocks
_tls_write: Final = lib.ats_tls_write
#: The largest TLS record's plaintext (RFC 8446 section 5.1): the most one write gathers.
TLS_MAX_RECORD: Final = 16384
#: Dynamic record sizing's small records (``_native_tls.h``).
TLS_SMALL_RECORD: Final[int] = lib.ATS_TLS_SMALL_RECORD
_CALLS_TO_READ: Final = st.CALLS_TO_READ
_CALLS_TO_READ_NODATA: Final = st.CALLS_TO_READ_NODATA
_READ_BYTES: Final = st.READ_BYTES
_CALLS_TO_WRITE: Final = st.CALLS_TO_WRITE
_CALLS_TO_WRITE_NODATA: Final = st.CALLS_TO_WRITE_NODATA
_WRITE_BYTES: Final = st.WRITE_BYTES


def read_into_buffer(
    nh: NetHandler, fd: int, buf: MIOBuffer, limit: int, stop_short: bool, ssl: Any = None,
    spill_first: bool = True,
) -> tuple[int, int]:  # fmt: skip
    """Read up to ``limit`` bytes from ``fd`` into ``buf``, adding blocks while no reader is
    above the water mark (back-pressure: ``(0, 1)`` when there is no room at all).

    Each read fills the tail block's free space and spills on into the thread's spare block
    (``nh.spill``) as far as the water mark allows (``_read_sizes``), in one ``readv``: a
    message larger than the tail's free space costs one syscall, as ATS's ``read_from_net``
    reads into every block up to the water mark at once. Spilled bytes join the buffer
    (``_take_spill``). The tail is read alone (``_read_tail``: a plain ``read``) when it
    has ``_READ_ALONE`` bytes of room, and first with ``spill_first`` False (NetState's).
    With ``spill_first`` and no free space in the tail block, the spare is read alone
    (``_spare_alone``): a large message lands in one block and goes out in one ``send``.

    ``stop_short``: a read that returns less than it asked for ends the step as if it had
    seen EAGAIN (``last`` is ``sys.AGAIN``). With EPOLLET, Linux reports a new edge for
    every arrival on a TCP socket, so a short read proves the socket drained, without a
    second ``read()`` just to see EAGAIN (as libuv). The caller clears it once a hang-up
    was reported: data and FIN can share one edge, and only reading on to EOF reveals it.

    ``ssl``: an ``SSLNetVConnection``'s OpenSSL object: the same steps decrypt with
    ``SSL_read`` (``ats_tls_read``). A short read of plaintext proves nothing: ``stop_short``
    stops once OpenSSL holds no more and the socket's last read was short. ``last`` may
    also be ``TLS_WANT_WRITE`` or ``TLS_FAILED`` (``_native_tls.h``)."""
    stats = nh.stats
    total = 0
    last: int = 1  # declared: it is assigned nh.last[0], an Any (CONTRIBUTING.md, mypyc)
    while total < limit:
        s = nh.spill
        left = limit - total
        spill = _spare_alone(nh, buf, left) if spill_first and ssl is None else 0
        if spill:
            if spill < 0:
                break  # no room: back-pressure
            toread = 0  # ats_read_spill without a base: a plain read into the spare
            r: int = _read_spill(fd, s.data, 0, 0, s.data, -1 if spill == s.size else spill,
                                 stop_short)  # fmt: skip
        else:
            r, toread, spill = _read_tail_first(nh, fd, buf, left, stop_short, ssl, spill_first)
            if toread <= 0:
                break  # no room
        stats[_CALLS_TO_READ] += 1
        if r > 0:
            if r > toread:
                if toread:
                    buf.commit(toread)
                _take_spill(nh, buf, s, r - toread)
            else:
                buf.commit(r)
            total += r
            if r == toread + spill:
                spill_first = True
                continue  # every read was whole: the socket may hold more
            if stop_short and ssl is None:  # one read, and it was short (_read_spill stops)
                last = _AGAIN
                break
        # Only here is the last syscall's result needed: nothing read, or EAGAIN/EOF/error.
        last = _last() if ssl is None else nh.last[0]
        if last <= 0:
            break
    if total:
        stats[_READ_BYTES] += total
    else:
        buf.drop_blocks_if_read(nh.pool)  # the block taken for this read stays unused
        if last == _AGAIN:
            stats[_CALLS_TO_READ_NODATA] += 1
    return total, last


def _read_tail_first(
    nh: NetHandler, fd: int, buf: MIOBuffer, left: int, stop_short: bool, ssl: Any,
    spill_ok: bool,
) -> tuple[int, int, int]:  # fmt: skip
    """One read into the tail block's free space (a new block's if it has none), spilling
    into the spare as ``_read_sizes`` allows: ``(result, tail bytes asked, spare bytes
    asked)``, the tail's 0 when nothing may be read (no room: back-pressure)."""
    t = buf.writable_block_if_room(nh.pool)
    if t is None:
        return 0, 0, 0
    end = t.end
    toread = t.size - end
    spill = 0
    if toread >= left and t.size <= buf.block_size:
        toread = left
    elif spill_ok or t.size != buf.block_size or buf.high_water():
        toread, spill = _read_sizes(nh, buf, toread, left, spill_ok)
        if toread <= 0:
            return 0, 0, 0  # a large tail block (a spare handed over) holds the water mark
    # else: no spill, and a block of the buffer's size below the water mark: the free
    # space, as _read_sizes would give (what a read brings after a short one, the usual)
    s = nh.spill
    if ssl is not None:
        r: int = _tls_read(ssl, t.cdata, end, toread, s.cdata, spill, stop_short, nh.last)
    elif not spill and toread == t.size - end:
        r = _read_tail(fd, t.data, end, stop_short)  # all the block's room
    else:  # -1: all the room, all the spare (an int object per call otherwise)
        r = _read_spill(
            fd, t.data, end, -1 if toread == t.size - end else toread,
            s.data, -1 if spill == s.size else spill, stop_short,
        )  # fmt: skip
    return r, toread, spill


def _spare_alone(nh: NetHandler, buf: MIOBuffer, left: int) -> int:
    """How much of the thread's spare block a read may fill alone, up to ``left``: when the
    tail block has no free space and the buffer's blocks are smaller than the spare, what
    ``_read_sizes`` lets a read spill with no room in the tail, if that is more than one of
    the buffer's blocks. 0: read into the tail (or a new block) as usual; -1: no room at
    all (the readers hold more than the water mark)."""
    block = buf.block_size
    if block >= nh.spill.size or buf.tail_free():
        return 0
    spill = _read_sizes(nh, buf, 0, left, True)[1]
    if not spill:
        return -1
    return spill if spill > block else 0


def _read_sizes(
    nh: NetHandler, buf: MIOBuffer, free: int, left: int, spill_ok: bool
) -> tuple[int, int]:
    """How much of the tail block's ``free`` space and of the spare block the next read of
    at most ``left`` bytes may fill: no more than ``writable_block_if_room`` would let new
    blocks take (one is added while no reader has more than the water mark to read), which
    also bounds a tail block larger than the buffer's blocks (a spare handed over). None
    of the spare past ``_READ_ALONE`` bytes of room in the tail block, nor unless
    ``spill_ok``: a ``read`` costs the kernel less than a ``readv`` of two buffers (A/B on
    one core, VIO echo 1 KiB x 10: ~0.5 us of ~12 us of server CPU per round trip)."""
    room = buf.water_mark - buf.max_read_avail()
    if free > room + buf.block_size:
        free = room + buf.block_size
    if free >= left:
        return left, 0
    if free >= _READ_ALONE or not spill_ok:
        return free, 0  # a plain read: the block holds more than most reads bring, or
        # the VC's last step brought less than a block (spill_ok False)
    room -= free
    if room < 0:
        return free, 0
    room += buf.block_size
    if room > left - free:
        room = left - free
    size = nh.spill.size
    return free, room if room < size else size


def _take_spill(nh: NetHandler, buf: MIOBuffer, s: IOBufferBlock, n: int) -> None:
    """Add the ``n`` bytes a read spilled into the spare block ``s`` to ``buf``: the block
    itself when they fill at least a block of the buffer's size (the thread takes a new
    spare), else a copy in a block of the buffer's size, so that a few bytes waiting in a
    buffer do not hold the whole spare."""
    pool = nh.pool
    size = buf.block_size
    if n >= size:
        buf.append_filled(s, n)
        nh.spill = take_block(SPILL_SIZE, pool)
    else:
        b = take_block(size, pool)
        _copy(b.cdata, s.cdata, n)
        buf.append_filled(b, n)


def read_to_bytes(
    nh: NetHandler, fd: int, limit: int, stop_short: bool, large: bool
) -> tuple[bytes, int]:
    """Read up to ``limit`` bytes from ``fd`` into a new ``bytes``: ``(data, last)``, for a
    reader that wants the bytes as an object (an asyncio ``Protocol``'s ``data_received``)
    and would otherwise copy them out of an MIOBuffer.

    ``large``: read straight into the new object (up to ``BYTES_READ_MAX``), which saves
    the copy of every byte; else into the thread's spare block (``nh.spill``) and copied
    out, as uvloop reads into one loop-wide buffer: for a few bytes, a copy costs less than
    a large allocation cut down. The caller says which from what its last read brought.
    ``stop_short`` and ``last`` as ``read_into_buffer``'s, and counted alike.
    """
    if large:
        ask = limit if limit < BYTES_READ_MAX else BYTES_READ_MAX
        data: bytes = _read_to_bytes(fd, ask, stop_short, None)
    else:
        s = nh.spill
        size = s.size
        ask = limit if limit < size else size
        data = _read_to_bytes(fd, -1 if ask == size else ask, stop_short, s.data)
    stats = nh.stats
    stats[_CALLS_TO_READ] += 1
    n = len(data)
    if n:
        stats[_READ_BYTES] += n
        if n == ask:
            return data, 1  # filled: the socket may hold more
        if stop_short:
            return data, _AGAIN  # short: drained (read_into_buffer's doc)
    last: int = _last()
    if not n and last == _AGAIN:
        stats[_CALLS_TO_READ_NODATA] += 1
    return data, last


def write_from_reader(
    nh: NetHandler, fd: int, reader: IOBufferReader, towrite: int
) -> tuple[int, int]:
    """Write ``0 < towrite <= reader.read_avail()`` bytes of ``reader`` to ``fd`` and consume
    what was written. The bytes of one block go out in one ``send`` loop; spread over
    several blocks, in ``writev`` calls of up to ``IOV_MAX`` blocks, repeated in C until
    all are written or the socket blocks."""
    # All written: the last send moved bytes (no need to ask for its result).
    block, start = reader.first_block()
    if block.end - start >= towrite:
        left: int = _write_left(fd, block.data, start, towrite)
        total: int = towrite - left
        last: int = total if not left else _last()
    else:
        total = _writev_chain(fd, block, start, towrite)
        last = total if total == towrite else _last()
    _wrote(nh, reader, total, total <= KEEP_MAX)
    return total, last


def tls_write_from_reader(
    nh: NetHandler, ssl: Any, reader: IOBufferReader, towrite: int, record: int,
    small_until: int, retry: int,
) -> tuple[int, int, int]:  # fmt: skip
    """``write_from_reader`` through OpenSSL: records of at most ``record`` bytes (of
    ``TLS_SMALL_RECORD`` bytes for the first ``small_until``), small blocks gathered into
    one record (``ats_tls_write_blocks``). ``retry``: the size of the
    write OpenSSL is waiting to see again (0: none). Returns ``(moved, last, retry)``, the
    last being the size to retry with next time (``last`` is then ``sys.AGAIN``, or
    ``TLS_WANT_READ``)."""
    out = nh.tls_last
    block, start = reader.first_block()
    if block.end - start >= towrite:
        total: int = _tls_write(
            ssl, block.cdata, start, towrite, record, small_until, retry, nh.tls_gather, out
        )
    else:
        n = _gather(nh, reader, towrite)
        total = _tls_write_blocks(
            ssl, nh.iov_bases, nh.iov_offs, nh.iov_lens, n, record, small_until, retry,
            nh.tls_gather, out,
        )  # fmt: skip
    last: int = total if total == towrite else out[0]
    again: int = 0 if total == towrite else out[1]
    _wrote(nh, reader, total, total <= KEEP_MAX)
    return total, last, again


def _gather(nh: NetHandler, reader: IOBufferReader, towrite: int) -> int:
    """Fill the thread's iovec arrays with the first ``towrite`` bytes of ``reader`` (at most
    ``IOV_MAX`` blocks); returns how many blocks."""
    bases = nh.iov_bases
    offs = nh.iov_offs
    lens = nh.iov_lens
    n = 0
    left = towrite
    for block, start, end in reader.readable_blocks():
        k = end - start
        if k > left:
            k = left
        bases[n] = block.cdata
        offs[n] = start
        lens[n] = k
        n += 1
        left -= k
        if left <= 0 or n == IOV_MAX:
            break
    return n


def _wrote(nh: NetHandler, reader: IOBufferReader, total: int, keep: bool) -> None:
    """Consume and count the ``total`` bytes a write step moved. A buffer this empties keeps
    its block for its next bytes (``keep``: after at most ``KEEP_MAX`` bytes), until a
    sweep finds it idle (``keep_emptied``)."""
    if total > 0:
        reader.advance(total, nh.pool, keep)
    count_write(nh.stats, total)


def keep_emptied(nh: NetHandler, s: NetState, reader: IOBufferReader, total: int) -> None:
    """After a write step of side ``s`` that moved ``total`` bytes of ``reader``: if it
    emptied the buffer after at most ``KEEP_MAX`` bytes, the buffer kept its block
    (``_wrote``), and the next message of a busy connection is read into that block,
    without taking one from the freelist and giving it back per message. ``sweep_kept``
    gives back the block of a buffer that stayed empty two passes, so that an idle
    connection holds no block."""
    if total <= 0 or total > KEEP_MAX or not reader.drained():
        return
    if not s.kept_at:
        nh.kept.append(s)
    s.kept_at = nh.passes


def sweep_kept(nh: NetHandler) -> None:
    """At the end of a pass (every few: the NetHandler's ``_SWEEP_MASK``): give back the
    block of each buffer on ``nh.kept`` that no write step emptied in this pass or the one
    before (a connection that missed one pass of a busy thread keeps its block) and that
    is still empty; the others stay on the list, which is compacted in place (its length
    is the connections active since the last sweep). A side's mutex is taken for it, as a
    write step's is; one that another thread holds keeps its side on the list."""
    kept = nh.kept
    old = nh.passes - 1
    tid = nh.tid
    n = len(kept)
    j = 0
    for i in range(n):
        s = kept[i]
        if s.kept_at < old:
            m = s.mutex
            if m is None or m.try_lock_as(tid):
                s.kept_at = 0
                if m is not None:
                    try:
                        _drop_if_drained(s.buffer, nh.pool)
                    finally:
                        m.unlock_as(tid)
                continue
            s.kept_at = old + 1  # busy: as if emptied in this pass
        if j != i:
            kept[j] = s
        j += 1
    if j < n:
        del kept[j:]


def drop_kept(s: NetState) -> None:
    """The VC of write side ``s`` is closing (its VIO's mutex held): give back the block its
    buffer kept if the buffer is still empty, to the calling thread's freelist, rather than
    leave it to the buffer's continuation, which may drop the buffer with it."""
    if s.kept_at:
        _drop_if_drained(s.buffer, None)


def _drop_if_drained(r: Any, pool: BlockPool | None) -> None:
    """Give back the blocks of the buffer read by ``r`` (a write VIO's buffer) if its only
    reader has read them all (``pool``: the calling thread's, None looks it up)."""
    if isinstance(r, IOBufferReader):
        w = r.writer
        if w is not None:
            w.drop_blocks_if_read(pool)


def count_write(stats: StatBlock, total: int) -> None:
    """Count a write step that moved ``total`` bytes (or failed: ``total`` <= 0)."""
    stats[_CALLS_TO_WRITE] += 1
    if total > 0:
        stats[_WRITE_BYTES] += total
    else:
        stats[_CALLS_TO_WRITE_NODATA] += 1


__all__ = [
    "BYTES_READ_MAX",
    "IOV_MAX",
    "KEEP_MAX",
    "SPILL_SIZE",
    "TLS_MAX_RECORD",
    "TLS_SMALL_RECORD",
    "count_write",
    "drop_kept",
    "keep_emptied",
    "read_into_buffer",
    "read_to_bytes",
    "sweep_kept",
    "tls_write_from_reader",
    "write_from_reader",
]
