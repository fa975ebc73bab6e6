"""pyperf micro-benchmarks of the net layer (NetHandler + UnixNetVConnection) vs asyncio.

In-process echo round trips over loopback TCP connections (127.0.0.1), client and server in
the same process and on the same event loop, so that a value is the cost of the event loop's
work alone (epoll wait, dispatch, read into the buffer, handler, write), with no second
process to wake. Values are per round trip. Pairs (``python perf/table.py out.json``; the
asyncio side is named ``-stdlib``):

- ``net_echo_rt``: 1 connection, 64-byte messages, one in flight: per round trip the loop
  waits twice and dispatches 2 read events (server, then client) and 2 writes. The latency
  of one event through the whole stack.
- ``net_echo_rt_16k``: the same with 16 KiB messages: the read/write path (the bytes go
  socket -> MIOBuffer -> socket, and asyncio's socket -> bytes -> socket).
- ``net_echo_rt_x32``: 32 connections, one 64-byte message in flight on each: each wait
  returns many events, so this is the dispatch cost per event when the loop is busy.

ats_cffi side, public API only: ``net_processor.start(1)`` once per worker process,
``net_processor.accept`` with an echo continuation (perf/servers.py's: one ``MIOBuffer`` of
32 KiB blocks read by the write VIO) and clients opened with ``net_processor.connect_re``;
each client ``Continuation`` writes its message into an ``MIOBuffer`` and re-enables the
write VIO, waits for the whole echo in its read VIO's buffer, consumes it and sends the next.
A burst starts with ``schedule_imm_signal`` on the net thread and is timed there, from the
first client's start to the last client's last echo. asyncio side: ``servers.EchoProtocol``
(``data_received`` -> ``transport.write``) and a client ``Protocol`` doing the same, on a
fresh ``asyncio`` loop per call, timed from the first write to the last echo. Connecting and
closing are outside the timing.

Deliberate slowdown (to check that perf/check_regression.py catches a regression): with
``ATS_CFFI_PERF_SLOWDOWN_US=N`` in the environment (or ``--slowdown-us N``), the ats_cffi
clients busy-wait N microseconds before each send, as if the library had become N µs slower
per round trip. The asyncio side is not touched. It is read by this script only, is passed
to pyperf's worker processes as ``--slowdown-us``, and is recorded in the results' metadata
(``slowdown_us``). Never set it for a baseline.

Run: ``python perf/bench_net.py -o net.json`` (pyperf options apply: ``--fast``,
``--processes 6``, ...), then ``python perf/table.py net.json``.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
from time import perf_counter
from typing import Any

import pyperf
from servers import HOST, EchoProtocol, ats_echo_acceptor

SLOWDOWN_ENV = "ATS_CFFI_PERF_SLOWDOWN_US"
N_CONNS = 32
WAIT_S = 60.0  # a burst that takes longer has hung: fail rather than wait forever

#: seconds busy-waited by each ats_cffi client before each send (see the module doc)
slowdown_s = 0.0


def busy_wait(seconds: float) -> None:
    end = perf_counter() + seconds
    while perf_counter() < end:
        pass


# ---------------------------------------------------------------------------- ats_cffi


class _Group:
    """The clients of one timed call: counts them open and done, keeps the burst's times."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.opened = 0
        self.finished = 0
        self.all_open = threading.Event()
        self.done = threading.Event()
        self.t0 = 0.0
        self.t1 = 0.0
        self.error: str | None = None
        self.lock = threading.Lock()

    def open_one(self) -> None:
        with self.lock:
            self.opened += 1
            if self.opened == self.n:
                self.all_open.set()

    def finish_one(self) -> None:
        with self.lock:
            self.finished += 1
            if self.finished == self.n:
                self.t1 = perf_counter()
                self.done.set()

    def fail(self, why: str) -> None:
        self.error = why
        self.all_open.set()
        self.done.set()


_port: int | None = None


def _ats_server() -> int:
    """Start the net processor and the echo listener once per process; their port."""
    global _port
    if _port is None:
        from ats_cffi.net import AcceptOptions, net_processor

        net_processor.start(1)
        atexit.register(net_processor.shutdown)
        opt = AcceptOptions(local_address=HOST, port=0, accept_threads=0)
        # Water mark 0 (read at most a block per cycle): perf/baseline/net.json was made so.
        _port = net_processor.accept(ats_echo_acceptor(0), opt).na.port
    return _port


def _ats_client_class() -> type:
    from ats_cffi.eventsystem import (
        INT64_MAX,
        Continuation,
        EventCode,
        MIOBuffer,
        ProxyMutex,
        this_ethread,
    )
    from ats_cffi.net.codes import NET_EVENT_OPEN

    read_ready = EventCode.VC_EVENT_READ_READY
    write_ready = EventCode.VC_EVENT_WRITE_READY
    immediate = EventCode.EVENT_IMMEDIATE

    class Client(Continuation):
        """One connection's pinger: send ``msg``, wait for all of it back, repeat."""

        def __init__(self, msg: bytes, group: _Group) -> None:
            super().__init__(ProxyMutex())
            self.msg = msg
            self.size = len(msg)
            self.group = group
            self.left = 0
            self.vc: Any = None
            self.set_handler(self.on_open)

        def on_open(self, event: int, vc: Any) -> None:
            if event != NET_EVENT_OPEN:
                self.group.fail(f"connect_re: event {event}, {vc}")
                return
            self.vc = vc
            self.thread = this_ethread()
            self.rbuf = MIOBuffer(32768)
            self.reader = self.rbuf.alloc_reader()
            self.wbuf = MIOBuffer(32768)
            self.set_handler(self.on_io)
            self.rvio = vc.do_io_read(self, INT64_MAX, self.rbuf)
            self.wvio = vc.do_io_write(self, INT64_MAX, self.wbuf.alloc_reader())
            self.group.open_one()

        def on_io(self, event: int, data: Any) -> None:
            if event == read_ready:
                reader = self.reader
                if reader.read_avail() >= self.size:
                    reader.consume(self.size)
                    self.left -= 1
                    if self.left:
                        if slowdown_s:
                            busy_wait(slowdown_s)
                        self.wbuf.write(self.msg)
                        self.wvio.reenable()
                    else:
                        self.group.finish_one()
                self.rvio.reenable()
            elif event == immediate:  # the burst's start, from the timing thread
                if not self.group.t0:
                    self.group.t0 = perf_counter()
                if slowdown_s:
                    busy_wait(slowdown_s)
                self.wbuf.write(self.msg)
                self.wvio.reenable()
            elif event != write_ready:
                self.group.fail(f"client got event {event}")

    return Client


_client_class: type | None = None


def ats_echo(loops: int, size: int, nconns: int) -> float:
    global _client_class
    from ats_cffi.net import net_processor

    port = _ats_server()
    if _client_class is None:
        _client_class = _ats_client_class()
    msg = bytes(range(256)) * (size // 256) + bytes(size % 256)
    group = _Group(nconns)
    clients = [_client_class(msg, group) for _ in range(nconns)]
    for c in clients:
        net_processor.connect_re(c, (HOST, port))
    try:
        if not group.all_open.wait(WAIT_S) or group.error:
            raise RuntimeError(f"ats clients did not connect: {group.error}")
        for c in clients:
            c.left = loops
        for c in clients:
            c.thread.schedule_imm_signal(c)
        if not group.done.wait(WAIT_S) or group.error:
            raise RuntimeError(f"ats burst did not finish: {group.error}")
        return group.t1 - group.t0
    finally:
        for c in clients:
            if c.vc is not None:
                c.vc.do_io_close()


# ------------------------------------------------------------------------------ asyncio


class _PingProtocol(asyncio.Protocol):
    def __init__(self, msg: bytes, state: dict) -> None:
        self.msg = msg
        self.size = len(msg)
        self.state = state
        self.got = 0
        self.left = 0
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self.got >= self.size:
            self.got -= self.size
            self.left -= 1
            if self.left:
                self.transport.write(self.msg)
            else:
                st = self.state
                st["finished"] += 1
                if st["finished"] == st["n"]:
                    st["fut"].set_result(perf_counter())

    def connection_lost(self, exc: Exception | None) -> None:
        fut = self.state["fut"]
        if self.left and not fut.done():
            fut.set_exception(RuntimeError(f"client connection lost: {exc!r}"))


async def _asyncio_echo(loops: int, size: int, nconns: int) -> float:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoProtocol, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    msg = bytes(range(256)) * (size // 256) + bytes(size % 256)
    state: dict = {"n": nconns, "finished": 0, "fut": loop.create_future()}
    clients = []
    try:
        for _ in range(nconns):
            _, proto = await loop.create_connection(lambda: _PingProtocol(msg, state), HOST, port)
            clients.append(proto)
        for c in clients:
            c.left = loops
        t0 = perf_counter()
        for c in clients:
            c.transport.write(msg)
        t1 = await asyncio.wait_for(state["fut"], WAIT_S)
        return t1 - t0
    finally:
        for c in clients:
            c.transport.close()
        server.close()
        await server.wait_closed()


def asyncio_echo(loops: int, size: int, nconns: int) -> float:
    return asyncio.run(_asyncio_echo(loops, size, nconns))


# --------------------------------------------------------------------------------- main

BENCHMARKS = [
    # name, function, message size, connections (= inner loops: values are per round trip)
    ("net_echo_rt-ats_cffi", ats_echo, 64, 1),
    ("net_echo_rt-stdlib", asyncio_echo, 64, 1),
    ("net_echo_rt_16k-ats_cffi", ats_echo, 16384, 1),
    ("net_echo_rt_16k-stdlib", asyncio_echo, 16384, 1),
    ("net_echo_rt_x32-ats_cffi", ats_echo, 64, N_CONNS),
    ("net_echo_rt_x32-stdlib", asyncio_echo, 64, N_CONNS),
]


def _worker_args(cmd: list[str], args: Any) -> None:
    cmd.extend(["--slowdown-us", str(args.slowdown_us)])


def main() -> None:
    global slowdown_s
    runner = pyperf.Runner(add_cmdline_args=_worker_args)
    runner.argparser.add_argument(
        "--slowdown-us",
        type=float,
        default=float(os.environ.get(SLOWDOWN_ENV) or 0),
        help=f"busy-wait this long per ats_cffi send (default: ${SLOWDOWN_ENV}, else 0)",
    )
    runner.metadata["description"] = "ats_cffi net layer vs asyncio: in-process echo"
    args = runner.parse_args()
    slowdown_s = args.slowdown_us / 1e6
    if args.slowdown_us:
        runner.metadata["slowdown_us"] = str(args.slowdown_us)
        if not args.worker:
            print(f"bench_net: DELIBERATE SLOWDOWN of {args.slowdown_us:g} µs per ats_cffi send")
    for name, func, size, nconns in BENCHMARKS:
        runner.bench_time_func(name, func, size, nconns, inner_loops=nconns)


if __name__ == "__main__":
    main()
