"""The loop's one continuation of its transports (``TransportDispatch``): every VC's events
find their transport by fd and run in that transport's context; the loop holds a transport
from its making to its close."""

from __future__ import annotations

import asyncio
import contextvars
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

import ats_cffi.asyncio as ats_asyncio
from ats_cffi.asyncio.dispatch import TransportCore, TransportDispatch
from ats_cffi.eventsystem.codes import EVENT_CONT, VC_EVENT_READ_READY, VC_EVENT_WRITE_READY
from ats_cffi.eventsystem.iobuffer import MIOBuffer
from ats_cffi.eventsystem.mutex import ProxyMutex
from ats_cffi.net.netvc import UnixNetVConnection
from ats_cffi.net.stats import new_counters
from tests.asyncio.recorder import Recorder, fresh_recorder, until  # noqa: F401

who: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


@asynccontextmanager
async def echoed(n: int = 1, factory: Any = Recorder) -> AsyncIterator[list[socket.socket]]:
    """A server and ``n`` non-blocking clients of it, each echoed one byte; closed after."""
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(factory, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    try:
        for i, c in enumerate(clients):
            c.setblocking(False)
            await loop.sock_sendall(c, b"%d" % i)
            assert await loop.sock_recv(c, 1) == b"%d" % i
        yield clients
    finally:
        for c in clients:
            c.close()
        srv.close()
        await srv.wait_closed()


def test_connections_of_a_loop_share_its_one_continuation() -> None:
    async def main() -> None:
        loop: Any = asyncio.get_running_loop()
        dispatch = loop._vc_dispatch
        async with echoed(3):
            transports = [p.transport for p in Recorder.made]
            fds = [t._sock_fd for t in transports]
            for t, fd in zip(transports, fds):
                assert t._vc.read.cont is dispatch and t._vc.write.cont in (None, dispatch)
                assert dispatch.get(fd) is t
            assert set(dispatch.transports()) == set(transports)
            for t in transports:
                t.close()
            await until(lambda: all(dispatch.get(fd) is None for fd in fds), "the releases")
            assert list(dispatch.transports()) == []

    ats_asyncio.run(main())


def test_each_connection_runs_its_callbacks_in_its_own_context() -> None:
    seen: list[tuple[str, str]] = []

    class Tag(Recorder):
        def data_received(self, data: bytes) -> None:
            seen.append(("data", who.get()))
            who.set(data.decode())
            super().data_received(data)

        def connection_lost(self, exc: BaseException | None) -> None:
            seen.append(("lost", who.get()))

    async def main() -> None:
        async with echoed(2, Tag) as (a, b):
            a.close()  # EOF: the transport closes, connection_lost in a's context
            await until(lambda: len(seen) == 3, "the first connection_lost")
            b.close()
            await until(lambda: len(seen) == 4, "the second connection_lost")

    ats_asyncio.run(main())
    assert seen == [("data", "nobody"), ("data", "nobody"), ("lost", "0"), ("lost", "1")]


def test_add_reader_refuses_the_fd_of_an_open_transport() -> None:
    async def main() -> None:
        loop: Any = asyncio.get_running_loop()
        async with echoed():
            fd = Recorder.made[0].transport._sock_fd
            with pytest.raises(RuntimeError, match="is used by transport"):
                loop.add_reader(fd, lambda: None)
            s = socket.socket(fileno=fd)  # a file object of the same fd
            try:
                with pytest.raises(RuntimeError, match="is used by transport"):
                    loop.add_writer(s, lambda: None)
            finally:
                s.detach()

    ats_asyncio.run(main())


def test_add_reader_takes_the_fd_of_a_closing_transport() -> None:
    """As on asyncio's loop: a closing transport no longer reads, its fd may be watched
    until connection_lost closes it; one still writing what it holds keeps it."""

    async def main() -> None:
        loop: Any = asyncio.get_running_loop()
        a, b = socket.socketpair()
        c, d = socket.socketpair()
        try:
            a.setblocking(False)
            tr, _ = await loop.create_connection(asyncio.Protocol, sock=a)
            fd = a.fileno()
            tr.close()
            readable = loop.create_future()
            loop.add_reader(fd, lambda: readable.done() or readable.set_result(True))
            b.send(b"x")
            assert await asyncio.wait_for(readable, 5)
            assert loop.remove_reader(fd)

            c.setblocking(False)
            tr2, _ = await loop.create_connection(asyncio.Protocol, sock=c)
            tr2.write(b"y" * (8 << 20))  # more than the socket buffers take
            assert tr2.get_write_buffer_size()
            tr2.close()
            with pytest.raises(RuntimeError, match="still writing"):
                loop.add_reader(c.fileno(), lambda: None)
            tr2.abort()
            await asyncio.sleep(0)
        finally:
            for s in (a, b, c, d):
                s.close()

    ats_asyncio.run(main())


def test_default_write_buffer_limits_are_asyncios() -> None:
    async def main() -> None:
        async with echoed():
            tr = Recorder.made[0].transport
            assert tr.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
            tr.set_write_buffer_limits(high=1000)
            assert tr.get_write_buffer_limits() == (250, 1000)
            tr.set_write_buffer_limits()
            assert tr.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
            with pytest.raises(ValueError):
                tr.set_write_buffer_limits(high=1, low=2)

    ats_asyncio.run(main())


def test_a_released_transport_leaves_the_next_owner_of_its_fd() -> None:
    d = TransportDispatch(ProxyMutex(), lambda t, event, vio: 0, MIOBuffer().alloc_reader())
    ctx = contextvars.copy_context()
    old, new = (TransportCore(t, 5, ctx, new_counters(1), True, d) for t in ("old", "new"))
    d.add(5, old)
    d.add(5, new)  # the fd was closed and made again: another connection's
    d.remove(5, old)
    assert d.get(5) == "new"
    d.remove(5, new)
    assert d.get(5) is None
    assert d.get(-1) is None and d.get(10**6) is None
    d.add(300, old)
    assert d.get(300) == "old" and list(d.transports()) == ["old"]


def test_an_event_runs_the_handler_in_the_transports_context() -> None:
    calls: list[tuple[Any, int, Any, str]] = []

    class T:  # a BufferedProtocol's transport (no core.protocol): its reads go to on_event
        def __init__(self) -> None:
            ctx = contextvars.copy_context()
            ctx.run(who.set, "t")
            self.core = TransportCore(self, 9, ctx, new_counters(1), True, d)

    def on_event(t: Any, event: int, vio: Any) -> int:
        calls.append((t, event, vio, who.get()))
        return 42

    d = TransportDispatch(ProxyMutex(), on_event, MIOBuffer().alloc_reader())
    vc = UnixNetVConnection()
    vc.fd = 9
    with pytest.raises(KeyError):  # a VC of no transport
        d.handle_event(VC_EVENT_READ_READY, vc.read)
    t = T()
    d.add(9, t.core)
    assert d.handle_event(VC_EVENT_READ_READY, vc.write) == 42
    assert calls == [(t, VC_EVENT_READ_READY, vc.write, "t")]
    assert who.get() == "nobody"


def test_a_read_goes_to_data_received_in_the_transports_context() -> None:
    """A plain Protocol's read: all the loop's read buffer holds, to ``data_received``, run
    in the transport's context; what it raises reaches the transport's ``_fatal_error`` (in
    that context too); a lost connection's read goes to ``on_event``, as other events do."""
    seen: list[tuple[str, Any]] = []

    class P:
        def data_received(self, data: bytes) -> None:
            seen.append(("data", data, who.get()))
            if data == b"boom":
                raise ValueError("boom")

    class T:
        def __init__(self) -> None:
            ctx = contextvars.copy_context()
            ctx.run(who.set, "t")
            self.core = TransportCore(self, 3, ctx, new_counters(1), True, d)
            self.core.protocol = P()

        def _fatal_error(self, exc: BaseException, message: str) -> None:
            seen.append(("fatal", repr(exc), message, who.get()))

    def on_event(t: Any, event: int, vio: Any) -> int:
        seen.append(("event", event, who.get()))
        return 7

    buf = MIOBuffer()
    d = TransportDispatch(ProxyMutex(), on_event, buf.alloc_reader())
    vc = UnixNetVConnection()
    vc.fd = 3
    t = T()
    d.add(3, t.core)
    buf.write(b"hello ")
    buf.write(b"world")
    assert d.handle_event(VC_EVENT_READ_READY, vc.read) == EVENT_CONT
    assert seen == [("data", b"hello world", "t")]
    assert not d.reader.read_avail()
    buf.write(b"boom")
    assert d.handle_event(VC_EVENT_READ_READY, vc.read) == EVENT_CONT
    assert seen[1:] == [
        ("data", b"boom", "t"),
        ("fatal", "ValueError('boom')", "Fatal error: protocol.data_received() call failed.", "t"),
    ]
    assert d.handle_event(VC_EVENT_WRITE_READY, vc.write) == 7
    t.core.lost = 1
    assert d.handle_event(VC_EVENT_READ_READY, vc.read) == 7
    assert seen[3:] == [("event", VC_EVENT_WRITE_READY, "t"), ("event", VC_EVENT_READ_READY, "t")]
    assert who.get() == "nobody"


def test_a_read_that_reaches_the_transport_itself_is_delivered() -> None:
    """A plain Protocol's read that comes to the transport's own handler rather than the
    dispatch (a TLS transport's handshake continuation forwards its events so) still goes
    to data_received: no byte is dropped."""

    async def main() -> None:
        loop: Any = asyncio.get_running_loop()
        got: list[bytes] = []

        class P(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                got.append(data)

        a, b = socket.socketpair()
        try:
            a.setblocking(False)
            tr, _ = await loop.create_connection(P, sock=a)
            loop._read_buffer.write(b"early")
            assert tr._vc_event(VC_EVENT_READ_READY, None) == EVENT_CONT
            assert got == [b"early"] and not loop._read_reader.read_avail()
            tr.close()
            await asyncio.sleep(0)
        finally:
            b.close()

    ats_asyncio.run(main())
