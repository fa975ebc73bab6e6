"""``ssl=`` with the net core's TLS contexts on the asyncio loop: TLSVCTransports over
SSLNetVConnections, beside asyncio's own TLS (an ``ssl.SSLContext``) as the peer."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ats_cffi.asyncio as ats_asyncio
from ats_cffi.net.stats import tls_stats
from ats_cffi.net.tls import ClientContext, ServerContext, tls_config
from tests.conftest import FakeClock
from tests.net.tls_certs import TestCA


@pytest.fixture
def ca(tmp_path: Path) -> Iterator[TestCA]:
    tls_config.reset()
    tls_stats.reset()
    yield TestCA(tmp_path)
    tls_config.reset()


def server_context(ca: TestCA) -> ServerContext:
    leaf = ca.leaf("localhost", "localhost", "127.0.0.1")
    return ServerContext.from_files(leaf.cert, leaf.key, alpn=("http/1.1",))


async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    while data := await r.read(65536):
        w.write(data)
        await w.drain()
    w.close()


async def round_trip(r: asyncio.StreamReader, w: asyncio.StreamWriter, data: bytes) -> bytes:
    w.write(data)
    got = await asyncio.wait_for(r.readexactly(len(data)), 30)
    return got


def test_streams_echo_over_the_net_cores_tls_both_ways(ca) -> None:
    made: list[Any] = []

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        made.append(w.transport)
        await echo(r, w)

    async def main() -> None:
        srv = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_context(ca))
        port = srv.sockets[0].getsockname()[1]
        cctx = ClientContext(str(ca.pem), alpn=("http/1.1",))
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=cctx,
                                             server_hostname="localhost")  # fmt: skip
        data = bytes(range(256)) * 4096  # 1 MiB
        assert await round_trip(r, w, data) == data
        info = w.get_extra_info("tls")
        assert info["version"] == "TLSv1.3" and info["alpn"] == "http/1.1"
        assert w.get_extra_info("sslcontext") is cctx
        assert made[0].get_extra_info("tls")["servername"] == "localhost"
        assert not w.can_write_eof()
        w.close()
        await w.wait_closed()
        srv.close()
        await srv.wait_closed()

    ats_asyncio.run(main())
    snap = tls_stats.snapshot()
    assert snap["proxy.process.ssl.total_success_handshake_count_in"] == 1
    assert snap["proxy.process.ssl.total_success_handshake_count_out"] == 1


def test_asyncios_own_tls_client_talks_to_the_net_cores_tls_server(ca) -> None:
    async def main() -> None:
        srv = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_context(ca))
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ssl.create_default_context(cafile=str(ca.pem)),
            server_hostname="localhost",
        )  # fmt: skip
        assert await round_trip(r, w, b"x" * 100_000) == b"x" * 100_000
        w.close()
        await w.wait_closed()
        srv.close()
        await srv.wait_closed()

    ats_asyncio.run(main())


def test_connection_made_comes_after_the_handshake_and_a_failed_one_is_an_error(
    ca, tmp_path
) -> None:
    made: list[Any] = []

    class Server(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            made.append(transport.get_extra_info("tls"))
            transport.write(b"welcome")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(Server, "127.0.0.1", 0, ssl=server_context(ca))
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ClientContext(str(ca.pem)),
                                             server_hostname="localhost")  # fmt: skip
        assert await asyncio.wait_for(r.readexactly(7), 10) == b"welcome"
        assert made and made[0]["version"] == "TLSv1.3"  # the session existed already
        w.close()
        await w.wait_closed()
        other = TestCA(tmp_path, cn="another CA")
        with pytest.raises(ssl.SSLError, match="certificate verify failed"):
            await asyncio.open_connection("127.0.0.1", port, ssl=ClientContext(str(other.pem)),
                                          server_hostname="localhost")  # fmt: skip
        with pytest.raises(ssl.SSLError):  # a name the certificate is not for
            await asyncio.open_connection("127.0.0.1", port, ssl=ClientContext(str(ca.pem)),
                                          server_hostname="elsewhere.test")  # fmt: skip
        srv.close()
        await srv.wait_closed()
        assert len(made) == 1  # the failed handshakes made no server protocol either

    ats_asyncio.run(main())
    assert tls_stats.get("proxy.process.ssl.ssl_error_ssl") >= 2


def test_a_stalled_handshake_ends_after_ssl_handshake_timeout(ca) -> None:
    clock = FakeClock()
    loop = ats_asyncio.Loop(clock=clock)
    made: list[Any] = []

    class Told(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            made.append(transport)

    async def main() -> None:
        srv = await loop.create_server(Told, "127.0.0.1", 0, ssl=server_context(ca),
                                       ssl_handshake_timeout=5.0)  # fmt: skip
        port = srv.sockets[0].getsockname()[1]
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        with s:
            s.sendall(b"\x16\x03\x01")  # the start of a ClientHello, and no more
            for step in (1.0, 3.0, 1.5):  # (the cop runs each second, on this clock)
                await asyncio.sleep(0.05)
                clock.advance(step)
            for _ in range(200):
                await asyncio.sleep(0.005)
                try:
                    if s.recv(10) == b"":
                        break
                except BlockingIOError:
                    continue
            else:
                raise AssertionError("the stalled handshake was not closed")
        assert made == []  # the protocol never heard of the connection
        srv.close()
        await srv.wait_closed()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
