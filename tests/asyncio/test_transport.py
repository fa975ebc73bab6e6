"""Stream transports of the asyncio loop: UnixNetVConnections whose events are protocol
calls. Bytes exact both ways, flow control, half-close, errors, and the net stats."""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from typing import Any

import pytest

import ats_cffi.asyncio as ats_asyncio
from ats_cffi.net import stats as st


class Echo(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def serve(factory: Any) -> tuple[asyncio.Server, int]:
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(factory, "127.0.0.1", 0)
    return srv, srv.sockets[0].getsockname()[1]


@pytest.mark.parametrize("size", [1, 5000, 3 * 1024 * 1024])
def test_echo_is_byte_exact(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)

    async def main() -> None:
        srv, port = await serve(Echo)
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(payload)
        got = await asyncio.wait_for(r.readexactly(size), 30)
        assert got == payload
        w.close()
        await w.wait_closed()
        srv.close()
        await srv.wait_closed()

    ats_asyncio.run(main())


def test_flow_control_pauses_and_resumes_the_writer() -> None:
    events: list[str] = []
    chunk = b"y" * 65536
    CHUNKS = 256  # 16 MiB: more than the kernel's socket buffers hold

    class Flood(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            transport.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
            self.sent = 0
            self.push()

        def push(self) -> None:
            while self.sent < CHUNKS and not events[-1:] == ["pause"]:
                self.transport.write(chunk)
                self.sent += 1
            if self.sent == CHUNKS:
                self.transport.close()

        def pause_writing(self) -> None:
            events.append("pause")

        def resume_writing(self) -> None:
            events.append("resume")
            self.push()

    async def main() -> None:
        srv, port = await serve(Flood)
        loop = asyncio.get_running_loop()
        with socket.create_connection(("127.0.0.1", port)) as s:
            await asyncio.sleep(0.05)  # the server fills the socket and pauses
            total = 0
            while True:
                data = await loop.run_in_executor(None, s.recv, 1 << 20)
                if not data:
                    break
                assert set(data) == {ord("y")}
                total += len(data)
        assert total == CHUNKS * len(chunk)
        srv.close()
        await srv.wait_closed()

    ats_asyncio.run(main())
    assert "pause" in events and "resume" in events
    assert events.index("pause") < events.index("resume")


def test_buffered_protocol_gets_every_byte() -> None:
    received = bytearray()
    done: list[asyncio.Future[None]] = []

    class Buffered(asyncio.BufferedProtocol):
        def __init__(self) -> None:
            self.buf = bytearray(1000)  # smaller than what arrives at once

        def get_buffer(self, sizehint: int) -> bytearray:
            return self.buf

        def buffer_updated(self, nbytes: int) -> None:
            received.extend(self.buf[:nbytes])

        def eof_received(self) -> None:
            done[0].set_result(None)

    async def main() -> None:
        done.append(asyncio.get_running_loop().create_future())
        srv, port = await serve(Buffered)
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"0123456789" * 10_000)
            s.shutdown(socket.SHUT_WR)
            await asyncio.wait_for(done[0], 10)
        srv.close()
        await srv.wait_closed()

    ats_asyncio.run(main())
    assert received == b"0123456789" * 10_000


def test_half_close_both_ways() -> None:
    class Answer(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.got = b""

        def data_received(self, data: bytes) -> None:
            self.got += data

        def eof_received(self) -> bool:
            self.transport.write(b"got " + self.got)  # still writable after the peer's EOF
            self.transport.write_eof()
            return True

    async def main() -> None:
        srv, port = await serve(Answer)
        r, w = await asyncio.open_connection("127.0.0.1", port)
        assert w.can_write_eof()
        w.write(b"question")
        w.write_eof()
        assert await asyncio.wait_for(r.read(), 10) == b"got question"
        w.close()
        await w.wait_closed()
        srv.close()
        await srv.wait_closed()

    ats_asyncio.run(main())


def test_a_raising_callback_closes_its_connection_only() -> None:
    contexts: list[dict[str, Any]] = []
    lost: list[BaseException | None] = []

    class Faulty(Echo):
        def data_received(self, data: bytes) -> None:
            if data == b"boom":
                raise ValueError("protocol bug")
            super().data_received(data)

        def connection_lost(self, exc: BaseException | None) -> None:
            lost.append(exc)

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: contexts.append(ctx))
        srv, port = await serve(Faulty)
        r1, w1 = await asyncio.open_connection("127.0.0.1", port)
        w1.write(b"boom")
        assert await asyncio.wait_for(r1.read(), 10) == b""  # closed by the server
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)  # still serving
        w2.write(b"ping")
        assert await asyncio.wait_for(r2.readexactly(4), 10) == b"ping"
        for w in (w1, w2):
            w.close()
            await w.wait_closed()
        srv.close()
        await srv.wait_closed()

    ats_asyncio.run(main())
    assert len(contexts) == 1
    assert isinstance(contexts[0]["exception"], ValueError)
    assert "data_received" in contexts[0]["message"]
    assert isinstance(lost[0], ValueError)


def test_peer_reset_mid_write_reaches_connection_lost() -> None:
    lost: list[BaseException | None] = []

    class Writer(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            transport.set_write_buffer_limits(high=1 << 30)
            transport.write(b"z" * (8 << 20))  # more than the socket takes

        def connection_lost(self, exc: BaseException | None) -> None:
            lost.append(exc)

    async def main() -> None:
        srv, port = await serve(Writer)
        s = socket.create_connection(("127.0.0.1", port))
        await asyncio.get_running_loop().run_in_executor(None, s.recv, 1000)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # a reset, with the server's write half done
        for _ in range(500):
            if lost:
                break
            await asyncio.sleep(0.01)
        srv.close()
        await srv.wait_closed()

    ats_asyncio.run(main())
    assert isinstance(lost[0], OSError)
    assert lost[0].errno in (errno.ECONNRESET, errno.EPIPE)


def test_transports_are_counted_open_in_the_net_stats() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        stats = loop._net_handler.stats  # type: ignore[attr-defined]
        base = stats[st.CONNECTIONS_CURRENTLY_OPEN]
        srv, port = await serve(Echo)
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"a")
        await r.readexactly(1)
        assert stats[st.CONNECTIONS_CURRENTLY_OPEN] == base + 2  # both ends
        w.close()
        await w.wait_closed()
        srv.close()
        await srv.wait_closed()
        for _ in range(200):
            if stats[st.CONNECTIONS_CURRENTLY_OPEN] == base:
                break
            await asyncio.sleep(0.01)
        assert stats[st.CONNECTIONS_CURRENTLY_OPEN] == base

    ats_asyncio.run(main())


def test_write_checks_its_argument() -> None:
    async def main() -> None:
        srv, port = await serve(Echo)
        tr, _ = await asyncio.get_running_loop().create_connection(
            asyncio.Protocol, "127.0.0.1", port
        )
        with pytest.raises(TypeError, match="bytes-like"):
            tr.write("text")  # type: ignore[arg-type]
        tr.write_eof()
        with pytest.raises(RuntimeError, match="write_eof"):
            tr.write(b"late")
        tr.close()
        srv.close()
        await srv.wait_closed()

    ats_asyncio.run(main())


def test_a_write_that_the_socket_refuses_reaches_connection_lost() -> None:
    """The first ``send`` of a ``write`` fails (the peer reset; reading paused, so only the
    write can see it): the protocol hears ``connection_lost`` with the error."""
    lost: list[BaseException | None] = []

    class P(asyncio.Protocol):
        def connection_lost(self, exc: BaseException | None) -> None:
            lost.append(exc)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        lsock = socket.create_server(("127.0.0.1", 0))
        tr, _ = await loop.create_connection(P, "127.0.0.1", lsock.getsockname()[1])
        tr.pause_reading()
        s, _ = lsock.accept()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # a reset
        lsock.close()
        for _ in range(500):
            tr.write(b"x")
            if lost:
                break
            await asyncio.sleep(0.01)
        assert tr.is_closing() and not tr.get_write_buffer_size()

    ats_asyncio.run(main())
    assert isinstance(lost[0], OSError)
    assert lost[0].errno in (errno.ECONNRESET, errno.EPIPE)


def test_writes_after_the_close_are_dropped_and_warned_of(caplog: Any) -> None:
    """As asyncio's transports: no error, nothing sent, a warning once the count of such
    writes reaches asyncio's threshold."""
    from asyncio import constants

    async def main() -> None:
        loop = asyncio.get_running_loop()
        lsock = socket.create_server(("127.0.0.1", 0))
        tr, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", lsock.getsockname()[1])
        s, _ = lsock.accept()
        tr.close()
        with caplog.at_level("WARNING", logger="asyncio"):
            for _ in range(constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES - 1):
                tr.write(b"late")
            assert not caplog.records
            tr.write(b"late")
            assert [r.getMessage() for r in caplog.records] == ["socket.send() raised exception."]
        assert tr.get_write_buffer_size() == 0
        await asyncio.sleep(0.05)
        s.settimeout(5)
        assert s.recv(100) == b""  # closed, nothing of the writes
        s.close()
        lsock.close()

    ats_asyncio.run(main())


def test_a_memoryview_of_wide_items_arrives_byte_exact() -> None:
    """``write`` of a memoryview whose items are 4 bytes, larger than the socket takes at
    once: its first ``send`` is counted in bytes, and the rest kept from the right byte."""
    import array

    items = array.array("i", range(2_000_000))  # 8 MB
    want = items.tobytes()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        lsock = socket.create_server(("127.0.0.1", 0))
        tr, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", lsock.getsockname()[1])
        s, _ = lsock.accept()
        tr.write(memoryview(items))
        assert tr.get_write_buffer_size() > 0  # a part was kept
        tr.close()
        s.setblocking(False)
        got = bytearray()
        while True:
            chunk = await loop.sock_recv(s, 1 << 20)
            if not chunk:
                break
            got += chunk
        s.close()
        lsock.close()
        assert len(got) == len(want) and got == want

    ats_asyncio.run(main())
