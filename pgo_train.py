"""The training run of the profile-guided build (``build_pgo.py``, ``ATS_CFFI_PGO``).

``build_pgo``'s ``build_ext`` builds the compiled modules' library instrumented
(``-fprofile-generate``), runs this script on it, then builds the library again with the
counts it left (``-fprofile-use``): gcc lays the hot paths out together and inlines by
what ran, as CPython's own ``--enable-optimizations`` build does.

What runs is what users run, on 127.0.0.1 only, each part bounded in count and time:

- the VIO echo, README's continuation, 1 KiB to 100 KiB messages over 10 connections,
  then connections that carry one byte and close;
- an asyncio Protocol echo and a streams echo on ``ats_cffi.asyncio``'s loop, with its own
  clients;
- ``ats-cffi http`` (a child process, stopped by SIGTERM): keep-alive requests, new
  connections, ``/_stats``; and ``ats-cffi echo`` (spliced).

Code that does not run here (TLS, DNS, the tunnel) is compiled as without a profile
(``-fprofile-partial-training``). Exit status 0 when every part moved all of its bytes.

    python pgo_train.py        # what the build runs (PYTHONPATH: the built package)
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HOST = "127.0.0.1"
#: Each client socket gives up after this long without progress: a part that hangs fails
#: the build instead of stopping it.
IO_TIMEOUT = 20.0
#: (message size, rounds) of the VIO and asyncio echoes, over ``CONNS`` connections.
ECHO_PLAN = ((1024, 1000), (10240, 300), (102400, 50))
CONNS = 10
SHORT_CONNS = 200
#: The VIO echo's read-buffer water mark (perf/servers.py's).
WATER_MARK = 131072
HTTP_REQUESTS = 3000

# perf/servers.py's echo servers, the ones the benchmarks run
sys.path.insert(0, str(Path(__file__).resolve().parent / "perf"))


def echo_round_trips(port: int, plan=ECHO_PLAN, conns: int = CONNS) -> int:
    """Send each message of ``plan`` on ``conns`` connections at once and read it back;
    raise if a byte differs. Returns the round trips made."""
    socks = [socket.create_connection((HOST, port), timeout=IO_TIMEOUT) for _ in range(conns)]
    done = 0
    try:
        for size, rounds in plan:
            msg = bytes(i & 0xFF for i in range(size))
            for _ in range(rounds):
                for s in socks:
                    s.sendall(msg)
                for s in socks:
                    if recv_exactly(s, size) != msg:
                        raise RuntimeError(f"echo on port {port}: the bytes came back changed")
                done += conns
    finally:
        for s in socks:
            s.close()
    return done


def recv_exactly(s: socket.socket, n: int) -> bytes:
    """The next ``n`` bytes of ``s``; raise if it closes first."""
    parts = []
    while n:
        b = s.recv(min(n, 262144))
        if not b:
            raise RuntimeError("echo: the server closed the connection")
        parts.append(b)
        n -= len(b)
    return b"".join(parts)


def short_connections(port: int, n: int = SHORT_CONNS) -> None:
    """``n`` connections that each send one byte, read it back and close."""
    for _ in range(n):
        with socket.create_connection((HOST, port), timeout=IO_TIMEOUT) as s:
            s.sendall(b"x")
            if recv_exactly(s, 1) != b"x":
                raise RuntimeError("short connection: wrong byte back")


def train_vio_echo() -> int:
    """README's echo continuation on the net core's VIOs: perf/servers.py's ``ats`` echo,
    what the benchmarks run."""
    from servers import ats_echo_acceptor

    from ats_cffi.net import AcceptOptions, net_processor

    net_processor.start(1)
    try:
        opt = AcceptOptions(local_address=HOST, port=0)
        action = net_processor.accept(ats_echo_acceptor(WATER_MARK), opt)
        try:
            n = echo_round_trips(action.na.port)
            short_connections(action.na.port)
            return n + SHORT_CONNS
        finally:
            action.cancel()
    finally:
        net_processor.shutdown()


async def _asyncio_parts() -> None:
    from servers import EchoProtocol, echo_stream

    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoProtocol, HOST, 0)
    streams = await asyncio.start_server(echo_stream, HOST, 0)
    try:
        for srv in (server, streams):
            port = srv.sockets[0].getsockname()[1]
            await asyncio.wait_for(_asyncio_client(port), IO_TIMEOUT * 3)
            await loop.run_in_executor(None, echo_round_trips, port, ((1024, 100),), 4)
    finally:
        server.close()
        streams.close()


async def _asyncio_client(port: int) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    for size, rounds in ECHO_PLAN:
        msg = b"a" * size
        for _ in range(rounds):
            writer.write(msg)
            if await reader.readexactly(size) != msg:
                raise RuntimeError("asyncio echo: the bytes came back changed")
    writer.close()
    await writer.wait_closed()


def train_asyncio() -> None:
    """A Protocol echo and a streams echo on ``ats_cffi.asyncio``'s loop."""
    import ats_cffi.asyncio

    ats_cffi.asyncio.run(_asyncio_parts())


def run_command(args: list[str], client) -> int:
    """Start ``ats-cffi ARGS --listen 127.0.0.1:0``, run ``client(port)``, stop it with
    SIGTERM: it exits 0 after its graceful stop (what writes its profile counts)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ats_cffi", *args, "--listen", f"{HOST}:0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = ""
        for _ in range(20):  # its first line that names the port
            line = proc.stdout.readline() if proc.stdout else ""
            if not line or "listening on" in line:
                break
        if "listening on" not in line:
            raise RuntimeError(f"ats-cffi {args[0]} did not start: {line!r}")
        n = client(int(line.rsplit(":", 1)[1]))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(IO_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"ats-cffi {args[0]} did not stop on SIGTERM") from None
        if proc.stdout:
            proc.stdout.close()
    if rc != 0:
        raise RuntimeError(f"ats-cffi {args[0]} exited with status {rc}")
    return n


def http_client(port: int) -> int:
    """Keep-alive requests, then a new connection per request, then the stats."""
    import http.client

    conn = http.client.HTTPConnection(HOST, port, timeout=IO_TIMEOUT)
    for _ in range(HTTP_REQUESTS):
        conn.request("GET", "/")
        resp = conn.getresponse()
        if resp.status != 200 or resp.read() != b"Hello, World!":
            raise RuntimeError(f"http: GET / answered {resp.status}")
    for path in ("/_stats", "/metrics", "/missing"):
        conn.request("GET", path)
        conn.getresponse().read()
    conn.close()
    for _ in range(SHORT_CONNS):
        c = http.client.HTTPConnection(HOST, port, timeout=IO_TIMEOUT)
        c.request("GET", "/", headers={"Connection": "close"})
        c.getresponse().read()
        c.close()
    return HTTP_REQUESTS + 3 + SHORT_CONNS


def main() -> int:
    t0 = time.monotonic()
    vio = train_vio_echo()
    train_asyncio()
    http = run_command(["http"], http_client)
    spliced = run_command(["echo"], lambda port: echo_round_trips(port, ((1024, 100),)))
    print(
        f"pgo_train: {vio} VIO echo round trips, the asyncio echoes, {http} HTTP requests, "
        f"{spliced} spliced round trips in {time.monotonic() - t0:.1f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
