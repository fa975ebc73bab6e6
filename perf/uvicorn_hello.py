"""A minimal ASGI hello app under uvicorn + httptools, on the loop named on the command line.

    python perf/uvicorn_hello.py {ats_asyncio,asyncio,uvloop} [--port P] [--backlog N]

For compare_peers.py's ``uvicorn`` case: the same app and the same ``uvicorn.run`` call on
each loop, the loop chosen as a user chooses it, by uvicorn's ``loop=`` (``--loop`` on its
command line): ``"asyncio"``, ``"uvloop"``, or ``"ats_cffi.asyncio:new_event_loop"``
(uvicorn imports a ``module:callable`` and uses it as ``asyncio.Runner``'s loop factory).
One worker, in this process; ``http="httptools"``, ``lifespan="off"``, no access log;
uvicorn's defaults otherwise (its ``Server`` and ``Date`` headers, keep-alive).

Every request, whatever its method and path, gets ``200 Hello, World!`` (``Content-Type:
text/plain``, ``Content-Length: 13``). Prints ``LOOP <class of the running loop>`` and
``READY <port>`` on stdout once listening (from uvicorn's own start-up line, which names
the port it bound, read from its logger), and stops on SIGTERM or SIGINT (uvicorn's
handlers, which re-raise the signal once uvicorn has shut down: exit status 143 on SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
from typing import Any

import uvicorn
from _common import BACKLOG, HOST

#: uvicorn's ``loop=`` for each server name.
LOOPS = {
    "ats_asyncio": "ats_cffi.asyncio:new_event_loop",
    "asyncio": "asyncio",
    "uvloop": "uvloop",
}
HELLO = b"Hello, World!"
_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(HELLO))],
}
_BODY = {"type": "http.response.body", "body": HELLO}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI app: ``Hello, World!`` to every HTTP request."""
    if scope["type"] != "http":
        return
    await send(_START)
    await send(_BODY)


class _Ready(logging.Handler):
    """Prints ``READY <port>`` when uvicorn logs the address it listens on, after a line
    naming the class of the loop it runs on."""

    _RUNNING = re.compile(r"Uvicorn running on \S+://\S+:(\d+)")

    def emit(self, record: logging.LogRecord) -> None:
        m = self._RUNNING.search(record.getMessage())
        if m:
            loop = type(asyncio.get_running_loop())
            print(f"LOOP {loop.__module__}.{loop.__qualname__}", flush=True)
            print(f"READY {m[1]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("loop", choices=sorted(LOOPS))
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--backlog", type=int, default=BACKLOG, help="listen backlog (as ats's)")
    args = p.parse_args(argv)
    # uvicorn's logging, warnings and up on stderr; its start-up line to _Ready.
    log_config = {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "level": "WARNING",
            },
            "ready": {"()": _Ready},
        },
        "loggers": {
            "uvicorn.error": {"handlers": ["stderr", "ready"], "level": "INFO"},
        },
    }
    uvicorn.run(
        app,
        host=HOST,
        port=args.port,
        loop=LOOPS[args.loop],
        http="httptools",
        lifespan="off",
        access_log=False,
        workers=1,
        backlog=args.backlog,
        log_config=log_config,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
