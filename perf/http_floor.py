"""Diagnostic HTTP hello servers for http_breakdown.py: the same request without ATS's net core.

    python perf/http_floor.py {bare,session,uvloop} [--port P] [--backlog N]

None is a product; they bound what a different design could gain on the keep-alive hello
case. All listen on 127.0.0.1 only, run one thread, and answer ``GET /`` with the same bytes
as ``ats-cffi http`` (``hello_responses``). ``bare`` and ``session`` use its native calls
(``Epoll.wait`` filling preallocated arrays, ``ats_read_fill``, ``ats_write_all``) over an
edge-triggered epoll set.

- ``bare``: the floor. A plain loop: read, ``httptools`` with one callback
  (``on_message_complete``, which queues the cached hello), write. No VIO, no buffer chain,
  no continuation, no timeout, no routing: only keep-alive ``GET /`` is answered correctly.
- ``session``: the real ``HttpSession`` of ``ats_cffi/apps/http.py``, unchanged, over the least
  loop that can run it: the loop reads into the read VIO's buffer, writes from the write VIO's
  reader, advances the VIOs and gives the session ATS's two signals per request
  (``READ_READY``, then ``WRITE_COMPLETE``) with its mutex held. No NetHandler ready lists,
  no InactivityCop, no timeouts (the session's are ignored). Set against ``ats-cffi http``,
  it shows what the net core costs beyond the least Python that moves the same bytes.

- ``uvloop``: the same ``HttpSession`` under uvloop, as an ``asyncio.Protocol``: uvloop's C
  loop reads and writes, ``data_received`` copies the bytes into the session's read buffer
  and signals READ_READY, the response is copied out of its write buffer to
  ``transport.write`` and WRITE_COMPLETE follows. What the session would cost over a net
  core as cheap as uvloop's (the two copies over-count such a core: it would read into and
  write from the buffers directly).

Prints ``READY <port>`` once listening; stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import httptools  # noqa: E402
from _common import HOST  # noqa: E402
from bench_http import BenchVC  # noqa: E402

from ats_cffi import sys as asys  # noqa: E402
from ats_cffi._native import ffi, lib  # noqa: E402
from ats_cffi.apps import http as app  # noqa: E402
from ats_cffi.apps.http_responses import hello_cache  # noqa: E402
from ats_cffi.apps.runner import tune_gc  # noqa: E402
from ats_cffi.eventsystem.codes import (  # noqa: E402
    VC_EVENT_EOS,
    VC_EVENT_READ_READY,
    VC_EVENT_WRITE_COMPLETE,
)

_ET = lib.EPOLLIN | lib.EPOLLOUT | lib.EPOLLRDHUP | lib.EPOLLET
#: A hang-up can share an edge with the last data: then read on to EOF, not only until a
#: short read (as net_read_io does).
_HUP = lib.EPOLLRDHUP | lib.EPOLLHUP | lib.EPOLLERR
_AGAIN = asys.AGAIN
_read_fill = lib.ats_read_fill
_write_all = lib.ats_write_all


def hello() -> bytes:
    """The keep-alive ``GET /`` response of ``ats-cffi http`` for this second."""
    now = time.time()
    cache = hello_cache
    if now >= cache.end or now < cache.start:
        cache.refresh(now)
    return cache.get


# -- bare ---------------------------------------------------------------------------------


class BareConn:
    """One connection of the bare loop: a fixed read buffer and a parser."""

    __slots__ = ("fd", "buf", "cbuf", "parser", "out")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray(app.HTTP_BLOCK_SIZE)
        self.cbuf = ffi.from_buffer(self.buf)
        self.parser = httptools.HttpRequestParser(self)
        self.out: list[bytes] = []

    def on_message_complete(self) -> None:
        self.out.append(hello())

    def serve(self, last: Any, stop_short: int) -> bool:
        """Read, parse, answer; False when the connection is to be closed."""
        fd = self.fd
        n = len(self.buf)
        while True:
            r = _read_fill(fd, self.cbuf, 0, n, stop_short, last)
            if r <= 0:
                return last[0] == _AGAIN
            try:
                self.parser.feed_data(memoryview(self.buf)[:r])
            except httptools.HttpParserError:
                return False
            out = self.out
            if out:
                data = out[0] if len(out) == 1 else b"".join(out)
                out.clear()
                if _write_all(fd, data, 0, len(data), last) != len(data):
                    return False  # the floor keeps no write buffer: a slow reader is dropped
            if r < n and stop_short:
                return True


# -- session ------------------------------------------------------------------------------


class LoopVC(BenchVC):
    """What ``HttpSession`` asks of its VC, for the minimal loop (``BenchVC``'s VIOs). The
    loop writes whatever the write VIO has to do after every signal; timeouts are accepted
    and ignored."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd
        self.closed = False
        self.eos = False

    def do_io_shutdown(self, howto: int) -> None:
        pass

    def input_pending(self) -> bool:
        return False

    def do_io_close(self, alerrno: int = -1) -> None:
        self.closed = True

    def flush(self, last: Any) -> bool:
        """Write what the write VIO has to do; WRITE_COMPLETE when it is done. False on a
        write error, or once the session closed."""
        if self.closed:
            return False
        wvio = self.wvio
        todo = wvio.nbytes - wvio.ndone
        if todo <= 0:
            return True
        reader = wvio.buffer
        done = 0
        while done < todo:
            block, off = reader.first_block()
            k = min(block.end - off, todo - done)
            k = _write_all(self.fd, block.cdata, off, k, last)
            if k > 0:
                reader.advance(k)  # consume(k), unchecked (as the net core does)
                done += k
            if last[0] < 0:
                if last[0] != _AGAIN:
                    return False
                break  # the rest goes out on the next EPOLLOUT edge
        if done:
            wvio.ndone += done
            if done == todo:
                self.signal(VC_EVENT_WRITE_COMPLETE, wvio)
        return not self.closed

    def read(self, last: Any, stop_short: int) -> tuple[int, bool]:
        """Read into the read VIO's buffer: (bytes read, whether it stopped for a full
        buffer)."""
        buf = self.rvio.buffer
        total = 0
        while True:
            t = buf.writable_block_if_room()
            if t is None:
                return total, True  # back-pressure: the session parses, then we read on
            room = t.size - t.end
            r = _read_fill(self.fd, t.cdata, t.end, room, stop_short, last)
            if r > 0:
                buf.commit(r)  # fill(r), unchecked (as the net core does)
                total += r
            if r <= 0 or last[0] <= 0 or (r < room and stop_short):
                return total, False

    def serve(self, last: Any, stop_short: int) -> bool:
        """Flush, read and signal until the socket is drained; False when the connection is
        to be closed. (Like the net core's, a short read counts as drained.)"""
        rvio = self.rvio
        if not self.flush(last):
            return False
        while True:
            if self.eos:
                return True  # the session closes once its answers are written
            total, full = self.read(last, stop_short)
            if total:
                rvio.ndone += total
                self.signal(VC_EVENT_READ_READY, rvio)
                if self.closed:
                    return False
            if not full and last[0] <= 0 and last[0] != _AGAIN:  # EOF or an error
                self.eos = True
                self.signal(VC_EVENT_EOS, rvio)  # the session answers what it read, then closes
                return self.flush(last)
            if not self.flush(last):
                return False
            if not (full and total):
                return True


def start_session(service: app.HttpService, fd: int) -> LoopVC:
    vc = LoopVC(fd)
    service.start_session(vc)  # type: ignore[arg-type]
    return vc


# -- uvloop -------------------------------------------------------------------------------


class TransportVC(BenchVC):
    """What ``HttpSession`` asks of its VC, over an asyncio transport (``BenchVC``'s VIOs)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__()
        self.transport = transport
        self.closed = False

    def do_io_shutdown(self, howto: int) -> None:
        if self.transport.can_write_eof():
            self.transport.write_eof()

    def input_pending(self) -> bool:
        return False

    def do_io_close(self, alerrno: int = -1) -> None:
        self.closed = True
        self.transport.close()

    def flush(self) -> None:
        """Hand what the write VIO has to do to the transport; WRITE_COMPLETE. (The
        transport buffers what the socket does not take; past its high water mark the
        protocol pauses reading, as the peers do.)"""
        wvio = self.wvio
        while not self.closed:  # a session resuming its parse on WRITE_COMPLETE queues more
            todo = wvio.nbytes - wvio.ndone
            if todo <= 0:
                return
            self.transport.write(wvio.buffer.read(todo))
            wvio.ndone += todo
            self.signal(VC_EVENT_WRITE_COMPLETE, wvio)


class SessionProtocol(asyncio.Protocol):
    """One connection: its ``HttpSession`` over uvloop's transport."""

    service: app.HttpService

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.vc = TransportVC(transport)  # type: ignore[arg-type]
        self.service.start_session(self.vc)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        vc = self.vc
        if vc.closed:
            return
        rvio = vc.rvio
        rvio.ndone += rvio.buffer.write(data)
        vc.signal(VC_EVENT_READ_READY, rvio)
        vc.flush()

    def eof_received(self) -> bool:
        vc = self.vc
        if not vc.closed:
            vc.signal(VC_EVENT_EOS, vc.rvio)  # the session answers what it read, then closes
            vc.flush()
        return True  # the session closes the transport

    def pause_writing(self) -> None:
        self.vc.transport.pause_reading()  # a client that does not read its responses

    def resume_writing(self) -> None:
        if not self.vc.transport.is_closing():
            self.vc.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        vc = self.vc
        if not vc.closed:
            vc.signal(VC_EVENT_EOS, vc.rvio)


async def serve_uvloop(port: int, backlog: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    SessionProtocol.service = app.HttpService()
    server = await loop.create_server(SessionProtocol, HOST, port, backlog=backlog)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    tune_gc()
    await stop.wait()
    server.close()


# -- the loop -----------------------------------------------------------------------------


def serve(kind: str, port: int, backlog: int) -> None:
    lfd = asys.socket()
    service = app.HttpService() if kind == "session" else None
    conns: dict[int, Any] = {}
    ep = asys.Epoll(1024)
    try:
        asys.setsockopt_int(lfd, lib.SOL_SOCKET, lib.SO_REUSEADDR, 1)
        asys.bind(lfd, (HOST, port))
        asys.listen(lfd, backlog)
        ep.add(lfd, lib.EPOLLIN, lfd)
        print(f"READY {asys.getsockname(lfd)[1]}", flush=True)
        last = ffi.new("ssize_t *")
        stop: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: stop.append(signum))
        tune_gc()
        while not stop:
            n = ep.wait(200)
            tokens = ep.tokens
            masks = ep.masks
            for i in range(n):
                fd = tokens[i]
                if fd == lfd:
                    while (got := asys.accept4(lfd)) is not None:
                        cfd = got[0]
                        asys.setsockopt_int(cfd, lib.IPPROTO_TCP, lib.TCP_NODELAY, 1)
                        c = start_session(service, cfd) if service is not None else BareConn(cfd)
                        conns[cfd] = c
                        ep.add(cfd, _ET, cfd)
                    continue
                c = conns.get(fd)
                if c is not None and not c.serve(last, 0 if masks[i] & _HUP else 1):
                    if service is not None and not c.closed:
                        c.signal(VC_EVENT_EOS, c.rvio)  # the session closes and lets go
                    del conns[fd]
                    ep.delete(fd)
                    asys.close(fd)
    finally:
        for fd in conns:
            asys.close(fd)
        ep.close()
        asys.close(lfd)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("kind", choices=["bare", "session", "uvloop"])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--backlog", type=int, default=4096)
    a = p.parse_args(argv)
    if a.kind == "uvloop":
        import uvloop

        uvloop.run(serve_uvloop(a.port, a.backlog))
    else:
        serve(a.kind, a.port, a.backlog)
    return 0


if __name__ == "__main__":
    sys.exit(main())
