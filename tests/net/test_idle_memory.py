"""What a connection's buffers hold: after carrying a message, no block (the block went back
to its net thread's freelist, which the InactivityCop trims once nothing needs it); while a
message larger than a block arrives, one read into the tail block and the thread's spare
block (vcio's spill) rather than a read per block, within the water mark."""

from __future__ import annotations

from typing import Any

from ats_cffi.eventsystem.ioblock import thread_pool
from ats_cffi.net import net_stats

from .conftest import COP, Echo, client, on_thread, payload_of, recv_exactly, wait_until

CALLS_TO_READ = "proxy.process.net.calls_to_read"


def free_blocks_on(thread: Any) -> int:
    """How many free blocks the pool of net thread ``thread`` holds (asked on it)."""
    return on_thread(thread, lambda: thread_pool().free_blocks())


def test_an_echo_connection_that_carried_a_message_holds_no_block(fake_listen, fake_clock) -> None:
    echoes: list[Echo] = []
    _, acceptor, port = fake_listen(
        lambda vc: echoes.append(Echo(vc, block_size=4096, water_mark=8192))
    )
    with client(port) as c:
        acceptor.wait()
        (echo,) = echoes
        reader = echo.wvio.buffer
        c.sendall(b"x" * 3000)
        assert recv_exactly(c, 3000) == b"x" * 3000
        # The write consumed every byte: the block went back to the thread's freelist.
        assert wait_until(lambda: reader.read_avail() == 0 and reader.first_block()[0].size == 0)
        thread = echo.vc.thread
        assert free_blocks_on(thread) == 1
        # Spans two blocks: the pooled one is taken again, the 904 bytes the read spilled
        # past it are copied into a second one (the thread keeps its spare block).
        c.sendall(b"y" * 5000)
        assert recv_exactly(c, 5000) == b"y" * 5000
        assert wait_until(lambda: reader.first_block()[0].size == 0)
        assert free_blocks_on(thread) == 2
        # Two cop runs: the first marks, the second drops what no read needed since.
        fake_clock.advance(COP)
        fake_clock.advance(COP)
        assert free_blocks_on(thread) == 0
        c.sendall(b"z")
        assert recv_exactly(c, 1) == b"z"


def test_a_message_larger_than_a_block_is_read_with_one_readv_not_a_read_per_block(
    fake_listen,
) -> None:
    # 100 KiB through 4 KiB blocks under a 256 KiB water mark: a read per block would be
    # 25 of them; one readv into the tail and the spare block takes what has arrived (one
    # per arrival of the message's segments).
    echoes: list[Echo] = []
    _, acceptor, port = fake_listen(
        lambda vc: echoes.append(Echo(vc, block_size=4096, water_mark=256 * 1024))
    )
    data = payload_of(100 * 1024)
    with client(port) as c:
        acceptor.wait()
        before = net_stats.get(CALLS_TO_READ)
        c.sendall(data)
        assert recv_exactly(c, len(data)) == data
        assert net_stats.get(CALLS_TO_READ) - before < 12
        reader = echoes[0].wvio.buffer
        assert wait_until(lambda: reader.first_block()[0].size == 0)  # every block given back
