"""ATS's connection management for asyncio servers on ``Loop``: ``create_server`` with a
``ServerOptions``.

Every server of ``Loop`` accepts through the net core: a NetAccept on the loop's NetHandler
(``accept.py``). A plain ``loop.create_server`` otherwise behaves as asyncio's (its listener is
exempt from the connections throttle). Through this module's ``create_server``, a server's
connections also get what ATS gives its own:

- ``inactivity_timeout`` / ``active_timeout``: the loop's InactivityCop closes a connection
  idle that long (or open that long); its protocol sees ``connection_lost(TimeoutError)``,
  counted in ``proxy.process.net.inactivity_timeouts`` / ``active_timeouts``;
- ``throttle``: a connection accepted while ``proxy.config.net.connections_throttle`` is
  reached (every connection of the process counts: the net threads', the loops') is closed at
  once, before any protocol is made, counted in ``proxy.process.net.connections_throttled_in``
  and logged once a minute: the NetAccept's own throttle;
- ``accept_threads``: that many dedicated threads accept on each listening socket (ATS's
  ``proxy.config.accept_threads``: blocking ``accept4`` batches off the loop's thread), and
  hand the connections to the loop's thread, where they start as the loop's own accepts
  do; 0 (the default): the loop's NetHandler accepts. They stop and are joined when the
  server closes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from typing import Any

from ats_cffi.net.config import MAX_ACCEPT_THREADS


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """What ATS manages for one asyncio server's connections (module doc). Timeouts are in
    seconds, > 0, or None for none."""

    inactivity_timeout: float | None = None
    active_timeout: float | None = None
    throttle: bool = True
    accept_threads: int = 0

    def __post_init__(self) -> None:
        for name in ("inactivity_timeout", "active_timeout"):
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"ServerOptions: {name} must be a number or None, not {v!r}")
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"ServerOptions: {name} must be > 0 and finite, got {v!r}")
        if not isinstance(self.throttle, bool):
            raise TypeError(f"ServerOptions: throttle must be a bool, not {self.throttle!r}")
        n = self.accept_threads
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"ServerOptions: accept_threads must be an int, not {n!r}")
        if not 0 <= n <= MAX_ACCEPT_THREADS:
            raise ValueError(
                f"ServerOptions: accept_threads must be between 0 and {MAX_ACCEPT_THREADS}, got {n}"
            )

    def apply(self, vc: Any) -> None:
        """Set the timeouts on an accepted connection's VC."""
        if self.inactivity_timeout is not None:
            vc.set_inactivity_timeout(self.inactivity_timeout)
        if self.active_timeout is not None:
            vc.set_active_timeout(self.active_timeout)


async def create_server(
    protocol_factory: Any,
    host: Any = None,
    port: Any = None,
    *,
    options: ServerOptions | None = None,
    start_serving: bool = True,
    **kwargs: Any,
) -> asyncio.Server:
    """``loop.create_server(protocol_factory, host, port, **kwargs)`` on the running
    ``Loop``, its connections managed as ``options`` says (default ``ServerOptions()``).
    ``TypeError`` if the running loop is not an ``ats_cffi.asyncio.Loop``."""
    from ats_cffi.asyncio.loop import Loop

    loop = asyncio.get_running_loop()
    if not isinstance(loop, Loop):
        raise TypeError(
            f"create_server: the running loop must be an ats_cffi.asyncio.Loop, not "
            f"{type(loop).__name__}"
        )
    if options is None:
        options = ServerOptions()
    elif not isinstance(options, ServerOptions):
        raise TypeError(
            f"create_server: options must be ServerOptions or None, not {type(options).__name__}"
        )
    server = await loop.create_server(protocol_factory, host, port, start_serving=False, **kwargs)
    loop._server_options[server] = options  # before start_serving makes its NetAccepts
    if start_serving:
        await server.start_serving()
    return server
