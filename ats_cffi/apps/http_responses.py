"""The http service's responses: status line and headers, the ``Date`` (formatted once per
second), the routes (``hello`` and the stats pages, ``/metrics`` in the format the client
accepts) and the per-second cache of the hello route's whole responses, which the session
writes with one call."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from ats_cffi.apps.stats import collect, render_json, render_prometheus

if TYPE_CHECKING:
    from ats_cffi.apps.http import HttpService

_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    414: "URI Too Long",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}

#: A route: (service) -> (status, content type, body).
Route = Callable[["HttpService"], tuple[int, str, bytes]]

TEXT: Final = "text/plain; charset=utf-8"
#: Every response that keeps the connection says so, to HTTP/1.1 clients too (as nginx): an
#: HTTP/1.0 client needs it, and the session then need not ask the parser for the version.
KEEP_ALIVE: Final = b"Connection: keep-alive\r\n"
#: The header of the last response on a connection.
CLOSE: Final = b"Connection: close\r\n"
HELLO: Final = (200, TEXT, b"Hello, World!")
#: The header of a 405: the methods the routes serve.
ALLOW: Final = b"Allow: GET, HEAD\r\n"
#: Prometheus' text format, which scrapers that ask for nothing else get.
PROMETHEUS_TEXT: Final = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TEXT: Final = "application/openmetrics-text; version=1.0.0; charset=utf-8"

_QMARK: Final = ord("?")


def error_body(status: int) -> bytes:
    """The body of an error response: its reason phrase and a newline."""
    return _REASONS[status].encode() + b"\n"


def hello(service: HttpService) -> tuple[int, str, bytes]:
    return HELLO


def stats_json(service: HttpService) -> tuple[int, str, bytes]:
    values = collect(service.stats_source.stats)
    return 200, "application/json", render_json(values, service.stats_source.name, service.worker)


def stats_prometheus(service: HttpService) -> tuple[int, str, bytes]:
    values = collect(service.stats_source.stats)
    return 200, PROMETHEUS_TEXT, render_prometheus(values)


def stats_openmetrics(service: HttpService) -> tuple[int, str, bytes]:
    """``/metrics`` to a scraper that accepts OpenMetrics (``negotiate``)."""
    values = collect(service.stats_source.stats)
    return 200, OPENMETRICS_TEXT, render_prometheus(values, openmetrics=True)


STATS_ROUTES: dict[bytes, Route] = {b"/_stats": stats_json, b"/metrics": stats_prometheus}
HTTP_ROUTES: dict[bytes, Route] = {b"/": hello, **STATS_ROUTES}


def find_route(routes: dict[bytes, Route], url: bytes) -> Route | None:
    """The route of request target ``url`` (its query string ignored), or None. No route's
    path holds a ``?`` (``HttpService`` checks): a target found whole has no query string,
    and only one that is not found is looked for a ``?``."""
    route = routes.get(url)
    if route is None and _QMARK in url:  # (an int operand: much cheaper than b"?")
        route = routes.get(url.split(b"?", 1)[0])
    return route


def negotiate(route: Route, accept: bytes) -> Route:
    """The route that answers ``route``'s request for a client whose ``Accept`` is
    ``accept``: ``/metrics`` in OpenMetrics to one that prefers it, as Prometheus asks."""
    if route is stats_prometheus and wants_openmetrics(accept):
        return stats_openmetrics
    return route


def wants_openmetrics(accept: bytes) -> bool:
    """Whether an ``Accept`` value ranks ``application/openmetrics-text`` (q > 0) at least
    as high as the text format (``text/plain``, ``text/*``, ``*/*``)."""
    openmetrics = text = 0.0
    for media_range in accept.lower().split(b","):
        kind, *params = media_range.split(b";")
        q = 1.0
        for param in params:
            key, _, value = param.partition(b"=")
            if key.strip() == b"q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        kind = kind.strip()
        if kind == b"application/openmetrics-text":
            openmetrics = max(openmetrics, q)
        elif kind in (b"text/plain", b"text/*", b"*/*"):
            text = max(text, q)
    return openmetrics > 0 and openmetrics >= text


_date_cache: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """The ``Date`` header's value, formatted once per second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True).encode())
    return _date_cache[1]


def response_head(
    status: int, ctype: str, length: int, date: bytes, extra: bytes = b"", conn: bytes = b""
) -> bytes:
    """Status line and headers of a response (``extra`` and ``conn``: whole header lines)."""
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status].encode()),
            b"Server: ats-cffi\r\nDate: ",
            date,
            b"\r\nContent-Type: ",
            ctype.encode(),
            b"\r\nContent-Length: %d\r\n" % length,
            extra,
            conn,
            b"\r\n",
        )
    )


class HelloCache:
    """The hello route's HTTP/1.1 responses, kept alive and with ``Connection: close``, for
    GET and HEAD, valid while ``start <= time.time() < end`` (one second: the Date), so that
    the common response costs one write.

    Shared by the net threads. ``refresh`` stores the responses before the second they are
    valid for: a thread reading meanwhile gets either second's, each whole.
    """

    def __init__(self) -> None:
        self.start = 0.0
        self.end = 0.0
        self.get = b""
        self.head = b""
        self.get_close = b""
        self.head_close = b""

    def refresh(self, now: float) -> None:
        """Make the responses of the second of ``now``."""
        second = int(now)
        status, ctype, body = HELLO
        date = email.utils.formatdate(second, usegmt=True).encode()
        head = response_head(status, ctype, len(body), date, conn=KEEP_ALIVE)
        close = response_head(status, ctype, len(body), date, conn=CLOSE)
        self.get = head + body
        self.head = head
        self.get_close = close + body
        self.head_close = close
        self.start = float(second)
        self.end = float(second + 1)


hello_cache: Final = HelloCache()


def hello_responses(now: float) -> tuple[float, float, bytes, bytes, bytes, bytes]:
    """``(start, end, GET, HEAD, GET closing, HEAD closing)`` of the hello route for the
    second of ``now`` (the shared ``HelloCache``, refreshed)."""
    c = hello_cache
    c.refresh(now)
    return c.start, c.end, c.get, c.head, c.get_close, c.head_close
