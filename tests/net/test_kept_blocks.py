"""A buffer that a VC's write step empties keeps its block for the connection's next
message (vcio.keep_emptied): the read goes into it instead of taking a block from the
thread's freelist and the write giving it back, per message. The NetHandler's sweep
(vcio.sweep_kept, every few passes) gives back the block of a buffer that no write step
emptied in the last two passes and that is still empty, with the write VIO's mutex held;
one whose mutex another thread holds is looked at in a later sweep; one refilled since
keeps its bytes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ats_cffi.eventsystem.ioblock import thread_pool
from ats_cffi.net.nethandler import get_net_handler
from ats_cffi.net.vcio import KEEP_MAX, keep_emptied, sweep_kept, write_from_reader

from .conftest import Echo, client, on_thread, recv_exactly, wait_until

BLOCK = 4096


@contextmanager
def echo_connection(listen: Any, first: bytes = b"m") -> Iterator[tuple[Any, Echo]]:
    """A client connected to an Echo through ``BLOCK``-byte blocks, ``first`` echoed."""
    echoes: list[Echo] = []
    _, acceptor, port = listen(lambda vc: echoes.append(Echo(vc, block_size=BLOCK)))
    with client(port) as c:
        acceptor.wait()
        echoed(c, first)
        yield c, echoes[0]


def echoed(c: Any, data: bytes) -> None:
    c.sendall(data)
    assert recv_exactly(c, len(data)) == data


def state_of(s: Any) -> dict[str, Any]:
    """On the VC's net thread: the write side's sweep state and its buffer's block."""
    nh = get_net_handler()
    reader = s.buffer
    block = reader.first_block()[0]
    return {
        "listed": any(x is s for x in nh.kept),
        "kept_at": s.kept_at,
        "passes": nh.passes,
        "block": block.size,
        "avail": reader.read_avail(),
        "free": thread_pool().free_blocks(),
    }


def empty_with_kept_block(s: Any) -> dict[str, Any]:
    """On the net thread: what a write step that empties the buffer leaves (three bytes
    written into it and advanced past with ``keep``, then ``keep_emptied``)."""
    nh = get_net_handler()
    reader = s.buffer
    reader.writer.write(b"abc", nh.pool)
    reader.advance(3, nh.pool, True)
    keep_emptied(nh, s, reader, 3)
    return state_of(s)


def sweep_after(s: Any, passes: int) -> dict[str, Any]:
    """On the net thread: ``passes`` more passes counted, then a sweep."""
    nh = get_net_handler()
    nh.passes += passes
    sweep_kept(nh)
    return state_of(s)


def test_an_emptied_buffer_keeps_its_block_until_a_sweep_finds_it_idle(listen) -> None:
    with echo_connection(listen, b"m" * 100) as (c, echo):
        s = echo.wvio

        def steps() -> list[dict[str, Any]]:
            # One call on the thread: no pass of its own comes between the steps.
            return [empty_with_kept_block(s), *(sweep_after(s, n) for n in (0, 1, 1))]

        emptied, same_pass, next_pass, two_later = on_thread(echo.vc.thread, steps)
        assert emptied["listed"] and emptied["kept_at"] == emptied["passes"]
        assert (emptied["block"], emptied["avail"]) == (BLOCK, 0)  # empty, holding its block
        # The same pass and the next: kept (a busy connection's next message reads into it).
        for got in (same_pass, next_pass):
            assert got["listed"] and got["block"] == BLOCK and got["free"] == emptied["free"]
        # Two passes without a write step emptying it: given back to the freelist.
        assert not two_later["listed"] and two_later["kept_at"] == 0
        assert two_later["block"] == 0 and two_later["free"] == emptied["free"] + 1
        echoed(c, b"n" * 10)  # still an echo, through a block taken again


def test_a_side_whose_mutex_another_thread_holds_is_swept_later(listen) -> None:
    with echo_connection(listen) as (c, echo):
        thread = echo.vc.thread
        s = echo.wvio
        with echo.mutex:  # held by this thread: the sweep may not touch the buffer
            got = on_thread(thread, lambda: [empty_with_kept_block(s), sweep_after(s, 5)])
        emptied, busy = got
        # Not looked at without the mutex: still listed, its block kept, two passes more.
        assert busy["listed"] and busy["block"] == BLOCK
        assert busy["kept_at"] == busy["passes"]
        after = on_thread(thread, lambda: sweep_after(s, 3))
        assert not after["listed"] and after["block"] == 0


def test_a_buffer_refilled_since_keeps_its_bytes_and_leaves_the_list(listen) -> None:
    with echo_connection(listen) as (c, echo):
        s = echo.wvio

        def steps() -> tuple[dict[str, Any], bytes]:
            nh = get_net_handler()
            empty_with_kept_block(s)
            s.buffer.writer.write(b"xyz", nh.pool)  # written, not yet sent
            got = sweep_after(s, 2)
            return got, s.buffer.read(3)  # consumed here, as the write would have

        got, data = on_thread(echo.vc.thread, steps)
        assert not got["listed"] and got["kept_at"] == 0
        assert (got["block"], got["avail"], data) == (BLOCK, 3, b"xyz")
        echoed(c, b"q")


def test_an_idle_echo_connection_gives_its_block_back_on_its_own(listen) -> None:
    # No hand-made passes: the net thread's own sweeps find the connection idle.
    with echo_connection(listen) as (c, echo):
        thread = echo.vc.thread
        s = echo.wvio
        for _ in range(3):
            echoed(c, b"r" * 200)
        assert wait_until(lambda: not on_thread(thread, lambda: state_of(s))["listed"])
        got = on_thread(thread, lambda: state_of(s))
        assert (got["block"], got["avail"], got["kept_at"]) == (0, 0, 0)


def test_a_closed_connection_gives_the_block_its_buffer_kept_back_to_the_freelist(listen):
    # Not left to the buffer, which its continuation may drop with the block in it.
    with echo_connection(listen) as (c, echo):
        s = echo.wvio
        reader = s.buffer

        def steps() -> tuple[dict[str, Any], int, int]:
            kept = empty_with_kept_block(s)
            echo.vc.do_io_close()
            return kept, reader.first_block()[0].size, thread_pool().free_blocks()

        kept, block, free = on_thread(echo.vc.thread, steps)
        assert kept["block"] == BLOCK
        assert block == 0 and free == kept["free"] + 1


def written_back(echo: Echo, n: int) -> dict[str, Any]:
    """On the net thread: a write step of ``n`` bytes put in the echo's buffer, to its
    socket (vcio.write_from_reader, then keep_emptied, as the VC's write step does)."""
    nh = get_net_handler()
    s = echo.wvio
    reader = s.buffer
    reader.writer.write(b"w" * n, nh.pool)
    total, _ = write_from_reader(nh, echo.vc.fd, reader, n)
    keep_emptied(nh, s, reader, total)
    return state_of(s)


def test_a_block_that_carried_more_than_keep_max_bytes_goes_back_at_once(listen) -> None:
    # After a larger message the block goes back to the freelist, where the next take finds
    # it still in the CPU's cache; after KEEP_MAX bytes or fewer it stays.
    big = KEEP_MAX * 4  # both messages fit in one block
    echoes: list[Echo] = []
    _, acceptor, port = listen(lambda vc: echoes.append(Echo(vc, block_size=big)))
    with client(port) as c:
        acceptor.wait()
        echoed(c, b"m")
        (echo,) = echoes
        large = on_thread(echo.vc.thread, lambda: written_back(echo, KEEP_MAX + 1))
        assert recv_exactly(c, KEEP_MAX + 1) == b"w" * (KEEP_MAX + 1)
        small = on_thread(echo.vc.thread, lambda: written_back(echo, KEEP_MAX))
        assert recv_exactly(c, KEEP_MAX) == b"w" * KEEP_MAX
    assert (large["block"], large["avail"]) == (0, 0)  # given back by the write step itself
    assert (small["block"], small["avail"], small["listed"]) == (big, 0, True)
