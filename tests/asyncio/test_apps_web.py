"""Real web applications on ``ats_cffi.asyncio``'s loop: aiohttp's server and client, and
uvicorn serving a starlette app (in this process, on a loop from ``new_event_loop``, and as
``uvicorn --loop ats_cffi.asyncio:new_event_loop`` in a subprocess), each driven by a real
client (aiohttp's, and curl)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import ats_cffi.asyncio
from tests.asyncio.realservers import (
    HOST,
    free_port,
    port_accepts,
    run_on_ats_loop,
    self_signed_cert,
    spawn,
)

aiohttp = pytest.importorskip("aiohttp")
web = pytest.importorskip("aiohttp.web")

LOOP_NAME = f"{ats_cffi.asyncio.Loop.__module__}:{ats_cffi.asyncio.Loop.__qualname__}"
MIB = 1 << 20
#: The streamed response: this many chunks of CHUNK bytes, each filled with its index.
CHUNKS = 32
CHUNK = 16 * 1024
#: The big response for the slow reader: BIG bytes in pieces of PIECE.
BIG = 32 * MIB
PIECE = 64 * 1024
CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed (apt-get install curl)")


def loop_name() -> str:
    loop = asyncio.get_running_loop()
    return f"{type(loop).__module__}:{type(loop).__qualname__}"


def stream_chunk(i: int) -> bytes:
    return bytes([i % 256]) * CHUNK


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``predicate`` on the loop until it is true; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"waited {timeout} s for {what}"
        await asyncio.sleep(0.01)


def big_piece(i: int) -> bytes:
    return hashlib.sha256(i.to_bytes(4, "big")).digest() * (PIECE // 32)


# --------------------------------------------------------------------------- aiohttp


@dataclass
class Seen:
    """What the aiohttp app saw: the client's port of each request, the digests of the
    bodies posted, the websocket sessions that ended, the classes of its transports."""

    peer_ports: list[int] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)
    ws_closed: int = 0
    transports: set[str] = field(default_factory=set)
    write_buffer_sizes: list[int] = field(default_factory=list)
    big_ended: list[str] = field(default_factory=list)


def aiohttp_app(seen: Seen) -> Any:
    async def hello(request: Any) -> Any:
        seen.peer_ports.append(request.transport.get_extra_info("peername")[1])
        seen.transports.add(type(request.transport).__name__)
        return web.Response(text=f"hello from {loop_name()}")

    async def echo(request: Any) -> Any:
        seen.peer_ports.append(request.transport.get_extra_info("peername")[1])
        body = await request.read()
        seen.digests.append(hashlib.sha256(body).hexdigest())
        return web.Response(body=body, content_type="application/octet-stream")

    async def stream(request: Any) -> Any:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(CHUNKS):
            await resp.write(stream_chunk(i))
            await asyncio.sleep(0)
        await resp.write_eof()
        return resp

    async def big(request: Any) -> Any:
        resp = web.StreamResponse()
        resp.content_length = BIG
        await resp.prepare(request)
        try:
            for i in range(BIG // PIECE):
                await resp.write(big_piece(i))  # waits while the transport's writing is paused
                seen.write_buffer_sizes.append(request.transport.get_write_buffer_size())
            await resp.write_eof()
        except BaseException as exc:  # a ConnectionError if the client went away
            seen.big_ended.append("lost" if isinstance(exc, ConnectionError) else repr(exc))
            raise
        seen.big_ended.append("done")
        return resp

    async def ws(request: Any) -> Any:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await sock.send_str("echo: " + msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await sock.send_bytes(msg.data[::-1])
        seen.ws_closed += 1
        return sock

    app = web.Application(client_max_size=4 * MIB)
    app.router.add_get("/hello", hello)
    app.router.add_post("/echo", echo)
    app.router.add_get("/stream", stream)
    app.router.add_get("/ws", ws)
    app.router.add_get("/big", big)
    return app


@asynccontextmanager
async def aiohttp_server(
    seen: Seen, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[str]:
    """The app served by AppRunner + TCPSite on 127.0.0.1 at port 0 (over TLS if given an
    ``ssl_context``); yields its base URL, and cleans the runner up on exit."""
    runner = web.AppRunner(aiohttp_app(seen), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, HOST, 0, ssl_context=ssl_context)
        await site.start()
        (host, port) = runner.addresses[0][:2]
        assert host == HOST and port > 0
        yield f"{'https' if ssl_context else 'http'}://{HOST}:{port}"
    finally:
        await runner.cleanup()


async def check_requests(
    session: Any, base: str, seen: Seen, transport: str = "VCTransport"
) -> None:
    """GETs on one kept-alive connection (served over a ``transport``: the loop's own, or
    asyncio's TLS one over it), and a 1 MiB POST echoed byte for byte."""
    for _ in range(5):
        async with session.get(f"{base}/hello") as resp:
            assert resp.status == 200
            assert await resp.text() == f"hello from {LOOP_NAME}"
    assert len(seen.peer_ports) == 5
    assert len(set(seen.peer_ports)) == 1, f"not one kept-alive connection: {seen.peer_ports}"
    assert seen.transports == {transport}
    body = os.urandom(MIB)
    async with session.post(f"{base}/echo", data=body) as resp:
        assert resp.status == 200
        assert resp.content_length == MIB
        echoed = await resp.read()
    assert echoed == body
    assert seen.digests == [hashlib.sha256(body).hexdigest()]


async def check_stream(session: Any, base: str) -> None:
    """The chunked response arrives whole and in order."""
    async with session.get(f"{base}/stream") as resp:
        assert resp.status == 200
        assert resp.headers["Transfer-Encoding"] == "chunked"
        received = bytearray()
        pieces = 0
        async for piece in resp.content.iter_chunked(CHUNK):
            received += piece
            pieces += 1
    assert bytes(received) == b"".join(stream_chunk(i) for i in range(CHUNKS))
    assert pieces > 1


async def check_websocket(session: Any, base: str, seen: Seen) -> None:
    """A text and a 256 KiB binary message echoed, then a clean close the server sees."""
    payload = os.urandom(256 * 1024)
    async with session.ws_connect(f"{base}/ws") as sock:
        await sock.send_str("ping")
        assert await sock.receive_str(timeout=10) == "echo: ping"
        await sock.send_bytes(payload)
        assert await sock.receive_bytes(timeout=10) == payload[::-1]
        await sock.close()
        assert sock.closed
    await eventually(lambda: seen.ws_closed > 0, "the server's websocket handler to end")
    assert seen.ws_closed == 1


def test_aiohttp_server_and_client() -> None:
    """aiohttp.web served on the loop, aiohttp.ClientSession on the same loop: GETs on one
    kept-alive connection, a 1 MiB echo, a streamed response, a websocket round trip; then
    the server is cleaned up and its port refuses connections."""
    seen = Seen()

    async def main() -> int:
        async with aiohttp_server(seen) as base:
            connector = aiohttp.TCPConnector(limit=4)
            async with aiohttp.ClientSession(connector=connector) as session:
                await check_requests(session, base, seen)
                await check_stream(session, base)
                await check_websocket(session, base, seen)
            assert connector.closed
            port = int(base.rsplit(":", 1)[1])
        return port

    port = run_on_ats_loop(main)
    assert not port_accepts(HOST, port), "the aiohttp server still listens after cleanup"


@pytest.fixture
def tls_cert(tmp_path: Path) -> Path:
    """A self-signed certificate for 127.0.0.1 (its key beside it, key.pem)."""
    cert = self_signed_cert(tmp_path)
    if cert is None:
        pytest.skip("the openssl command is not installed: no certificate for TLS")
    return cert


def test_aiohttp_tls(tls_cert: Path) -> None:
    """HTTPS and wss: aiohttp's server with an SSLContext (asyncio's TLS protocol over the
    loop's transport), aiohttp's client verifying the certificate: GETs on one kept-alive
    connection, a 1 MiB echo, a streamed response, a websocket round trip; a client that
    does not trust the certificate is refused."""
    seen = Seen()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tls_cert, tls_cert.with_name("key.pem"))
    client_ctx = ssl.create_default_context(cafile=str(tls_cert))

    async def main() -> None:
        async with aiohttp_server(seen, server_ctx) as base:
            assert base.startswith("https://")
            connector = aiohttp.TCPConnector(ssl=client_ctx)
            async with aiohttp.ClientSession(connector=connector) as session:
                await check_requests(session, base, seen, "_SSLProtocolTransport")
                await check_stream(session, base)
                await check_websocket(session, base, seen)
            async with aiohttp.ClientSession() as session:  # the system's CAs: not ours
                with pytest.raises(aiohttp.ClientConnectorCertificateError):
                    await session.get(f"{base}/hello")

    run_on_ats_loop(main)


def test_aiohttp_concurrent_clients() -> None:
    """Twenty concurrent requests through one session (a pool of four connections): each
    gets its own body back, and the server saw at most four client ports."""
    seen = Seen()

    async def one(session: Any, base: str, i: int) -> bytes:
        async with session.post(f"{base}/echo", data=bytes([i]) * (1000 + i)) as resp:
            assert resp.status == 200
            return await resp.read()

    async def main() -> list[bytes]:
        async with aiohttp_server(seen) as base:
            connector = aiohttp.TCPConnector(limit=4)
            async with aiohttp.ClientSession(connector=connector) as session:
                return await asyncio.gather(*(one(session, base, i) for i in range(20)))

    bodies = run_on_ats_loop(main)
    assert bodies == [bytes([i]) * (1000 + i) for i in range(20)]
    assert len(seen.digests) == 20
    assert 1 <= len(set(seen.peer_ports)) <= 4, seen.peer_ports


def test_aiohttp_slow_reader() -> None:
    """A 32 MiB response to a client that pauses at every MiB: it arrives whole and in
    order, and the server's writes were held back by the transport's flow control (its
    write buffer was not empty at times, yet never grew past 1 MiB)."""
    seen = Seen()

    async def main() -> tuple[int, str]:
        async with aiohttp_server(seen) as base:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{base}/big") as resp:
                    assert resp.status == 200 and resp.content_length == BIG
                    digest, n = hashlib.sha256(), 0
                    async for piece in resp.content.iter_chunked(PIECE):
                        digest.update(piece)
                        n += len(piece)
                        if n % MIB < len(piece):
                            await asyncio.sleep(0.01)
        return n, digest.hexdigest()

    n, got = run_on_ats_loop(main)
    assert seen.big_ended == ["done"]
    expected = hashlib.sha256()
    for i in range(BIG // PIECE):
        expected.update(big_piece(i))
    assert (n, got) == (BIG, expected.hexdigest())
    sizes = seen.write_buffer_sizes
    assert len(sizes) == BIG // PIECE
    assert max(sizes) > 0, "the writes never waited: flow control not exercised"
    assert max(sizes) <= MIB, f"the write buffer grew to {max(sizes)} bytes"


def test_aiohttp_many_connections() -> None:
    """100 requests at once, each on a connection of its own (``force_close``): all
    answered, on 100 distinct client ports; then the server still answers."""
    seen = Seen()

    async def one(session: Any, base: str) -> str:
        async with session.get(f"{base}/hello") as resp:
            return await resp.text()  # type: ignore[no-any-return]

    async def main() -> list[str]:
        async with aiohttp_server(seen) as base:
            connector = aiohttp.TCPConnector(limit=0, force_close=True)
            async with aiohttp.ClientSession(connector=connector) as session:
                answers = await asyncio.gather(*(one(session, base) for _ in range(100)))
                answers.append(await one(session, base))
        return answers

    assert run_on_ats_loop(main) == [f"hello from {LOOP_NAME}"] * 101
    assert len(set(seen.peer_ports[:100])) == 100


def test_aiohttp_client_abort() -> None:
    """A client that drops the connection 1 MiB into the 32 MiB response: the server's
    handler stops (its write fails with a ConnectionError: asyncio's loop says "Cannot
    write to closing transport", this one may fail the drain with "Connection lost"),
    without a leak, and the server goes on answering."""
    seen = Seen()

    async def main() -> str:
        async with aiohttp_server(seen) as base:
            async with aiohttp.ClientSession() as session:
                resp = await session.get(f"{base}/big")
                assert len(await resp.content.readexactly(MIB)) == MIB
                resp.close()  # drops the connection mid-body
                await eventually(lambda: bool(seen.big_ended), "the /big handler to end")
                async with session.get(f"{base}/hello") as again:
                    return await again.text()  # type: ignore[no-any-return]

    assert run_on_ats_loop(main) == f"hello from {LOOP_NAME}"
    assert seen.big_ended == ["lost"]
    assert 0 < len(seen.write_buffer_sizes) < BIG // PIECE, "the handler wrote it all"


# --------------------------------------------------------------------------- uvicorn + starlette


def starlette_app(events: list[str]) -> Any:
    """Three routes (the loop's class, a JSON item using the lifespan's state, a POST echo)
    and a lifespan that records its startup (on which loop) and its shutdown in ``events``."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
        events.append(f"startup on {loop_name()}")
        yield {"greeting": "hi"}
        events.append("shutdown")

    async def loop_route(request: Any) -> Any:
        return PlainTextResponse(loop_name())

    async def item(request: Any) -> Any:
        n = request.path_params["n"]
        return JSONResponse({"n": n, "square": n * n, "greeting": request.state.greeting})

    async def echo(request: Any) -> Any:
        return Response(await request.body(), media_type="application/octet-stream")

    routes = [
        Route("/loop", loop_route),
        Route("/items/{n:int}", item),
        Route("/echo", echo, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


async def curl_on_loop(*args: str, data: bytes = b"") -> bytes:
    """Run curl (a subprocess of the loop: its pipes are the loop's) with ``data`` on its
    stdin; its stdout, after checking that it exited 0."""
    assert CURL is not None
    proc = await asyncio.create_subprocess_exec(
        CURL, "-sS", "--max-time", "10", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate(data)
    assert proc.returncode == 0, f"curl {args} exited {proc.returncode}: {err.decode()}"
    return out


async def drive_starlette(base: str) -> None:
    """aiohttp's client and curl on the app: the loop's class, a JSON route, a 1 MiB echo."""
    body = os.urandom(MIB)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/loop") as resp:
            assert resp.status == 200
            assert await resp.text() == LOOP_NAME
        async with session.get(f"{base}/items/7") as resp:
            assert await resp.json() == {"n": 7, "square": 49, "greeting": "hi"}
        async with session.post(f"{base}/echo", data=body) as resp:
            assert await resp.read() == body
        async with session.get(f"{base}/items/x") as resp:
            assert resp.status == 404
    assert await curl_on_loop(f"{base}/items/12") == b'{"n":12,"square":144,"greeting":"hi"}'
    echoed = await curl_on_loop("--data-binary", "@-", f"{base}/echo", data=body)
    assert echoed == body


@needs_curl
def test_uvicorn_starlette_in_process() -> None:
    """uvicorn.Server serving a starlette app on a loop from ``new_event_loop`` (uvicorn's
    own loop setup off: loop="none"), with httptools; lifespan startup ran on that loop
    before the first request, shutdown after ``should_exit``; the port is closed then."""
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("starlette")
    events: list[str] = []
    port = free_port()

    async def main() -> None:
        config = uvicorn.Config(
            starlette_app(events), host=HOST, port=port, loop="none", lifespan="on",
            http="httptools", ws="none", log_config=None,  # the test process's logging left alone
        )  # fmt: skip
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        while not server.started:
            assert not serving.done(), f"uvicorn stopped while starting: {serving!r}"
            await asyncio.sleep(0.01)
        assert events == [f"startup on {LOOP_NAME}"]
        try:
            await drive_starlette(f"http://{HOST}:{port}")
        finally:
            server.should_exit = True
            await asyncio.wait_for(serving, 15)
        assert events == [f"startup on {LOOP_NAME}", "shutdown"]

    run_on_ats_loop(main)
    assert not port_accepts(HOST, port), "uvicorn still listens after should_exit"


#: The app module that ``python -m uvicorn`` loads (written to the test's tmp dir): the
#: loop it runs on, an echo, and its lifespan's start and end written to $ATS_APP_MARK.
CLI_APP = """
import asyncio, os
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

MARK = Path(os.environ["ATS_APP_MARK"])


def loop_name():
    loop = asyncio.get_running_loop()
    return f"{type(loop).__module__}:{type(loop).__qualname__}"


@asynccontextmanager
async def lifespan(app):
    MARK.write_text(f"startup on {loop_name()}")
    yield
    with MARK.open("a") as f:
        f.write(" shutdown")


async def loop_route(request):
    return PlainTextResponse(loop_name())


async def echo(request):
    return Response(await request.body())


app = Starlette(
    routes=[Route("/loop", loop_route), Route("/echo", echo, methods=["POST"])],
    lifespan=lifespan,
)
"""


def curl(*args: str) -> bytes:
    assert CURL is not None
    done = subprocess.run(
        [CURL, "-sS", "--max-time", "10", *args], capture_output=True, timeout=20, check=False
    )
    assert done.returncode == 0, f"curl {args} exited {done.returncode}: {done.stderr.decode()}"
    return done.stdout


@needs_curl
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_uvicorn_cli_loop_option(tmp_path: Path, stop: signal.Signals) -> None:
    """``python -m uvicorn ats_app:app --loop ats_cffi.asyncio:new_event_loop``: uvicorn
    imports the factory and runs on it (the app reports its loop's class), curl gets
    answers, and the signal stops it cleanly, the lifespan's shutdown run."""
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("starlette")
    (tmp_path / "ats_app.py").write_text(CLI_APP)
    mark = tmp_path / "lifespan.txt"
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "ats_app:app", "--app-dir", str(tmp_path)]
    argv += ["--host", HOST, "--port", str(port), "--loop", "ats_cffi.asyncio:new_event_loop"]
    argv += ["--http", "httptools", "--ws", "none", "--lifespan", "on"]
    package_root = str(Path(ats_cffi.__file__).resolve().parent.parent)
    pythonpath = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "ATS_APP_MARK": str(mark), "PYTHONPATH": pythonpath}
    name = f"uvicorn {uvicorn.__version__} ({' '.join(argv[1:])})"
    server = spawn(name, argv, port, tmp_path / "uvicorn.log", stop_signal=stop, env=env)
    try:
        server.wait_ready("Application startup complete")
        base = f"http://{HOST}:{port}"
        assert curl(f"{base}/loop").decode() == LOOP_NAME, server.log_text()
        body = os.urandom(MIB)
        (tmp_path / "body").write_bytes(body)
        assert curl("--data-binary", f"@{tmp_path / 'body'}", f"{base}/echo") == body
    finally:
        status = server.stop()
    log = server.log_text()
    # uvicorn >= 0.29 shuts down, then raises the signal it caught again: SIGTERM's default
    # action ends the process (-SIGTERM), SIGINT's KeyboardInterrupt is caught (0).
    assert status in (0, -stop), f"uvicorn exited {status} on {stop!r}:\n{log}"
    assert "Application shutdown complete" in log, log
    assert "Finished server process" in log, log
    assert mark.read_text() == f"startup on {LOOP_NAME} shutdown"
