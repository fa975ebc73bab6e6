"""Servers of the asyncio loop accept through the net core: each listening socket is a
NetAccept on the loop's NetHandler (ats_cffi/asyncio/accept.py), its connections VCs with
no socket object and no Task, the Server object asyncio's own."""

from __future__ import annotations

import asyncio
import contextvars
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import ats_cffi.asyncio as ats_asyncio
from ats_cffi.asyncio.accept import ServerAccept
from ats_cffi.asyncio.transport import VCTransport
from ats_cffi.net import stats as st
from tests.asyncio.recorder import Recorder, fresh_recorder, until  # noqa: F401


def run(main: Callable[[], Awaitable[None]]) -> None:
    ats_asyncio.run(main())  # type: ignore[arg-type]


async def echo_once(family: int, addr: Any, payload: bytes = b"ping") -> None:
    loop = asyncio.get_running_loop()
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setblocking(False)
        await loop.sock_connect(s, addr)
        await loop.sock_sendall(s, payload)
        got = b""
        while len(got) < len(payload):
            got += await asyncio.wait_for(loop.sock_recv(s, 100), 10)
        assert got == payload


async def stop(srv: asyncio.Server) -> None:
    srv.close()
    await srv.wait_closed()


def test_connections_are_vcs_of_the_loop_accepted_without_a_task_or_socket_object() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        stats = loop._net_handler.stats  # type: ignore[attr-defined]
        srv = await loop.create_server(Recorder, "127.0.0.1", 0)
        (accept,) = loop._server_accepts.values()  # type: ignore[attr-defined]
        assert isinstance(accept, ServerAccept)
        assert accept.na.n_accepted == 0
        port = srv.sockets[0].getsockname()[1]
        base = stats[st.TOTAL_ACCEPTS]
        tasks = len(asyncio.all_tasks())
        with socket.create_connection(("127.0.0.1", port)) as c:
            await until(lambda: Recorder.made and hasattr(Recorder.made[0], "transport"), "made")
            assert len(asyncio.all_tasks()) == tasks  # no accept Task
            tr = Recorder.made[0].transport
            assert isinstance(tr, VCTransport) and tr._sock is None
            assert stats[st.TOTAL_ACCEPTS] == base + 1 and accept.na.n_accepted == 1
            # the extras, read when asked
            assert tr.get_extra_info("peername") == c.getsockname()
            assert tr.get_extra_info("sockname") == c.getpeername()
            ts = tr.get_extra_info("socket")
            assert ts.getpeername() == c.getsockname() and ts.fileno() == tr._sock_fd
            assert ts.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            assert tr.get_extra_info("nothing", 7) == 7
            c.sendall(b"hello")
            c.settimeout(10)
            assert await loop.run_in_executor(None, c.recv, 5) == b"hello"
        await until(lambda: Recorder.made[0].lost == [None], "connection_lost")
        assert tr.get_extra_info("socket") is ts or tr.get_extra_info("socket") is not None
        await stop(srv)

    run(main)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_start_server_serves_each_family(host: str) -> None:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(await r.readexactly(3))
        await w.drain()
        w.close()

    async def main() -> None:
        srv = await asyncio.start_server(handle, host, 0)
        addr = srv.sockets[0].getsockname()
        r, w = await asyncio.open_connection(addr[0], addr[1])
        w.write(b"abc")
        assert await asyncio.wait_for(r.read(), 10) == b"abc"
        w.close()
        await w.wait_closed()
        await stop(srv)

    run(main)


def test_a_host_list_listens_on_every_host_and_each_socket_accepts() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(Recorder, ["127.0.0.1", "::1"], 0)
        assert len(srv.sockets) == 2
        assert len(loop._server_accepts) == 2  # type: ignore[attr-defined]
        for s in srv.sockets:
            await echo_once(s.family, s.getsockname())
        await stop(srv)
        assert loop._server_accepts == {}  # type: ignore[attr-defined]

    run(main)


def test_an_af_unix_server_is_accepted_by_the_net_core(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        srv = await loop.create_unix_server(Recorder, path)
        await echo_once(socket.AF_UNIX, path, b"unix")
        (accept,) = loop._server_accepts.values()  # type: ignore[attr-defined]
        assert accept.na.n_accepted == 1
        assert Recorder.made[0].transport.get_extra_info("sockname") == path
        await stop(srv)

    run(main)


def test_a_given_sock_and_reuse_port_servers_share_a_port() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        a = await loop.create_server(Recorder, "127.0.0.1", 0, reuse_port=True)
        port = a.sockets[0].getsockname()[1]
        b = await loop.create_server(Recorder, "127.0.0.1", port, reuse_port=True)
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        c = await loop.create_server(Recorder, sock=ls, backlog=5)
        for _ in range(4):
            await echo_once(socket.AF_INET, ("127.0.0.1", port))
        await echo_once(socket.AF_INET, ls.getsockname())
        assert len(Recorder.made) == 5
        for srv in (a, b, c):
            await stop(srv)
        assert ls.fileno() == -1  # the server closed the socket it was given, as asyncio's

    run(main)


def test_start_serving_later_and_close_stop_the_accept() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(Recorder, "127.0.0.1", 0, start_serving=False)
        addr = srv.sockets[0].getsockname()
        assert not srv.is_serving() and loop._server_accepts == {}  # type: ignore[attr-defined]
        await srv.start_serving()
        assert srv.is_serving()
        await echo_once(socket.AF_INET, addr)
        srv.close()
        assert not srv.is_serving() and srv.sockets == ()
        with pytest.raises(ConnectionRefusedError):  # the listening socket is closed
            await echo_once(socket.AF_INET, addr)
        await srv.wait_closed()

    run(main)


def test_wait_closed_waits_for_the_accepted_connections() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(Recorder, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        c = socket.create_connection(("127.0.0.1", port))
        await until(lambda: Recorder.made, "accepted")
        waiter = asyncio.ensure_future(srv.wait_closed())  # before close: Python 3.11's
        await asyncio.sleep(0)  # wait_closed returns at once once closed
        srv.close()
        await asyncio.sleep(0.01)
        assert not waiter.done()  # a connection is still attached
        c.close()
        await asyncio.wait_for(waiter, 10)
        assert Recorder.made[0].lost == [None]

    run(main)


def test_serve_forever_cancelled_closes_the_server() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(Recorder, "127.0.0.1", 0, start_serving=False)
        addr = srv.sockets[0].getsockname()
        task = asyncio.ensure_future(srv.serve_forever())
        await asyncio.sleep(0)
        await echo_once(socket.AF_INET, addr)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not srv.is_serving() and loop._server_accepts == {}  # type: ignore[attr-defined]

    run(main)


def test_the_factory_runs_in_a_copy_of_the_start_serving_context_per_connection() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="outer")
    seen: list[str] = []

    class Ctx(Recorder):
        def __init__(self) -> None:
            super().__init__()
            seen.append(var.get())
            var.set("set by a factory")  # its own copy: the next connection sees "inner"

        def data_received(self, data: bytes) -> None:
            seen.append(var.get())
            super().data_received(data)

    async def main() -> None:
        var.set("inner")
        srv = await asyncio.get_running_loop().create_server(Ctx, "127.0.0.1", 0)
        var.set("changed after")
        addr = srv.sockets[0].getsockname()
        await echo_once(socket.AF_INET, addr)
        await echo_once(socket.AF_INET, addr)
        await stop(srv)

    run(main)
    assert seen == ["inner", "set by a factory", "inner", "set by a factory"]


def test_a_factory_that_raises_closes_that_connection_and_the_server_goes_on() -> None:
    calls: list[int] = []
    errors: list[dict[str, Any]] = []

    def factory() -> Recorder:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("no protocol")
        return Recorder()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_debug(True)
        loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
        srv = await loop.create_server(factory, "127.0.0.1", 0)
        addr = srv.sockets[0].getsockname()
        with socket.create_connection(addr) as c:
            c.settimeout(10)
            assert await loop.run_in_executor(None, c.recv, 1) == b""  # closed by the server
        await echo_once(socket.AF_INET, addr)
        await stop(srv)

    run(main)
    assert len(calls) == 2
    assert [type(e["exception"]) for e in errors] == [RuntimeError]
    assert "incoming connection" in errors[0]["message"]


def test_closing_the_loop_with_a_server_open_leaves_its_socket_to_the_server() -> None:
    loop = ats_asyncio.new_event_loop()
    try:
        srv = loop.run_until_complete(loop.create_server(Recorder, "127.0.0.1", 0))
        sock = srv.sockets[0]
        fd = sock.fileno()
    finally:
        loop.close()
    assert sock.fileno() == fd  # still open, the server's
    srv.close()  # closes it (on a closed loop, as asyncio's)
    assert srv.sockets == ()


def test_the_listener_is_counted_open_while_it_serves() -> None:
    async def main() -> None:
        before = st.net_stats.sum_unlocked(st.ACCEPTS_CURRENTLY_OPEN)
        srv = await asyncio.get_running_loop().create_server(Recorder, "127.0.0.1", 0)
        assert st.net_stats.sum_unlocked(st.ACCEPTS_CURRENTLY_OPEN) == before + 1
        await stop(srv)
        assert st.net_stats.sum_unlocked(st.ACCEPTS_CURRENTLY_OPEN) == before

    run(main)
