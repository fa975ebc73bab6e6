"""TLSVCTransport: an asyncio stream transport over an SSLNetVConnection, the net core's own
TLS (ats_cffi.net.tls), for ``ssl=`` given one of its contexts.

``loop.create_server(..., ssl=ServerContext.from_files(cert, key))``,
``asyncio.start_server(..., ssl=...)``, ``loop.create_connection(..., ssl=ClientContext())``
and ``asyncio.open_connection(..., ssl=...)`` make these transports; an ``ssl.SSLContext``
still gets asyncio's own TLS protocol over a plain VC transport (``Loop._make_ssl_transport``).

As asyncio's TLS transports do, it makes the protocol's ``connection_made`` (and sets the
waiter of ``create_connection``/``open_connection``) only once the handshake is done: the
VC gets a read VIO of zero bytes, which completes then. A handshake that fails sets the
waiter's exception (``ssl.SSLError`` with OpenSSL's reason, ``ConnectionResetError`` when
the peer closed, ``TimeoutError`` after ``ssl_handshake_timeout``) and closes the
connection; the protocol hears nothing. Writes always go through the VC's write VIO (the
encryption is there), TLS has no half-close (``can_write_eof()`` is false) and ``sendfile``
falls back to reads and writes. ``get_extra_info``: ``sslcontext`` (the context),
``cipher`` ((name, version, None)), ``tls`` (``SSLNetVConnection.tls_info()``), and
``ssl_object``/``peercert`` None (there is no Python SSL object).
"""

from __future__ import annotations

import contextvars
import functools
import socket
import ssl
from asyncio import constants
from typing import TYPE_CHECKING, Any

from ats_cffi.asyncio.transport import EVENT_CONT, VCTransport, new_vc
from ats_cffi.eventsystem import codes as _codes
from ats_cffi.eventsystem.continuation import Continuation
from ats_cffi.net.netvc import UnixNetVConnection
from ats_cffi.net.tls.sslvc import SSLNetVConnection

if TYPE_CHECKING:
    import asyncio

    from ats_cffi.net.nethandler import NetHandler

VC_EVENT_READ_COMPLETE = _codes.VC_EVENT_READ_COMPLETE
VC_EVENT_EOS = _codes.VC_EVENT_EOS
VC_EVENT_ERROR = _codes.VC_EVENT_ERROR


class TLSVCTransport(VCTransport):
    """A VCTransport whose VC is an SSLNetVConnection (see the module doc)."""

    __slots__ = ("_tls", "_server_side", "_hostname", "_handshake_timeout", "_saved_timeout",
                 "_handshake_waiter", "_handshaking")  # fmt: skip
    _start_tls_compatible = False
    _sendfile_compatible = constants._SendfileMode.FALLBACK
    _send_first = False

    def __init__(
        self, loop: Any, sock: socket.socket | None, protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[None] | None, extra: dict[str, Any] | None, server: Any,
        tls: Any, server_side: bool, server_hostname: str | None,
        handshake_timeout: float | None, vc: UnixNetVConnection | None = None,
        context: contextvars.Context | None = None,
    ) -> None:  # fmt: skip
        """As ``VCTransport``'s; ``vc``, if given, is an SSLNetVConnection of ``tls``
        (the loop's NetAccept makes them for a server with ``ssl=`` one of its contexts)."""
        self._tls = tls
        self._server_side = server_side
        self._hostname = server_hostname
        self._handshake_timeout = handshake_timeout or constants.SSL_HANDSHAKE_TIMEOUT
        self._handshaking = True
        super().__init__(loop, sock, protocol, waiter, extra, server, vc, context)
        self._set_extra("sslcontext", tls)
        self._set_extra("ssl_object", None)
        self._set_extra("peercert", None)

    def _new_vc(self, nh: NetHandler, fd: int, family: int) -> UnixNetVConnection:
        host = self._hostname
        port = self._extra["peername"][1] if self._extra.get("peername") else 0
        vc = SSLNetVConnection(None, self._tls, self._server_side, host, (host, port))
        return new_vc(nh, fd, family, vc)

    def _begin(
        self,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[None] | None,
        context: contextvars.Context,
    ) -> None:
        """The handshake first: a read VIO of zero bytes, which completes when it is done,
        and the handshake timeout as the VC's inactivity timeout meanwhile. Its events go
        to a continuation of this transport's own (``_handshake_event``), until the first
        read gives the VIO the loop's (``VCTransport._start_reading``)."""
        self._handshake_waiter = waiter
        vc = self._vc
        self._saved_timeout = vc.inactivity_timeout_in
        vc.set_inactivity_timeout(self._handshake_timeout)
        loop = self._loop
        handler = functools.partial(context.run, self._handshake_event)
        vc.do_io_read(Continuation(loop._net_mutex, handler), 0, loop._read_buffer)

    def _handshake_event(self, event: int, vio: Any) -> int:
        if not self._handshaking:  # after it, until the first read: as any transport's
            return self._vc_event(event, vio)
        self._handshaking = False
        vc: Any = self._vc
        loop = self._loop
        waiter = self._handshake_waiter
        self._handshake_waiter = None
        if event == VC_EVENT_READ_COMPLETE:
            vc.set_inactivity_timeout(self._saved_timeout)
            info = vc.tls_info()
            self._set_extra("tls", info)
            self._set_extra("cipher", (info.get("cipher"), info.get("version"), None))
            loop.call_soon(self._connection_made, self._protocol, waiter)
            return EVENT_CONT
        exc = self._handshake_error(event, vc)
        self._closing = True
        self._core.lost += 1
        self._release()  # the protocol was never told of the connection: it hears nothing
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        return EVENT_CONT

    @staticmethod
    def _handshake_error(event: int, vc: Any) -> BaseException:
        if event == VC_EVENT_EOS:
            return ConnectionResetError("the peer closed the connection during the TLS handshake")
        if event == VC_EVENT_ERROR:
            if vc.tls_reason:
                return ssl.SSLError(vc.lerrno, vc.tls_reason)
            return OSError(vc.lerrno, f"TLS handshake: {vc.lerrno}")
        return TimeoutError("the TLS handshake took too long: the connection is closed")

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close")
