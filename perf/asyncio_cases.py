"""The asyncio application cases of compare_peers.py (``--cases streams,uvicorn``): code
written for asyncio, the same on the three loops (``ats_cffi.asyncio``'s ``Loop``, stock
asyncio, uvloop), each loop set as a user sets it.

- streams: the echo of perf/servers.py written with streams (``--streams``:
  ``asyncio.start_server``, a handler that reads up to 64 KiB, writes it and drains, until
  EOF; ``ats_cffi.asyncio.run``, ``asyncio.run``, ``uvloop.run``), loaded by perf/loadgen.c
  as the Protocol echo rows are: closed loop, one message in flight per connection, 1 KiB
  and 100 KiB x 10 and 100 connections; round trips/s and server CPU per round trip.
- uvicorn: a minimal ASGI hello app under uvicorn + httptools (perf/uvicorn_hello.py:
  ``uvicorn.run(app, loop=...)`` with ``"ats_cffi.asyncio:new_event_loop"``, ``"asyncio"``
  or ``"uvloop"``, one worker, no lifespan, no access log) under ``wrk -c 100``, keep-alive,
  as the http rows; requests/s and server CPU per request.

The rows are marked ``, asyncio loop`` (compare_peers' ``ats_asyncio`` subject): the figures
of ``ats_cffi.asyncio``'s loop beside the same code's on asyncio and on uvloop.
"""

from __future__ import annotations

import subprocess
import sys

from _common import HERE, port_after, start_ready

#: The servers of both cases: the same code on the three loops.
SERVERS = ("ats_asyncio", "asyncio", "uvloop")
KIB = 1024
#: (message size, connections) of the streams echo cases.
STREAMS_CASES = [(m * KIB, c) for m in (1, 100) for c in (10, 100)]
UVICORN_HELLO = HERE / "uvicorn_hello.py"


def start_uvicorn(name: str, cpu: int | None, log) -> tuple[subprocess.Popen, int]:
    """perf/uvicorn_hello.py on the loop of server ``name`` (``SERVERS``), pinned to
    ``cpu``; its stderr to ``log``."""
    cmd = [sys.executable, str(UVICORN_HELLO), name]
    return start_ready(cmd, cpu, port_after("READY "), stderr=log)
