"""IOBufferBlock: one fixed-size block of memory of an IOBuffer chain (iobuffer.py), and
the per-thread freelists blocks come from and go back to.

A block is written once, front to back (``end`` grows), and read front to back (``start``
or a reader's offset grows); native code reads into and writes from it through its
``cdata``, made once per block. Its private field (``_cdata``) is this module's alone.

Freelists (ATS's ``ioBufAllocator`` with ``THREAD_ALLOC``/``THREAD_FREE``): a buffer takes a
block with ``take_block`` and gives it back with ``give_block`` once no reader needs it, so
a connection whose buffers are empty holds no block, and the next message reuses one with
its memory and ``cdata`` already made. Each thread has its own ``BlockPool`` (no lock),
bounded to ``THREAD_POOL_BYTES`` per size; what overflows goes to one global pool (bounded
to ``GLOBAL_POOL_BYTES`` per size, under a lock), which a thread's empty list takes from
before it allocates. ``trim_pools`` (the InactivityCop's, each pass) frees the blocks a
pool did not need since the last trim, so memory goes back once a burst is over. Sizes
pooled are ATS's size indexes, 128 B to 2 MiB (powers of two); other sizes are allocated
and dropped.

A block whose memory was lent out as a view (``IOBufferBlock.lent``: ``readable_views``,
``writable_view``, ``writable_block``) is never pooled: a view kept by the caller must not
see a later message's bytes.
"""

from __future__ import annotations

import threading
from typing import Any, Final

from ats_cffi.eventsystem.threadcache import ThreadCache

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "GLOBAL_POOL_BYTES",
    "MAX_BLOCK_SIZE",
    "THREAD_POOL_BYTES",
    "BlockPool",
    "IOBufferBlock",
    "check_int",
    "adopt_thread_pool",
    "give_block",
    "new_thread_pool",
    "pool_index",
    "take_block",
    "thread_pool",
    "trim_pools",
]

DEFAULT_BLOCK_SIZE: Final = 32768
#: Largest block (1 GiB). ATS's largest buffer size index is 2 MiB; bigger blocks are
#: allowed, up to this bound, well inside the C int the native reads and writes take.
MAX_BLOCK_SIZE: Final = 2**30
#: Pooled sizes: 2**POOL_MIN_SHIFT (128 B) .. 2**POOL_MAX_SHIFT (2 MiB), ATS's size indexes.
POOL_MIN_SHIFT: Final = 7
POOL_MAX_SHIFT: Final = 21
#: Most free blocks a pool keeps of one size, however small.
POOL_MAX_BLOCKS: Final = 1024
#: Bytes of free blocks a thread's pool keeps per size (at least 4 blocks).
THREAD_POOL_BYTES: Final = 32 * 1024 * 1024
#: Bytes of free blocks the global pool keeps per size (at least 16 blocks).
GLOBAL_POOL_BYTES: Final = 32 * 1024 * 1024
_EMPTY: Final = bytearray()
_EMPTY_VIEW: Final = memoryview(_EMPTY)
#: The native extension's ``ffi``, imported at the first ``IOBufferBlock.cdata``.
_ffi: Any = None


def _native_ffi() -> Any:
    # Imported on first use so that the buffer layer works (and is testable) without the
    # native extension; kept in a global since an import statement costs ~0.8 us, more than
    # the ffi.from_buffer it serves.
    global _ffi
    from ats_cffi._native import ffi

    _ffi = ffi
    return ffi


class IOBufferBlock:
    """One fixed-size block of a buffer chain: valid bytes are ``data[start:end]``.

    The free space ``data[end:]`` is where the writer (or a native read) puts new bytes.
    Native code is handed ``(block.cdata, offset, length)``, or the bytearray ``data`` with
    an offset and a length; no pointer arithmetic is done on the Python side.
    ``ats_cffi._fastio.writev_chain`` reads ``data``, ``start``, ``end`` and ``next`` of
    the blocks of a chain by name: keep those four names.
    """

    __slots__ = ("data", "size", "start", "end", "next", "view", "lent", "index", "_cdata")

    def __init__(self, size: Any) -> None:
        """Allocate a zeroed block of ``size`` bytes, empty.

        Raises TypeError for a non-integer size (bool included), ValueError for one that is
        negative or above MAX_BLOCK_SIZE.
        """
        if type(size) is not int:
            check_int("IOBufferBlock: size", size)
            size = int(size)
        if not 0 <= size <= MAX_BLOCK_SIZE:
            raise ValueError(
                f"IOBufferBlock: size must be between 0 and {MAX_BLOCK_SIZE}, got {size}"
            )
        #: ``len(data)``: blocks never change size.
        self.size: int = size
        self.start = 0
        self.end = 0
        self.next: IOBufferBlock | None = None
        #: Its memory was lent out as a view: never pooled (the module doc).
        self.lent = False
        #: Its pool list (``pool_index``), found once.
        self.index = pool_index(size)
        self._cdata: Any = None
        if size == 0:
            # The empty block every MIOBuffer starts its chain with holds no byte: all of
            # them share one empty array and view (an idle connection's buffers cost less).
            self.data = _EMPTY
            self.view = _EMPTY_VIEW
            return
        self.data = bytearray(size)
        # One memoryview per block, sliced for views instead of re-exporting the bytearray
        # on every call.
        self.view = memoryview(self.data)

    @property
    def cdata(self) -> Any:
        """The block's memory as a cffi ``char[]`` (created on first use, then cached).

        Raises ImportError if the native extension has not been built.
        """
        c = self._cdata
        if c is None:
            ffi = _ffi if _ffi is not None else _native_ffi()
            c = self._cdata = ffi.from_buffer(self.data)
        return c

    def read_avail(self) -> int:
        """Number of valid bytes in this block."""
        return self.end - self.start

    def write_avail(self) -> int:
        """Number of free bytes after the valid ones."""
        return self.size - self.end

    def __repr__(self) -> str:
        return f"<IOBufferBlock size={self.size} start={self.start} end={self.end}>"


_NSIZES: Final = POOL_MAX_SHIFT - POOL_MIN_SHIFT + 1
#: Pooled size -> its pool list (one dict lookup per block taken or given).
_INDEX: Final[dict[int, int]] = {1 << (POOL_MIN_SHIFT + i): i for i in range(_NSIZES)}


def pool_index(size: int) -> int:
    """The pool list of a block size: 0.. for the pooled sizes, -1 for any other."""
    return _INDEX.get(size, -1)


class FreeList:
    """The free blocks of one size: linked through their own ``next`` field (``head`` the
    first), with their ``count``, ``cap`` and ``low`` (the shortest ``count`` since the
    last trim). Typed fields: a take or a give reads and writes them with no boxing."""

    __slots__ = ("head", "count", "cap", "low")

    def __init__(self, cap: int) -> None:
        self.head: IOBufferBlock | None = None
        self.count = 0
        self.cap = cap
        self.low = 0


class BlockPool:
    """Free blocks by size index, each list bounded to ``budget`` bytes (at least
    ``min_blocks`` blocks). Each list's ``low`` is its shortest length since the last trim:
    that many blocks were not needed in the interval.

    Each list is linked through the free blocks' own ``next`` field, as ATS's freelists
    are: taking and giving a block are a few stores, where a Python list freed its item
    array whenever it went empty and allocated it again at the next give (one block per
    message going out and back: a malloc and a free per message)."""

    __slots__ = ("lists",)

    def __init__(self, budget: int, min_blocks: int) -> None:
        self.lists: list[FreeList] = [
            FreeList(max(min_blocks, min(POOL_MAX_BLOCKS, budget >> (i + POOL_MIN_SHIFT))))
            for i in range(_NSIZES)
        ]

    def pop(self, i: int) -> IOBufferBlock | None:
        """A free block of size index ``i``, or None."""
        fl = self.lists[i]
        b = fl.head
        if b is None:
            return None
        fl.head = b.next
        b.next = None
        n = fl.count - 1
        fl.count = n
        if n < fl.low:
            fl.low = n
        return b

    def push(self, i: int, b: IOBufferBlock) -> bool:
        """Keep ``b`` (emptied) unless the list is full; False if it was not kept."""
        fl = self.lists[i]
        n = fl.count
        if n >= fl.cap:
            return False
        b.start = 0
        b.end = 0
        b.next = fl.head
        fl.head = b
        fl.count = n + 1
        return True

    def has_free(self, i: int) -> bool:
        """Whether a block of size index ``i`` is free (a peek, without the lock)."""
        return self.lists[i].head is not None

    def cap(self, i: int) -> int:
        """How many free blocks of size index ``i`` the pool keeps at most."""
        return self.lists[i].cap

    def blocks(self, i: int) -> list[IOBufferBlock]:
        """The free blocks of size index ``i``, the next one taken first (a copy)."""
        out: list[IOBufferBlock] = []
        b = self.lists[i].head
        while b is not None:
            out.append(b)
            b = b.next
        return out

    def clear(self) -> None:
        """Drop every free block."""
        for fl in self.lists:
            fl.head = None
            fl.count = 0
            fl.low = 0

    def trim(self) -> int:
        """Drop the blocks no take needed since the last trim (the coldest: those given
        back longest ago, at the end of the list); the number dropped."""
        dropped = 0
        for fl in self.lists:
            n = fl.count
            k = fl.low if fl.low < n else n
            if k:
                keep = n - k
                b = fl.head
                if keep == 0:
                    fl.head = None
                else:
                    for _ in range(keep - 1):
                        b = b.next  # type: ignore[union-attr]  # count blocks follow
                    b.next = None  # type: ignore[union-attr]
                fl.count = keep
                dropped += k
            fl.low = fl.count
        return dropped

    def free_blocks(self) -> int:
        """How many free blocks the pool holds."""
        return sum(fl.count for fl in self.lists)


_global: Final = BlockPool(GLOBAL_POOL_BYTES, 16)
_global_lock: Final = threading.Lock()


def new_thread_pool() -> BlockPool:
    """A pool with a thread's bounds."""
    return BlockPool(THREAD_POOL_BYTES, 4)


_pools: Final = ThreadCache(new_thread_pool)


def adopt_thread_pool(pool: BlockPool) -> None:
    """Make ``pool`` the calling thread's pool (a NetHandler's, at its thread's start: the
    net path then hands it to the buffers, without looking it up per block)."""
    _pools.set(pool)


def thread_pool() -> BlockPool:
    """The calling thread's pool (made at its first use)."""
    pool: BlockPool = _pools.get()
    return pool


def take_block(size: int, pool: BlockPool | None = None, i: int = -2) -> IOBufferBlock:
    """An empty block of ``size`` bytes (an int in 1..MAX_BLOCK_SIZE): from ``pool`` (the
    calling thread's: None looks it up), else the global one, else newly allocated. ``i``:
    ``pool_index(size)`` if the caller keeps it (a buffer does), else found here."""
    if i == -2:
        i = pool_index(size)
    if i >= 0:
        b = (pool if pool is not None else thread_pool()).pop(i)
        if b is not None:
            return b
        if _global.has_free(i):
            with _global_lock:
                b = _global.pop(i)
            if b is not None:
                return b
    return IOBufferBlock(size)


def give_block(b: IOBufferBlock, pool: BlockPool | None = None) -> None:
    """Give back a block no reader or writer uses any more: kept by ``pool`` (the calling
    thread's: None looks it up), or the global one, unless its memory was lent out, its size
    is not pooled, or both are full (then it is freed when the last reference goes)."""
    if b.lent:
        return
    i = b.index
    if i < 0 or (pool if pool is not None else thread_pool()).push(i, b):
        return
    with _global_lock:
        _global.push(i, b)


def trim_pools() -> int:
    """Trim the calling thread's pool and the global one (``BlockPool.trim``); the number
    of blocks dropped."""
    dropped = thread_pool().trim()
    with _global_lock:
        dropped += _global.trim()
    return dropped


def check_int(name: str, value: object) -> int:
    # bool is an int subclass but never a meaningful size or count.
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    return value
