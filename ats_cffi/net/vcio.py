"""Moving bytes between a socket and IOBuffers: the byte half of a VC's read and write steps.

``read_into_buffer`` and ``write_from_reader`` only move bytes and count them in the
thread's net stats; what the moved bytes mean (VIO progress, events, the edge-trigger
flags) is ``UnixNetVConnection``'s (``net_read_io``, ``write_to_net``), as ATS keeps
``read_signal_and_update`` apart from the ``readv`` loop. Both run on the VC's net thread
with the VIO's mutex held, use the NetHandler's native scratch (``nh.last``, the iovec
arrays, made once per thread) and the buffer's trusted methods (``commit``, ``advance``):
one native call per run of free or filled space, no allocation, and EAGAIN is a value.

Results are ``(moved, last)``: the bytes moved, and the result of the last syscall: > 0
when it moved bytes, 0 for EOF (reads), ``sys.AGAIN`` when the socket would block, another
``-errno`` for an error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ats_cffi import sys as _sys
from ats_cffi._native import lib
from ats_cffi.eventsystem.ioblock import IOBufferBlock, give_block, take_block
from ats_cffi.eventsystem.iobuffer import IOBufferReader, MIOBuffer
from ats_cffi.net import stats as st

if TYPE_CHECKING:
    from ats_cffi.net.nethandler import NetHandler

_AGAIN: Final[int] = _sys.AGAIN
#: Blocks gathered into one ``writev`` (the C helper's ``iovec`` array has as many).
IOV_MAX: Final[int] = lib.ATS_IOV_MAX
_read_fill: Final = lib.ats_read_fill
_readv_blocks: Final = lib.ats_readv_blocks
_write_all: Final = lib.ats_write_all
_writev_blocks: Final = lib.ats_writev_blocks
_CALLS_TO_READ: Final = st.CALLS_TO_READ
_CALLS_TO_READ_NODATA: Final = st.CALLS_TO_READ_NODATA
_READ_BYTES: Final = st.READ_BYTES
_CALLS_TO_WRITE: Final = st.CALLS_TO_WRITE
_CALLS_TO_WRITE_NODATA: Final = st.CALLS_TO_WRITE_NODATA
_WRITE_BYTES: Final = st.WRITE_BYTES


def read_into_buffer(
    nh: NetHandler, fd: int, buf: MIOBuffer, limit: int, stop_short: bool
) -> tuple[int, int]:
    """Read up to ``limit`` bytes from ``fd`` into ``buf``, block by block, adding blocks
    while no reader is above the water mark (back-pressure: ``(0, 1)`` when there is no
    room at all).

    ``stop_short``: a read that returns less than it asked for ends the step as if it had
    seen EAGAIN (``last`` is ``sys.AGAIN``). With EPOLLET, Linux reports a new edge for
    every arrival on a TCP socket, so a short read proves the socket drained, without a
    second ``read()`` just to see EAGAIN (libuv does the same). The caller clears it once a
    hang-up was reported: data and FIN can share one edge, and then only reading on to EOF
    reveals the FIN.

    A read that filled its block suggests more is waiting (a message larger than a block):
    the next read is one ``readv`` into the tail and as many new blocks as the water mark
    allows (``_readv_into``), not one ``read`` per block.
    """
    stats = nh.stats
    lastp = nh.last
    pool = nh.pool
    total = 0
    last: int = 1  # declared: it is assigned lastp[0], an Any (CONTRIBUTING.md, mypyc)
    while total < limit:
        t = buf.writable_block_if_room(pool)
        if t is None:
            break
        end = t.end
        toread = t.size - end
        if toread > limit - total:
            toread = limit - total
        r: int
        if total and toread < limit - total and buf.max_read_avail() + toread <= buf.water_mark:
            r, toread = _readv_into(nh, fd, buf, t, toread, limit - total)
        else:
            r = _read_fill(fd, t.cdata, end, toread, stop_short, lastp)
            if r > 0:
                buf.commit(r)
        stats[_CALLS_TO_READ] += 1
        if r > 0:
            total += r
            if r == toread:
                continue  # every read was whole: the socket may hold more
            if stop_short:  # one read, and it was short (_read_fill stops there)
                last = _AGAIN
                break
        # Only here does the last syscall's result need reading (a cffi item access):
        # nothing read, or a short read followed by EAGAIN, EOF or an error.
        last = lastp[0]
        if last <= 0:
            break
    if total:
        stats[_READ_BYTES] += total
    else:
        buf.drop_blocks_if_read(pool)  # the block taken for this read stays unused
        if last == _AGAIN:
            stats[_CALLS_TO_READ_NODATA] += 1
    return total, last


def _readv_into(
    nh: NetHandler, fd: int, buf: MIOBuffer, t: IOBufferBlock, first: int, left: int
) -> tuple[int, int]:
    """One ``readv`` into the ``first`` free bytes of tail block ``t`` and into new blocks
    after it, up to ``left`` bytes, adding a block while no more than the water mark would
    wait if the ones before it filled (as ``writable_block_if_room`` adds them one by one).
    Commits what was read, gives the blocks it did not reach back. Returns ``(bytes read,
    bytes asked)``."""
    pool = nh.pool
    bases = nh.iov_bases
    offs = nh.iov_offs
    lens = nh.iov_lens
    bases[0] = t.cdata
    offs[0] = t.end
    lens[0] = first
    want = first
    room = buf.water_mark - buf.max_read_avail()
    size = buf.block_size
    extra = nh.read_blocks
    n = 1
    while want < left and want <= room and n < IOV_MAX:
        b = take_block(size, pool)
        k = size if size < left - want else left - want
        bases[n] = b.cdata
        offs[n] = 0
        lens[n] = k
        extra.append(b)
        want += k
        n += 1
    r: int = _readv_blocks(fd, bases, offs, lens, n, nh.last)
    rest = r - first
    buf.commit(r if rest < 0 else first)
    for b in extra:
        if rest > 0:
            k = rest if rest < size else size
            buf.append_filled(b, k)
            rest -= k
        else:
            give_block(b, pool)
    extra.clear()
    return r, want


def write_from_reader(
    nh: NetHandler, fd: int, reader: IOBufferReader, towrite: int
) -> tuple[int, int]:
    """Write ``0 < towrite <= reader.read_avail()`` bytes of ``reader`` to ``fd`` and consume
    what was written. The bytes of one block go out in one ``send`` loop; spread over
    several blocks, in ``writev`` calls of up to ``IOV_MAX`` blocks, repeated in C until
    all are written or the socket blocks."""
    block, start = reader.first_block()
    if block.end - start >= towrite:
        total: int = _write_all(fd, block.cdata, start, towrite, nh.last)
    else:
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
        total = _writev_blocks(fd, bases, offs, lens, n, nh.last)
    # All written: the last send moved bytes (no need to read it back through cffi).
    last: int = total if total == towrite else nh.last[0]
    stats = nh.stats
    stats[_CALLS_TO_WRITE] += 1
    if total > 0:
        reader.advance(total, nh.pool)
        stats[_WRITE_BYTES] += total
    else:
        stats[_CALLS_TO_WRITE_NODATA] += 1
    return total, last


__all__ = ["IOV_MAX", "read_into_buffer", "write_from_reader"]
