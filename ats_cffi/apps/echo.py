"""The echo service: every byte a client sends comes back to it.

By default each connection is spliced to itself (``ats_cffi.net.splice``): its bytes move
natively, through a ``WATER_MARK``-byte buffer whose filling stops the reads (back-pressure)
while the client does not read. After the client's half-close everything is written back,
the write side is shut down, and the connection closed.

With ``native=False`` (``ats-cffi echo --vio``) the bytes go through VIOs and a Python
continuation instead: one MIOBuffer per connection is both the read VIO's buffer and the
write VIO's source, with the same water mark, EOS handling and timeouts. A TLS connection
(an SSLNetVConnection, from a listener with ``tls``) always takes that path: the splice
would move its encrypted bytes.
"""

from __future__ import annotations

from typing import Any

from ats_cffi.apps.service import BLOCK_SIZE, WATER_MARK, Service, Session, check_flag
from ats_cffi.eventsystem import INT64_MAX, MIOBuffer
from ats_cffi.eventsystem.codes import (
    VC_EVENT_EOS,
    VC_EVENT_READ_READY,
    VC_EVENT_WRITE_COMPLETE,
    VC_EVENT_WRITE_READY,
)
from ats_cffi.net import UnixNetVConnection
from ats_cffi.net.splice import Splice
from ats_cffi.net.tls import SSLNetVConnection

TOTAL = "proxy.process.echo.total_client_connections"
CURRENT = "proxy.process.echo.current_client_connections"


class BaseEchoSession(Session):
    """What both kinds of echo session do: count, set the timeout, register, then ``start``
    moving bytes (with the session's mutex held)."""

    total_stat = TOTAL
    current_stat = CURRENT

    def __init__(self, service: EchoService, vc: UnixNetVConnection) -> None:
        super().__init__(service)
        self.vc = vc
        self.set_handler(self.handle)
        if service.inactivity_timeout:
            vc.set_inactivity_timeout(service.inactivity_timeout)
        self.opened()
        with self.mutex:  # type: ignore[union-attr]
            self.start(vc)

    def start(self, vc: UnixNetVConnection) -> None:
        raise NotImplementedError

    def handle(self, event: int, data: Any) -> None:
        raise NotImplementedError


class EchoSession(BaseEchoSession):
    """Reads into ``buf`` and writes ``buf`` back. Closes on EOS (once flushed), error or
    timeout.

    The write VIO's ``nbytes`` follows the read VIO's ``ndone`` (every byte read is to be
    written back): each write ends in one ``WRITE_COMPLETE``, which re-enables the read
    (stopped at the water mark while the client did not read), instead of the
    ``WRITE_READY`` before and after each write of an open-ended write VIO.
    """

    def start(self, vc: UnixNetVConnection) -> None:
        buf = self.buf = MIOBuffer(BLOCK_SIZE, WATER_MARK)
        reader = buf.alloc_reader()
        self.peer_eos = False
        self.rvio = vc.do_io_read(self, INT64_MAX, buf)
        self.wvio = vc.do_io_write(self, 0, reader)

    def handle(self, event: int, vio: Any) -> None:
        if self.closed:
            return
        if event == VC_EVENT_READ_READY:
            wvio = self.wvio
            wvio.nbytes = self.rvio.ndone
            wvio.reenable()
        elif event == VC_EVENT_WRITE_COMPLETE:
            if self.peer_eos:
                self.close()
            else:
                self.rvio.reenable()
        elif event == VC_EVENT_WRITE_READY:
            self.rvio.reenable()
        elif event == VC_EVENT_EOS:
            # The client half-closed: send back what is still buffered, then close.
            self.peer_eos = True
            wvio = self.wvio
            wvio.nbytes = self.rvio.ndone
            if wvio.ntodo() <= 0:
                self.close()
            else:
                wvio.reenable()
        else:  # VC_EVENT_ERROR, INACTIVITY_TIMEOUT, ACTIVE_TIMEOUT
            self.close()

    def release(self) -> None:
        super().release()
        self.buf.dealloc_all_readers()


class SplicedEchoSession(BaseEchoSession):
    """The connection spliced to itself: Python hears only of its end (EOS once every byte
    was echoed and the half-close passed back, an error, or a timeout), and closes."""

    def start(self, vc: UnixNetVConnection) -> None:
        self.splice: Splice | None = Splice(self, vc, buffer_size=WATER_MARK)

    def handle(self, event: int, splice: Any) -> None:
        self.close()  # VC_EVENT_EOS, ERROR, INACTIVITY_TIMEOUT, ACTIVE_TIMEOUT

    def release(self) -> None:
        super().release()
        self.splice = None  # it holds the session (its continuation)


class EchoService(Service):
    """``ats-cffi echo``: spliced sessions, or VIO ones with ``native=False`` or TLS."""

    service_name = "echo"
    stat_names = (TOTAL, CURRENT)

    def __init__(
        self, inactivity_timeout: float = 0.0, worker: int | None = None, native: bool = True
    ) -> None:
        super().__init__(inactivity_timeout, worker)
        self.native = check_flag("EchoService", "native", native)

    def start_session(self, vc: UnixNetVConnection) -> None:
        if self.native and not isinstance(vc, SSLNetVConnection):
            SplicedEchoSession(self, vc)
        else:
            EchoSession(self, vc)
