"""The HTTP hello server of ``python -m ats_cffi http``, rewritten on asyncio and on uvloop;
and a minimal uvloop + httptools hello server.

    python perf/http_peers.py {asyncio,uvloop,uvloop_min,ats_asyncio} [--port P] [--backlog N]

Peers for compare_peers.py: the same server logic as ``ats_cffi/apps/http.py`` (parsing with
``httptools.HttpRequestParser``), as an ``asyncio.Protocol``. ``GET /`` (and ``HEAD /``)
answers ``Hello, World!`` with the same headers (Server, Date, Content-Type,
Content-Length); HTTP/1.1 keeps the connection alive unless the client says
``Connection: close`` (HTTP/1.0 only with ``Connection: keep-alive``); other paths get 404,
other methods 405, a target over 8 KiB 414 and close, a malformed request 400 and close.
Pipelined requests are answered in order, with one ``transport.write`` per
``data_received``; while the transport's write buffer is above its high water mark, reading
pauses (``pause_writing`` -> ``pause_reading``).

``uvloop_min`` is what a benchmark of uvloop + httptools usually runs: every request gets
the hello response (the same bytes, made once per second for its Date), written at once
from ``on_message_complete``; no routes, no status but 200 (a malformed request closes the
connection), no flow control. It bounds what the same-logic peers could save.

Listens on 127.0.0.1, prints ``READY <port>`` once listening, and stops cleanly on SIGTERM
or SIGINT. With ``--tls-cert FILE --tls-key FILE`` it serves HTTPS: the loop's own TLS
(``create_server(ssl=ctx)``: asyncio's SSLProtocol, uvloop's Cython one), TLS 1.2 and 1.3,
ALPN ``http/1.1``, as ``ats-cffi http --tls-cert ... --tls-key ...``. ``ats_asyncio`` runs
the same-logic server on ats_cffi's asyncio loop, its TLS by ``ats_cffi.net.tls``.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import signal
import ssl
import sys
import time
from typing import Any

import httptools
from _common import HOST

MAX_URL = 8192
_TEXT = b"text/plain; charset=utf-8"
_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed"}
_REASONS[414] = b"URI Too Long"

_date_cache: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """The ``Date`` header's value, formatted once per second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True).encode())
    return _date_cache[1]


class HttpProtocol(asyncio.Protocol):
    """One client connection: parse, answer in order, keep alive or close."""

    server_name = b"asyncio"

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = bytearray()
        self.url_too_long = False
        self.out: list[bytes] = []
        self.closing = False

    # ------------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.closing = True  # the request was answered; we speak no other protocol
        except httptools.HttpParserError:
            self.respond(400, _TEXT, b"Bad Request\n", keep_alive=False, head=False)
        transport = self.transport
        assert transport is not None
        if self.out:
            transport.write(b"".join(self.out))
            self.out.clear()
        if self.closing:
            transport.close()  # after the buffered responses are written

    def eof_received(self) -> bool | None:
        return None  # the client half-closed: close once what we queued is written

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()  # a client that does not read its responses

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    # ------------------------------------------------------------------ httptools callbacks

    def on_message_begin(self) -> None:
        self.url.clear()
        self.url_too_long = False

    def on_url(self, url: bytes) -> None:
        if len(self.url) + len(url) > MAX_URL:
            self.url_too_long = True
        else:
            self.url += url

    def on_message_complete(self) -> None:
        if self.closing:
            return
        parser = self.parser
        method = parser.get_method()
        keep_alive = parser.should_keep_alive()
        head = method == b"HEAD"
        allow = b""
        if self.url_too_long:
            status, ctype, body = 414, _TEXT, b"URI Too Long\n"
            keep_alive = False
        elif bytes(self.url).split(b"?", 1)[0] != b"/":
            status, ctype, body = 404, _TEXT, b"Not Found\n"
        elif method not in (b"GET", b"HEAD"):
            status, ctype, body = 405, _TEXT, b"Method Not Allowed\n"
            allow = b"Allow: GET, HEAD\r\n"
        else:
            status, ctype, body = 200, _TEXT, b"Hello, World!"
        self.respond(status, ctype, body, keep_alive, head, allow)

    def respond(
        self,
        status: int,
        ctype: bytes,
        body: bytes,
        keep_alive: bool,
        head: bool,
        extra: bytes = b"",
    ) -> None:
        """Queue one response; after one that does not keep alive, no more are parsed."""
        if keep_alive:
            conn = b"Connection: keep-alive\r\n"  # to HTTP/1.1 too, as ats-cffi http (and nginx)
        else:
            conn = b"Connection: close\r\n"
            self.closing = True
        head_bytes = b"".join(
            (
                b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
                b"Server: ",
                self.server_name,
                b"\r\nDate: ",
                http_date(),
                b"\r\nContent-Type: ",
                ctype,
                b"\r\nContent-Length: %d\r\n" % len(body),
                extra,
                conn,
                b"\r\n",
            )
        )
        self.out.append(head_bytes if head else head_bytes + body)


_hello: tuple[int, bytes, bytes] = (0, b"", b"")


def hello_responses() -> tuple[bytes, bytes]:
    """The hello response kept alive and closing, made once per second (the Date)."""
    global _hello
    now = int(time.time())
    if _hello[0] != now:
        date = email.utils.formatdate(now, usegmt=True).encode()
        head = (
            b"HTTP/1.1 200 OK\r\nServer: uvloop\r\nDate: " + date + b"\r\nContent-Type: "
            + _TEXT + b"\r\nContent-Length: 13\r\nConnection: "
        )  # fmt: skip
        body = b"\r\n\r\nHello, World!"
        _hello = (now, head + b"keep-alive" + body, head + b"close" + body)
    return _hello[1], _hello[2]


class MinimalProtocol(asyncio.Protocol):
    """The minimal hello server (module doc): parse, answer every request at once."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        keep_alive, closing = hello_responses()
        if self.parser.should_keep_alive():
            self.transport.write(keep_alive)  # type: ignore[union-attr]
        else:
            self.transport.write(closing)  # type: ignore[union-attr]
            self.transport.close()  # type: ignore[union-attr]


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def serve(
    port: int, backlog: int, protocol: type[asyncio.Protocol] = HttpProtocol,
    tls: Any = None,
) -> None:  # fmt: skip
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(protocol, HOST, port, backlog=backlog, ssl=tls)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("loop", choices=["asyncio", "uvloop", "uvloop_min", "ats_asyncio"])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--backlog", type=int, default=4096, help="listen backlog (as ats's default)")
    p.add_argument("--tls-cert", help="serve HTTPS with this certificate chain (PEM)")
    p.add_argument("--tls-key", help="its private key (PEM)")
    args = p.parse_args(argv)
    tls: Any = tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    if args.loop == "ats_asyncio":  # ats_cffi's asyncio loop, TLS by the net core's own
        import ats_cffi.asyncio
        from ats_cffi.net.tls import ServerContext

        if args.tls_cert:
            tls = ServerContext.from_files(args.tls_cert, args.tls_key, alpn=("http/1.1",))
        HttpProtocol.server_name = b"ats_cffi.asyncio"
        ats_cffi.asyncio.run(serve(args.port, args.backlog, tls=tls))
    elif args.loop == "uvloop_min":
        import uvloop

        uvloop.run(serve(args.port, args.backlog, MinimalProtocol, tls))
    elif args.loop == "uvloop":
        import uvloop

        HttpProtocol.server_name = b"uvloop"
        uvloop.run(serve(args.port, args.backlog, tls=tls))
    else:
        asyncio.run(serve(args.port, args.backlog, tls=tls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
