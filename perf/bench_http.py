"""The HTTP server's own code per keep-alive request, without sockets (pyperf; ``-o out.json``).

Pair (``python perf/table.py out.json``; the asyncio side is named ``-stdlib``):

- ``http_request``: one ``GET / HTTP/1.1`` answered with ``Hello, World!`` and kept alive.
  ats_cffi: the request is copied into the session's read buffer and its read VIO advanced
  (the net core's read, done natively there except for this copy), ``HttpSession`` gets
  ``VC_EVENT_READ_READY``, the response is taken from its write buffer and the write VIO
  advanced (the net core's write), and the session gets ``VC_EVENT_WRITE_COMPLETE``: the
  session, its parser callbacks and its buffers, not the net core. stdlib: the same server
  logic as an ``asyncio.Protocol`` (``perf/http_peers.py``), ``data_received`` with the
  request, over a transport whose ``write`` keeps nothing.

Values are per request. With ``http_breakdown.py`` (whole servers under wrk) this tells the
session's share of a request's server CPU from the net core's.
"""

from __future__ import annotations

import time
from typing import Any

import pyperf
from http_peers import HttpProtocol

from ats_cffi.apps.http import HttpService, HttpSession
from ats_cffi.eventsystem import VIO, VIOOp
from ats_cffi.eventsystem.codes import VC_EVENT_READ_READY, VC_EVENT_WRITE_COMPLETE
from ats_cffi.eventsystem.ioblock import thread_pool

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: bench\r\n\r\n"
HELLO = b"Hello, World!"


class BenchVC:
    """What ``HttpSession`` asks of its VC; the benchmark moves the bytes itself (also the
    base of ``http_floor.py``'s minimal loop)."""

    def __init__(self) -> None:
        self.rvio = VIO(VIOOp.READ)
        self.wvio = VIO(VIOOp.WRITE)

    def _start(self, vio: VIO, cont: Any, nbytes: int, buffer: Any) -> VIO:
        vio.cont, vio.mutex, vio.vc_server = cont, cont.mutex, self
        vio.nbytes, vio.ndone, vio.buffer = nbytes, 0, buffer
        return vio

    def do_io_read(self, cont: Any, nbytes: int, buf: Any) -> VIO:
        return self._start(self.rvio, cont, nbytes, buf)

    def do_io_write(self, cont: Any, nbytes: int, reader: Any) -> VIO:
        return self._start(self.wvio, cont, nbytes, reader)

    def reenable(self, vio: VIO) -> None:
        pass

    def set_inactivity_timeout(self, seconds: float) -> None:
        pass

    def set_active_timeout(self, seconds: float) -> None:
        pass

    def cancel_active_timeout(self) -> None:
        pass

    def add_to_active_queue(self) -> bool:  # the net core's queues: not measured here
        return True

    def add_to_keep_alive_queue(self) -> None:
        pass

    def do_io_close(self, alerrno: int = -1) -> None:
        raise RuntimeError("the benchmark's session closed")

    def signal(self, event: int, vio: VIO) -> None:
        """``event`` to the VIO's continuation with its mutex held, as the net core delivers
        it (``http_floor.py``'s loops; the benchmark calls the session directly)."""
        m = vio.mutex
        m.try_lock()
        try:
            vio.cont.handle_event(event, vio)
        finally:
            m.unlock()


def ats_request(loops: int) -> float:
    service = HttpService()
    vc = BenchVC()
    session = HttpSession(service, vc)  # type: ignore[arg-type]
    rbuf, rvio, wvio = session.rbuf, vc.rvio, vc.wvio
    handle = session.handle_event
    rvio.ndone += rbuf.write(REQUEST)  # the first request makes the write buffer and VIO
    handle(VC_EVENT_READ_READY, rvio)
    reader = wvio.buffer
    first = reader.read(reader.read_avail())
    if not first.endswith(HELLO):
        raise RuntimeError(f"unexpected response {first!r}")
    wvio.ndone = wvio.nbytes
    handle(VC_EVENT_WRITE_COMPLETE, wvio)
    n = len(REQUEST)
    pool = thread_pool()  # the net core hands its thread's pool to the buffers (vcio.py)
    t0 = time.perf_counter()
    for _ in range(loops):
        rvio.ndone += rbuf.write(REQUEST, pool)
        handle(VC_EVENT_READ_READY, rvio)
        k = wvio.nbytes - wvio.ndone
        reader.advance(k, pool)  # as vcio.write_from_reader, after the bytes went out
        wvio.ndone += k
        handle(VC_EVENT_WRITE_COMPLETE, wvio)
    dt = time.perf_counter() - t0
    if rvio.ndone != n * (loops + 1) or session.queued != len(first) * (loops + 1):
        raise RuntimeError("a request went unanswered")
    return dt


class _Transport:
    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.bytes += len(data)

    def close(self) -> None:
        raise RuntimeError("the benchmark's protocol closed")


def asyncio_request(loops: int) -> float:
    protocol = HttpProtocol()
    transport = _Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    data_received = protocol.data_received
    data_received(REQUEST)
    one = transport.bytes
    t0 = time.perf_counter()
    for _ in range(loops):
        data_received(REQUEST)
    dt = time.perf_counter() - t0
    if transport.bytes != one * (loops + 1):
        raise RuntimeError("a request went unanswered")
    return dt


def main() -> None:
    runner = pyperf.Runner()
    runner.bench_time_func("http_request-ats_cffi", ats_request)
    runner.bench_time_func("http_request-stdlib", asyncio_request)


if __name__ == "__main__":
    main()
