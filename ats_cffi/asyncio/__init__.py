"""An asyncio event loop on the ATS net core: ``ats_cffi.asyncio``.

Use it as uvloop is used::

    with asyncio.Runner(loop_factory=ats_cffi.asyncio.new_event_loop) as runner:
        runner.run(main())

    ats_cffi.asyncio.run(main())          # the same
    ats_cffi.asyncio.install()            # the policy, for code that calls asyncio.run

``uvicorn --loop ats_cffi.asyncio:new_event_loop`` runs a web app on it.
``create_server(..., options=ServerOptions(...))`` adds ATS's connection management to an
asyncio server: inactivity and active timeouts, the connections throttle (``server.py``).
``await start_metrics_server(host, port)`` serves the net stats as the ``ats-cffi`` command
does (``/_stats``, ``/metrics``); ``stats()`` and ``metrics_text()`` give them to code that
serves them itself (``metrics.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from ats_cffi.asyncio.loop import Loop, new_event_loop
from ats_cffi.asyncio.metrics import metrics_text, start_metrics_server, stats, stats_json
from ats_cffi.asyncio.server import ServerOptions, create_server

_T = TypeVar("_T")

__all__ = [
    "EventLoopPolicy",
    "Loop",
    "ServerOptions",
    "create_server",
    "install",
    "metrics_text",
    "new_event_loop",
    "run",
    "start_metrics_server",
    "stats",
    "stats_json",
]


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):  # type: ignore[misc,valid-type]
    """asyncio's default policy, making ``Loop``s."""

    def _loop_factory(self) -> Loop:
        return Loop()


def install() -> None:
    """Make ``EventLoopPolicy`` asyncio's policy (``asyncio.run`` then runs on ``Loop``)."""
    asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main: Coroutine[Any, Any, _T], *, debug: bool | None = None) -> _T:
    """``asyncio.run(main)`` on a new ``Loop``."""
    if not asyncio.iscoroutine(main):
        raise ValueError(f"run: a coroutine was expected, got {main!r}")
    runner_cls = getattr(asyncio, "Runner", None)
    if runner_cls is not None:  # 3.11+
        with runner_cls(debug=debug, loop_factory=new_event_loop) as runner:
            return runner.run(main)  # type: ignore[no-any-return]
    old = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(EventLoopPolicy())
    try:
        return asyncio.run(main, debug=debug)
    finally:
        asyncio.set_event_loop_policy(old)
