"""ATS's connection management for an asyncio server on Loop (``create_server`` with
``ServerOptions``): the InactivityCop's timeouts, on the test's fake clock, and the
connections throttle, with the net stats counting both."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import ats_cffi.asyncio as ats_asyncio
from ats_cffi.net import stats as st
from ats_cffi.net.config import net_config
from ats_cffi.net.throttle import change_net_connections_throttle
from tests.asyncio.recorder import Recorder, fresh_recorder, passes, until  # noqa: F401
from tests.conftest import FakeClock

CHECK_EVERY = net_config.inactivity_check_frequency


async def close(w: asyncio.StreamWriter, srv: asyncio.Server) -> None:
    w.close()
    await w.wait_closed()
    srv.close()
    await srv.wait_closed()


def run_on_fake_clock(loop: ats_asyncio.Loop, main: Any) -> None:
    try:
        loop.run_until_complete(main)
    finally:
        loop.close()


def test_an_idle_connection_is_closed_by_the_inactivity_cop() -> None:
    clock = FakeClock()
    loop = ats_asyncio.Loop(clock=clock)

    async def main() -> None:
        stats = loop._net_handler.stats
        options = ats_asyncio.ServerOptions(inactivity_timeout=5.0)
        srv = await ats_asyncio.create_server(Recorder, "127.0.0.1", 0, options=options)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"hi")
        # bytes moved: the inactivity deadline is now + 5 s
        assert await asyncio.wait_for(r.readexactly(2), 10) == b"hi"
        (proto,) = Recorder.made
        base = stats[st.INACTIVITY_TIMEOUTS]
        clock.advance(CHECK_EVERY)  # a cop run lists the idle connection
        await passes()
        clock.advance(4.0 - CHECK_EVERY)  # 4 s idle: not yet
        await passes()
        assert proto.lost == []
        clock.advance(1.5)  # 5.5 s idle: the next cop run closes it
        await passes()
        await until(lambda: proto.lost, "connection_lost")
        assert isinstance(proto.lost[0], TimeoutError)
        assert stats[st.INACTIVITY_TIMEOUTS] == base + 1
        assert await asyncio.wait_for(r.read(), 10) == b""  # the client sees the close
        await close(w, srv)

    run_on_fake_clock(loop, main())


def test_an_active_timeout_closes_a_busy_connection() -> None:
    clock = FakeClock()
    loop = ats_asyncio.Loop(clock=clock)

    async def main() -> None:
        stats = loop._net_handler.stats
        base = stats[st.ACTIVE_TIMEOUTS]
        options = ats_asyncio.ServerOptions(active_timeout=3.0)
        srv = await ats_asyncio.create_server(Recorder, "127.0.0.1", 0, options=options)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(4):  # busy: a message every second, 4 s in all
            w.write(b"x")
            assert await asyncio.wait_for(r.readexactly(1), 10) == b"x"
            clock.advance(1.0)
            await passes()
        await until(lambda: Recorder.made[0].lost, "connection_lost")
        assert isinstance(Recorder.made[0].lost[0], TimeoutError)
        assert stats[st.ACTIVE_TIMEOUTS] == base + 1
        await close(w, srv)

    run_on_fake_clock(loop, main())


@pytest.fixture
def throttle_at_4() -> Iterator[None]:
    net_config.set("proxy.config.net.connections_throttle", 4)
    change_net_connections_throttle()
    try:
        yield
    finally:
        net_config.reset()
        change_net_connections_throttle()


def test_the_throttle_refuses_connections_past_the_limit(throttle_at_4: None) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        stats = loop._net_handler.stats  # type: ignore[attr-defined]
        base = stats[st.CONNECTIONS_THROTTLED_IN]
        assert st.net_stats.sum_unlocked(st.CONNECTIONS_CURRENTLY_OPEN) == 0
        srv = await ats_asyncio.create_server(Recorder, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(6)]
        try:
            # 4 open (4 * 1.1 >= 4): the 5th and 6th are closed at once, no protocol made
            await until(lambda: stats[st.CONNECTIONS_THROTTLED_IN] == base + 2, "2 refused")
            await until(lambda: len(Recorder.made) == 4, "4 accepted")
            await passes()
            assert len(Recorder.made) == 4
            for c in clients:
                c.settimeout(10)
            got = [c.recv(1) if i >= 4 else None for i, c in enumerate(clients)]
            assert got[4:] == [b"", b""]  # refused: closed by the server
            clients[0].sendall(b"ok")  # the accepted ones are served
            assert await loop.run_in_executor(None, clients[0].recv, 2) == b"ok"
        finally:
            for c in clients:
                c.close()
        srv.close()
        await srv.wait_closed()

    ats_asyncio.run(main())


def test_a_plain_create_server_is_not_throttled(throttle_at_4: None) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(Recorder, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(6)]
        try:
            await until(lambda: len(Recorder.made) == 6, "6 accepted")
        finally:
            for c in clients:
                c.close()
        srv.close()
        await srv.wait_closed()

    ats_asyncio.run(main())


def test_accept_threads_hand_their_connections_to_the_loop() -> None:
    """``accept_threads=2``: two dedicated threads accept (off the loop's thread) and the
    connections are served on the loop's, counted in the net stats; closing the server
    stops and joins the threads, leaving no fd (the autouse fixture checks)."""

    async def main() -> None:
        loop_thread = threading.get_ident()
        before = {t.name for t in threading.enumerate()}
        total = st.net_stats.sum_unlocked(st.TOTAL_ACCEPTS)
        options = ats_asyncio.ServerOptions(accept_threads=2)
        made_on: list[int] = []

        class Where(Recorder):
            def connection_made(self, transport: Any) -> None:
                made_on.append(threading.get_ident())
                super().connection_made(transport)

        srv = await ats_asyncio.create_server(Where, "127.0.0.1", 0, options=options)
        port = srv.sockets[0].getsockname()[1]
        names = {t.name for t in threading.enumerate()} - before
        assert names == {f"[ACCEPT 0:{port}]", f"[ACCEPT 1:{port}]"}
        streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
        for i, (_, w) in enumerate(streams):
            w.write(b"%02d" % i)
        for i, (r, _) in enumerate(streams):
            assert await asyncio.wait_for(r.readexactly(2), 10) == b"%02d" % i
        assert made_on == [loop_thread] * 20
        assert st.net_stats.sum_unlocked(st.TOTAL_ACCEPTS) == total + 20
        for _, w in streams:
            w.close()
            await w.wait_closed()
        await until(lambda: all(p.lost for p in Recorder.made), "20 connection_lost")
        srv.close()
        await srv.wait_closed()
        assert {t.name for t in threading.enumerate() if t.is_alive()} - before == set()

    ats_asyncio.run(main())


@pytest.mark.parametrize("threads", [0, 1])
def test_a_fatal_accept_error_reaches_the_exception_handler_on_the_loop(threads: int) -> None:
    """The listening socket shut down under the server (accept4 then fails with EINVAL):
    the loop's exception handler hears it, on the loop's thread, from the loop's own accept
    or from an accept thread; the server still closes cleanly."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        heard: list[tuple[dict[str, Any], int]] = []
        loop.set_exception_handler(lambda _, ctx: heard.append((ctx, threading.get_ident())))
        options = ats_asyncio.ServerOptions(accept_threads=threads)
        srv = await ats_asyncio.create_server(Recorder, "127.0.0.1", 0, options=options)
        (lsock,) = srv.sockets
        dup = socket.socket(fileno=os.dup(lsock.fileno()))
        try:
            dup.shutdown(socket.SHUT_RDWR)
        finally:
            dup.close()
        await until(lambda: heard, "the exception handler")
        ((ctx, tid),) = heard
        assert tid == threading.get_ident()
        assert ctx["message"].startswith("accept failed")
        assert isinstance(ctx["exception"], OSError) and ctx["exception"].errno == errno.EINVAL
        srv.close()
        await srv.wait_closed()

    ats_asyncio.run(main())


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="inactivity_timeout"):
        ats_asyncio.ServerOptions(inactivity_timeout=0)
    with pytest.raises(TypeError, match="active_timeout"):
        ats_asyncio.ServerOptions(active_timeout="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="throttle"):
        ats_asyncio.ServerOptions(throttle=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="accept_threads"):
        ats_asyncio.ServerOptions(accept_threads=True)
    with pytest.raises(ValueError, match="accept_threads must be between 0 and 1024, got -1"):
        ats_asyncio.ServerOptions(accept_threads=-1)

    async def on_asyncio() -> None:
        with pytest.raises(TypeError, match="ats_cffi.asyncio.Loop"):
            await ats_asyncio.create_server(Recorder, "127.0.0.1", 0)

    asyncio.run(on_asyncio())

    async def bad_options() -> None:
        with pytest.raises(TypeError, match="options"):
            await ats_asyncio.create_server(Recorder, "127.0.0.1", 0, options={})  # type: ignore[arg-type]

    ats_asyncio.run(bad_options())
