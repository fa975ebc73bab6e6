"""MIOBuffer and IOBufferReader: ATS's single-writer, many-reader byte chain.

A buffer is a singly linked chain of fixed-size blocks (``IOBufferBlock``, ioblock.py). The
writer appends at the tail block; each reader walks the chain from its own position. Nothing
holds the head of the chain once a reader exists: a block stays alive only while some reader
still has to read it (or it is the tail), so memory follows the slowest reader and stays
bounded for a write/consume stream.

Positions are kept as stream offsets: the buffer counts every byte ever committed
(``_written``) and each reader counts every byte it has consumed (``_pos``), which makes
``read_avail`` O(1) however long the chain is. A reader's place (block, offset, count) is a
``_Cursor``: the buffer holds its readers' cursors, never the readers, so a reader and its
buffer make no reference cycle and a connection's pair is freed by reference counting, not
left to the cyclic collector (which cost the accept path 4% of its CPU).

Blocks come from the thread's freelist (``take_block``, ioblock.py) and go back to it
(``give_block``) as soon as no reader needs them, while the buffer has one reader: a block
that reader has stepped past, and the whole chain once it has read every byte. A buffer
holding no unread byte then holds no block (its tail is ``_NO_BLOCK``, shared and empty),
so an idle connection keeps no data memory; only a read with ``keep`` (``advance``: the
asyncio loop's one read buffer, refilled at once) leaves a lone block in place. With several
readers, or none, blocks are left to the garbage collector.

Not thread-safe: like ATS, the owner (the VC, under its mutex) serialises access.
Every field whose name starts with ``_`` is this module's alone (tests/test_layout.py checks
that no other module of the package touches one). The net layer's per-event path uses the
trusted methods, which skip the argument checks of ``fill`` and ``consume`` (their callers
have just moved exactly those bytes): ``writable_block_if_room`` then ``commit(n)`` after a
native read into that block, or ``append_filled`` for a block read into while the tail had
no free space (``tail_free``); ``first_block``/``readable_blocks`` for the bytes to write,
and ``advance(n)`` after writing them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

from ats_cffi.eventsystem.ioblock import (
    DEFAULT_BLOCK_SIZE,
    MAX_BLOCK_SIZE,
    BlockPool,
    IOBufferBlock,
    check_int,
    give_block,
    pool_index,
    take_block,
)
from ats_cffi.eventsystem.iocopy import copy_into, put_bytes, read_bytes

__all__ = ["DEFAULT_BLOCK_SIZE", "MAX_BLOCK_SIZE", "IOBufferBlock", "IOBufferReader", "MIOBuffer"]


def _check_water_mark(value: Any) -> None:
    """``TypeError`` unless an int (bool excluded), ``ValueError`` if negative."""
    check_int("water_mark", value)
    if value < 0:
        raise ValueError(f"water_mark must be >= 0, got {value}")


_DEFAULT_POOL: Final = pool_index(DEFAULT_BLOCK_SIZE)
#: What a detached reader points at (it holds no block of its buffer any more).
_DETACHED: Final = IOBufferBlock(0)
#: The tail of a buffer that holds no block (and where its readers stand): full, so the
#: first write adds a real block, which the readers then move to. Its ``next`` stays None.
_NO_BLOCK: Final = IOBufferBlock(0)


class _Cursor:
    """Where one reader stands (module doc): the block holding its next byte (``_DETACHED``
    once the reader is deallocated), the offset in it, and the bytes consumed so far."""

    __slots__ = ("_block", "_off", "_pos")

    def __init__(self, block: IOBufferBlock, off: int, pos: int) -> None:
        self._block = block
        self._off = off
        self._pos = pos


class MIOBuffer:
    """A chain of blocks with one writer and any number of independent readers.

    Bytes written before the first reader exists are kept for it. A reader allocated while
    others exist starts where the slowest of them is; after the last reader goes away the
    buffer keeps what that reader had not consumed, for the next one.
    """

    __slots__ = (
        "_block_size",
        "_pool_index",
        "_water_mark",
        "_tail",
        "_written",
        "_one",
        "_many",
        "_head",
        "_head_off",
        "_head_pos",
    )

    def __init__(self, block_size: Any = DEFAULT_BLOCK_SIZE, water_mark: Any = 0) -> None:
        """Create an empty buffer whose blocks are ``block_size`` bytes: TypeError if
        block_size or water_mark is not an int (bool included), ValueError if block_size is
        not in 1..MAX_BLOCK_SIZE or water_mark < 0."""
        # (Two buffers per connection: the checks cost a call only for what is not an int.)
        if type(block_size) is not int:
            check_int("block_size", block_size)
        size: int = block_size  # (typed: compared unboxed)
        if not 0 < size <= MAX_BLOCK_SIZE:
            raise ValueError(f"block_size must be between 1 and {MAX_BLOCK_SIZE}, got {size}")
        self._block_size = size
        # Where its blocks come from and go back.
        self._pool_index = _DEFAULT_POOL if size == DEFAULT_BLOCK_SIZE else pool_index(size)
        if type(water_mark) is not int or water_mark < 0:
            _check_water_mark(water_mark)  # raises unless an int subclass >= 0
        self._water_mark: int = water_mark
        self._tail = _NO_BLOCK
        self._written = 0
        # The readers' cursors: ``_one`` while there is exactly one (the usual case: no list
        # is made per buffer), ``_many`` (all of them) while there are several; None if none.
        self._one: _Cursor | None = None
        self._many: list[_Cursor] | None = None
        # Where the next reader starts while there are no readers. None while readers exist,
        # so that the buffer itself does not pin consumed blocks.
        self._head: IOBufferBlock | None = _NO_BLOCK
        self._head_off = 0
        self._head_pos = 0

    @property
    def block_size(self) -> int:
        """Size in bytes of each block this buffer allocates."""
        return self._block_size

    @property
    def water_mark(self) -> int:
        """Readable bytes above which the buffer counts as full (``high_water()``)."""
        return self._water_mark

    @water_mark.setter
    def water_mark(self, value: Any) -> None:
        """Set the water mark: TypeError if value is not an int (bool included), ValueError
        if it is < 0."""
        _check_water_mark(value)
        self._water_mark = value

    @property
    def readers(self) -> int:
        """Number of allocated readers."""
        return len(self._cursors())

    def _cursors(self) -> list[_Cursor]:
        if self._one is not None:
            return [self._one]
        return self._many if self._many is not None else []

    # -- writer side ---------------------------------------------------------------------

    def _add_block(self, pool: BlockPool | None = None) -> IOBufferBlock:
        b = take_block(self._block_size, pool, self._pool_index)
        self._link(b)
        return b

    def _link(self, b: IOBufferBlock) -> None:
        t = self._tail
        if t is _NO_BLOCK:  # the buffer held no block: whoever stood on none starts here
            one = self._one
            if one is not None:
                one._block = b
                one._off = 0
            elif self._many is not None:
                for r in self._many:
                    r._block = b
                    r._off = 0
            if self._head is _NO_BLOCK:
                self._head_off = 0
                self._head = b
        else:
            t.next = b
        self._tail = b

    def drop_blocks_if_read(self, pool: BlockPool | None = None) -> None:
        """Give the chain's blocks back to the freelist (``pool``: the calling thread's)
        when the one reader has read every byte (a read step that moved nothing calls this:
        its block stays unused)."""
        r = self._one
        if r is not None and self._tail is not _NO_BLOCK and r._pos == self._written:
            self._drop_chain(r, pool)

    def _drop_chain(self, r: _Cursor, pool: BlockPool | None, keep: bool = False) -> None:
        # ``r``, the only reader, has read everything: no byte of the chain is needed. With
        # ``keep``, a lone block (not lent) is emptied in place and stays the tail.
        b: IOBufferBlock | None = r._block
        if keep and b is self._tail and b is not _NO_BLOCK and not b.lent:
            b.start = b.end = r._off = 0
            return
        while b is not None:
            nb = b.next
            give_block(b, pool)
            b = nb
        r._block = _NO_BLOCK
        r._off = 0
        self._tail = _NO_BLOCK

    def write(self, data: Any, pool: BlockPool | None = None) -> int:
        """Copy all of the bytes-like ``data`` into the chain, adding blocks as needed (from
        ``pool``: the calling thread's; None looks it up).

        Returns the number of bytes written. Raises TypeError if data is not bytes-like.
        """
        t = self._tail
        e = t.end
        if type(data) is bytes or type(data) is bytearray:
            n = len(data)
            if e == t.size and 0 < n <= self._block_size:
                # The tail is full (or the buffer holds no block, the usual state between
                # messages): a new block takes the write whole.
                t = self._add_block(pool)
                e = 0
            # Fast path: the whole write fits in the tail block: one copy (iocopy.py).
            if n <= t.size - e:
                put_bytes(t.data, e, data)
                t.end = e + n
                self._written += n
                return n
            mv = memoryview(data)
        else:
            try:
                mv = memoryview(data)
            except TypeError:
                raise TypeError(
                    f"data must be a bytes-like object, not {type(data).__name__}"
                ) from None
            except ValueError as exc:  # a released memoryview
                raise ValueError(f"MIOBuffer.write: data: {exc}") from None
            if mv.format != "B" or mv.ndim != 1:
                mv = mv.cast("B")
            n = mv.nbytes
        done = 0
        while done < n:
            free = t.size - e
            if free == 0:
                t = self._add_block(pool)
                e = 0
                free = t.size
            k = n - done
            if k > free:
                k = free
            t.view[e : e + k] = mv[done : done + k]
            e += k
            t.end = e
            done += k
        self._written += n
        return n

    def write_avail(self) -> int:
        """Free bytes in the tail block, after appending a block if the tail is full."""
        t = self._tail
        free = t.size - t.end
        if free == 0:
            t = self._add_block()
            free = t.size
        return free

    def writable_block(self) -> IOBufferBlock:
        """The tail block, after appending one if the tail is full.

        Fill ``block.data[block.end:]`` (natively: ``block.cdata`` at offset ``block.end``,
        at most ``len(block.data) - block.end`` bytes), then commit with ``fill(n)``.
        """
        t = self._tail
        if t.end == t.size:
            t = self._add_block()
        t.lent = True
        return t

    def writable_block_if_room(self, pool: BlockPool | None = None) -> IOBufferBlock | None:
        """The block a native read may fill, or None when the buffer is full.

        The tail block while it has free space; when it is full, a new block only if no
        reader has more than ``water_mark`` bytes to read (ATS's ``check_add_block``): this
        is where reading from a socket stops for back-pressure. A new block comes from
        ``pool`` (the calling thread's; None looks it up).
        """
        t = self._tail
        if t.end < t.size:
            return t
        if self.max_read_avail() > self._water_mark:
            return None
        return self._add_block(pool)

    def has_room(self) -> bool:
        """Whether ``writable_block_if_room`` would give a block (without adding one)."""
        t = self._tail
        return t.end < t.size or self.max_read_avail() <= self._water_mark

    def writable_view(self) -> memoryview:
        """A writable view of the tail block's free space (for ``recv_into``); see ``fill``."""
        t = self._tail
        if t.end == t.size:
            t = self._add_block()
        t.lent = True
        return t.view[t.end :]

    def commit(self, n: int) -> None:
        """Trusted ``fill(n)``: the caller has just written ``0 <= n <=`` the free space of the
        tail block (``writable_block_if_room``) natively. No check."""
        self._tail.end += n
        self._written += n

    def append_filled(self, b: IOBufferBlock, n: int) -> None:
        """Trusted: link ``b`` (empty, from the freelist) after the tail, which has no free
        space (a native read filled it first, or the buffer holds no block), with its first
        ``n`` bytes written (net/vcio.py). No check."""
        self._link(b)
        b.end = n
        self._written += n

    def tail_free(self) -> int:
        """The free space of the tail block: 0 when a native read would need a new block."""
        return self._tail.size - self._tail.end

    def fill(self, n: Any) -> None:
        """Commit ``n`` bytes that were written into the tail block's free space.

        Raises TypeError if n is not an int, ValueError if n < 0 or more than that free space.
        """
        t = self._tail
        if type(n) is not int:
            check_int("n", n)
        if n < 0 or n > t.size - t.end:
            raise ValueError(
                f"n must be between 0 and the tail block's free space ({t.size - t.end}), got {n}"
            )
        t.end += n
        self._written += n

    # -- readers -------------------------------------------------------------------------

    def alloc_reader(self) -> IOBufferReader:
        """A new reader: at the slowest reader's position, or at the retained data if none."""
        cs = self._cursors()
        if cs:
            slow = min(cs, key=_cursor_pos)
            c = _Cursor(slow._block, slow._off, slow._pos)
        else:
            head = self._head
            assert head is not None  # kept while no reader is (_retain_from)
            c = _Cursor(head, self._head_off, self._head_pos)
            self._head = None
        return self._add_reader(c)

    def _add_reader(self, c: _Cursor) -> IOBufferReader:
        one = self._one
        if one is not None:
            self._many = [one, c]
            self._one = None
        elif self._many is not None:
            self._many.append(c)
        else:
            self._one = c
        return IOBufferReader(_by=self, _at=c)

    def _retain_from(self, c: _Cursor) -> None:
        # The last reader is going away: keep what it had not consumed for the next one.
        self._head = c._block
        self._head_off = c._off
        self._head_pos = c._pos

    def dealloc_reader(self, r: IOBufferReader) -> None:
        """Detach reader ``r`` from this buffer; it can no longer be used.

        Raises ValueError if r is not an allocated reader of this buffer.
        """
        c = r._c
        cs = self._many
        if self._one is c:
            self._one = None
            self._retain_from(c)
        elif cs is not None and any(x is c for x in cs):
            cs.remove(c)
            if len(cs) == 1:
                self._one = cs[0]
                self._many = None
        else:
            raise ValueError("r is not an allocated reader of this buffer")
        c._block = _DETACHED

    def dealloc_all_readers(self) -> None:
        """Detach every reader of this buffer."""
        cs = self._cursors()
        if not cs:
            return
        # (A session's two buffers at its close, one reader each: no min() call then.)
        self._retain_from(cs[0] if len(cs) == 1 else min(cs, key=_cursor_pos))
        self._one = self._many = None
        for c in cs:
            c._block = _DETACHED

    def max_read_avail(self) -> int:
        """The largest ``read_avail()`` over all readers (the retained bytes if none)."""
        one = self._one
        if one is not None:
            return self._written - one._pos
        cs = self._many
        if cs is None:
            return self._written - self._head_pos
        return self._written - min(c._pos for c in cs)

    def high_water(self) -> bool:
        """True when some reader has more than ``water_mark`` bytes to read."""
        one = self._one
        if one is not None:  # the common case, without max_read_avail's call
            return self._written - one._pos > self._water_mark
        return self.max_read_avail() > self._water_mark

    def __repr__(self) -> str:
        return (
            f"<MIOBuffer block_size={self._block_size} water_mark={self._water_mark} "
            f"written={self._written} readers={self.readers}>"
        )


def _cursor_pos(c: _Cursor) -> int:
    return c._pos


def _iter_blocks(b: IOBufferBlock | None, off: int) -> Iterator[tuple[IOBufferBlock, int, int]]:
    while b is not None:
        e = b.end
        if e > off:
            yield b, off, e
        b = b.next
        if b is not None:
            off = b.start


class IOBufferReader:
    """A reading position in an MIOBuffer; readers of one buffer move independently.

    Get one from ``MIOBuffer.alloc_reader()`` or ``clone()``. Every method raises ValueError
    once the reader has been deallocated.
    """

    __slots__ = ("_w", "_c")

    _w: MIOBuffer
    _c: _Cursor

    def __init__(self, *args: object, _by: object = None, _at: object = None) -> None:
        """Not callable: raises TypeError; use ``MIOBuffer.alloc_reader()``."""
        if args or not isinstance(_by, MIOBuffer) or not isinstance(_at, _Cursor):
            raise TypeError("use MIOBuffer.alloc_reader() to create an IOBufferReader")
        self._w = _by
        self._c = _at

    @property
    def writer(self) -> MIOBuffer | None:
        """The buffer this reader reads, or None once the reader is deallocated."""
        return None if self._c._block is _DETACHED else self._w

    def _live(self) -> _Cursor:
        c = self._c
        if c._block is _DETACHED:
            raise ValueError("reader has been deallocated")
        return c

    def _first(self) -> IOBufferBlock:
        # Step over exhausted blocks, so the reader stands on the block holding its next byte
        # (or on the tail) and does not pin blocks it has finished.
        c = self._live()
        b = c._block
        off = c._off
        while off >= b.end and b.next is not None:
            b = b.next
            off = b.start
        c._block = b
        c._off = off
        return b

    def read_avail(self) -> int:
        """Bytes this reader has not consumed yet."""
        return self._w._written - self._live()._pos

    def drained(self) -> bool:
        """Trusted ``read_avail() == 0`` for a reader the caller has just used (a write step's
        ``advance``): no check that it is still allocated."""
        return self._c._pos == self._w._written

    def is_read_avail_more_than(self, n: Any) -> bool:
        """True if more than ``n`` bytes are available to read.

        Raises TypeError if n is not an int (bool included)."""
        c = self._live()
        if type(n) is not int:
            check_int("n", n)
        return self._w._written - c._pos > n

    def block_read_avail(self) -> int:
        """Bytes readable in the first block that has unread data (0 if none)."""
        b = self._first()
        return b.end - self._c._off

    def consume(self, n: Any) -> None:
        """Advance past ``n`` bytes.

        Raises TypeError if n is not an int, ValueError if n < 0 or n > read_avail().
        """
        avail = self._w._written - self._live()._pos
        if type(n) is not int:
            check_int("n", n)
        if n < 0 or n > avail:
            raise ValueError(f"n must be between 0 and read_avail() ({avail}), got {n}")
        self.advance(n)

    def advance(self, n: int, pool: BlockPool | None = None, keep: bool = False) -> None:
        """Trusted ``consume(n)``: the caller knows that ``0 <= n <= read_avail()`` (it has just
        written those bytes to a socket, or parsed them). No check. Blocks given back go to
        ``pool`` (the calling thread's; None looks it up). ``keep``: a buffer refilled at
        once (the asyncio loop's one read buffer) keeps its block when this empties it."""
        # Walk forward; finish on the block holding the next unread byte so that consumed
        # blocks are released as soon as possible: to the freelist, if this is the only
        # reader (nothing else can reach a block it has stepped past; module doc).
        c = self._c
        pos = c._pos = c._pos + n
        w = self._w
        only = w._one is c
        if only and pos == w._written:
            w._drop_chain(c, pool, keep)
            return
        b = c._block
        off = c._off + n
        while off >= b.end and b.next is not None:
            nb: IOBufferBlock = b.next
            off = off - b.end + nb.start
            if only:
                give_block(b, pool)
            b = nb
        c._block = b
        c._off = off

    def clone(self) -> IOBufferReader:
        """A new reader of the same buffer at this reader's position."""
        c = self._live()
        return self._w._add_reader(_Cursor(c._block, c._off, c._pos))

    def dealloc(self) -> None:
        """Detach this reader from its buffer; it can no longer be used."""
        self._live()
        self._w.dealloc_reader(self)

    def first_block(self) -> tuple[IOBufferBlock, int]:
        """``(block, offset)`` of the next unread byte (ATS's ``start()``): the block's bytes
        ``offset..block.end`` are readable. Nothing is consumed."""
        c = self._c
        b = c._block
        off = c._off
        if off < b.end or b.next is None:
            return b, off  # already on it (the common case): no _first call
        b = self._first()
        return b, c._off

    def readable_blocks(self) -> Iterator[tuple[IOBufferBlock, int, int]]:
        """Yield ``(block, start, end)`` for each non-empty run of unread bytes, in order.

        Nothing is copied or consumed: a native ``writev`` uses ``block.cdata`` with
        ``start`` and ``end - start``. Do not write to the buffer while iterating.
        """
        return _iter_blocks(self._first(), self._c._off)

    def readable_views(self) -> list[memoryview]:
        """Read-only views of the unread bytes, one per block; nothing is copied or consumed."""
        out = []
        for b, off, e in _iter_blocks(self._first(), self._c._off):
            b.lent = True
            out.append(b.view[off:e].toreadonly())
        return out

    def read(self, n: Any = -1) -> bytes:
        """Copy out and consume up to ``n`` bytes (all of them if n is negative).

        Raises TypeError if n is not an int.
        """
        return read_bytes(self, n)

    def memcpy(self, dest: Any, n: Any = None, offset: Any = 0) -> int:
        """Copy unread bytes, starting ``offset`` bytes in, into ``dest`` without consuming.

        Copies min(n, len(dest), bytes available past offset); n=None means as many as fit.
        Returns the number of bytes copied. Raises TypeError if dest is not a writable
        bytes-like object or n/offset are not ints, ValueError if n or offset is negative.
        """
        return copy_into(self, dest, n, offset)

    def __repr__(self) -> str:
        if self._c._block is _DETACHED:
            return "<IOBufferReader deallocated>"
        return f"<IOBufferReader pos={self._c._pos} read_avail={self.read_avail()}>"
