"""The net stats of an asyncio application on ``Loop``, as the ``ats-cffi`` command shows its
own: ``/_stats`` (JSON, ATS's stats names) and ``/metrics`` (Prometheus text, or OpenMetrics
to a scraper that asks for it).

The loop's thread counts in a NetHandler's stat block as a net thread does (connections
open, reads, timeouts, throttled connections, TLS handshakes); the blocks live in the
process's registries (``ats_cffi.net.stats``), so what is read here is the process's
totals: every ``Loop`` in it, and ``net_processor``'s threads if it runs them. A closed
loop's counts stay in the totals.

- ``stats()``: the values, ``{"proxy.process.net.read_bytes": n, ...}``;
- ``stats_json()`` / ``metrics_text()``: the bytes of the command's two pages, rendered
  by the command's own code (``ats_cffi.apps.stats``): the same names, types and format;
- ``await start_metrics_server(host, port)``: a small HTTP/1.1 server on the running loop
  that serves both pages (``GET``/``HEAD``; keep-alive; ``Accept`` chooses OpenMetrics as
  for the command; 404 elsewhere, 405 for another method, 400 for a malformed request).
  Its own connections are counted as any other (a scrape sees itself open).

No ASGI framework is needed; an app that has one can serve ``metrics_text()`` from a route
of its own instead.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import httptools

from ats_cffi.apps.http_responses import (
    ALLOW,
    CLOSE,
    KEEP_ALIVE,
    OPENMETRICS_TEXT,
    PROMETHEUS_TEXT,
    TEXT,
    error_body,
    http_date,
    response_head,
    wants_openmetrics,
)
from ats_cffi.apps.stats import collect, render_json, render_prometheus

__all__ = ["MetricsProtocol", "metrics_text", "start_metrics_server", "stats", "stats_json"]

#: The ``service`` the JSON page names by default.
SERVICE = "asyncio"
JSON: str = "application/json"
#: A request whose head (and any body) is not complete within this many bytes gets a 431
#: and the connection is closed: a scrape's request is a few hundred.
MAX_REQUEST = 65536


def stats() -> dict[str, int]:
    """The net and TLS stats (``proxy.process.net.*``, ``proxy.process.tcp.*``,
    ``proxy.process.ssl.*``) of this process, by their ATS names (module doc)."""
    return collect()


def stats_json(service: str = SERVICE) -> bytes:
    """The ``/_stats`` page: ``{"service": service, "pid": ..., "worker": null, "global":
    {name: value, ...}}`` as the command writes it (UTF-8, newline-terminated)."""
    return render_json(collect(), service)


def metrics_text(openmetrics: bool = False) -> bytes:
    """The ``/metrics`` page: Prometheus text format 0.0.4 (its content type is
    ``PROMETHEUS_TEXT``), or OpenMetrics 1.0 (``OPENMETRICS_TEXT``)."""
    return render_prometheus(collect(), openmetrics)


def _answer(method: bytes, url: bytes, accept: bytes, service: str) -> tuple[int, str, bytes]:
    """(status, content type, body) of a request, in the command's order: 404 for a path
    it does not serve (the query string ignored), then 405 for a method other than
    ``GET`` and ``HEAD``."""
    path = url.split(b"?", 1)[0]
    if path not in (b"/_stats", b"/metrics"):
        return 404, TEXT, error_body(404)
    if method not in (b"GET", b"HEAD"):
        return 405, TEXT, error_body(405)
    if path == b"/_stats":
        return 200, JSON, stats_json(service)
    om = wants_openmetrics(accept)
    return 200, OPENMETRICS_TEXT if om else PROMETHEUS_TEXT, metrics_text(om)


class MetricsProtocol(asyncio.Protocol):
    """One connection of ``start_metrics_server``: parses requests with httptools (as the
    command's HTTP session does) and answers each in order, one ``write`` per read.

    A request that does not keep the connection alive (``Connection: close``, HTTP/1.0
    without keep-alive), a malformed one (400) and one over ``MAX_REQUEST`` bytes (431) get
    their answer and then the close. Reading pauses while the transport's write buffer is
    over its high water mark (a client that sends requests and reads no answer).
    """

    def __init__(self, service: str = SERVICE) -> None:
        self.service = service
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._accept = b""
        self._unanswered = 0  # bytes read since the last complete request
        self._out: list[bytes] = []
        self._closing = False

    # ------------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._unanswered += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._closing = True  # (answered already: no other protocol is spoken here)
        except httptools.HttpParserError:
            if not self._closing:  # (else: bytes after a request that closes, ignored)
                self._error(400)
        if not self._closing and self._unanswered > MAX_REQUEST:
            self._error(431)
        transport = self.transport
        assert transport is not None
        if self._out:
            transport.write(b"".join(self._out))
            self._out.clear()
        if self._closing:
            transport.close()  # once what was queued is written

    def eof_received(self) -> bool | None:
        return None  # the client is done: close once the answers are written

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    # ------------------------------------------------------------------ httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._accept = b""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"accept":
            self._accept = self._accept + b"," + value if self._accept else value

    def on_message_complete(self) -> None:
        if self._closing:
            return
        self._unanswered = 0
        method = self._parser.get_method()
        status, ctype, body = _answer(method, self._url, self._accept, self.service)
        extra = ALLOW if status == 405 else b""
        keep_alive = self._parser.should_keep_alive()
        self._respond(status, ctype, body, keep_alive, method == b"HEAD", extra)

    # ------------------------------------------------------------------ responses

    def _respond(
        self, status: int, ctype: str, body: bytes, keep_alive: bool, head: bool, extra: bytes
    ) -> None:
        """Queue one response (the command's head: ``response_head``); after one that does
        not keep alive, nothing more is parsed."""
        if not keep_alive:
            self._closing = True
        conn = KEEP_ALIVE if keep_alive else CLOSE
        head_bytes = response_head(status, ctype, len(body), http_date(), extra, conn)
        self._out.append(head_bytes if head else head_bytes + body)

    def _error(self, status: int) -> None:
        self._respond(status, TEXT, error_body(status), False, False, b"")


async def start_metrics_server(
    host: str | None, port: int, *, service: str = SERVICE, **kwargs: Any
) -> asyncio.Server:
    """Serve ``/_stats`` and ``/metrics`` (module doc) on ``host``:``port`` from the running
    loop: ``loop.create_server(MetricsProtocol, host, port, **kwargs)`` (``kwargs``:
    ``backlog``, ``reuse_port``, ``ssl``, ...; ``port`` 0 picks a free one, which
    ``server.sockets`` tell). ``service`` is what the JSON page names. Close it as any
    ``asyncio.Server`` (``close()``, ``await wait_closed()``)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        functools.partial(MetricsProtocol, service), host, port, **kwargs
    )
