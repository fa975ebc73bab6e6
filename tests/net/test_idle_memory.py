"""What an idle connection keeps: after carrying a message its buffers hold no block (the
block went back to its net thread's freelist), and the InactivityCop trims that freelist
once nothing needs it."""

from __future__ import annotations

import threading
from typing import Any

from ats_cffi.eventsystem import Continuation, ProxyMutex
from ats_cffi.eventsystem.ioblock import thread_pool

from .conftest import COP, Echo, client, recv_exactly, wait_until


def free_blocks_on(thread: Any) -> int:
    """How many free blocks the pool of net thread ``thread`` holds (asked on it)."""
    got: list[int] = []
    done = threading.Event()

    class Ask(Continuation):
        def __init__(self) -> None:
            super().__init__(ProxyMutex())
            self.set_handler(self.ask)

        def ask(self, event: int, e: Any) -> None:
            got.append(thread_pool().free_blocks())
            done.set()

    thread.schedule_imm(Ask())
    assert done.wait(5), "the net thread did not run the question"
    return got[0]


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
        c.sendall(b"y" * 5000)  # spans two blocks: the pooled one is taken again
        assert recv_exactly(c, 5000) == b"y" * 5000
        assert wait_until(lambda: reader.first_block()[0].size == 0)
        assert free_blocks_on(thread) == 2
        # Two cop runs: the first marks, the second drops what no read needed since.
        fake_clock.advance(COP)
        fake_clock.advance(COP)
        assert free_blocks_on(thread) == 0
        c.sendall(b"z")
        assert recv_exactly(c, 1) == b"z"
