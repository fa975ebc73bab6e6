"""MIOBuffer / IOBufferReader: unit tests and a model-based property test."""

from __future__ import annotations

import array
import gc

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

from ats_cffi.eventsystem.iobuffer import IOBufferBlock, IOBufferReader, MIOBuffer


def chain_length(reader: IOBufferReader) -> int:
    """Blocks reachable from the reader's current block to the tail."""
    n = 0
    b = reader._c._block
    while b is not None:
        n += 1
        b = b.next
    return n


def unread(reader: IOBufferReader) -> bytes:
    # Through readable_blocks, which lends no view (a lent block is never pooled, and the
    # pooled machine in test_blockpool.py must see blocks go back to the freelist).
    return b"".join(bytes(b.data[s:e]) for b, s, e in reader.readable_blocks())


# -- construction and validation ----------------------------------------------------------


def test_new_buffer_is_empty_with_default_block_size() -> None:
    buf = MIOBuffer()
    r = buf.alloc_reader()
    assert buf.block_size == 32768
    assert buf.water_mark == 0
    assert buf.readers == 1
    assert r.read_avail() == 0
    assert r.block_read_avail() == 0
    assert r.read() == b""
    assert list(r.readable_blocks()) == []
    assert r.writer is buf


@pytest.mark.parametrize("bad", [1.0, "8", None, True, False])
def test_block_size_that_is_not_an_int_raises_type_error_naming_it(bad: object) -> None:
    with pytest.raises(TypeError, match="block_size"):
        MIOBuffer(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -1])
def test_block_size_that_is_not_positive_raises_value_error_naming_it(bad: int) -> None:
    with pytest.raises(ValueError, match="block_size"):
        MIOBuffer(bad)


@pytest.mark.parametrize("bad", [1.5, "0", None, True])
def test_water_mark_that_is_not_an_int_raises_type_error_naming_it(bad: object) -> None:
    with pytest.raises(TypeError, match="water_mark"):
        MIOBuffer(16, bad)  # type: ignore[arg-type]
    buf = MIOBuffer(16)
    with pytest.raises(TypeError, match="water_mark"):
        buf.water_mark = bad  # type: ignore[assignment]


def test_negative_water_mark_raises_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match="water_mark"):
        MIOBuffer(16, -1)
    buf = MIOBuffer(16, 3)
    with pytest.raises(ValueError, match="water_mark"):
        buf.water_mark = -1
    assert buf.water_mark == 3


def test_readers_cannot_be_constructed_directly() -> None:
    with pytest.raises(TypeError, match="alloc_reader"):
        IOBufferReader()


# -- writing ------------------------------------------------------------------------------


def test_write_across_block_boundaries_keeps_every_byte_in_order() -> None:
    buf = MIOBuffer(8)
    r = buf.alloc_reader()
    data = bytes(range(50))
    assert buf.write(data[:5]) == 5
    assert buf.write(data[5:37]) == 32
    assert buf.write(bytearray(data[37:])) == 13
    assert r.read_avail() == 50
    assert [e - s for _, s, e in r.readable_blocks()] == [8, 8, 8, 8, 8, 8, 2]
    assert r.read() == data


def test_write_accepts_any_bytes_like_object_and_counts_bytes() -> None:
    buf = MIOBuffer(4)
    r = buf.alloc_reader()
    a = array.array("I", [1, 2, 3])
    assert buf.write(a) == 12
    assert buf.write(memoryview(b"xyz")) == 3
    assert r.read() == a.tobytes() + b"xyz"


def test_write_of_a_non_bytes_like_object_raises_type_error_naming_data() -> None:
    buf = MIOBuffer(4)
    with pytest.raises(TypeError, match="data"):
        buf.write("text")  # type: ignore[arg-type]


def test_write_of_nothing_adds_nothing() -> None:
    buf = MIOBuffer(4)
    r = buf.alloc_reader()
    assert buf.write(b"") == 0
    assert r.read_avail() == 0


def test_writable_view_then_fill_commits_bytes_to_readers() -> None:
    buf = MIOBuffer(8)
    r = buf.alloc_reader()
    v = buf.writable_view()
    assert len(v) == 8 and not v.readonly
    v[:3] = b"abc"
    assert r.read_avail() == 0  # not committed yet
    buf.fill(3)
    assert r.read_avail() == 3
    assert buf.write_avail() == 5
    v = buf.writable_view()
    assert len(v) == 5
    v[:5] = b"defgh"
    buf.fill(5)
    # The tail is full: the next view is a fresh block.
    assert buf.write_avail() == 8
    assert len(buf.writable_view()) == 8
    assert r.read() == b"abcdefgh"


def test_writable_block_exposes_the_tail_block_and_its_free_space() -> None:
    buf = MIOBuffer(8)
    r = buf.alloc_reader()
    buf.write(b"12345")
    blk = buf.writable_block()
    assert isinstance(blk, IOBufferBlock)
    assert blk.end == 5 and len(blk.data) - blk.end == 3
    blk.data[blk.end : blk.end + 3] = b"678"
    buf.fill(3)
    assert buf.writable_block() is not blk  # full, so a new block was added
    assert r.read() == b"12345678"


def test_write_avail_adds_a_block_only_when_the_tail_is_full() -> None:
    buf = MIOBuffer(8)
    r = buf.alloc_reader()
    assert buf.write_avail() == 8
    buf.fill(6)
    assert buf.write_avail() == 2
    buf.write(b"xy")
    assert buf.write_avail() == 8
    assert r.read_avail() == 8
    [(full, _, _)] = r.readable_blocks()
    assert buf.writable_block() is not full
    assert buf.writable_block().end == 0


@pytest.mark.parametrize("n", [-1, 9])
def test_fill_outside_the_free_space_raises_value_error(n: int) -> None:
    buf = MIOBuffer(8)
    buf.writable_view()
    with pytest.raises(ValueError, match="n must be"):
        buf.fill(n)


def test_fill_with_no_free_space_raises_value_error() -> None:
    buf = MIOBuffer(4)
    buf.write(b"abcd")
    with pytest.raises(ValueError):
        buf.fill(1)


def test_fill_with_a_non_int_raises_type_error() -> None:
    buf = MIOBuffer(4)
    buf.writable_view()
    with pytest.raises(TypeError, match="n must be an int"):
        buf.fill(1.0)  # type: ignore[arg-type]


# -- reading ------------------------------------------------------------------------------


def test_consume_advances_the_reader_across_blocks() -> None:
    buf = MIOBuffer(4)
    r = buf.alloc_reader()
    buf.write(b"0123456789")
    r.consume(3)
    assert r.block_read_avail() == 1
    r.consume(1)
    assert r.block_read_avail() == 4
    r.consume(5)
    assert r.read_avail() == 1
    assert r.read() == b"9"


@pytest.mark.parametrize("n", [-1, 4])
def test_consume_out_of_range_raises_value_error_naming_n(n: int) -> None:
    buf = MIOBuffer(4)
    r = buf.alloc_reader()
    buf.write(b"abc")
    with pytest.raises(ValueError, match="n must be"):
        r.consume(n)
    assert r.read_avail() == 3


@pytest.mark.parametrize("bad", [1.0, "1", None, True])
def test_consume_with_a_non_int_raises_type_error_naming_n(bad: object) -> None:
    buf = MIOBuffer(4)
    r = buf.alloc_reader()
    buf.write(b"abc")
    with pytest.raises(TypeError, match="n must be an int"):
        r.consume(bad)  # type: ignore[arg-type]


def test_read_returns_at_most_n_bytes_and_consumes_them() -> None:
    buf = MIOBuffer(4)
    r = buf.alloc_reader()
    buf.write(b"abcdefghij")
    assert r.read(0) == b""
    assert r.read(6) == b"abcdef"
    assert r.read(100) == b"ghij"
    assert r.read() == b""


def test_is_read_avail_more_than_compares_strictly() -> None:
    buf = MIOBuffer(4)
    r = buf.alloc_reader()
    buf.write(b"abcde")
    assert r.is_read_avail_more_than(4)
    assert not r.is_read_avail_more_than(5)


def test_memcpy_copies_from_an_offset_without_consuming() -> None:
    buf = MIOBuffer(4)
    r = buf.alloc_reader()
    buf.write(b"abcdefghij")
    dest = bytearray(5)
    assert r.memcpy(dest, 5, 3) == 5
    assert dest == b"defgh"
    assert r.memcpy(dest) == 5
    assert dest == b"abcde"
    assert r.memcpy(dest, offset=8) == 2
    assert dest[:2] == b"ij"
    assert r.memcpy(dest, offset=10) == 0
    assert r.memcpy(dest, 0) == 0
    assert r.read_avail() == 10


def test_memcpy_rejects_read_only_destinations_and_bad_arguments() -> None:
    buf = MIOBuffer(4)
    r = buf.alloc_reader()
    buf.write(b"abc")
    with pytest.raises(TypeError, match="dest"):
        r.memcpy(b"xxx")
    with pytest.raises(TypeError, match="dest"):
        r.memcpy(42)
    with pytest.raises(ValueError, match="offset"):
        r.memcpy(bytearray(3), offset=-1)
    with pytest.raises(ValueError, match="n must be"):
        r.memcpy(bytearray(3), -1)
    with pytest.raises(TypeError, match="n must be an int"):
        r.memcpy(bytearray(3), 1.0)  # type: ignore[arg-type]


def test_readable_views_are_read_only_and_do_not_consume() -> None:
    buf = MIOBuffer(4)
    r = buf.alloc_reader()
    buf.write(b"abcdef")
    r.consume(1)
    views = r.readable_views()
    assert [bytes(v) for v in views] == [b"bcd", b"ef"]
    assert all(v.readonly for v in views)
    assert r.read_avail() == 5


def test_readable_blocks_give_block_offsets_for_native_writev() -> None:
    buf = MIOBuffer(4)
    r = buf.alloc_reader()
    buf.write(b"abcdef")
    r.consume(2)
    triples = list(r.readable_blocks())
    assert [(s, e) for _, s, e in triples] == [(2, 4), (0, 2)]
    assert b"".join(bytes(b.data[s:e]) for b, s, e in triples) == b"cdef"


# -- several readers ----------------------------------------------------------------------


def test_clone_starts_at_the_same_position_and_moves_independently() -> None:
    buf = MIOBuffer(4)
    r = buf.alloc_reader()
    buf.write(b"abcdefgh")
    r.consume(3)
    c = r.clone()
    assert buf.readers == 2
    assert c.writer is buf
    assert c.read_avail() == 5
    assert c.read(4) == b"defg"
    assert r.read_avail() == 5
    assert r.read() == b"defgh"
    assert c.read() == b"h"


def test_readers_allocated_before_writes_each_see_every_byte() -> None:
    buf = MIOBuffer(3)
    a = buf.alloc_reader()
    b = buf.alloc_reader()
    buf.write(b"hello world")
    assert a.read(5) == b"hello"
    assert b.read() == b"hello world"
    assert a.read() == b" world"


def test_bytes_written_before_the_first_reader_are_kept_for_it() -> None:
    buf = MIOBuffer(4)
    buf.write(b"early bytes")
    assert buf.max_read_avail() == 11
    r = buf.alloc_reader()
    assert r.read() == b"early bytes"


def test_a_new_reader_starts_at_the_slowest_reader() -> None:
    buf = MIOBuffer(4)
    fast = buf.alloc_reader()
    slow = buf.alloc_reader()
    buf.write(b"0123456789")
    fast.consume(8)
    slow.consume(2)
    assert buf.alloc_reader().read() == b"23456789"


def test_unread_bytes_of_the_last_reader_outlive_it_for_the_next_reader() -> None:
    buf = MIOBuffer(4)
    r = buf.alloc_reader()
    buf.write(b"0123456789")
    r.consume(6)
    r.dealloc()
    assert buf.readers == 0
    buf.write(b"ab")
    assert buf.alloc_reader().read() == b"6789ab"


def reachable(root: object) -> list[object]:
    """Every object reachable from ``root`` through references the collector sees."""
    seen = {id(root)}
    out: list[object] = []
    todo = [root]
    while todo:
        for x in gc.get_referents(todo.pop()):
            if id(x) not in seen:
                seen.add(id(x))
                out.append(x)
                todo.append(x)
    return out


def test_a_buffer_does_not_reach_its_readers_so_they_make_no_cycle() -> None:
    # A connection's buffer and reader are freed by their reference counts (module doc):
    # the buffer keeps its readers' positions, never the readers.
    buf = MIOBuffer(4)
    a = buf.alloc_reader()
    buf.write(b"abcdefg")
    for readers in ([a], [a, a.clone()]):
        found = reachable(buf)
        assert not any(x is r for x in found for r in readers)
        assert any(x is buf for r in readers for x in reachable(r))


def test_dealloc_all_readers_detaches_every_reader() -> None:
    buf = MIOBuffer(4)
    a = buf.alloc_reader()
    b = a.clone()
    buf.write(b"abc")
    buf.dealloc_all_readers()
    assert buf.readers == 0
    assert a.writer is None and b.writer is None
    with pytest.raises(ValueError, match="deallocated"):
        a.read_avail()
    with pytest.raises(ValueError, match="deallocated"):
        b.consume(1)
    assert buf.alloc_reader().read() == b"abc"


def test_dealloc_of_a_foreign_or_dead_reader_raises_value_error() -> None:
    buf = MIOBuffer(4)
    other = MIOBuffer(4).alloc_reader()
    with pytest.raises(ValueError, match="not an allocated reader"):
        buf.dealloc_reader(other)
    r = buf.alloc_reader()
    buf.dealloc_reader(r)
    with pytest.raises(ValueError, match="not an allocated reader"):
        buf.dealloc_reader(r)
    with pytest.raises(ValueError, match="deallocated"):
        r.dealloc()


def test_max_read_avail_and_high_water_follow_the_slowest_reader() -> None:
    buf = MIOBuffer(4, water_mark=5)
    a = buf.alloc_reader()
    b = buf.alloc_reader()
    buf.write(b"abcdef")
    assert buf.max_read_avail() == 6
    assert buf.high_water()
    a.consume(6)
    assert buf.high_water()
    b.consume(1)
    assert buf.max_read_avail() == 5
    assert not buf.high_water()
    buf.water_mark = 4
    assert buf.high_water()


def test_high_water_with_zero_water_mark_means_any_unread_byte() -> None:
    buf = MIOBuffer(4)
    r = buf.alloc_reader()
    assert not buf.high_water()
    buf.write(b"x")
    assert buf.high_water()
    r.consume(1)
    assert not buf.high_water()


# -- memory -------------------------------------------------------------------------------


def live_blocks(size: int) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is IOBufferBlock and len(o.data) == size)


def test_consumed_blocks_are_released_so_memory_stays_bounded() -> None:
    size = 4099  # unusual, so that only this test's blocks are counted
    buf = MIOBuffer(size)
    r = buf.alloc_reader()
    chunk = bytes(range(256)) * 16
    for _ in range(100 * size // len(chunk)):
        buf.write(chunk)
        r.consume(r.read_avail())
    assert chain_length(r) <= 2
    assert live_blocks(size) <= 2


def test_a_slow_reader_pins_only_what_it_has_not_read() -> None:
    size = 4111
    buf = MIOBuffer(size)
    fast = buf.alloc_reader()
    slow = fast.clone()
    for _ in range(100):
        buf.write(b"z" * size)
        fast.consume(size)
    assert live_blocks(size) >= 100
    slow.consume(99 * size)
    assert live_blocks(size) <= 3
    slow.dealloc()
    fast.consume(fast.read_avail())
    assert live_blocks(size) <= 2


def test_native_pointer_is_created_once_per_block() -> None:
    pytest.importorskip("ats_cffi._native")
    from ats_cffi._native import ffi

    buf = MIOBuffer(16)
    blk = buf.writable_block()
    c = blk.cdata
    assert blk.cdata is c
    assert ffi.sizeof(c) == 16
    c[0] = b"Q"
    buf.fill(1)
    assert buf.alloc_reader().read() == b"Q"


# -- model-based property test ------------------------------------------------------------


class BufferMachine(RuleBasedStateMachine):
    """Random operations on one buffer against a model: the whole stream + reader positions."""

    readers = Bundle("readers")

    @initialize(target=readers, block_size=st.integers(1, 17), water_mark=st.integers(0, 40))
    def make_buffer(self, block_size: int, water_mark: int) -> IOBufferReader:
        self.buf = MIOBuffer(block_size, water_mark)
        self.stream = bytearray()
        self.pos: dict[int, int] = {}  # id(reader) -> consumed position
        self.live: dict[int, IOBufferReader] = {}
        self.retained = 0  # where a reader allocated with no live readers starts
        r = self.buf.alloc_reader()
        self._track(r, 0)
        return r

    def _track(self, r: IOBufferReader, pos: int) -> None:
        self.pos[id(r)] = pos
        self.live[id(r)] = r

    def _alive(self, r: IOBufferReader) -> bool:
        return self.live.get(id(r)) is r

    @rule(data=st.binary(max_size=60))
    def write(self, data: bytes) -> None:
        assert self.buf.write(data) == len(data)
        self.stream += data

    @rule(data=st.binary(max_size=60), kind=st.sampled_from(["bytearray", "memoryview"]))
    def write_other_bytes_like(self, data: bytes, kind: str) -> None:
        obj = bytearray(data) if kind == "bytearray" else memoryview(data)
        assert self.buf.write(obj) == len(data)
        self.stream += data

    @rule(data=st.data())
    def view_and_fill(self, data: st.DataObject) -> None:
        avail = self.buf.write_avail()
        view = self.buf.writable_view()
        assert len(view) == avail > 0
        payload = data.draw(st.binary(max_size=avail))
        view[: len(payload)] = payload
        self.buf.fill(len(payload))
        self.stream += payload

    @rule(r=readers, data=st.data())
    def consume(self, r: IOBufferReader, data: st.DataObject) -> None:
        if not self._alive(r):
            return
        avail = len(self.stream) - self.pos[id(r)]
        n = data.draw(st.integers(0, avail))
        r.consume(n)
        self.pos[id(r)] += n

    @rule(r=readers, n=st.integers(-1, 80))
    def read(self, r: IOBufferReader, n: int) -> None:
        if not self._alive(r):
            return
        p = self.pos[id(r)]
        want = self.stream[p:] if n < 0 else self.stream[p : p + n]
        assert r.read(n) == want
        self.pos[id(r)] = p + len(want)

    @rule(r=readers, n=st.one_of(st.none(), st.integers(0, 50)), offset=st.integers(0, 50))
    def memcpy(self, r: IOBufferReader, n: int | None, offset: int) -> None:
        if not self._alive(r):
            return
        dest = bytearray(30)
        p = self.pos[id(r)] + offset
        k = min(30 if n is None else n, 30, max(0, len(self.stream) - p))
        assert r.memcpy(dest, n, offset) == k
        assert dest[:k] == self.stream[p : p + k]

    @rule(target=readers, r=readers)
    def clone(self, r: IOBufferReader) -> IOBufferReader:
        if not self._alive(r):
            return r
        c = r.clone()
        self._track(c, self.pos[id(r)])
        return c

    @rule(target=readers)
    def alloc_reader(self) -> IOBufferReader:
        r = self.buf.alloc_reader()
        start = min(self.pos[k] for k in self.live) if self.live else self.retained
        self._track(r, start)
        return r

    @precondition(lambda self: len(self.live) > 0)
    @rule(r=consumes(readers))
    def dealloc(self, r: IOBufferReader) -> None:
        if not self._alive(r):
            return
        if len(self.live) == 1:
            self.retained = self.pos[id(r)]
        r.dealloc()
        del self.live[id(r)]

    @rule()
    def dealloc_all_readers(self) -> None:
        if self.live:
            self.retained = min(self.pos[k] for k in self.live)
        self.buf.dealloc_all_readers()
        self.live.clear()

    @invariant()
    def every_reader_sees_exactly_its_unread_bytes(self) -> None:
        if not hasattr(self, "buf"):
            return
        total = len(self.stream)
        bs = self.buf.block_size
        for k, r in self.live.items():
            p = self.pos[k]
            rest = self.stream[p:]
            assert r.read_avail() == total - p
            assert r.is_read_avail_more_than(total - p - 1)
            assert not r.is_read_avail_more_than(total - p)
            assert unread(r) == rest
            triples = list(r.readable_blocks())
            assert b"".join(bytes(b.data[s:e]) for b, s, e in triples) == rest
            assert r.block_read_avail() == (triples[0][2] - triples[0][1] if triples else 0)
            # Memory follows the reader: only blocks holding its unread bytes, plus the tail.
            assert chain_length(r) <= -(-len(rest) // bs) + 2

    @invariant()
    def buffer_counters_match_the_model(self) -> None:
        if not hasattr(self, "buf"):
            return
        assert self.buf.readers == len(self.live)
        if self.live:
            expected = len(self.stream) - min(self.pos[k] for k in self.live)
        else:
            expected = len(self.stream) - self.retained
        assert self.buf.max_read_avail() == expected
        assert self.buf.high_water() == (expected > self.buf.water_mark)


BufferMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)
test_buffer_matches_stream_model_under_random_operations = BufferMachine.TestCase


def test_writable_block_if_room_stops_at_the_water_mark_when_the_tail_is_full() -> None:
    buf = MIOBuffer(block_size=8, water_mark=4)
    r = buf.alloc_reader()
    first = buf.writable_block_if_room()
    assert first is not None and first.write_avail() == 8
    buf.write(b"x" * 8)  # tail full, 8 unread > water mark 4: no new block
    assert buf.writable_block_if_room() is None
    r.consume(5)  # 3 unread <= 4: a new block may be added
    nxt = buf.writable_block_if_room()
    assert nxt is not None and nxt is not first and nxt.write_avail() == 8


# -- the net layer's fast paths (first_block, _advance, write into the block's view) -------


def test_block_size_is_its_data_length_and_write_avail_uses_it() -> None:
    buf = MIOBuffer(16)
    blk = buf.writable_block()
    assert blk.size == len(blk.data) == 16
    buf.write(b"abc")
    assert blk.write_avail() == 13 and blk.read_avail() == 3


@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_write_fast_path_copies_into_the_tail_block_and_across_blocks(kind) -> None:
    buf = MIOBuffer(8)
    r = buf.alloc_reader()
    assert buf.write(kind(b"0123")) == 4  # fits: the one-slice fast path
    assert buf.write(kind(b"456789ABCDEFGHIJ")) == 16  # spans three blocks
    assert buf.write(kind(b"")) == 0
    assert r.read_avail() == 20
    assert unread(r) == b"0123456789ABCDEFGHIJ"


def test_first_block_steps_off_an_exhausted_block_onto_the_next() -> None:
    buf = MIOBuffer(4)
    r = buf.alloc_reader()
    buf.write(b"abcdef")
    block, off = r.first_block()
    assert bytes(block.data[off : block.end]) == b"abcd"
    r.consume(4)
    block2, off2 = r.first_block()
    assert block2 is not block and bytes(block2.data[off2 : block2.end]) == b"ef"
    assert r._c._block is block2  # the finished block is no longer pinned by the reader
    r.consume(2)
    tail, off3 = r.first_block()  # all read: the buffer holds no block, nothing to read
    assert tail is not block2 and off3 == tail.end == tail.size == 0
    buf.write(b"gh")  # a new block, where the reader now stands
    assert r.first_block()[0].size == 4 and r.read(2) == b"gh"


@pytest.mark.parametrize("steps", [[0], [3], [4], [5], [4, 4], [1, 6, 3], [12]])
def test_advance_moves_the_reader_exactly_as_consume(steps) -> None:
    data = bytes(range(12))
    a_buf, b_buf = MIOBuffer(4), MIOBuffer(4)
    a, b = a_buf.alloc_reader(), b_buf.alloc_reader()
    a_buf.write(data)
    b_buf.write(data)
    for n in steps:
        a.consume(n)
        b.advance(n)
        assert (a._c._pos, a._c._off, a.read_avail(), chain_length(a)) == (
            b._c._pos,
            b._c._off,
            b.read_avail(),
            chain_length(b),
        )
        assert unread(a) == unread(b)


def test_high_water_with_one_and_with_several_readers() -> None:
    buf = MIOBuffer(8, water_mark=3)
    r1 = buf.alloc_reader()
    buf.write(b"abcd")
    assert buf.high_water()  # 4 > 3
    r1.consume(1)
    assert not buf.high_water()
    r2 = r1.clone()
    r1.consume(3)
    assert not buf.high_water()  # r2 has 3
    buf.write(b"e")
    assert buf.high_water()  # r2 has 4
    r2.dealloc()
    assert not buf.high_water()  # r1 has 1
