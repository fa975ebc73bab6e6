"""Block freelists (ioblock.py) and the buffers that use them: a buffer read empty holds no
block, blocks go back to the thread's pool and come out of it again, lent blocks never do,
pools are bounded and trimmed."""

from __future__ import annotations

import threading

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant

from ats_cffi.eventsystem import ioblock
from ats_cffi.eventsystem.ioblock import (
    GLOBAL_POOL_BYTES,
    POOL_MAX_BLOCKS,
    THREAD_POOL_BYTES,
    BlockPool,
    IOBufferBlock,
    give_block,
    take_block,
    thread_pool,
    trim_pools,
)
from ats_cffi.eventsystem.iobuffer import IOBufferReader, MIOBuffer
from ats_cffi.eventsystem.iocopy import read_bytes

from .test_iobuffer import BufferMachine

SIZE = 4096


@pytest.fixture(autouse=True)
def empty_pools() -> None:
    """Each test starts with this thread's pool and the global one empty."""
    for pool in (thread_pool(), ioblock._global):
        pool.clear()


def pooled(size: int = SIZE) -> list[IOBufferBlock]:
    return thread_pool().blocks(size.bit_length() - 1 - ioblock.POOL_MIN_SHIFT)


def holds_no_block(r: IOBufferReader) -> bool:
    block, _ = r.first_block()
    return block.size == 0


def test_a_buffer_read_empty_gives_its_block_back_and_the_next_write_takes_it_again() -> None:
    buf = MIOBuffer(SIZE)
    r = buf.alloc_reader()
    assert holds_no_block(r)  # a new buffer holds none either
    buf.write(b"hello")
    block, _ = r.first_block()
    assert block.size == SIZE and not pooled()
    assert r.read(5) == b"hello"
    assert holds_no_block(r) and pooled() == [block]
    assert block.start == block.end == 0 and block.next is None  # emptied for reuse
    buf.write(b"again")
    assert r.first_block()[0] is block and not pooled()
    assert r.read() == b"again"


def test_a_read_with_keep_empties_a_lone_block_in_place() -> None:
    """``keep`` (the asyncio loop's one read buffer): a lone block read empty stays the
    buffer's, emptied, and the next write fills it; a chain of several, or a lent block,
    goes back to the pool as without it."""
    buf = MIOBuffer(SIZE)
    r = buf.alloc_reader()
    buf.write(b"hello")
    block, _ = r.first_block()
    assert read_bytes(r, -1, None, True) == b"hello"
    assert r.first_block() == (block, 0) and not pooled() and r.read_avail() == 0
    assert block.start == block.end == 0
    buf.write(b"again")
    assert r.first_block() == (block, 0) and read_bytes(r, -1, thread_pool(), True) == b"again"
    data = bytes(range(256)) * 20  # 5120 bytes: two blocks
    buf.write(data)
    assert read_bytes(r, -1, None, True) == data
    assert holds_no_block(r) and len(pooled()) == 2
    buf.write(b"seen")
    (view,) = r.readable_views()  # lent: never reused
    assert read_bytes(r, -1, None, True) == b"seen"
    assert holds_no_block(r) and len(pooled()) == 1 and bytes(view) == b"seen"


def test_blocks_a_lone_reader_steps_past_go_back_at_once() -> None:
    buf = MIOBuffer(SIZE)
    r = buf.alloc_reader()
    data = bytes(range(256)) * 40  # 10240 bytes: three blocks
    buf.write(data)
    first, _ = r.first_block()
    r.consume(SIZE + 10)  # past the first block, into the second
    assert pooled() == [first]
    assert r.read() == data[SIZE + 10 :]
    assert len(pooled()) == 3


def test_a_read_that_moved_nothing_gives_the_block_it_took_back() -> None:
    buf = MIOBuffer(SIZE)
    r = buf.alloc_reader()
    block = buf.writable_block_if_room()  # what a socket read takes
    assert block is not None and not block.lent
    buf.drop_blocks_if_read()  # the read found nothing
    assert holds_no_block(r) and pooled() == [block]


def test_has_room_adds_no_block() -> None:
    buf = MIOBuffer(SIZE, water_mark=0)
    r = buf.alloc_reader()
    assert buf.has_room() and holds_no_block(r)
    buf.write(b"x" * SIZE)  # the tail is full and the reader is above the water mark
    assert not buf.has_room() and buf.writable_block_if_room() is None
    r.consume(SIZE - 1)
    assert not buf.has_room()  # one byte above a water mark of 0
    r.consume(1)
    assert buf.has_room() and holds_no_block(r)


def test_lent_blocks_are_never_pooled() -> None:
    buf = MIOBuffer(SIZE)
    r = buf.alloc_reader()
    buf.write(b"kept")
    (view,) = r.readable_views()
    r.consume(4)
    assert not pooled()  # the caller may still read ``view``
    buf.write(b"next")
    assert bytes(view) == b"kept"
    r.consume(4)
    filled = buf.writable_view()
    filled[:2] = b"ok"
    buf.fill(2)
    assert r.read() == b"ok" and not pooled()


def test_with_two_readers_nothing_is_pooled_until_one_is_left() -> None:
    buf = MIOBuffer(SIZE)
    a = buf.alloc_reader()
    b = a.clone()
    buf.write(b"both")
    a.consume(4)
    b.consume(4)
    assert not pooled()
    b.dealloc()
    buf.write(b"one")
    assert a.read() == b"one" and len(pooled()) == 1


def test_sizes_that_are_not_pooled_are_dropped() -> None:
    for size in (100, 4097, 2**22):
        b = take_block(size)
        assert b.size == size
        give_block(b)
    assert thread_pool().free_blocks() == 0 and ioblock._global.free_blocks() == 0


def test_a_full_thread_pool_overflows_to_the_global_one_then_drops() -> None:
    size = 2**20  # 1 MiB blocks: small caps
    t_cap = max(4, min(POOL_MAX_BLOCKS, THREAD_POOL_BYTES // size))
    g_cap = max(16, min(POOL_MAX_BLOCKS, GLOBAL_POOL_BYTES // size))
    blocks = [IOBufferBlock(size) for _ in range(t_cap + g_cap + 3)]
    for b in blocks:
        give_block(b)
    assert len(pooled(size)) == t_cap
    i = size.bit_length() - 1 - ioblock.POOL_MIN_SHIFT
    assert len(ioblock._global.blocks(i)) == g_cap


def test_a_thread_with_an_empty_pool_takes_from_the_global_one() -> None:
    given: list[IOBufferBlock] = []

    cap = thread_pool().cap(SIZE.bit_length() - 1 - ioblock.POOL_MIN_SHIFT)  # any thread's

    def overflow() -> None:  # another thread fills its pool, then the global one
        for _ in range(cap + 2):
            b = IOBufferBlock(SIZE)
            given.append(b)
            give_block(b)

    t = threading.Thread(target=overflow)
    t.start()
    t.join()
    got = take_block(SIZE)
    assert any(got is b for b in given[-2:])  # the two that overflowed


def test_trim_drops_what_was_not_needed_since_the_last_trim() -> None:
    for _ in range(6):
        give_block(IOBufferBlock(SIZE))
    trim_pools()  # the first trim marks: nothing was measured yet
    assert len(pooled()) == 6
    take_block(SIZE)
    take_block(SIZE)  # 4 left: the lowest count since the mark
    give_block(IOBufferBlock(SIZE))
    assert trim_pools() == 4
    assert len(pooled()) == 1
    assert trim_pools() == 1 and not pooled()


def test_pool_caps_follow_the_byte_budget() -> None:
    pool = BlockPool(64 * 1024, 2)
    assert pool.cap(SIZE.bit_length() - 1 - ioblock.POOL_MIN_SHIFT) == 16
    assert pool.cap(len(pool.lists) - 1) == 2  # 2 MiB blocks: the minimum
    assert pool.cap(0) == min(POOL_MAX_BLOCKS, 64 * 1024 // 128)


class PooledBufferMachine(BufferMachine):
    """The stream model of test_iobuffer.py with pooled block sizes: blocks go to the
    freelist and come back while the model checks every byte, and no pooled block is
    reachable from a live reader or the buffer's tail."""

    @initialize(
        target=BufferMachine.readers,
        block_size=st.sampled_from([128, 256]),
        water_mark=st.integers(0, 300),
    )
    def make_buffer(self, block_size: int, water_mark: int) -> IOBufferReader:
        return super().make_buffer(block_size, water_mark)

    @invariant()
    def no_pooled_block_is_in_use(self) -> None:
        if not hasattr(self, "buf"):
            return
        pool = thread_pool()
        free = [b for i in range(len(pool.lists)) for b in pool.blocks(i)]
        assert len({id(b) for b in free}) == len(free)  # none given twice
        in_use = {id(self.buf._tail)}
        for r in self.live.values():
            b: IOBufferBlock | None = r._c._block
            while b is not None:
                in_use.add(id(b))
                b = b.next
        assert not in_use & {id(b) for b in free}


PooledBufferMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None
)
test_pooled_buffer_matches_stream_model = PooledBufferMachine.TestCase
