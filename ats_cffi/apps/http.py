"""The http service: an HTTP/1.1 keep-alive server parsing with httptools.

Routes: ``GET /`` answers ``Hello, World!``; ``GET /_stats`` the stats as JSON;
``GET /metrics`` the same in Prometheus text format (the stats listener of ``--stats`` has
only the last two). ``HEAD`` is served like ``GET`` without the body; other methods get 405,
unknown paths 404, malformed requests 400 and a close.

Limits (http_limits.py): a head over ``MAX_HEAD`` bytes gets 431 (414 for a target too long),
a body over ``MAX_BODY`` bytes 413, with a close and without reading the rest, so that a
client cannot keep one request going forever; a request whose head tells its answer gets it
once the head is complete, and ``Expect: 100-continue`` gets ``100 Continue``. Each request
answered counts once in ``incoming_requests`` and once in its status class: they add up.

A session parses what its read VIO brings in and writes the responses in order into its
write buffer (pipelined requests included). A response that keeps the connection says
``Connection: keep-alive``, to HTTP/1.1 clients too (as nginx does). It stops parsing while
more than ``WATER_MARK`` bytes of responses wait for a client that does not read them; the
read VIO then stops at its own buffer's water mark, so a pipelining client cannot grow
memory.

Timeouts (ATS's): between requests, a connection may stay idle for the service's
``inactivity_timeout`` (``KEEP_ALIVE_TIMEOUT``: ``keep_alive_no_activity_timeout_in``). A
request that does not arrive whole in the read where it began (a slow or stalled client)
runs under the transaction timeouts until it is complete: no byte for
``transaction_no_activity_timeout`` seconds (or the idle timeout, if shorter), or the
request not complete after ``transaction_active_timeout`` seconds, and the connection is
closed. A client trickling a request byte by byte cannot hold a connection for longer.
Requests that arrive whole (nearly all) never change the timeouts.

Closing: after the last response (``Connection: close``, HTTP/1.0 without keep-alive, an
error, or a graceful stop) the session shuts its write side and keeps reading for at most
``LINGER`` seconds, discarding, before it closes: closing with unread bytes in the socket
would send a reset that can destroy the response before the client read it. Except (as
nginx) when the client asked for the close and left no byte unread: it sends nothing more
(RFC 9112 section 9.6), so the session closes as soon as the response is written.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import httptools
from librt.time import time as _time

from ats_cffi.apps.http_config import (  # the records moved there; still exported here
    HTTP_RECORDS,
    KEEP_ALIVE_TIMEOUT,
    TRANSACTION_ACTIVE_TIMEOUT,
    TRANSACTION_NO_ACTIVITY_TIMEOUT,
    HttpConfig,
    http_config,
)
from ats_cffi.apps.http_limits import (
    HEAD_BEGUN,
    HEAD_DONE,
    MAX_BODY,
    MAX_HEAD,
    MAX_URL,
    request_spans_blocks,
)
from ats_cffi.apps.http_parser import ParserLink, give_parser, parser_pool, take_parser
from ats_cffi.apps.http_responses import (
    ALLOW,
    CLOSE,
    HTTP_ROUTES,
    KEEP_ALIVE,
    STATS_ROUTES,
    TEXT,
    Route,
    error_body,
    find_route,
    hello,
    hello_cache,
    hello_responses,
    http_date,
    negotiate,
    response_head,
)
from ats_cffi.apps.service import WATER_MARK, Service, Session
from ats_cffi.eventsystem import INT64_MAX, VIO, EventCode, MIOBuffer
from ats_cffi.eventsystem.ioblock import thread_pool
from ats_cffi.net.codes import IO_SHUTDOWN_WRITE

log: Final = logging.getLogger("ats.apps.http")

_READ_READY: Final[int] = EventCode.VC_EVENT_READ_READY
_WRITE_READY: Final[int] = EventCode.VC_EVENT_WRITE_READY
_WRITE_COMPLETE: Final[int] = EventCode.VC_EVENT_WRITE_COMPLETE
_EOS: Final[int] = EventCode.VC_EVENT_EOS
_INACTIVITY_TIMEOUT: Final[int] = EventCode.VC_EVENT_INACTIVITY_TIMEOUT

# The parser's methods, looked up once: called through these, a request's four calls skip
# the method lookup on the parser's type each would do.
_feed_data: Final = httptools.HttpRequestParser.feed_data
_get_method: Final = httptools.HttpRequestParser.get_method
_should_keep_alive: Final = httptools.HttpRequestParser.should_keep_alive
_should_upgrade: Final = httptools.HttpRequestParser.should_upgrade
#: The hello route, kept as a constant: compared with a request's route, not looked up in
#: the module's dict each time.
_HELLO: Final = hello

#: Block size of a session's buffers: ATS's first read buffer for a client connection (4 KiB).
#: A request and its response usually fit one block; a new connection then allocates and
#: zeroes 8 KiB, not 64 (measured: 7% less CPU per request on connections that close after
#: one request, the same on keep-alive ones).
HTTP_BLOCK_SIZE: Final = 4096
#: Seconds a closing session keeps draining the client's bytes before it closes.
LINGER: Final = 2.0
#: Seconds a session stays idle in a graceful stop before it closes: a client that just
#: read a response sends its next request within it, which closing at once would cross.
DRAIN_IDLE: Final = 0.5
TOTAL: Final = "proxy.process.http.total_client_connections"
CURRENT: Final = "proxy.process.http.current_client_connections"
REQUESTS: Final = "proxy.process.http.incoming_requests"
R2XX: Final = "proxy.process.http.2xx_responses"
R3XX: Final = "proxy.process.http.3xx_responses"
R4XX: Final = "proxy.process.http.4xx_responses"
R5XX: Final = "proxy.process.http.5xx_responses"
R400: Final = "proxy.process.http.400_responses"

# The session counts on the thread it runs on (AppStats), by index.
_STAT_NAMES: Final = (TOTAL, CURRENT, REQUESTS, R2XX, R3XX, R4XX, R5XX, R400)
_I_TOTAL: Final = 0
_I_CURRENT: Final = 1
_I_REQUESTS: Final = 2
_I_2XX: Final = 3  # the status classes follow: _I_2XX + (status // 100 - 2)
_I_400: Final = 7
assert _STAT_NAMES.index(R5XX) == _I_2XX + 3 and len(_STAT_NAMES) == _I_400 + 1


class HttpSession(Session):
    """One client connection: parse, answer in order, keep alive or close (module doc).

    The write VIO's ``nbytes`` is the count of response bytes queued so far (``queued``):
    the VC writes them and signals ``WRITE_COMPLETE`` once, instead of ``WRITE_READY``
    before and after every write of an open-ended VIO; the next response raises ``nbytes``
    and re-enables it. ``queued - wvio.ndone`` is what waits in the write buffer. The write
    buffer and VIO are made at the first response (``open_write``): a connection that never
    sent a request holds neither.
    """

    current_stat = CURRENT

    def __init__(self, service: HttpService, vc: Any) -> None:
        super().__init__(service)
        self.vc = vc
        self.rbuf = MIOBuffer(HTTP_BLOCK_SIZE)
        self.rreader = self.rbuf.alloc_reader()
        self.wbuf: MIOBuffer | None = None
        self.wvio: VIO | None = None
        #: Taken from the thread's pool at the first bytes of a request, given back once
        #: the session is idle between requests (http_parser.py).
        self.link: ParserLink | None = None
        #: The request target (bytes from the parser; joined only when it comes in pieces).
        self.url = b""
        self.url_too_long = False
        #: Bytes of the current request's head parsed after the piece where it began
        #: (MAX_HEAD), or HEAD_BEGUN / HEAD_DONE; then its body's bytes (``body_bytes``).
        self.head_bytes = HEAD_DONE
        self.body_bytes = 0
        #: What http_limits.py keeps of the head (reset at each request): the declared body
        #: length (-1: none), ``Expect`` and ``Accept``; ``head_check``: see the head when it
        #: is complete; ``continue_pending``: a 100 is due if the read ends the request's head.
        self.body_length = -1
        self.expect = self.accept = b""
        self.head_check = self.continue_pending = False
        #: Response bytes written into ``wbuf`` since the session began.
        self.queued = 0
        #: A request has begun and not completed (the session is not idle).
        self.in_request = False
        #: No more requests: flush, then linger-close.
        self.closing = False
        self.lingering = False
        #: The client half-closed (EOS): what it sent is answered, then the session closes.
        self.peer_eos = False
        #: The client asked for the close (``Connection: close``, or HTTP/1.0 without
        #: keep-alive) and has sent nothing after that request so far: no linger (``linger``).
        self.client_closes = False
        #: The transaction timeouts replace the idle one (a request spans reads).
        self.in_transaction_timeouts = False
        if service.inactivity_timeout:
            vc.set_inactivity_timeout(service.inactivity_timeout)
        #: This thread's block of the service's counters (the session runs on its VC's
        #: thread, where it is made).
        self.counts = counts = service.stats.per_thread.counts
        #: This thread's block and parser pools, looked up once per session: a request
        #: takes and gives back a block of each buffer and a parser.
        self.pool = thread_pool()
        self.parsers = parser_pool()
        counts[_I_TOTAL] += 1
        counts[_I_CURRENT] += 1
        service.add_session(self)
        with self.mutex:  # type: ignore[union-attr]
            self.rvio = vc.do_io_read(self, INT64_MAX, self.rbuf)

    def open_write(self) -> MIOBuffer:
        """The response buffer and the write VIO over it (``nbytes`` 0 until a pump)."""
        wbuf = self.wbuf = MIOBuffer(HTTP_BLOCK_SIZE, WATER_MARK)
        self.wvio = self.vc.do_io_write(self, 0, wbuf.alloc_reader())
        return wbuf

    # ------------------------------------------------------------------ events

    def handle_event(self, event: int = 0, data: Any = None) -> Any:
        # Overridden, not set as a handler: the VC's signal then calls this directly (a
        # compiled call), not a bound method through Continuation.handle_event.
        if self.closed:
            return
        if event == _READ_READY:
            if self.lingering:
                self.rreader.consume(self.rreader.read_avail())
                self.rvio.reenable()
            else:
                self.pump()
        elif event == _WRITE_COMPLETE or event == _WRITE_READY:
            # Responses went out (all of them, or some for a client slow to read them).
            if self.closing:
                if event == _WRITE_COMPLETE:
                    self.linger()
            else:
                unread = self.rreader.read_avail()
                if unread:
                    # Parsing was paused while the responses waited: resume it. The read VIO
                    # stops only while the read buffer holds unread bytes (back-pressure):
                    # once parsing made room, let it read again.
                    self.pump()
                    if not self.closed and not self.peer_eos and self.rreader.read_avail() < unread:
                        self.vc.reenable(self.rvio)
                elif event == _WRITE_COMPLETE and self.link is None:
                    self.vc.add_to_keep_alive_queue()  # idle: its oldest close first
        elif event == _EOS:
            if self.lingering:
                self.close()
            else:  # the client half-closed: answer what it sent, then close
                self.peer_eos = True
                self.pump()
        elif event == _INACTIVITY_TIMEOUT and self.drain_pending():
            self.vc.set_inactivity_timeout(DRAIN_IDLE)  # a request came: let it be read
        else:  # VC_EVENT_ERROR, INACTIVITY_TIMEOUT, ACTIVE_TIMEOUT
            self.close()

    def pump(self) -> None:
        """Feed the parser what has been read (block by block, pausing while the client
        lags behind on responses) and send what it produced."""
        reader = self.rreader
        wvio = self.wvio
        avail = reader.read_avail()
        link = self.link
        if link is None and avail:  # a request begins (net/queues.py: max_requests_in)
            if not self.closing and not self.vc.add_to_active_queue():
                self.close()
                return
            link = self.link = take_parser(self, self.parsers)
        while (
            avail and not self.closing and (wvio is None or self.queued - wvio.ndone <= WATER_MARK)
        ):
            assert link is not None  # taken above once there were bytes
            block, off = reader.first_block()
            n = block.end - off
            # The block's bytes, copied out and consumed (one copy: a memoryview slice of
            # the block cost more to make than the copy, callgrind of bench_http's request).
            data = reader.read(n)
            try:
                _feed_data(link.parser, data)
            except httptools.HttpParserUpgrade:
                self.closing = True  # answered with a close: we speak no other protocol
            except httptools.HttpParserCallbackError:
                log.exception("http: answering a request failed")
                if not self.closing:
                    self.refuse(500)
            except httptools.HttpParserError as exc:
                # After a response that closes, what follows is not answered (httptools
                # rejects data after "Connection: close"): it is discarded while lingering.
                if not self.closing:
                    log.debug("http: bad request from %r: %s", self.vc, exc)
                    self.refuse(400)
                self.client_closes = False  # bytes came after the last request: linger
            avail -= n
            if self.in_request and not self.closing:
                request_spans_blocks(self, n)  # (rare) bound its head, send its 100
            wvio = self.wvio  # made by the first response
        if self.in_request and not self.in_transaction_timeouts and not self.closing:
            self.begin_transaction_timeouts()
        if link is not None and not avail and not self.in_request and not self.closing:
            self.link = None
            give_parser(link, self.parsers)  # idle between requests: no parser held
        if self.closing or (self.peer_eos and not avail):
            self.finish()
        elif wvio is not None and wvio.nbytes != self.queued:
            wvio.nbytes = self.queued
            wvio.reenable()  # (a VC's NetState calls its VC natively, not by name)

    def begin_transaction_timeouts(self) -> None:
        """A request spans reads: until it is complete, no byte for the transaction's
        no-activity timeout (or the idle one, if shorter) or the request not complete within
        its active timeout closes the connection (module doc)."""
        service: HttpService = self.service  # type: ignore[assignment]
        vc = self.vc
        idle = service.inactivity_timeout
        no_activity = service.transaction_no_activity_timeout
        if no_activity and (not idle or no_activity < idle):
            vc.set_inactivity_timeout(no_activity)
        if service.transaction_active_timeout:
            vc.set_active_timeout(service.transaction_active_timeout)
        self.in_transaction_timeouts = True

    def end_transaction_timeouts(self) -> None:
        """The request is complete: the idle timeout again, no active timeout."""
        service: HttpService = self.service  # type: ignore[assignment]
        vc = self.vc
        vc.set_inactivity_timeout(service.inactivity_timeout)
        vc.cancel_active_timeout()
        self.in_transaction_timeouts = False

    # ------------------------------------------------------------------ httptools callbacks

    def on_message_begin(self) -> None:
        self.in_request = True
        self.url = b""
        self.url_too_long = False
        self.head_bytes = HEAD_BEGUN
        self.body_bytes = 0
        self.body_length = -1
        self.expect = self.accept = b""
        self.head_check = self.continue_pending = False

    def on_url(self, url: bytes) -> None:
        if self.url or len(url) > MAX_URL:
            if len(self.url) + len(url) > MAX_URL:
                self.url_too_long = self.head_check = True
            else:
                self.url += url
        else:
            self.url = url

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > MAX_BODY and not self.closing:  # chunked (http_limits.py)
            self.refuse(413)

    def on_message_complete(self) -> None:
        self.in_request = False
        if self.closing:
            return  # answered at its head, or after a response that closed: not answered
        if self.in_transaction_timeouts:
            self.end_transaction_timeouts()
        service: HttpService = self.service  # type: ignore[assignment]
        link = self.link
        assert link is not None  # this is its parser's callback
        parser = link.parser
        method = _get_method(parser)
        # An Upgrade (or CONNECT) request is answered over HTTP/1.1, then the connection
        # closes: the bytes after it would be another protocol's.
        if _should_keep_alive(parser):
            keep_alive = not service.draining and not _should_upgrade(parser)
        else:  # the client closes: it sends no more (RFC 9112 9.6), unless it upgrades
            keep_alive = False
            self.client_closes = not _should_upgrade(parser)
        head = method == b"HEAD"
        allow = b""
        # (A target too long was refused at its head: http_limits.check_head.)
        route = find_route(service.routes, self.url)
        if route is None:
            status, ctype, body = 404, TEXT, b"Not Found\n"
        elif method != b"GET" and not head:
            status, ctype, body = 405, TEXT, b"Method Not Allowed\n"
            allow = ALLOW
        elif route is _HELLO:
            # The common response, whole from the per-second cache.
            counts = self.counts
            counts[_I_REQUESTS] += 1
            counts[_I_2XX] += 1
            cache = hello_cache
            now = _time()
            if now >= cache.end or now < cache.start:
                cache.refresh(now)
            if keep_alive:
                response = cache.head if head else cache.get
            else:
                response = cache.head_close if head else cache.get_close
                self.closing = True
            wbuf = self.wbuf if self.wbuf is not None else self.open_write()
            self.queued += wbuf.write(response, self.pool)
            return
        else:
            if self.accept:
                route = negotiate(route, self.accept)
            status, ctype, body = route(service)
        self.respond(status, ctype, body, keep_alive, head, allow)

    # ------------------------------------------------------------------ responses

    def respond(
        self,
        status: int,
        ctype: str,
        body: bytes,
        keep_alive: bool,
        head: bool,
        extra: bytes = b"",
    ) -> None:
        """Queue one final response (2xx to 5xx: counted with its request); after one that
        does not keep alive, no more are parsed."""
        counts = self.counts
        counts[_I_REQUESTS] += 1
        counts[_I_2XX + status // 100 - 2] += 1
        if status == 400:
            counts[_I_400] += 1
        if keep_alive:
            conn = KEEP_ALIVE
        else:
            conn = CLOSE
            self.closing = True
        head_bytes = response_head(status, ctype, len(body), http_date(), extra, conn)
        wbuf = self.wbuf if self.wbuf is not None else self.open_write()
        self.queued += wbuf.write(head_bytes if head else head_bytes + body, self.pool)

    def refuse(self, status: int, extra: bytes = b"") -> None:
        """Answer an error ``status`` (its reason as the body) with a close."""
        self.respond(status, TEXT, error_body(status), False, False, extra)

    # ------------------------------------------------------------------ closing

    def finish(self) -> None:
        """No more requests: end the write VIO at what is queued, then linger-close."""
        self.closing = True
        if self.lingering:
            return
        wvio = self.wvio
        if wvio is None:  # nothing was ever answered
            self.linger()
            return
        wvio.nbytes = self.queued
        if wvio.ntodo() <= 0:
            self.linger()
        else:
            wvio.reenable()

    def linger(self) -> None:
        """All responses are sent: shut the write side, discard input for ``LINGER`` s.

        Not when the client sent EOS, nor (nginx's ``lingering_close on``) when it asked for
        the close itself and no byte of it is left unread, in the read buffer or in the
        socket: it will send no more, and closing sends a FIN after the response."""
        if self.lingering:
            return
        self.lingering = True
        if self.peer_eos:
            self.close()
            return
        if self.client_closes and not self.in_request and not self.rreader.read_avail():
            try:
                pending = self.vc.input_pending()
            except OSError:  # the connection failed: nothing to linger for
                pending = False
            if not pending:
                self.close()
                return
        try:
            self.vc.do_io_shutdown(IO_SHUTDOWN_WRITE)
        except OSError:
            self.close()
            return
        self.rreader.consume(self.rreader.read_avail())
        self.vc.set_active_timeout(LINGER)
        self.rvio.reenable()

    def release(self) -> None:
        super().release()
        self.rbuf.dealloc_all_readers()
        if self.wbuf is not None:
            self.wbuf.dealloc_all_readers()
        link = self.link
        if link is not None:  # in any state: dropped, not pooled (http_parser.py)
            link.session = None  # it held the session
            self.link = None

    def on_drain(self) -> None:
        """Graceful stop: what was received is answered with ``Connection: close``
        (``on_message_complete``); idle for ``DRAIN_IDLE`` s, the session closes."""
        if not self.closed and not self.closing and not self.drain_pending():
            self.vc.set_inactivity_timeout(DRAIN_IDLE)

    def drain_pending(self) -> bool:
        """Draining, and a request in progress or received (buffered or in the socket), or
        responses not yet taken: the session is not idle."""
        if not self.service.draining or self.closing:
            return False
        wvio = self.wvio
        if self.in_request or self.rreader.read_avail() or (wvio and wvio.ndone < self.queued):
            return True
        try:
            return self.vc.input_pending()
        except OSError:  # the connection failed: nothing will be answered
            return False


class HttpService(Service):
    """``ats-cffi http`` (``routes=HTTP_ROUTES``) or the ``--stats`` listener
    (``routes=STATS_ROUTES``, reporting ``stats_source``'s counters)."""

    service_name = "http"
    stat_names = _STAT_NAMES  # sessions count by position in it (the _I_* indexes)

    def __init__(
        self,
        routes: Any = HTTP_ROUTES,
        inactivity_timeout: Any = KEEP_ALIVE_TIMEOUT,
        worker: Any = None,
        stats_source: Any = None,
        name: Any = None,
        transaction_no_activity_timeout: Any = TRANSACTION_NO_ACTIVITY_TIMEOUT,
        transaction_active_timeout: Any = TRANSACTION_ACTIVE_TIMEOUT,
    ) -> None:
        super().__init__(inactivity_timeout, worker)
        self.check_seconds("transaction_no_activity_timeout", transaction_no_activity_timeout)
        self.check_seconds("transaction_active_timeout", transaction_active_timeout)
        #: Seconds (0: none) a request in progress may go without a byte, and may take in
        #: all (module doc).
        self.transaction_no_activity_timeout = transaction_no_activity_timeout
        self.transaction_active_timeout = transaction_active_timeout
        if not isinstance(routes, dict) or not all(
            isinstance(path, bytes)
            and path.startswith(b"/")
            and b"?" not in path
            and callable(route)
            for path, route in routes.items()
        ):
            raise TypeError(
                "HttpService: routes must be a dict of b'/path' -> route(service) callables "
                "(a path without '?': a request's query string is not part of its route)"
            )
        if stats_source is not None and not isinstance(stats_source, Service):
            raise TypeError(
                "HttpService: stats_source must be a Service or None, "
                f"not {type(stats_source).__name__}"
            )
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"HttpService: name must be a non-empty str or None, got {name!r}")
        self.routes: dict[bytes, Route] = routes
        if name is not None:
            self.name = name
        #: The service whose counters the stats pages show (this one by default).
        self.stats_source: Service = stats_source if stats_source is not None else self

    def start_session(self, vc: Any) -> None:
        HttpSession(self, vc)


__all__ = [
    "HTTP_BLOCK_SIZE",
    "HTTP_RECORDS",
    "HTTP_ROUTES",
    "KEEP_ALIVE_TIMEOUT",
    "LINGER",
    "MAX_BODY",
    "MAX_HEAD",
    "MAX_URL",
    "STATS_ROUTES",
    "TRANSACTION_ACTIVE_TIMEOUT",
    "TRANSACTION_NO_ACTIVITY_TIMEOUT",
    "HttpConfig",
    "HttpService",
    "HttpSession",
    "Route",
    "hello",
    "hello_responses",
    "http_config",
    "http_date",
    "response_head",
]
