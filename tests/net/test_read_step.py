"""A VC's read step on its net thread. ``read_into_buffer`` (net/vcio.py): one ``readv``
fills the tail block and spills on into the thread's spare block (from the first read only
after a step of the VC that brought a block or more); after such a step, a tail block
without free space makes it one plain read into the spare alone. Spilled bytes join the
buffer as the spare itself when they fill a block of the buffer's size (the thread takes a
new spare), else as a copy; the water mark bounds how far a read goes, a spare handed over
included; every byte arrives in order. The NetHandler: a write side that the read's
continuation enabled is written after the pass's reads, or in the same turn once the
pass's reads brought in more than a batch."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ats_cffi import sys as asys
from ats_cffi.eventsystem import INT64_MAX, Continuation, MIOBuffer, ProxyMutex
from ats_cffi.eventsystem.codes import VC_EVENT_READ_READY, VC_EVENT_WRITE_COMPLETE
from ats_cffi.net import stats as st
from ats_cffi.net.nethandler import WRITE_BATCH_BYTES, WRITE_NOW_BYTES, get_net_handler
from ats_cffi.net.netvc import UnixNetVConnection
from ats_cffi.net.vcio import SPILL_SIZE, read_into_buffer

from .conftest import _listener, client, on_thread, payload_of, recv_exactly, wait_until

BLOCK = 4096


@pytest.fixture
def one_listen(one_net_thread: Any) -> Iterator[Callable[..., tuple[Any, Any, int]]]:
    """``listen(on_vc)`` on the one net thread: every VC shares its NetHandler."""
    yield from _listener(one_net_thread)


@pytest.fixture
def sock_pair(one_net_thread: Any) -> Iterator[tuple[socket.socket, socket.socket, Any]]:
    """A connected AF_UNIX pair with room for 1 MiB each way, and the one net thread."""
    a, b = socket.socketpair()
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    b.setblocking(False)
    yield a, b, one_net_thread.netthreads[0]
    a.close()
    b.close()


def read_step(
    thread: Any, fd: int, buf: MIOBuffer, limit: int = 1 << 30, vc: Any = None
) -> dict[str, Any]:
    """One read step on ``thread`` (``read_into_buffer``, or ``vc.read_bytes`` for a VC of
    ``fd``): what it returned, the chain's block sizes, whether the thread's spare block
    changed."""

    def step() -> dict[str, Any]:
        nh = get_net_handler()
        spare = nh.spill
        calls = nh.stats[st.CALLS_TO_READ]
        if vc is None:
            moved, last = read_into_buffer(nh, fd, buf, limit, True)
        else:
            moved, last = vc.read_bytes(nh, buf, limit)
        return {
            "moved": moved,
            "last": last,
            "new_spare": nh.spill is not spare,
            "calls": nh.stats[st.CALLS_TO_READ] - calls,
        }

    return on_thread(thread, step)


def chain_sizes(reader: Any) -> list[tuple[int, int]]:
    """(block size, readable bytes) of each block ``reader`` can read."""
    return [(b.size, end - start) for b, start, end in reader.readable_blocks()]


def one_message(
    sock_pair: Any, block: int, water_mark: int, size: int, held: bytes = b""
) -> tuple[Any, Any]:
    """A message of ``size`` bytes sent, then one read step into a new buffer of
    ``block``-byte blocks already holding ``held``: what the step returned and the chain's
    (block size, readable bytes); every byte arrived in order."""
    a, b, thread = sock_pair
    buf = MIOBuffer(block, water_mark)
    reader = buf.alloc_reader()
    buf.write(held)
    data = payload_of(size)
    a.sendall(data)
    got = read_step(thread, b.fileno(), buf)
    chain = chain_sizes(reader)
    assert reader.read(len(held) + len(data)) == held + data
    return got, chain


def test_a_message_larger_than_the_tail_is_one_read_and_the_spare_joins_the_buffer(
    sock_pair,
) -> None:
    # The tail block has room: one readv into it and on into the spare.
    got, chain = one_message(sock_pair, BLOCK, 256 * 1024, 64 * 1024, b"h" * 100)
    assert got == {"moved": 64 * 1024, "last": asys.AGAIN, "new_spare": True, "calls": 1}
    assert chain == [(BLOCK, BLOCK), (SPILL_SIZE, 64 * 1024 + 100 - BLOCK)]


def test_with_no_room_in_the_tail_a_large_message_is_one_read_into_the_spare(
    sock_pair,
) -> None:
    # No block to fill (the buffer holds none, or its tail is full): the spare alone, one
    # block to write from. Blocks as large as the spare: a new one, as usual.
    got, chain = one_message(sock_pair, BLOCK, 256 * 1024, 64 * 1024)
    assert got == {"moved": 64 * 1024, "last": asys.AGAIN, "new_spare": True, "calls": 1}
    assert chain == [(SPILL_SIZE, 64 * 1024)]
    got, chain = one_message(sock_pair, BLOCK, 256 * 1024, 64 * 1024, b"f" * BLOCK)
    assert got["calls"] == 1 and chain == [(BLOCK, BLOCK), (SPILL_SIZE, 64 * 1024)]
    got, chain = one_message(sock_pair, SPILL_SIZE, 256 * 1024, 64 * 1024)
    assert got["new_spare"] is False and chain == [(SPILL_SIZE, 64 * 1024)]
    # Water mark 0: a read may bring one block, so a new block of the buffer's size, as
    # usual (the spare alone would hold the same bytes in a 128 KiB block).
    a, b, thread = sock_pair
    buf = MIOBuffer(BLOCK, 0)
    reader = buf.alloc_reader()
    data = payload_of(3 * BLOCK)
    a.sendall(data)
    got = read_step(thread, b.fileno(), buf)
    assert (got["moved"], got["new_spare"]) == (BLOCK, False)
    assert chain_sizes(reader) == [(BLOCK, BLOCK)]
    out = reader.read(BLOCK)
    while len(out) < len(data):
        assert read_step(thread, b.fileno(), buf)["moved"] == BLOCK
        out += reader.read(BLOCK)
    assert out == data


def test_a_tail_block_with_room_for_most_reads_is_read_alone(sock_pair) -> None:
    # 256 KiB blocks (the asyncio loop's buffer): a plain read, no spill. A message past
    # the block takes a second read, into the next block.
    big = 256 * 1024
    got, chain = one_message(sock_pair, big, 2 * big, big + 4000)
    assert got == {"moved": big + 4000, "last": asys.AGAIN, "new_spare": False, "calls": 2}
    assert chain == [(big, big), (big, 4000)]
    got, chain = one_message(sock_pair, big, 2 * big, 1000)
    assert got["calls"] == 1 and chain == [(big, 1000)]


def test_a_vcs_first_read_spills_only_after_a_step_that_brought_a_block(sock_pair) -> None:
    # A VC whose last step brought less than a block reads the tail block's room alone
    # (a read, not a readv); a read that fills it goes on into the spare. After such a
    # step, the next one spills from its first read: one readv.
    a, b, thread = sock_pair
    vc = UnixNetVConnection()
    vc.fd = b.fileno()
    buf = MIOBuffer(BLOCK, 256 * 1024)
    reader = buf.alloc_reader()
    sent = []
    for size, calls, spill_first in [(100, 1, False), (64 * 1024, 2, True),
                                      (64 * 1024, 1, True), (BLOCK - 1, 1, False)]:  # fmt: skip
        sent.append(payload_of(size))
        a.sendall(sent[-1])
        got = read_step(thread, b.fileno(), buf, vc=vc)
        assert (got["moved"], got["calls"]) == (size, calls)
        assert vc.read.spill_first is spill_first
        assert reader.read(size) == sent[-1]
    vc.fd = -1  # b's, closed by the fixture


def test_a_short_spill_is_copied_into_a_block_of_the_buffers_size(sock_pair) -> None:
    got, chain = one_message(sock_pair, BLOCK, 256 * 1024, BLOCK + 904, b"h" * 100)
    assert got == {"moved": BLOCK + 904, "last": asys.AGAIN, "new_spare": False, "calls": 1}
    assert chain == [(BLOCK, BLOCK), (BLOCK, 1004)]
    got, chain = one_message(sock_pair, BLOCK, 256 * 1024, 904)  # read into the spare alone
    assert got == {"moved": 904, "last": asys.AGAIN, "new_spare": False, "calls": 1}
    assert chain == [(BLOCK, 904)]


def test_the_water_mark_bounds_a_read_and_a_spare_handed_over(sock_pair) -> None:
    # Water mark 8 KiB, 4 KiB blocks: as block by block, a read stops after the block that
    # took the buffer to the mark, here 12 KiB. The spare holding 8 KiB of them is the tail
    # with 120 KiB free; it is not filled past the mark while nothing is consumed.
    a, b, thread = sock_pair
    buf = MIOBuffer(BLOCK, 8192)
    reader = buf.alloc_reader()
    data = payload_of(200 * 1024)
    a.sendall(data)
    got = read_step(thread, b.fileno(), buf)
    assert got == {"moved": 12288, "last": 1, "new_spare": True, "calls": 1}
    assert read_step(thread, b.fileno(), buf)["moved"] == 0  # full: back-pressure
    out = bytearray(reader.read(10000))
    # 2,288 bytes left: the spare (the tail) takes up to the mark plus a block again.
    got = read_step(thread, b.fileno(), buf)
    assert got["moved"] == 8192 + BLOCK - 2288
    while len(out) < len(data):
        out += reader.read(reader.read_avail())
        if len(out) < len(data):
            assert read_step(thread, b.fileno(), buf)["moved"] > 0
    assert bytes(out) == data


def test_a_limit_below_the_tail_space_reads_no_more(sock_pair) -> None:
    a, b, thread = sock_pair
    buf = MIOBuffer(BLOCK, 256 * 1024)
    reader = buf.alloc_reader()
    a.sendall(b"x" * 10000)
    got = read_step(thread, b.fileno(), buf, limit=100)
    assert got["moved"] == 100 and not got["new_spare"]
    got = read_step(thread, b.fileno(), buf, limit=7000)
    assert got["moved"] == 7000
    assert read_step(thread, b.fileno(), buf)["moved"] == 2900
    assert reader.read(10000) == b"x" * 10000


class Recorder(Continuation):
    """An echo whose write VIO follows its read VIO (as ``ats-cffi echo --vio``), recording
    ``(name, event)`` in the shared ``log``."""

    def __init__(self, vc: Any, name: str, log: list[tuple[str, int]]) -> None:
        super().__init__(ProxyMutex())
        self.name, self.log = name, log
        self.set_handler(self.handle)
        buf = MIOBuffer(BLOCK, 64 * 1024)
        with self.mutex:  # type: ignore[union-attr]
            self.rvio = vc.do_io_read(self, INT64_MAX, buf)
            self.wvio = vc.do_io_write(self, 0, buf.alloc_reader())

    def handle(self, event: int, vio: Any) -> None:
        self.log.append((self.name, event))
        if event == VC_EVENT_READ_READY:
            self.wvio.nbytes = self.rvio.ndone
            self.wvio.reenable()
        elif event == VC_EVENT_WRITE_COMPLETE:
            self.rvio.reenable()


@pytest.mark.parametrize(
    "batch, size",
    [(True, 1), (False, 1), (True, WRITE_NOW_BYTES), (True, WRITE_NOW_BYTES - 1)],
    ids=["batched", "over-the-batch", "a-large-read", "just-under-a-large-read"],
)
def test_the_writes_that_reads_enabled_go_out_after_the_passs_reads(
    one_listen, batch, size
) -> None:
    # Two VCs readable in the same pass. Within the pass's batch of read bytes, each echo
    # waits for the pass's write sides (the replies go out together); once the reads
    # brought more (here: a batch of 0 bytes), or a VC's read turn brought WRITE_NOW_BYTES
    # or more, the first one's echo is written at once, its bytes still in the CPU's
    # cache, before the next VC's read.
    log: list[tuple[str, int]] = []
    names = iter("ab")
    _, acceptor, port = one_listen(lambda vc: Recorder(vc, next(names), log))
    with client(port) as ca, client(port) as cb:
        assert wait_until(lambda: len(acceptor.vcs) == 2)
        thread = acceptor.vcs[0].thread
        nh = get_net_handler(thread)
        release = threading.Event()
        held = threading.Event()

        def hold() -> None:
            if not batch:
                nh.write_batch_bytes = 0
            held.set()
            release.wait(5)

        waiter = threading.Thread(target=on_thread, args=(thread, hold))
        waiter.start()
        try:
            assert held.wait(5)
            ca.sendall(b"1" * size)
            cb.sendall(b"2" * size)
        finally:
            release.set()
            waiter.join()
        assert recv_exactly(ca, size) == b"1" * size and recv_exactly(cb, size) == b"2" * size
        on_thread(thread, lambda: setattr(nh, "write_batch_bytes", WRITE_BATCH_BYTES))
    # The echoes can reach the clients before the net thread has logged WRITE_COMPLETE.
    assert wait_until(lambda: len(log) >= 4)
    first = log[0][0]
    second = "b" if first == "a" else "a"
    if batch and size < WRITE_NOW_BYTES:
        order = [(first, VC_EVENT_READ_READY), (second, VC_EVENT_READ_READY)]
        order += [(first, VC_EVENT_WRITE_COMPLETE), (second, VC_EVENT_WRITE_COMPLETE)]
    else:
        order = [(first, VC_EVENT_READ_READY), (first, VC_EVENT_WRITE_COMPLETE)]
        order += [(second, VC_EVENT_READ_READY), (second, VC_EVENT_WRITE_COMPLETE)]
    assert log[:4] == order
