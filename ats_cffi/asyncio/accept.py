"""ServerAccept: an asyncio server's listening socket accepted on by the net core (DESIGN.md
section 12: servers are NetAccepts bound to the loop's NetHandler).

``loop.create_server`` and ``create_unix_server`` (and so ``asyncio.start_server``,
uvicorn, aiohttp) make asyncio's ``Server`` as on any loop: its sockets, ``is_serving``,
``start_serving``, ``serve_forever``, ``close``, ``wait_closed``. What differs is what
``Server._start_serving`` asks of the loop (``Loop._start_serving``): instead of asyncio's
reader on the listening socket, which ``accept()``s ``socket.socket`` objects and runs a
Task per connection, each listening socket gets a ``NetAccept`` (``ats_cffi.net.accept``)
whose listen socket is in the loop's epoll (edge-triggered, ``EVENTIO_NETACCEPT``). The
NetHandler's dispatch runs its accept pass: ``accept4`` batches in one native call, the
throttle and the net stats (``total_accepts``, ``connections_currently_open``,
``connections_throttled_in``), a new VC per fd (``TCP_NODELAY`` set), and then, inline,
``NET_EVENT_ACCEPT`` to this module's continuation, which makes the protocol
(``protocol_factory()``) and its transport straight from the VC: a ``VCTransport``, a
``TLSVCTransport`` over the SSLNetVConnection the accept made for ``ssl=`` one of the net
core's ``ServerContext``s, or asyncio's ``SSLProtocol`` over a ``VCTransport`` for an
``ssl.SSLContext``. No socket object and no Task per connection; the transport reads its
``socket``/``sockname``/``peername`` extras when first asked.

As in asyncio, the protocol factory and the protocol's callbacks run in a copy of the
context ``start_serving`` ran in (one copy per connection); an exception raised by the
factory (or by the transport's making) closes that connection and, in debug mode, goes to
the loop's exception handler. ``ServerOptions`` (``server.py``) act here: their timeouts
are set on each VC before its transport is made; without ``throttle`` (and for every plain
``loop.create_server``) the listener is a ``backdoor`` one, exempt from the connections
throttle. With ``accept_threads``, the NetAccept's dedicated threads accept and hand the
VCs to the loop's NetHandler (``net/accept_threads.py``), where the same ``NET_EVENT_ACCEPT``
comes. Like every accept of the core, a connection whose fd comes within
``EMERGENCY_FD_HEADROOM`` of ``RLIMIT_NOFILE`` is closed at once (``net/throttle.py``).
An accept error that is not transient (``EBADF``, ``EINVAL``...) goes to the loop's
exception handler and the socket is no longer accepted on; a resource one (``EMFILE``...)
backs off ``proxy.config.net.throttle_delay`` ms, logged once a minute.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import socket
import threading
from asyncio import constants, trsock
from typing import Any

from ats_cffi.asyncio.server import ServerOptions
from ats_cffi.asyncio.transport import VCTransport
from ats_cffi.asyncio.transportvc import TransportVC
from ats_cffi.eventsystem.codes import EVENT_CONT, EVENT_ERROR
from ats_cffi.eventsystem.continuation import Continuation
from ats_cffi.net.accept import NetAccept
from ats_cffi.net.codes import NET_EVENT_ACCEPT
from ats_cffi.net.config import SOCK_OPT_NO_DELAY
from ats_cffi.net.netvc import UnixNetVConnection
from ats_cffi.net.options import AcceptOptions
from ats_cffi.net.tls.context import TLSContext

log = logging.getLogger("asyncio")

#: The families whose listening sockets the net core accepts on; others keep asyncio's.
FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)


class ServerAccept(Continuation):
    """The accept continuation of one listening socket of an asyncio ``Server`` on ``Loop``
    (see the module doc). Its mutex is the loop's net mutex: it runs on the loop's thread,
    from the NetHandler's dispatch. ``close`` stops accepting (the socket stays the
    ``Server``'s, which closes it)."""

    def __init__(
        self,
        loop: Any,
        sock: socket.socket,
        protocol_factory: Any,
        sslcontext: Any,
        server: Any,
        ssl_handshake_timeout: float | None,
        ssl_shutdown_timeout: float | None,
        options: ServerOptions | None,
    ) -> None:
        super().__init__(loop._net_mutex, self.accept_event)
        self.loop = loop
        self.sock = sock
        self.protocol_factory = protocol_factory
        self.sslcontext = sslcontext
        self.server = server
        self.ssl_handshake_timeout = ssl_handshake_timeout
        self.ssl_shutdown_timeout = ssl_shutdown_timeout
        self.options = options
        #: What ``Server._start_serving`` ran in: each connection gets a copy of it.
        self.context = contextvars.copy_context()
        ip = sock.family != socket.AF_UNIX
        n_threads = options.accept_threads if options is not None else 0
        opt = AcceptOptions(
            sockopt_flags=SOCK_OPT_NO_DELAY if ip else 0,
            defer_accept=0,
            accept_threads=n_threads,
            backdoor=options is None or not options.throttle,
            tls=sslcontext if isinstance(sslcontext, TLSContext) else None,
            vc_class=TransportVC if not isinstance(sslcontext, TLSContext) else None,
        )
        na = self.na = NetAccept(self, opt)
        na.adopt_listen_fd(sock.fileno(), sock.family)
        try:
            if n_threads:
                na.init_accept_loop(None, n_threads, loop._net_handler)
            else:
                na.init_accept_on(loop._net_handler)
        except BaseException:
            na.close_listener()
            raise

    def close(self) -> None:
        """Stop accepting (idempotent); the listening socket is left open."""
        self.na.action.cancel()

    # ------------------------------------------------------------------ events

    def accept_event(self, event: int, data: Any) -> int:
        if event == NET_EVENT_ACCEPT:
            ctx = self.context.copy()
            ctx.run(self.accepted, data, ctx)
        elif event == EVENT_ERROR:
            err = -data if isinstance(data, int) else 0
            context = {
                "message": "accept failed: the server no longer accepts on this socket",
                "exception": OSError(err, os.strerror(err)),
                "socket": trsock.TransportSocket(self.sock),
            }
            loop = self.loop
            if loop._ethread.tid == threading.get_ident():
                loop.call_exception_handler(context)
            elif not loop.is_closed():  # from an accept thread: to the loop's own
                loop.call_soon_threadsafe(loop.call_exception_handler, context)
        return EVENT_CONT

    def accepted(self, vc: UnixNetVConnection, ctx: contextvars.Context) -> None:
        """A new connection, in ``ctx`` (its own copy of the server's context): its protocol
        and transport."""
        loop = self.loop
        options = self.options
        if options is not None:
            options.apply(vc)
        protocol = transport = None
        try:
            protocol = self.protocol_factory()
            ssl = self.sslcontext
            if ssl is None:
                transport = VCTransport(loop, None, protocol, None, None, self.server, vc, ctx)
            else:
                waiter = loop.create_future()
                transport = loop._make_ssl_transport(
                    None, protocol, ssl, waiter, server_side=True, server=self.server,
                    ssl_handshake_timeout=self.ssl_handshake_timeout
                    or constants.SSL_HANDSHAKE_TIMEOUT,
                    ssl_shutdown_timeout=self.ssl_shutdown_timeout
                    or constants.SSL_SHUTDOWN_TIMEOUT,
                    vc=vc, context=ctx,
                )  # fmt: skip
                waiter.add_done_callback(lambda w: _handshake_done(loop, w, transport))
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            if transport is None:
                vc.do_io_close()
            else:
                transport.close()
            _report(loop, exc, protocol, transport)


def _handshake_done(loop: Any, waiter: asyncio.Future[None], transport: Any) -> None:
    """The waiter of an ``ssl.SSLContext`` connection (asyncio's accept awaits it): on a
    failed handshake, close the transport, as asyncio's accept does."""
    if waiter.cancelled():
        transport.close()
        return
    exc = waiter.exception()
    if exc is not None:
        transport.close()
        _report(loop, exc, transport.get_protocol(), transport)


def _report(loop: Any, exc: BaseException, protocol: Any, transport: Any) -> None:
    """In debug mode, as asyncio's accept reports a connection it could not set up."""
    if not loop.get_debug():
        return
    context: dict[str, Any] = {
        "message": "Error on transport creation for incoming connection",
        "exception": exc,
    }
    if protocol is not None:
        context["protocol"] = protocol
    if transport is not None:
        context["transport"] = transport
    loop.call_exception_handler(context)
