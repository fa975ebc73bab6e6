"""VCTransport: an asyncio stream transport that is a UnixNetVConnection on the loop's
NetHandler (DESIGN.md section 12).

The VC's events become protocol calls, made directly from the NetHandler's dispatch (as
uvloop calls them from libuv's callbacks) through the loop's one continuation of all its
transports (``dispatch.py``), which holds each transport from its making to its close:

- ``VC_EVENT_READ_READY`` → ``data_received(bytes)`` (called by the compiled dispatch),
  or ``get_buffer``/``buffer_updated`` for a ``BufferedProtocol``; ``VC_EVENT_EOS`` →
  ``eof_received`` (the transport closes unless it returns true); ``VC_EVENT_ERROR`` →
  ``connection_lost(OSError)``; ``VC_EVENT_INACTIVITY_TIMEOUT``/``ACTIVE_TIMEOUT`` (the
  InactivityCop) → ``connection_lost(TimeoutError)``.
- ``write`` tries the socket first and keeps only the rest (asyncio's rule), in an
  MIOBuffer that the VC's write VIO drains; the VIO's ``nbytes`` grows with each write, so
  its ``VC_EVENT_WRITE_COMPLETE`` means "drained": ``resume_writing``, a pending
  ``write_eof`` or ``close`` completes there. ``pause_writing`` comes at the high water mark
  (asyncio's ``_FlowControlMixin``, 64 KiB by default).
- ``connection_made``, then the first read, then a waiter's result, and
  ``connection_lost`` are scheduled with ``call_soon`` in asyncio's order.

A transport is made over a connected socket (``create_connection``,
``connect_accepted_socket``: the socket object is kept, detached at the close, and its
extras read at once, as asyncio's) or over a VC the loop's NetAccept accepted (``accept.py``):
then there is no socket object unless ``get_extra_info('socket')`` asks for one, and
``sockname``/``peername`` are read from the fd when first asked (None once the socket has
lost its peer, where asyncio kept the address ``accept()`` gave).
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import inspect
import logging
import os
import socket
import warnings
from asyncio import constants, futures, protocols, transports, trsock
from typing import TYPE_CHECKING, Any

from ats_cffi import sys as _sys
from ats_cffi.asyncio.dispatch import DATA_RECEIVED_FAILED, TransportCore
from ats_cffi.asyncio.transportvc import TransportVC
from ats_cffi.eventsystem import codes as _codes
from ats_cffi.eventsystem.iobuffer import IOBufferReader, MIOBuffer
from ats_cffi.eventsystem.vio import INT64_MAX, VIOOp
from ats_cffi.net.codes import IO_SHUTDOWN_WRITE
from ats_cffi.net.netvc import UnixNetVConnection

if TYPE_CHECKING:
    from ats_cffi.net.nethandler import NetHandler

log = logging.getLogger("asyncio")

EVENT_CONT = _codes.EVENT_CONT
_WRITE = int(VIOOp.WRITE)
VC_EVENT_READ_READY = _codes.VC_EVENT_READ_READY
VC_EVENT_WRITE_COMPLETE = _codes.VC_EVENT_WRITE_COMPLETE
VC_EVENT_EOS = _codes.VC_EVENT_EOS
VC_EVENT_ERROR = _codes.VC_EVENT_ERROR
VC_EVENT_INACTIVITY_TIMEOUT = _codes.VC_EVENT_INACTIVITY_TIMEOUT
VC_EVENT_ACTIVE_TIMEOUT = _codes.VC_EVENT_ACTIVE_TIMEOUT


#: How much one read step may gather before ``data_received`` (asyncio's transports read up
#: to 256 KiB per call), in the loop's one read buffer (``Loop._read_buffer``).
READ_WATER_MARK = 256 * 1024


#: The extras an accepted transport reads when first asked (``VCTransport._lazy_extra``).
_LAZY_EXTRA = frozenset(("socket", "sockname", "peername"))
#: The extras of a transport that has none yet (never written: ``_set_extra`` replaces it).
_NO_EXTRA: dict[str, Any] = {}
_AF_INET = socket.AF_INET
#: asyncio's default write buffer limits, one int object each for every transport (the low
#: one, which ``_FlowControlMixin`` computes, would otherwise be an object per transport).
_HIGH_WATER = 64 * 1024
_LOW_WATER = _HIGH_WATER // 4
_AF_INET6 = socket.AF_INET6
#: Python 3.13's ``Server._attach``/``_detach`` take the transport (``close_clients``).
_SERVER_TAKES_TRANSPORT = "transport" in inspect.signature(asyncio.Server._attach).parameters


def _server_attach(server: Any, transport: VCTransport) -> None:
    if _SERVER_TAKES_TRANSPORT:
        server._attach(transport)
    else:
        server._attach()


def _server_detach(server: Any, transport: VCTransport) -> None:
    if _SERVER_TAKES_TRANSPORT:
        server._detach(transport)
    else:
        server._detach()


def _oserror(err: int) -> OSError:
    return OSError(err, os.strerror(err))  # the subclass of the errno (ConnectionResetError)


def new_vc(
    nh: NetHandler, fd: int, family: int, vc: UnixNetVConnection | None = None
) -> UnixNetVConnection:
    """A VC (``vc``, or a new TransportVC) for the connected socket ``fd``, registered in
    ``nh``'s epoll (counted open)."""
    if vc is None:
        vc = TransportVC()
    vc.fd = fd
    vc.family = family
    nh.start_io(vc)
    return vc


class VCTransport(transports._FlowControlMixin, transports.Transport):  # type: ignore[misc]
    """A stream transport over a UnixNetVConnection (see the module doc)."""

    __slots__ = (
        "_sock_fd", "_core", "_vc", "_sock", "_protocol", "_server", "_closing", "_paused",
        "_reading", "_open", "write", "__weakref__",
    )  # fmt: skip
    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE
    #: ``write`` tries the socket before the write VIO (not through TLS: tls.py).
    _send_first = True

    def __init__(
        self,
        loop: Any,
        sock: socket.socket | None,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[None] | None = None,
        extra: dict[str, Any] | None = None,
        server: Any = None,
        vc: UnixNetVConnection | None = None,
        context: contextvars.Context | None = None,
    ) -> None:
        """Over ``sock`` (a connected socket: its fd gets a new VC, the socket object is
        kept and detached at the close), or over ``vc``, a connection the loop's NetAccept
        accepted (``accept.py``), with ``sock`` None: no socket object, its ``socket``,
        ``sockname`` and ``peername`` extras read when asked. ``context``: the one the
        protocol's callbacks run in (default: a copy of the current one)."""
        super().__init__(extra if extra is not None or sock is not None else _NO_EXTRA, loop)
        self._open = False
        if sock is not None:
            self._extra["socket"] = trsock.TransportSocket(sock)
            try:
                self._extra["sockname"] = sock.getsockname()
            except OSError:
                self._extra["sockname"] = None
            if "peername" not in self._extra:
                try:
                    self._extra["peername"] = sock.getpeername()
                except OSError:
                    self._extra["peername"] = None
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass
            fd = sock.fileno()
        elif vc is not None:
            fd = vc.fd  # started by the accept, with TCP_NODELAY
        else:
            raise TypeError("VCTransport: a socket or a VC is needed")
        self._sock_fd = fd
        # The protocol's callbacks run in (a copy of) the context the transport was made
        # in, as asyncio's reader callbacks and uvloop's do.
        ctx = context if context is not None else contextvars.copy_context()
        # What the reads and writes touch (the fields of asyncio's _conn_lost, _eof,
        # _empty_waiter; the write buffer's reader): dispatch.py.
        core = self._core = TransportCore(
            self, fd, ctx, loop._net_stats, self._send_first, loop._vc_dispatch
        )
        #: ``write(data)`` is the compiled core's (a ``TransportCore`` is called as its
        #: ``write``): a method of this class would put an interpreted frame on every write.
        #: A slot holding the core, so a transport costs no bound method object and no new
        #: reference cycle. A subclass that defines ``write`` still overrides it.
        self.write = core
        if vc is None:
            vc = self._new_vc(loop._net_handler, fd, sock.family)  # type: ignore[union-attr]
        self._vc = vc
        if isinstance(vc, TransportVC):  # its plain Protocol's reads: transportvc.py
            vc.core = core
        self._sock = sock
        # The VC reads into the loop's one read buffer (``Loop._read_buffer``, as uvloop
        # reads into one loop-wide buffer): each read step hands all it read to the protocol.
        self._protocol: Any = None
        self.set_protocol(protocol)
        self._server = server
        self._closing = False
        self._paused = False
        self._reading = False
        if server is not None:
            _server_attach(server, self)
        # Held by the loop until _release, as uvloop's loop holds an open handle: the VC's
        # events find the transport there.
        loop._vc_dispatch.add(fd, core)
        self._open = True
        self._begin(protocol, waiter, ctx)

    def _new_vc(self, nh: NetHandler, fd: int, family: int) -> UnixNetVConnection:
        return new_vc(nh, fd, family)

    def _begin(
        self,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[None] | None,
        context: contextvars.Context,
    ) -> None:
        """``connection_made``, the first read and the waiter's result, in asyncio's order."""
        self._loop.call_soon(self._connection_made, protocol, waiter, context=context)

    def _connection_made(
        self, protocol: asyncio.BaseProtocol, waiter: asyncio.Future[None] | None = None
    ) -> None:
        # One callback for asyncio's three (connection_made, the reader added, the waiter's
        # result). The reading starts even if connection_made raised (its handle logs the
        # error). With a waiter, it starts one pass later, after the waiting task has run:
        # this loop's protocol callbacks come from within the select, before the handles
        # queued meanwhile (asyncio's reader callbacks come after them), so the first
        # bytes would otherwise reach the protocol before create_connection returned.
        try:
            protocol.connection_made(self)
        finally:
            if waiter is None:
                self._start_reading()
            else:
                futures._set_result_unless_cancelled(waiter, None)
                self._loop.call_soon(self._start_reading)

    def __repr__(self) -> str:
        info = [self.__class__.__name__]
        if not self._open:
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        if self._open:
            info.append("read=polling" if self._reading else "read=idle")
            info.append(f"write=<bufsize={self.get_write_buffer_size()}>")
        return "<{}>".format(" ".join(info))

    # ------------------------------------------------------------------ protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        buffered = isinstance(protocol, protocols.BufferedProtocol)
        self._core.protocol = None if buffered else protocol
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol  # type: ignore[no-any-return]

    def is_closing(self) -> bool:
        return self._closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        extra = self._extra
        if name in extra:
            return extra[name]
        if name not in _LAZY_EXTRA or not self._open:
            return default
        value = self._lazy_extra(name)
        self._set_extra(name, value)
        return value

    def _set_extra(self, name: str, value: Any) -> None:
        if self._extra is _NO_EXTRA:
            self._extra = {}
        self._extra[name] = value

    def _lazy_extra(self, name: str) -> Any:
        """``socket``, ``sockname`` or ``peername`` of an accepted connection, asked for the
        first time: read from the fd (None for an address the socket no longer has)."""
        if name == "socket":
            return trsock.TransportSocket(self._socket())
        fd = self._sock_fd
        family = self._vc.family
        try:
            if family == _AF_INET or family == _AF_INET6:
                addr = _sys.getsockname(fd) if name == "sockname" else _sys.getpeername(fd)
                if family == _AF_INET or not addr[3]:  # type: ignore[misc]
                    return addr
            # A path, or an IPv6 scope: in the socket module's spelling.
            sock = self._socket()
            return sock.getsockname() if name == "sockname" else sock.getpeername()
        except OSError:
            return None

    def _socket(self) -> socket.socket:
        """The socket object of the fd, made when first asked (detached at the close)."""
        sock = self._sock
        if sock is None:
            sock = self._sock = socket.socket(fileno=self._sock_fd)
            sock.setblocking(False)  # it is: the object learns it
        return sock

    # ------------------------------------------------------------------ reading

    def _start_reading(self) -> None:
        if self._closing or self._paused or self._core.lost:
            return
        self._reading = True
        loop = self._loop
        self._vc.do_io_read(loop._vc_dispatch, INT64_MAX, loop._read_buffer)

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            vc = self._vc
            if not vc.closed:
                vc.do_io_read(None, 0, None)

    def is_reading(self) -> bool:
        return not self._closing and not self._paused

    def pause_reading(self) -> None:
        if self._closing or self._paused:
            return
        self._paused = True
        self._stop_reading()

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        self._start_reading()

    def _vc_event(self, event: int, vio: Any) -> int:
        """An event of the VC, in the transport's context: the loop's ``TransportDispatch``
        calls this function (not an override of a subclass) for every transport."""
        if event == VC_EVENT_READ_READY:
            # A BufferedProtocol's read, or one that arrived as the connection was lost. (A
            # plain Protocol's reads go to data_received in the dispatch, dispatch.py, but
            # for one that comes some other way, as through a TLS transport's handshake
            # continuation: handed over here, already in the transport's context.)
            r: IOBufferReader = self._loop._read_reader
            core = self._core
            data, core.data = core.data, None  # what the VC read as bytes, if anything
            if not core.lost:
                if core.protocol is None:
                    if data is not None:  # a BufferedProtocol since the read
                        self._loop._read_buffer.write(data)
                    self._read_into_protocol(r)
                else:
                    try:
                        core.protocol.data_received(data if data is not None else r.read(-1))
                    except (SystemExit, KeyboardInterrupt):
                        raise
                    except BaseException as exc:
                        self._fatal_error(exc, DATA_RECEIVED_FAILED)
            if r.read_avail():  # lost, or a BufferedProtocol that failed: dropped
                r.consume(r.read_avail())
        elif event == VC_EVENT_WRITE_COMPLETE:
            self._write_done()
        elif event == VC_EVENT_EOS:
            self._reading = False
            self._on_eof()
        elif event == VC_EVENT_ERROR:
            self._reading = False
            self._fatal_error(_oserror(self._vc.lerrno or errno.EIO), "Fatal error on transport")
        elif event == VC_EVENT_INACTIVITY_TIMEOUT or event == VC_EVENT_ACTIVE_TIMEOUT:
            kind = "inactivity" if event == VC_EVENT_INACTIVITY_TIMEOUT else "active"
            self._force_close(TimeoutError(f"{kind} timeout of {self!r}"))
        # WRITE_READY: nbytes is what the buffer holds, WRITE_COMPLETE says when it drained;
        # READ_COMPLETE: the read VIO's nbytes is INT64_MAX.
        return EVENT_CONT

    def _read_into_protocol(self, reader: IOBufferReader) -> None:
        core = self._core
        while reader.read_avail() and not core.lost:
            try:
                buf = self._protocol.get_buffer(-1)
                if not len(buf):
                    raise RuntimeError("get_buffer() returned an empty buffer")
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.get_buffer() call failed.")
                return
            n = reader.memcpy(buf)
            reader.consume(n)
            try:
                self._protocol.buffer_updated(n)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.buffer_updated() call failed.")
                return

    def _on_eof(self) -> None:
        if self._loop.get_debug():
            log.debug("%r received EOF", self)
        try:
            keep_open = self._protocol.eof_received()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return
        if not keep_open:
            self.close()

    # ------------------------------------------------------------------ writing

    def _set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None and low is None:
            self._high_water = _HIGH_WATER
            self._low_water = _LOW_WATER
        else:
            super()._set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        core = self._core
        core.release_held(True)  # a write held for the pass's end goes now (dispatch.py)
        r = core.wreader
        return r.read_avail() if r is not None and r.writer is not None else 0

    def _write_rest(self, data: Any, sent: int) -> None:
        """What ``write``'s first ``send`` did not take (all of it when it sent nothing, or
        did not try): kept for the write VIO."""
        self._buffer_write(memoryview(data).cast("B")[sent:] if sent else data)  # bytes
        self._maybe_pause_protocol()

    def _write_lost(self) -> None:
        """A ``write`` after the connection was lost: counted, and warned of as asyncio."""
        core = self._core
        if core.lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
            log.warning("socket.send() raised exception.")
        core.lost += 1

    def _write_failed(self, err: int) -> None:
        self._fatal_error(_oserror(err), "Fatal write error on socket transport")

    def _buffer_write(self, data: Any) -> None:
        """Keep ``data`` for the VC's write VIO, which writes it when the socket has room."""
        core = self._core
        r = core.wreader
        if r is None:
            r = core.wreader = MIOBuffer().alloc_reader()
        n = r.writer.write(data)
        vc = self._vc
        w = vc.write
        if w.op != _WRITE or w.cont is None:  # not started yet
            vc.do_io_write(self._loop._vc_dispatch, n, r)
        else:
            w.nbytes += n
            w.reenable()

    def _write_done(self) -> None:
        """The write VIO wrote every byte kept: drained."""
        self._maybe_resume_protocol()  # may write again
        if self.get_write_buffer_size():
            return
        core = self._core
        waiter = core.empty_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._closing:
            if not core.lost:
                core.lost += 1
                self._loop.call_soon(self._call_connection_lost, None)
        elif core.eof:
            self._shutdown_write()

    def _shutdown_write(self) -> None:
        try:
            self._vc.do_io_shutdown(IO_SHUTDOWN_WRITE)
        except OSError as exc:
            self._fatal_error(exc, "Fatal error on transport")

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def write_eof(self) -> None:
        core = self._core
        core.release_held(True)  # may fail, and close by force
        if self._closing or core.eof:
            return
        core.eof = True
        if not self.get_write_buffer_size():
            self._shutdown_write()

    def can_write_eof(self) -> bool:
        return True

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        self._core.release_held(True)  # may fail, and close by force
        if self._closing:
            return
        self._closing = True
        self._stop_reading()
        if not self.get_write_buffer_size():
            self._core.lost += 1
            self._loop.call_soon(self._call_connection_lost, None)

    def _leave_epoll(self) -> None:
        """A closing transport's fd is wanted by ``add_reader``/``add_writer``: the VC stops
        watching it (``EPOLL_CTL_DEL``), unless it still has bytes to write there."""
        if self.get_write_buffer_size():
            raise RuntimeError(
                f"File descriptor {self._sock_fd} is used by transport {self!r}: "
                "it is closing and still writing what it holds"
            )
        self._vc.ep.stop()

    def abort(self) -> None:
        self._force_close(None)

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on transport") -> None:
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                log.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler(
                {"message": message, "exception": exc, "transport": self,
                 "protocol": self._protocol}
            )  # fmt: skip
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None) -> None:
        core = self._core
        if core.lost:
            return
        core.release_held(True)  # written before: asyncio's write would have sent it
        if core.lost:
            return  # its send failed: closed by force already
        r = core.wreader
        if r is not None and r.writer is not None and r.read_avail():
            r.consume(r.read_avail())
            vc = self._vc
            if not vc.closed:
                vc.do_io_write(None, 0, None)
        if not self._closing:
            self._closing = True
            self._stop_reading()
        core.lost += 1
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._release()
            waiter = self._core.empty_waiter
            if waiter is not None and not waiter.done():
                waiter.set_exception(ConnectionError("Connection is closed by peer"))

    def _release(self) -> None:
        """Close the VC (its fd) and forget the socket object, which no longer owns it."""
        if not self._open:
            return
        self._open = False
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.detach()
        vc = self._vc
        vc.do_io_close()
        if isinstance(vc, TransportVC):
            vc.core = None
        core = self._core
        self._protocol = core.protocol = core.data = None
        loop, self._loop = self._loop, None
        server, self._server = self._server, None
        if server is not None:
            _server_detach(server, self)
        if loop is not None:
            loop._vc_dispatch.remove(self._sock_fd, core)

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if getattr(self, "_open", False):  # unset or False if __init__ failed
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            sock = self._sock
            if sock is not None:
                sock.detach()
            self._vc.do_io_close()

    # ------------------------------------------------------------------ sendfile

    def _make_empty_waiter(self) -> asyncio.Future[None]:
        core = self._core
        if core.empty_waiter is not None:
            raise RuntimeError("Empty waiter is already set")
        waiter = core.empty_waiter = self._loop.create_future()
        if not self.get_write_buffer_size():
            waiter.set_result(None)
        return waiter

    def _reset_empty_waiter(self) -> None:
        self._core.empty_waiter = None
