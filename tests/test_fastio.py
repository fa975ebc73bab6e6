"""ats_cffi._fastio: the VC path's per-event reads and writes (``_fastio.c``), on real
socket pairs: bytes moved, the last syscall's result, and bad arguments refused with an
error naming the call before any syscall."""

from __future__ import annotations

import errno
import gc
import os
import socket
import sys
import weakref
from typing import Any

import pytest

from ats_cffi import _fastio
from ats_cffi.eventsystem.ioblock import IOBufferBlock
from ats_cffi.sys import ACCEPT_BATCH_MAX, AGAIN


def test_read_spill_fills_the_block_then_the_spill_in_one_call(pair) -> None:
    a, b = pair
    b.sendall(bytes(range(100)))
    base, spill = bytearray(64), bytearray(256)
    n = _fastio.read_spill(a.fileno(), base, 54, 10, spill, 256, True)
    assert n == 100
    assert base[54:] == bytes(range(10)) and spill[:90] == bytes(range(10, 100))
    assert _fastio.last() == 100  # one readv, short of the 266 asked: drained


def test_read_spill_reports_eagain_and_eof_as_last(pair) -> None:
    a, b = pair
    base = bytearray(16)
    assert _fastio.read_spill(a.fileno(), base, 0, 16, base, 0, True) == 0
    assert _fastio.last() == AGAIN
    b.sendall(b"xyz")
    b.shutdown(socket.SHUT_WR)
    assert _fastio.read_spill(a.fileno(), base, 0, 16, base, 0, False) == 3
    assert _fastio.last() == 0  # read on to EOF: the hang-up is seen
    assert base[:3] == b"xyz"


def test_the_reads_take_an_fd_that_is_not_a_socket_too() -> None:
    # A socket is read with recvfrom/recvmsg; a pipe (ENOTSOCK there) with read/readv.
    r, w = os.pipe()
    try:
        os.set_blocking(r, False)
        os.write(w, bytes(range(30)))
        base, spill = bytearray(20), bytearray(64)
        assert _fastio.read_spill(r, base, 10, 10, spill, 64, True) == 30  # readv
        assert base[10:] == bytes(range(10)) and spill[:20] == bytes(range(10, 30))
        os.write(w, b"abc")
        assert _fastio.read_tail(r, base, 0, True) == 3 and base[:3] == b"abc"  # read
        assert _fastio.read_tail(r, base, 0, True) == 0 and _fastio.last() == AGAIN
        os.close(w)
        w = -1
        assert _fastio.read_tail(r, base, 0, True) == 0 and _fastio.last() == 0  # EOF
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_read_tail_fills_the_block_from_an_offset_and_reports_as_read_spill(pair) -> None:
    a, b = pair
    base = bytearray(b"-" * 16)
    b.sendall(b"abc")
    assert _fastio.read_tail(a.fileno(), base, 10, True) == 3
    assert base == b"-" * 10 + b"abc---" and _fastio.last() == 3  # short: drained
    b.sendall(bytes(range(40)))
    assert _fastio.read_tail(a.fileno(), base, 13, True) == 3  # to the end of base, no more
    assert base[13:] == bytes(range(3)) and _fastio.last() == 3
    assert _fastio.read_tail(a.fileno(), base, 0, 1) == 16  # filled: the socket may hold more
    assert base == bytes(range(3, 19))
    assert _fastio.read_tail(a.fileno(), base, 16, True) == 0  # no room: no read
    b.shutdown(socket.SHUT_WR)
    assert _fastio.read_tail(a.fileno(), base, 0, False) == 16  # read on...
    assert _fastio.read_tail(a.fileno(), base, 0, False) == 5 and _fastio.last() == 0  # EOF


def test_the_counts_reads_return_are_right_across_sizes_and_kept_per_size(pair) -> None:
    """A read's count is an int that reads of the same size share (_fastio.c's count_obj:
    a 1 KiB read made a new int per call); sizes that take the same slot of that cache in
    turn, and sizes CPython keeps itself, each get their own count."""
    a, b = pair
    base = bytearray(4096)

    def read(n: int) -> int:
        b.sendall(bytes(n))
        r = _fastio.read_tail(a.fileno(), base, len(base) - n, True)
        assert type(r) is int and r == n
        return r

    slot = lambda n: (n ^ (n >> 6) ^ (n >> 12)) & 63  # noqa: E731 (count_obj's)
    others = [n for n in range(257, 4096) if slot(n) == slot(1024) and n != 1024][:2]
    first = read(1024)
    assert read(1024) is first  # the same object: no int made for it
    for n in [1, 256, 257, *others, 1024, *others, 4096, 1024]:
        read(n)  # each right, whichever size held its slot before
    again = read(1024)
    assert read(1024) is again


def test_read_to_bytes_reads_into_a_new_bytes_straight_or_through_the_scratch(pair) -> None:
    a, b = pair
    b.sendall(b"straight")
    data = _fastio.read_to_bytes(a.fileno(), 100, True, None)
    assert type(data) is bytes and data == b"straight"
    assert _fastio.last() == 8  # one read, short of the 100 asked: drained
    scratch = bytearray(b"-" * 16)
    b.sendall(b"through the scratch")
    assert _fastio.read_to_bytes(a.fileno(), -1, True, scratch) == b"through the scra"
    assert scratch == b"through the scra" and _fastio.last() == 16  # filled: maybe more
    assert _fastio.read_to_bytes(a.fileno(), 2, True, None) == b"tc"  # exactly as asked
    assert _fastio.read_to_bytes(a.fileno(), 0, True, None) == b""  # nothing asked


def test_read_to_bytes_reports_eagain_eof_and_errors_as_last(pair) -> None:
    a, b = pair
    for scratch in (None, bytearray(8)):
        assert _fastio.read_to_bytes(a.fileno(), 8, True, scratch) == b""
        assert _fastio.last() == AGAIN
    b.sendall(b"tail")
    b.shutdown(socket.SHUT_WR)
    assert _fastio.read_to_bytes(a.fileno(), 1 << 16, False, None) == b"tail"
    assert _fastio.last() == 0  # read on to EOF: the hang-up is seen
    assert _fastio.read_to_bytes(2**30, 8, True, bytearray(8)) == b""  # no such fd
    assert _fastio.last() == -errno.EBADF


def test_write_left_writes_a_span_and_stops_at_a_full_socket(pair) -> None:
    a, b = pair
    data = bytearray(b"0123456789")
    assert _fastio.write_left(a.fileno(), data, 2, 5) == 0  # all of it
    assert _fastio.last() == 5
    assert b.recv(16) == b"23456"
    big = bytearray(1 << 22)
    left = _fastio.write_left(a.fileno(), big, 0, len(big))
    assert 0 < left < len(big)
    assert _fastio.last() == AGAIN


def chain(*parts: bytes) -> IOBufferBlock:
    """Blocks holding ``parts``, each at offset 2 of its block, linked in order."""
    first = prev = None
    for part in parts:
        b = IOBufferBlock(len(part) + 4)
        b.data[2 : 2 + len(part)] = part
        b.start, b.end = 2, 2 + len(part)
        if prev is None:
            first = b
        else:
            prev.next = b
        prev = b
    return first


def test_writev_chain_writes_the_runs_of_a_block_chain(pair) -> None:
    a, b = pair
    first = chain(b"hello ", b"", b"chained ", b"world")
    assert _fastio.writev_chain(a.fileno(), first, 3, 15) == 15  # from "ello", 15 bytes
    assert _fastio.last() == 15
    assert b.recv(64) == b"ello chained wo"
    assert _fastio.writev_chain(a.fileno(), first, 8, 0) == 0  # nothing asked: no syscall


def test_writev_chain_refuses_a_block_whose_span_is_not_its_data(pair) -> None:
    a, b = pair
    first = chain(b"abc", b"def")
    first.next.end = 99
    with pytest.raises(ValueError, match="writev_chain: a block's span"):
        _fastio.writev_chain(a.fileno(), first, 2, 6)
    with pytest.raises(AttributeError):
        _fastio.writev_chain(a.fileno(), object(), 0, 1)
    with pytest.raises(BlockingIOError):
        b.recv(16)  # nothing was written


def test_bytes_at_copies_a_span_of_a_bytearray() -> None:
    data = bytearray(b"0123456789")
    assert _fastio.bytes_at(data, 3, 4) == b"3456" and _fastio.bytes_at(data, 10, 0) == b""
    with pytest.raises(ValueError, match="bytes_at: data holds 10"):
        _fastio.bytes_at(data, 8, 3)
    with pytest.raises(TypeError, match="bytes_at: data must be a bytearray"):
        _fastio.bytes_at(b"0123", 0, 1)


def test_write_left_to_a_closed_peer_is_a_value_not_a_signal(pair) -> None:
    a, b = pair
    b.close()
    assert _fastio.write_left(a.fileno(), bytearray(b"x"), 0, 1) == 1  # none written
    assert _fastio.last() in (-errno.EPIPE, -errno.ECONNRESET)


def test_send_left_is_what_one_send_did_not_take(pair) -> None:
    a, b = pair
    assert _fastio.send_left(a.fileno(), b"bytes") == 0
    assert _fastio.send_left(a.fileno(), memoryview(b"__view__")[2:6]) == 0
    assert b.recv(16) == b"bytesview"
    big = b"x" * (1 << 22)
    left = _fastio.send_left(a.fileno(), big)
    assert 0 < left < len(big)
    assert _fastio.send_left(a.fileno(), b"more") == -errno.EAGAIN
    with pytest.raises(TypeError, match="send_left"):
        _fastio.send_left(a.fileno(), "text")
    b.close()


@pytest.mark.parametrize(
    ("call", "args", "exc", "words"),
    [
        ("read_spill", (3, b"abc", 0, 1, bytearray(1), 0, True), TypeError, "base must be"),
        ("read_spill", (3, bytearray(4), 2, 3, bytearray(1), 0, True), ValueError, "holds 4"),
        ("read_spill", (3, bytearray(4), 0, 4, bytearray(1), 2, True), ValueError, "spill"),
        ("read_spill", (-1, bytearray(4), 0, 4, bytearray(1), 0, True), ValueError, ">= 0"),
        ("read_spill", ("3", bytearray(4), 0, 4, bytearray(1), 0, True), TypeError, "an int"),
        ("read_spill", (3, bytearray(4)), TypeError, "takes 7 arguments"),
        ("read_tail", (3, b"abc", 0, True), TypeError, "read_tail: base must be"),
        ("read_tail", (3, bytearray(4), 5, True), ValueError, "holds 4"),
        ("read_tail", (3, bytearray(4), -1, True), ValueError, "argument 3 must be >= 0"),
        ("read_tail", (3, bytearray(4), 2**70, True), ValueError, "argument 3 must be >= 0"),
        ("read_tail", (3, bytearray(4), 0), TypeError, "takes 4 arguments"),
        ("write_left", (3, memoryview(bytearray(4)), 0, 1), TypeError, "bytearray"),
        ("write_left", (3, bytearray(4), 5, 0), ValueError, "holds 4"),
        ("write_left", (2**40, bytearray(4), 0, 1), ValueError, "fd must be a file"),
        ("last", (1,), TypeError, "takes 0 arguments"),
        ("read_to_bytes", (3, 4, True, b"abcd"), TypeError, "scratch must be a bytearray"),
        ("read_to_bytes", (3, 5, True, bytearray(4)), ValueError, "scratch holds 4"),
        ("read_to_bytes", (3, -1, True, None), ValueError, "argument 2 must be >= 0"),
        ("read_to_bytes", (3, "4", True, None), TypeError, "argument 2 must be an int"),
        ("read_to_bytes", (2**40, 4, True, None), ValueError, "fd must be a file"),
        ("read_to_bytes", (3, 4, True), TypeError, "takes 4 arguments"),
    ],
)
def test_bad_arguments_name_the_call_and_move_nothing(pair, call, args, exc, words) -> None:
    a, b = pair
    b.sendall(b"keep")
    args = tuple(a.fileno() if x == 3 and i == 0 else x for i, x in enumerate(args))
    with pytest.raises(exc, match=words):
        getattr(_fastio, call)(*args)
    assert a.recv(16) == b"keep"  # no read happened


def test_put_copies_bytes_a_bytearray_or_any_buffer_into_a_span() -> None:
    dst = bytearray(b"." * 10)
    assert _fastio.put(dst, 2, b"abc") is None
    _fastio.put(dst, 5, bytearray(b"de"))
    _fastio.put(dst, 7, memoryview(b"xyz"))
    assert dst == b"..abcdexyz"
    _fastio.put(dst, 0, memoryview(dst)[2:5])  # src inside dst: memmove
    assert dst == b"abcbcdexyz"
    _fastio.put(dst, 10, b"")  # an empty copy at the end


@pytest.mark.parametrize(
    ("args", "exc", "words"),
    [
        ((bytearray(4), 2, b"abc"), ValueError, r"put: dst holds 4 bytes, not \[2, 2 \+ 3\)"),
        ((bytes(4), 0, b"a"), TypeError, "put: dst must be a bytearray, not bytes"),
        ((bytearray(4), 0, "a"), TypeError, "put: src must be a bytes-like object, not str"),
        ((bytearray(4), -1, b"a"), ValueError, "put: argument 2 must be >= 0"),
        ((bytearray(4), 0), TypeError, "put takes 3 arguments"),
    ],
)
def test_put_refuses_bad_arguments_and_copies_nothing(args, exc, words) -> None:
    dst = args[0]
    before = bytes(dst)
    with pytest.raises(exc, match=words):
        _fastio.put(*args)
    assert bytes(dst) == before


def test_epoll_add_all_registers_each_fd_and_lists_the_adds_that_failed(pair) -> None:
    from ats_cffi.sys import Epoll

    a, b = pair
    ep = Epoll(4)
    try:
        failed: list = []
        pending = {a.fileno(): (1, 7, 7), 100_000: (1, 8, 9)}  # the second fd is not open
        assert _fastio.epoll_add_all(ep.fd, pending, failed) == 1
        assert failed == [(100_000, 9, errno.EBADF)]
        b.send(b"x")
        assert ep.wait(0) == 1 and ep.tokens[0] == 7
    finally:
        ep.close()


@pytest.mark.parametrize("token", [2**31 + 5, (2**30 + 1) << 32 | 3, 2**63 | 12345, 2**64 - 1])
def test_epoll_add_all_passes_every_64_bit_token_whole(pair, token: int) -> None:
    # (A slot token, a late generation's, a spliced end's tag with bit 63, the largest.)
    from ats_cffi.sys import Epoll

    a, b = pair
    ep = Epoll(4)
    try:
        assert _fastio.epoll_add_all(ep.fd, {a.fileno(): (1, token, token)}, []) == 0
        b.send(b"x")
        assert ep.wait(0) == 1 and ep.tokens[0] == token
    finally:
        ep.close()


@pytest.mark.parametrize(
    ("args", "exc", "words"),
    [
        ((3, [], []), TypeError, "epoll_add_all: pending must be a dict and failed a list"),
        ((3, {}, ()), TypeError, "epoll_add_all: pending must be a dict and failed a list"),
        ((3, {4: (1, 2)}, []), ValueError, r"epoll_add_all: a bad entry in pending \(fd 4\)"),
        ((3, {-4: (1, 2, 2)}, []), ValueError, "a bad entry in pending"),
        ((3, {4: (2**33, 2, 2)}, []), ValueError, "a bad entry in pending"),
        ((3, {4: (1, -2, 2)}, []), ValueError, "a bad entry in pending"),
        ((3, {4: (1, 2**64, 2)}, []), ValueError, "a bad entry in pending"),
        ((3, {4: (1, "2", 2)}, []), ValueError, "a bad entry in pending"),
        ((3, {4: (-1, 2, 2)}, []), ValueError, "a bad entry in pending"),
        ((-1, {}, []), ValueError, "epoll_add_all: argument 1 must be >= 0"),
        ((3, {}), TypeError, "epoll_add_all takes 3 arguments"),
    ],
)
def test_epoll_add_all_refuses_bad_arguments(args, exc, words) -> None:
    with pytest.raises(exc, match=words):
        _fastio.epoll_add_all(*args)


def test_read_spill_takes_minus_one_for_all_the_room(pair) -> None:
    """len -1: to the end of base (from off); spill_len -1: all of spill."""
    a, b = pair
    b.sendall(bytes(range(40)))
    base, spill = bytearray(16), bytearray(8)
    assert _fastio.read_spill(a.fileno(), base, 10, -1, spill, -1, True) == 14
    assert base[10:] == bytes(range(6)) and spill == bytearray(range(6, 14))
    assert _fastio.read_spill(a.fileno(), base, 0, -1, spill, 0, True) == 16
    assert base == bytearray(range(14, 30))
    with pytest.raises(ValueError, match="holds 16"):
        _fastio.read_spill(a.fileno(), base, 17, -1, spill, 0, True)
    with pytest.raises(ValueError, match=">= 0"):
        _fastio.read_spill(a.fileno(), base, 0, -2, spill, 0, True)
    with pytest.raises(TypeError, match="spill must be"):
        _fastio.read_spill(a.fileno(), base, 0, -1, b"x", -1, True)


class _Slotted:
    __slots__ = ("a", "b", "__weakref__")


class _SlottedChild(_Slotted):
    __slots__ = ("c",)


def test_slot_maker_makes_an_instance_with_each_value_in_its_slot() -> None:
    make = _fastio.slot_maker(_SlottedChild, ("c", "a", "b"))
    payload = object()
    before = sys.getrefcount(payload)
    obj = make(1, payload, "x")
    assert type(obj) is _SlottedChild and (obj.a, obj.b, obj.c) == (payload, "x", 1)
    assert sys.getrefcount(payload) == before + 1
    ref = weakref.ref(obj)
    del obj
    assert ref() is None and sys.getrefcount(payload) == before
    # Slots not named stay empty, as object.__new__ leaves them.
    partial = _fastio.slot_maker(_SlottedChild, ["a"])(2)
    assert partial.a == 2 and not hasattr(partial, "b") and not hasattr(partial, "c")
    # A cycle through a slot is collected (the instance is tracked by the GC).
    cyc = make(None, None, None)
    cyc.a = cyc
    ref = weakref.ref(cyc)
    del cyc
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize(
    ("cls", "names", "error", "match"),
    [
        (42, ("a",), TypeError, "cls must be a class, not int"),
        (_Slotted, ("nope",), AttributeError, "nope"),
        (_Slotted, ("__weakref__",), ValueError, "__weakref__ is not a slot"),
        (_Slotted, ("a", "a"), ValueError, "a is named twice"),
        (_Slotted, (), ValueError, "1 to 16 names, not 0"),
        (_Slotted, (1,), TypeError, "a name must be a str, not int"),
        (_SlottedChild, ("__init__",), ValueError, "__init__ is not a slot"),
        (int, ("real",), ValueError, "real is not a slot"),
    ],
)
def test_slot_maker_refuses_what_is_not_a_writable_slot(cls, names, error, match) -> None:
    with pytest.raises(error, match=match):
        _fastio.slot_maker(cls, names)


def test_a_slot_makers_call_takes_exactly_its_values() -> None:
    make = _fastio.slot_maker(_Slotted, ("a", "b"))
    with pytest.raises(TypeError, match="2 positional values, not 1"):
        make(1)
    with pytest.raises(TypeError, match="no keyword arguments"):
        make(1, 2, k=3)


class _Runnable:
    __slots__ = ("cancelled", "context", "callback", "args")


def test_slot_runner_runs_the_callback_in_the_context_unless_cancelled() -> None:
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="outside")
    run = _fastio.slot_runner(_Runnable, ("cancelled", "context", "callback", "args"))
    h = _Runnable()
    ctx = contextvars.copy_context()
    ctx.run(var.set, "inside")
    seen: list[Any] = []
    h.cancelled, h.context, h.args = False, ctx, (1, 2)
    h.callback = lambda a, b: seen.append((a, b, var.get()))
    assert run(h) is None and seen == [(1, 2, "inside")] and var.get() == "outside"
    h.cancelled = True
    run(h)
    assert len(seen) == 1, "a cancelled one does not run"
    h.cancelled = False
    h.callback = lambda a, b: 1 / 0
    with pytest.raises(ZeroDivisionError):
        run(h)
    assert var.get() == "outside", "the context is left when the callback raised"
    # The callback may empty the object's slots while it runs.
    h.callback = lambda a, b: [delattr(h, n) for n in ("context", "callback", "args")]
    run(h)
    with pytest.raises(AttributeError, match="slot 1 of the runner is empty"):
        run(h)


def test_call_in_calls_a_method_in_the_context_and_leaves_it() -> None:
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="outside")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "inside")

    class P:
        def data_received(self, data: bytes) -> tuple[bytes, str]:
            if data == b"boom":
                raise ValueError(data)
            return data, var.get()

    p = P()
    assert _fastio.call_in(ctx, p, "data_received", b"x") == (b"x", "inside")
    assert var.get() == "outside"
    with pytest.raises(ValueError, match="boom"):
        _fastio.call_in(ctx, p, "data_received", b"boom")
    assert var.get() == "outside", "the context is left when the method raised"
    with pytest.raises(AttributeError, match="eof_received"):
        _fastio.call_in(ctx, p, "eof_received", None)
    with pytest.raises(TypeError, match="call_in: a context and a str"):
        _fastio.call_in({}, p, "data_received", b"x")
    with pytest.raises(TypeError, match="call_in: a context and a str"):
        _fastio.call_in(ctx, p, b"data_received", b"x")
    with pytest.raises(TypeError, match="call_in takes 4 arguments"):
        _fastio.call_in(ctx, p, "data_received")
    ctx.run(lambda: pytest.raises(RuntimeError, _fastio.call_in, ctx, p, "data_received", 1))
    assert var.get() == "outside"


def test_slot_runner_refuses_what_it_cannot_run() -> None:
    run = _fastio.slot_runner(_Runnable, ("cancelled", "context", "callback", "args"))
    with pytest.raises(TypeError, match="_Runnable expected, not int"):
        run(1)
    h = _Runnable()
    h.cancelled, h.context, h.callback, h.args = False, {}, print, ()
    with pytest.raises(TypeError, match="a context and a tuple, not dict and tuple"):
        run(h)
    with pytest.raises(TypeError, match="one positional argument"):
        run()
    with pytest.raises(ValueError, match="4 names, not 2"):
        _fastio.slot_runner(_Runnable, ("cancelled", "context"))


class _Keyed:
    __slots__ = ("key", "tag")

    def __init__(self, key: Any, tag: int) -> None:
        self.key, self.tag = key, tag

    def __lt__(self, other: Any) -> bool:
        return self.key < other.key


class _KeyedReversed(_Keyed):
    __slots__ = ()

    def __lt__(self, other: Any) -> bool:  # a subclass's own order is used
        return self.key > other.key


def _heap_ops() -> tuple[Any, Any, Any]:
    return (
        _fastio.slot_heap_push(_Keyed, ("key",)),
        _fastio.slot_heap_pop(_Keyed, ("key",)),
        _fastio.slot_heapify(_Keyed, ("key",)),
    )


@pytest.mark.parametrize("keys", ["floats", "ints", "mixed"])
def test_the_slot_heap_keeps_heapqs_heap(keys: str) -> None:
    import heapq
    import random

    push, pop, heapify = _heap_ops()
    rng = random.Random(keys)

    def key(i: int) -> Any:
        k = rng.randrange(50)  # repeated keys too
        return float(k) if keys == "floats" or (keys == "mixed" and i % 2) else k

    items = [_Keyed(key(i), i) for i in range(300)]
    ours: list[Any] = []
    ref: list[Any] = []
    for i, item in enumerate(items):
        push(ours, item)
        heapq.heappush(ref, item)
        assert ours == ref, "the same heap, item for item"
        if i % 3 == 2:
            assert pop(ours) is heapq.heappop(ref)
    mixed = items[::-1]
    copy = list(mixed)
    heapify(mixed)
    heapq.heapify(copy)
    assert mixed == copy
    assert [pop(ours) for _ in range(len(ours))] == [heapq.heappop(ref) for _ in range(len(ref))]
    with pytest.raises(IndexError, match="index out of range"):
        pop(ours)


def test_the_slot_heap_uses_a_subclass_own_order_and_refuses_bad_calls() -> None:
    push, pop, heapify = _heap_ops()
    heap: list[Any] = []
    for k in (3, 1, 2):
        push(heap, _KeyedReversed(k, k))
    assert [pop(heap).key for _ in range(3)] == [3, 2, 1]
    with pytest.raises(TypeError, match="heap must be a list, not tuple"):
        push((), _Keyed(1, 1))
    with pytest.raises(TypeError, match="heap pop: 1 positional argument"):
        pop()
    with pytest.raises(TypeError, match="'<' not supported"):
        heapify([_Keyed(1, 1), _Keyed("a", 2)])

    class Shrinks:
        def __init__(self, heap: list[Any]) -> None:
            self.heap = heap

        def __lt__(self, other: Any) -> bool:
            self.heap.clear()
            return True

    h: list[Any] = []
    h.append(Shrinks(h))
    with pytest.raises(RuntimeError, match="changed size"):
        push(h, Shrinks(h))


def test_close_fd_closes_and_returns_the_errno_instead_of_raising() -> None:
    r, w = os.pipe()
    os.close(w)
    assert _fastio.close_fd(r) == 0
    with pytest.raises(OSError):
        os.fstat(r)  # closed
    assert _fastio.close_fd(r) == errno.EBADF


@pytest.mark.parametrize(
    ("args", "exc", "words"),
    [
        ((-1,), ValueError, "close_fd: argument 1 must be >= 0"),
        ((2**40,), ValueError, "close_fd: fd must be a file descriptor"),
        (("3",), TypeError, "close_fd"),
        ((), TypeError, "close_fd takes 1 argument"),
    ],
)
def test_close_fd_refuses_bad_arguments(args, exc, words) -> None:
    with pytest.raises(exc, match=words):
        _fastio.close_fd(*args)


def listening() -> socket.socket:
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    ls.setblocking(False)
    return ls


def test_accept_batch_takes_the_backlog_with_nodelay_until_eagain_or_count() -> None:
    from ats_cffi.sys import ACCEPT_FLAGS

    ls = listening()
    clients = [socket.create_connection(ls.getsockname()) for _ in range(3)]
    fds: list[int] = []
    failed: list[tuple[int, int]] = []
    try:
        assert _fastio.accept_batch(ls.fileno(), ACCEPT_FLAGS, True, 2, fds, failed) == 0
        assert len(fds) == 2  # count taken: 0, the backlog may hold more
        assert _fastio.accept_batch(ls.fileno(), ACCEPT_FLAGS, False, 8, fds, None) == (
            errno.EAGAIN
        )
        assert len(fds) == 3 and failed == []
        for i, fd in enumerate(fds):
            s = socket.socket(fileno=os.dup(fd))
            try:
                nodelay = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                assert bool(nodelay) == (i < 2)
            finally:
                s.close()
            assert not os.get_blocking(fd)  # ACCEPT_FLAGS: SOCK_NONBLOCK
        assert _fastio.accept_batch(ls.fileno(), ACCEPT_FLAGS, True, 8, fds, failed) == (
            errno.EAGAIN
        )
        assert len(fds) == 3
    finally:
        for fd in fds:
            os.close(fd)
        for c in clients:
            c.close()
        ls.close()


def test_accept_batch_reports_a_bad_socket_as_its_errno() -> None:
    r, w = os.pipe()
    fds: list[int] = []
    try:
        assert _fastio.accept_batch(r, 0, True, 4, fds, []) == errno.ENOTSOCK
        assert fds == []
    finally:
        os.close(r)
        os.close(w)


#: The refusal of a count outside 1..ACCEPT_BATCH_MAX (C's constant, as sys reads it).
COUNT_RANGE = rf"accept_batch: count must be in 1\.\.{ACCEPT_BATCH_MAX}"


@pytest.mark.parametrize(
    ("args", "exc", "words"),
    [
        ((3, 0, True, 0, [], []), ValueError, f"{COUNT_RANGE}, got 0"),
        ((3, 0, True, ACCEPT_BATCH_MAX + 1, [], []), ValueError, COUNT_RANGE),
        ((-1, 0, True, 4, [], []), ValueError, "accept_batch: argument 1 must be >= 0"),
        ((3, 2**40, True, 4, [], []), ValueError, "accept_batch: flags must be a C int"),
        ((3, 0, True, 4, (), []), TypeError, "accept_batch: fds .* must be lists"),
        ((3, 0, True, 4, [], None), TypeError, "accept_batch: fds .* must be lists"),
        ((3, 0, True, 4, []), TypeError, "accept_batch takes 6 arguments"),
    ],
)
def test_accept_batch_refuses_bad_arguments_before_any_accept(args, exc, words) -> None:
    with pytest.raises(exc, match=words):
        _fastio.accept_batch(*args)


def test_epoll_ctl_modifies_and_deletes_and_returns_minus_errno(pair) -> None:
    from ats_cffi._native import lib
    from ats_cffi.sys import Epoll

    a, b = pair
    ep = Epoll(4)
    try:
        fd = a.fileno()
        ep.add(fd, lib.EPOLLIN, 1)
        token = 2**63 | 77  # a spliced end's tag: bit 63 passes whole
        assert _fastio.epoll_ctl(ep.fd, lib.EPOLL_CTL_MOD, fd, lib.EPOLLIN, token) == 0
        b.send(b"x")
        assert ep.wait(0) == 1 and ep.tokens[0] == token
        assert _fastio.epoll_ctl(ep.fd, lib.EPOLL_CTL_DEL, fd, 0, 0) == 0
        assert ep.wait(0) == 0
        assert _fastio.epoll_ctl(ep.fd, lib.EPOLL_CTL_DEL, fd, 0, 0) == -errno.ENOENT
    finally:
        ep.close()


@pytest.mark.parametrize(
    ("args", "exc", "words"),
    [
        ((3, 2, 4, 1), TypeError, "epoll_ctl takes 5 arguments"),
        ((-1, 2, 4, 1, 0), ValueError, "epoll_ctl: argument 1 must be >= 0"),
        ((3, 2, 4, 2**33, 0), ValueError, "epoll_ctl: an argument out of range"),
        ((3, 2, 4, 1, -5), ValueError, r"epoll_ctl: token must be an int in 0..2\*\*64-1"),
        ((3, 2, 4, 1, 2**64), ValueError, "epoll_ctl: token must be"),
        ((3, 2, 4, 1, "1"), ValueError, "epoll_ctl: token must be"),
    ],
)
def test_epoll_ctl_refuses_bad_arguments(args, exc, words) -> None:
    with pytest.raises(exc, match=words):
        _fastio.epoll_ctl(*args)


def test_the_splice_calls_act_on_the_ends_they_are_given() -> None:
    # (splice.py binds the functions at import: they are the cffi module's own.)
    import ats_cffi.net.splice  # noqa: F401
    from ats_cffi._native import ffi, lib

    buf = bytearray(2 * ffi.sizeof("struct ats_splice_end"))
    ends = ffi.from_buffer("struct ats_splice_end[]", buf)
    tag = _fastio.splice_setup(buf, 2, 0, 7, 8, 4096, 1024, 1, 0, 1, 0, 41)
    assert tag == lib.ATS_SPLICE_TAG | int(ffi.cast("uintptr_t", ends))
    _fastio.splice_setup(buf, 2, 1, 8, 7, 4096, 1024, 0, 0, 0, errno.EPIPE, 2**40)
    assert (ends[0].token, ends[1].token) == (41, 2**40)
    assert ends[0].pipe.dst_end == ends + 1 and ends[1].out == ffi.addressof(ends[0], "pipe")
    ctr = ffi.new("uint64_t[]", lib.ATS_CTR_COUNT)
    ctr_at = int(ffi.cast("uintptr_t", ctr))
    assert _fastio.splice_take(buf, 1, 0, ctr_at) == lib.ATS_SPLICE_ERROR  # its error
    assert _fastio.splice_take(buf, 1, 0, ctr_at) == 0  # taken
    assert _fastio.splice_finished(buf, 2) is False
    ends[0].pipe.nread, ends[0].pipe.nwritten = 5, 4
    out = ffi.new("uint64_t[4]")
    failed = _fastio.splice_stop_report(buf, 2, int(ffi.cast("uintptr_t", out)))
    assert failed == 1 << 32 | errno.EPIPE and list(out) == [5, 4, 0, 0]
    assert _fastio.splice_finished(buf, 2) is True
    _fastio.splice_release(buf, 2)


@pytest.mark.parametrize(
    ("call", "args", "exc", "words"),
    [
        ("splice_take", (b"x" * 999, 0, 0, 1), TypeError, "ends must be a bytearray of 1"),
        ("splice_take", (bytearray(8), 1, 0, 1), TypeError, "ends must be a bytearray of 2"),
        ("splice_take", (bytearray(8), 2, 0, 1), ValueError, "splice_take: end 2 of 2 at most"),
        ("splice_take", (bytearray(8), 0, 0), TypeError, "splice_take takes 4 arguments"),
        ("splice_stop_report", (bytearray(8), 3, 1), ValueError, "n must be 1 or 2, got 3"),
        ("splice_release", (bytearray(8), 0), ValueError, "n must be 1 or 2, got 0"),
        ("splice_finished", (bytearray(8), -1), ValueError, "argument 2 must be >= 0"),
        ("splice_finished", (bytearray(8), 1), TypeError, "ends must be a bytearray of 1"),
        ("splice_setup", (bytearray(999), 1, 1) + (0,) * 9, ValueError, "out of range"),
        ("splice_setup", (bytearray(999), 1, 0, 2**40) + (0,) * 8, ValueError, "out of range"),
        ("splice_bind", ((1, 2, 3),), TypeError, "splice_bind: takes a tuple of 5 addresses"),
        ("splice_bind", ((1, 2, 0, 4, 5),), ValueError, "splice_bind: address 3 is 0"),
    ],
)
def test_the_splice_calls_refuse_bad_arguments(call, args, exc, words) -> None:
    import ats_cffi.net.splice  # noqa: F401  (binds the functions)

    with pytest.raises(exc, match=words):
        getattr(_fastio, call)(*args)
