"""A plain Protocol's reads become ``bytes`` in its VC's read step
(``ats_cffi/asyncio/transportvc.py``): small reads through the thread's spare block, a read
after a large one straight into a new ``bytes``, a read larger than either in parts; every
byte arrives in order and is counted in the net stats, EOF comes after the last byte, the
loop's read buffer is left empty, and bytes a read left in the core reach the protocol
whatever it has become, or are dropped with a lost connection."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import ats_cffi.asyncio as ats_asyncio
from ats_cffi.asyncio.transportvc import LARGE_READ, TransportVC
from ats_cffi.eventsystem.codes import EVENT_CONT, VC_EVENT_READ_READY
from ats_cffi.net import stats as st
from ats_cffi.net.vcio import BYTES_READ_MAX, SPILL_SIZE


class Recorder(asyncio.Protocol):
    """Keeps each ``data_received``'s bytes with whether the VC's next read goes straight
    into ``bytes``, and whether the loop's read buffer held anything meanwhile."""

    def __init__(self) -> None:
        self.reads: list[tuple[bytes, bool]] = []
        self.buffer_used = False
        self.eof = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reads.append((data, self.transport._vc.large))
        loop: Any = asyncio.get_running_loop()
        self.buffer_used |= bool(loop._read_reader.read_avail())

    def eof_received(self) -> None:
        got = b"".join(d for d, _ in self.reads)
        self.eof.set_result(got)


async def _connection() -> tuple[Any, Recorder, socket.socket]:
    """A transport with a ``Recorder`` over one end of a socket pair, and the other end."""
    a, b = socket.socketpair()
    a.setblocking(False)
    tr, p = await asyncio.get_running_loop().create_connection(Recorder, sock=a)
    return tr, p, b


async def _until(cond: Any) -> None:
    for _ in range(5000):
        if cond():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("timed out")


def test_reads_of_every_size_arrive_whole_in_order_and_counted() -> None:
    small, large = b"s" * 100, bytes(range(256)) * (LARGE_READ // 256 + 8)
    huge = bytes(range(251)) * (3 * BYTES_READ_MAX // 251)
    parts = [small, large, small, huge, b"tail"]

    async def main() -> None:
        loop: Any = asyncio.get_running_loop()
        tr, p, b = await _connection()
        try:
            assert type(tr._vc) is TransportVC and tr._vc.core is tr._core
            before = loop._net_stats[st.READ_BYTES]
            b.setblocking(False)
            sent = 0
            for part in parts:  # one at a time: each read sees one part (or a piece)
                await loop.sock_sendall(b, part)
                sent += len(part)
                await _until(lambda n=sent: sum(len(d) for d, _ in p.reads) == n)
            b.shutdown(socket.SHUT_WR)
            got = await asyncio.wait_for(p.eof, 5)
            assert got == b"".join(parts)
            assert loop._net_stats[st.READ_BYTES] - before == len(got)
            assert not p.buffer_used
            sizes = [len(d) for d, _ in p.reads]
            # huge in parts: through the spare block, then straight into bytes
            assert max(sizes) <= max(SPILL_SIZE, BYTES_READ_MAX) and len(sizes) > len(parts)
            assert BYTES_READ_MAX in sizes
            large_after = [flag for d, flag in p.reads]
            assert large_after[0] is False and large_after[1] is True  # small, then large
            assert large_after[2] is False  # a small read after a large one: small again
        finally:
            tr.close()
            b.close()
            await asyncio.sleep(0)

    ats_asyncio.run(main())


def test_bytes_left_in_the_core_reach_the_protocol_or_go_with_a_lost_connection() -> None:
    class Buffered(asyncio.BufferedProtocol):
        def __init__(self) -> None:
            self.buf = bytearray(64)
            self.got = b""

        def get_buffer(self, sizehint: int) -> bytearray:
            return self.buf

        def buffer_updated(self, nbytes: int) -> None:
            self.got += bytes(self.buf[:nbytes])

    async def main() -> None:
        loop: Any = asyncio.get_running_loop()
        tr, p, b = await _connection()
        try:
            tr._core.data = b"read as bytes"  # as if the protocol changed since the read
            q = Buffered()
            tr.set_protocol(q)
            assert tr._vc_event(VC_EVENT_READ_READY, None) == EVENT_CONT
            assert q.got == b"read as bytes" and tr._core.data is None
            assert not loop._read_reader.read_avail()
            tr.set_protocol(p)
            tr._core.data = b"plain"
            assert tr._vc_event(VC_EVENT_READ_READY, None) == EVENT_CONT
            assert p.reads == [(b"plain", False)]
            tr._core.data = b"dropped"
            tr.abort()
            assert tr._vc_event(VC_EVENT_READ_READY, None) == EVENT_CONT
            assert tr._core.data is None and p.reads == [(b"plain", False)]
            await asyncio.sleep(0)
            assert tr._vc.core is None  # released: no cycle through the VC
        finally:
            b.close()

    ats_asyncio.run(main())


def test_an_accepted_connection_is_a_transport_vc() -> None:
    async def main() -> None:
        loop: Any = asyncio.get_running_loop()
        protos: list[Recorder] = []

        def factory() -> Recorder:
            protos.append(Recorder())
            return protos[-1]

        srv = await loop.create_server(factory, "127.0.0.1", 0)
        r, w = await asyncio.open_connection(*srv.sockets[0].getsockname())
        try:
            w.write(b"x" * (2 * LARGE_READ))
            want = 2 * LARGE_READ
            await _until(lambda: protos and sum(len(d) for d, _ in protos[0].reads) == want)
            vc = protos[0].transport._vc
            assert type(vc) is TransportVC and vc.core is protos[0].transport._core
        finally:
            w.close()
            await w.wait_closed()
            srv.close()
            await srv.wait_closed()

    ats_asyncio.run(main())
