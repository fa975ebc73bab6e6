"""Loop: an asyncio event loop whose I/O runs on an EThread's NetHandler (DESIGN.md
section 12).

What is not I/O (tasks, futures, the ready queue, timers, debug mode, exception handlers,
executors, signal handlers, subprocesses) is asyncio's own: the loop is asyncio's unix
selector loop, with these parts replaced or compiled:

- the selector is a ``NetSelector`` (``selector.py``): the fds of ``add_reader`` /
  ``add_writer`` (and of what asyncio builds on them: ``sock_*`` calls, datagram and pipe
  transports, the signal wake-up pipe) are level-triggered EventIOs in the NetHandler's
  epoll, and each ``select`` is one pass of the loop's EThread;
- stream transports are ``VCTransport``s (``transport.py``): a UnixNetVConnection on the
  same NetHandler, whose events the NetHandler's dispatch turns into protocol calls; with
  ``ssl=`` a context of ``ats_cffi.net.tls``, a ``TLSVCTransport`` (``tls.py``) over an
  SSLNetVConnection (an ``ssl.SSLContext`` gets asyncio's own TLS protocol);
- asyncio's most called loop methods (``call_soon``, ``call_later``/``call_at``,
  ``create_task``, ``get_debug``, the pass ``_run_once``) run compiled in the common case
  (``loopcore.py``): the same code for an open loop outside debug mode, asyncio's own
  method otherwise;
- servers (asyncio's ``Server`` objects, unchanged) accept through the net core: each
  listening socket (TCP or AF_UNIX) is a NetAccept on the loop's NetHandler
  (``accept.py``), whose accept pass makes a VC per connection and its transport straight
  from it: no socket object, no Task per connection.

The loop's EThread is none of ``net_processor``'s threads: it is run by whichever thread
runs the loop (``run_forever`` makes it that thread's EThread for the while), so the VCs'
InactivityCop, timeouts and stats work as on any net thread. ``call_soon_threadsafe``
wakes the loop through the EThread's eventfd (``EVENTIO_ASYNC_SIGNAL``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
import time
import weakref
from asyncio import constants, sslproto
from collections.abc import Callable
from typing import Any

from ats_cffi.asyncio.accept import FAMILIES, ServerAccept
from ats_cffi.asyncio.dispatch import TransportDispatch
from ats_cffi.asyncio.loopcore import LoopCore
from ats_cffi.asyncio.selector import NetSelector
from ats_cffi.asyncio.server import ServerOptions
from ats_cffi.asyncio.tls import TLSVCTransport
from ats_cffi.asyncio.transport import READ_WATER_MARK, VCTransport
from ats_cffi.eventsystem.current import REGULAR, set_this_ethread, this_ethread
from ats_cffi.eventsystem.ethread import EThread
from ats_cffi.eventsystem.iobuffer import MIOBuffer
from ats_cffi.eventsystem.mutex import ProxyMutex
from ats_cffi.net.processor import attach_net_handler
from ats_cffi.net.throttle import change_net_connections_throttle
from ats_cffi.net.tls.context import TLSContext

_SelectorLoop: Any = asyncio.SelectorEventLoop
#: What LoopCore runs, each with what the loop's class must keep asyncio's for it to be
#: bound: ``call_later`` calls ``call_at`` and reads ``time``; ``create_task`` has its
#: ``context`` argument from 3.11.
_CORE_METHODS = (
    ("get_debug",),
    ("call_soon",),
    ("call_at",),
    ("call_later", "call_at", "time"),
    ("_run_once", "time", "_process_events"),
    ("_timer_handle_cancelled",),
) + ((("create_task",),) if sys.version_info >= (3, 11) else ())


def _bind_core(loop: Any, core: LoopCore) -> None:
    """Make ``core``'s methods (the compiled common case of asyncio's most called ones,
    loopcore.py) the loop's own attributes, but where its class overrides what they use."""
    cls = type(loop)
    for names in _CORE_METHODS:
        if all(getattr(cls, n) is getattr(_SelectorLoop, n) for n in names):
            setattr(loop, names[0], getattr(core, names[0].lstrip("_")))


def _new_net_thread(clock: Callable[[], float]) -> tuple[EThread, Any]:
    thread = EThread(REGULAR, clock=clock, name="[asyncio loop]")
    thread.tid = threading.get_ident()  # until a run binds it to the thread that runs it
    try:
        nh = attach_net_handler(thread)
        change_net_connections_throttle()  # as the net processor's start does
    except BaseException:
        thread.join()  # releases the eventfd and the default poll step
        raise
    return thread, nh


class Loop(_SelectorLoop):  # type: ignore[misc,valid-type]
    """An asyncio event loop on the ATS net core (see the module doc)."""

    def __init__(self, *, clock: Callable[[], float] | None = None) -> None:
        """``clock``: the EThread's (its InactivityCop and the connections' timeouts read
        it; tests give a fake one). asyncio's timers keep ``loop.time()``."""
        thread, nh = _new_net_thread(clock if clock is not None else time.monotonic)
        self._ethread = thread
        self._net_handler = nh
        #: The NetHandler's stats block, read once: ``nh.stats`` makes a new object of it
        #: each time it is read. Each transport's ``write`` counts in it.
        self._net_stats = nh.stats
        #: The mutex of every transport's continuation: one loop thread runs them all.
        self._net_mutex = ProxyMutex()
        #: Every transport's read buffer: a read step hands all it read to the protocol.
        #: Its one block is READ_WATER_MARK bytes, kept when emptied (uvloop reads into
        #: one 256 KiB buffer per loop): a message of up to that size is read into one
        #: block and copied out once, where 32 KiB blocks made a chain to join per read.
        self._read_buffer = MIOBuffer(READ_WATER_MARK, READ_WATER_MARK)
        self._read_reader = self._read_buffer.alloc_reader()
        #: The open VCTransports by fd (asyncio's ``_transports`` keeps the loop's other
        #: transports), and the one continuation of their VCs.
        self._vc_dispatch = TransportDispatch(
            self._net_mutex, VCTransport._vc_event, self._read_reader, nh.pool
        )
        #: Servers made by ``ats_cffi.asyncio.create_server``, with their options.
        self._server_options: weakref.WeakKeyDictionary[Any, ServerOptions] = (
            weakref.WeakKeyDictionary()
        )
        #: The accept of each serving listening socket, by its fd (accept.py).
        self._server_accepts: dict[int, ServerAccept] = {}
        try:
            super().__init__(NetSelector(thread, nh, self._vc_dispatch))
        except BaseException:
            thread.join()
            raise
        #: The compiled common case of asyncio's most called methods (loopcore.py), which
        #: keeps the loop's debug, closed and task factory as fields: set below, through
        #: the methods that change them.
        self._loop_core = LoopCore(self)
        _bind_core(self, self._loop_core)

    def set_debug(self, enabled: bool) -> None:
        super().set_debug(enabled)
        self._sync_core()

    def set_task_factory(self, factory: Any) -> None:
        super().set_task_factory(factory)
        self._sync_core()

    def _sync_core(self) -> None:
        core = self.__dict__.get("_loop_core")  # none yet while asyncio's __init__ runs
        if core is not None:
            core.sync()

    # ------------------------------------------------------------------ running

    def run_forever(self) -> None:
        thread = self._ethread
        previous = this_ethread()
        set_this_ethread(thread)
        thread.tid = threading.get_ident()
        try:
            super().run_forever()
        finally:
            set_this_ethread(previous)

    def _write_to_self(self) -> None:
        # call_soon_threadsafe and the other wake-ups: the EThread's eventfd, which the
        # NetHandler drains in its dispatch. (The signal wake-up fd stays asyncio's
        # socketpair: signal.set_wakeup_fd writes one byte per signal, an eventfd takes 8.)
        self._ethread.signal()

    def close(self) -> None:
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        for tr in self._vc_dispatch.transports():
            tr._release()  # their fds close with the loop, as uvloop's handles do
        for accept in self._server_accepts.values():
            accept.close()  # the listening sockets stay their servers'
        self._server_accepts.clear()
        try:
            super().close()
        finally:
            self._sync_core()
            self._ethread.join()  # closes the NetHandler (its VCs, its epoll) and the eventfd

    # ------------------------------------------------------------------ transports

    def _ensure_fd_no_transport(self, fd: Any) -> None:
        # add_reader, add_writer and the sock_* calls refuse an fd that a transport uses:
        # asyncio's check (a valid fd, none of its transports), then the VCTransports. A
        # closing one's fd is the caller's to watch, as asyncio's closing transport removed
        # its reader: the VC leaves the epoll set now (its close comes next).
        super()._ensure_fd_no_transport(fd)
        transport = self._vc_dispatch.get(fd if isinstance(fd, int) else int(fd.fileno()))
        if transport is not None:
            if not transport.is_closing():
                raise RuntimeError(f"File descriptor {fd!r} is used by transport {transport!r}")
            transport._leave_epoll()

    def _start_serving(
        self,
        protocol_factory: Any,
        sock: socket.socket,
        sslcontext: Any = None,
        server: Any = None,
        backlog: int = 100,
        ssl_handshake_timeout: float | None = constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: float | None = constants.SSL_SHUTDOWN_TIMEOUT,
    ) -> None:
        # Server._start_serving's call: the socket's connections come from a NetAccept on
        # the loop's NetHandler (accept.py), not from asyncio's reader.
        if sock.family not in FAMILIES or sock.type != socket.SOCK_STREAM:
            super()._start_serving(
                protocol_factory, sock, sslcontext, server, backlog,
                ssl_handshake_timeout, ssl_shutdown_timeout,
            )  # fmt: skip
            return
        options = self._server_options.get(server) if server is not None else None
        self._server_accepts[sock.fileno()] = ServerAccept(
            self, sock, protocol_factory, sslcontext, server, ssl_handshake_timeout,
            ssl_shutdown_timeout, options,
        )  # fmt: skip

    def _stop_serving(self, sock: socket.socket) -> None:
        accept = self._server_accepts.pop(sock.fileno(), None)
        if accept is None:
            super()._stop_serving(sock)
            return
        accept.close()
        sock.close()

    def _make_socket_transport(
        self,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[None] | None = None,
        *,
        extra: dict[str, Any] | None = None,
        server: Any = None,
    ) -> VCTransport:
        return VCTransport(self, sock, protocol, waiter, extra, server)

    def _make_ssl_transport(
        self,
        rawsock: socket.socket | None,
        protocol: asyncio.BaseProtocol,
        sslcontext: Any,
        waiter: asyncio.Future[None] | None = None,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        extra: dict[str, Any] | None = None,
        server: Any = None,
        ssl_handshake_timeout: float = constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: float = constants.SSL_SHUTDOWN_TIMEOUT,
        vc: Any = None,
        context: Any = None,
    ) -> asyncio.Transport:
        # ``vc`` (with ``rawsock`` None) and ``context``: a connection the loop's NetAccept
        # accepted, and the context its callbacks run in (accept.py).
        if isinstance(sslcontext, TLSContext):  # the net core's own TLS (tls.py)
            return TLSVCTransport(
                self, rawsock, protocol, waiter, extra, server, sslcontext, server_side,
                server_hostname, ssl_handshake_timeout, vc, context,
            )  # fmt: skip
        # An ssl.SSLContext: asyncio's TLS protocol over a VC transport.
        ssl_protocol = sslproto.SSLProtocol(
            self, protocol, sslcontext, waiter, server_side, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )  # fmt: skip
        VCTransport(self, rawsock, ssl_protocol, None, extra, server, vc, context)
        return ssl_protocol._app_transport  # type: ignore[no-any-return]

    async def _sendfile_native(self, transp: Any, file: Any, offset: int, count: int | None) -> int:
        if not isinstance(transp, VCTransport):
            return await super()._sendfile_native(transp, file, offset, count)  # type: ignore[no-any-return]
        # asyncio's native path waits for the socket with add_writer; the VC's socket is in
        # the epoll set already (edge-triggered, for its life), so the wait is on a dup of
        # it: another registration of the same socket. The transport is drained and paused
        # meanwhile, as asyncio's is.
        resume_reading = transp.is_reading()
        transp.pause_reading()
        await transp._make_empty_waiter()
        try:
            with socket.socket(fileno=os.dup(transp._sock_fd)) as sock:
                sock.setblocking(False)
                return await self.sock_sendfile(sock, file, offset, count, fallback=False)  # type: ignore[no-any-return]
        finally:
            transp._reset_empty_waiter()
            if resume_reading:
                transp.resume_reading()


def new_event_loop() -> Loop:
    """A new ``Loop`` (for ``asyncio.Runner(loop_factory=...)``, ``uvicorn --loop``)."""
    return Loop()
