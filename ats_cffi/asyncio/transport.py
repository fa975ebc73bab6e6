"""VCTransport: an asyncio stream transport that is a UnixNetVConnection on the loop's
NetHandler (DESIGN.md section 12).

The VC's events become protocol calls, made directly from the NetHandler's dispatch (as
uvloop calls them from libuv's callbacks):

- ``VC_EVENT_READ_READY`` → ``data_received(bytes)``, or ``get_buffer``/``buffer_updated``
  for a ``BufferedProtocol``; ``VC_EVENT_EOS`` → ``eof_received`` (the transport closes
  unless it returns true); ``VC_EVENT_ERROR`` → ``connection_lost(OSError)``;
  ``VC_EVENT_INACTIVITY_TIMEOUT``/``ACTIVE_TIMEOUT`` (the InactivityCop) →
  ``connection_lost(TimeoutError)``.
- ``write`` tries the socket first and keeps only the rest (asyncio's rule), in an
  MIOBuffer that the VC's write VIO drains; the VIO's ``nbytes`` grows with each write, so
  its ``VC_EVENT_WRITE_COMPLETE`` means "drained": ``resume_writing``, a pending
  ``write_eof`` or ``close`` completes there. ``pause_writing`` comes at the high water mark
  (asyncio's ``_FlowControlMixin``, 64 KiB by default).
- ``connection_made``, then the first read, then a waiter's result, and
  ``connection_lost`` are scheduled with ``call_soon`` in asyncio's order.
"""

from __future__ import annotations

import contextvars
import errno
import functools
import logging
import os
import socket
import warnings
from asyncio import constants, futures, protocols, transports, trsock
from typing import TYPE_CHECKING, Any

from ats_cffi import sys as _sys
from ats_cffi.eventsystem import codes as _codes
from ats_cffi.eventsystem.continuation import Continuation
from ats_cffi.eventsystem.iobuffer import IOBufferReader, MIOBuffer
from ats_cffi.eventsystem.vio import INT64_MAX, VIOOp
from ats_cffi.net.codes import IO_SHUTDOWN_WRITE
from ats_cffi.net.netvc import UnixNetVConnection

if TYPE_CHECKING:
    import asyncio

    from ats_cffi.net.nethandler import NetHandler

log = logging.getLogger("asyncio")

_send_some = _sys.send_some
_NEG_EAGAIN = -errno.EAGAIN
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


def _oserror(err: int) -> OSError:
    return OSError(err, os.strerror(err))  # the subclass of the errno (ConnectionResetError)


def new_vc(
    nh: NetHandler, fd: int, family: int, vc: UnixNetVConnection | None = None
) -> UnixNetVConnection:
    """A VC (``vc``, or a new UnixNetVConnection) for the connected socket ``fd``,
    registered in ``nh``'s epoll (counted open)."""
    if vc is None:
        vc = UnixNetVConnection()
    vc.fd = fd
    vc.family = family
    nh.start_io(vc)
    return vc


class VCTransport(transports._FlowControlMixin, transports.Transport):  # type: ignore[misc]
    """A stream transport over a UnixNetVConnection (see the module doc)."""

    __slots__ = (
        "_sock_fd", "_cont", "_vc", "_sock", "_rbuf", "_rreader", "_wbuf", "_wreader",
        "_buffered", "_protocol", "_server", "_conn_lost", "_closing", "_paused", "_reading",
        "_eof", "_empty_waiter", "__weakref__",
    )  # fmt: skip
    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE
    #: ``write`` tries the socket before the write VIO (not through TLS: tls.py).
    _send_first = True

    def __init__(
        self,
        loop: Any,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[None] | None = None,
        extra: dict[str, Any] | None = None,
        server: Any = None,
    ) -> None:
        super().__init__(extra, loop)
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
        self._sock_fd = fd = sock.fileno()
        # The protocol's callbacks run in (a copy of) the context the transport was made
        # in, as asyncio's reader callbacks and uvloop's do.
        ctx = contextvars.copy_context()
        self._cont = Continuation(loop._net_mutex, functools.partial(ctx.run, self._vc_event))
        self._vc = self._new_vc(loop._net_handler, fd, sock.family)
        if server is not None:
            options = loop._server_options.get(server)
            if options is not None:
                options.apply(self._vc)
        self._sock = sock
        # The loop's one read buffer (as uvloop reads into one loop-wide buffer): each read
        # step hands all it read to the protocol, so it holds nothing between steps.
        self._rbuf: MIOBuffer = loop._read_buffer
        self._rreader: IOBufferReader = loop._read_reader
        self._wbuf: MIOBuffer | None = None
        self._wreader: IOBufferReader | None = None
        self._buffered = False
        self._protocol: Any = None
        self.set_protocol(protocol)
        self._server = server
        self._conn_lost = 0
        self._closing = False
        self._paused = False
        self._reading = False
        self._eof = False
        self._empty_waiter: asyncio.Future[None] | None = None
        if server is not None:
            server._attach()
        loop._transports[fd] = self
        self._begin(protocol, waiter)

    def _new_vc(self, nh: NetHandler, fd: int, family: int) -> UnixNetVConnection:
        return new_vc(nh, fd, family)

    def _begin(self, protocol: asyncio.BaseProtocol, waiter: asyncio.Future[None] | None) -> None:
        """``connection_made``, the first read and the waiter's result, in asyncio's order."""
        loop = self._loop
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(self._start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def __repr__(self) -> str:
        info = [self.__class__.__name__]
        if self._sock is None:
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        if self._sock is not None:
            info.append("read=polling" if self._reading else "read=idle")
            info.append(f"write=<bufsize={self.get_write_buffer_size()}>")
        return "<{}>".format(" ".join(info))

    # ------------------------------------------------------------------ protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._buffered = isinstance(protocol, protocols.BufferedProtocol)
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol  # type: ignore[no-any-return]

    def is_closing(self) -> bool:
        return self._closing

    # ------------------------------------------------------------------ reading

    def _start_reading(self) -> None:
        if self._closing or self._paused or self._conn_lost:
            return
        self._reading = True
        self._vc.do_io_read(self._cont, INT64_MAX, self._rbuf)

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
        if event == VC_EVENT_READ_READY:  # first: the event of nearly every call
            if self._conn_lost:
                self._rreader.consume(self._rreader.read_avail())
            elif self._buffered:
                self._read_into_protocol()
            else:
                data = self._rreader.read(-1)
                try:
                    self._protocol.data_received(data)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
                return EVENT_CONT
            r = self._rreader  # a BufferedProtocol that failed: drop what it did not take
            if r.read_avail():
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

    def _read_into_protocol(self) -> None:
        reader = self._rreader
        while reader.read_avail() and not self._conn_lost:
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

    def get_write_buffer_size(self) -> int:
        r = self._wreader
        return r.read_avail() if r is not None and r.writer is not None else 0

    def write(self, data: Any) -> None:
        if data.__class__ is not bytes and not isinstance(data, (bytearray, memoryview)):
            raise TypeError(
                f"data argument must be a bytes-like object, not {type(data).__name__!r}"
            )
        if self._eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._empty_waiter is not None:
            raise RuntimeError("unable to write; sendfile is in progress")
        if not data:
            return
        if self._conn_lost:
            if self._conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                log.warning("socket.send() raised exception.")
            self._conn_lost += 1
            return
        r = self._wreader
        if self._send_first and (r is None or not r.read_avail()):  # try the socket first
            n = _send_some(self._sock_fd, data)
            if n == len(data):
                return
            if n < 0:
                if n != _NEG_EAGAIN:
                    self._fatal_error(_oserror(-n), "Fatal write error on socket transport")
                    return
                n = 0
            data = memoryview(data)[n:]
        self._buffer_write(data)
        self._maybe_pause_protocol()

    def _buffer_write(self, data: Any) -> None:
        """Keep ``data`` for the VC's write VIO, which writes it when the socket has room."""
        wbuf = self._wbuf
        if wbuf is None:
            wbuf = self._wbuf = MIOBuffer()
            self._wreader = wbuf.alloc_reader()
        n = wbuf.write(data)
        vc = self._vc
        w = vc.write
        if w.op != _WRITE or w.cont is None:  # not started yet
            vc.do_io_write(self._cont, n, self._wreader)
        else:
            w.nbytes += n
            w.reenable()

    def _write_done(self) -> None:
        """The write VIO wrote every byte kept: drained."""
        self._maybe_resume_protocol()  # may write again
        if self.get_write_buffer_size():
            return
        waiter = self._empty_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._closing:
            if not self._conn_lost:
                self._conn_lost += 1
                self._loop.call_soon(self._call_connection_lost, None)
        elif self._eof:
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
        if self._closing or self._eof:
            return
        self._eof = True
        if not self.get_write_buffer_size():
            self._shutdown_write()

    def can_write_eof(self) -> bool:
        return True

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._stop_reading()
        if not self.get_write_buffer_size():
            self._conn_lost += 1
            self._loop.call_soon(self._call_connection_lost, None)

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
        if self._conn_lost:
            return
        r = self._wreader
        if r is not None and r.writer is not None and r.read_avail():
            r.consume(r.read_avail())
            vc = self._vc
            if not vc.closed:
                vc.do_io_write(None, 0, None)
        if not self._closing:
            self._closing = True
            self._stop_reading()
        self._conn_lost += 1
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._release()
            waiter = self._empty_waiter
            if waiter is not None and not waiter.done():
                waiter.set_exception(ConnectionError("Connection is closed by peer"))

    def _release(self) -> None:
        """Close the VC (its fd) and forget the socket object, which no longer owns it."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        sock.detach()
        self._vc.do_io_close()
        self._cont.handler = None
        self._protocol = None
        loop, self._loop = self._loop, None
        server, self._server = self._server, None
        if server is not None:
            server._detach()
        if loop is not None:
            loop._transports.pop(self._sock_fd, None)

    def __del__(self, _warn: Any = warnings.warn) -> None:
        sock = getattr(self, "_sock", None)  # unset if __init__ failed
        if sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            sock.detach()
            vc = getattr(self, "_vc", None)
            if vc is not None:
                vc.do_io_close()

    # ------------------------------------------------------------------ sendfile

    def _make_empty_waiter(self) -> asyncio.Future[None]:
        if self._empty_waiter is not None:
            raise RuntimeError("Empty waiter is already set")
        self._empty_waiter = self._loop.create_future()
        if not self.get_write_buffer_size():
            self._empty_waiter.set_result(None)
        return self._empty_waiter

    def _reset_empty_waiter(self) -> None:
        self._empty_waiter = None
