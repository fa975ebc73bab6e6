"""The echo service: every byte a client sends comes back to it.

One MIOBuffer per connection is both the read VIO's buffer and the write VIO's source, so
reading stops (back-pressure) while more than ``WATER_MARK`` bytes wait to go back to a
client that does not read. After the client's half-close (EOS) the rest is written back
and the connection closed.
"""

from __future__ import annotations

from typing import Any

from ats_cffi.apps.service import BLOCK_SIZE, WATER_MARK, Service, Session
from ats_cffi.eventsystem import INT64_MAX, EventCode, MIOBuffer
from ats_cffi.net import UnixNetVConnection

_READ_READY = EventCode.VC_EVENT_READ_READY
_WRITE_READY = EventCode.VC_EVENT_WRITE_READY
_WRITE_COMPLETE = EventCode.VC_EVENT_WRITE_COMPLETE
_EOS = EventCode.VC_EVENT_EOS

TOTAL = "proxy.process.echo.total_client_connections"
CURRENT = "proxy.process.echo.current_client_connections"


class EchoSession(Session):
    """Reads into ``buf`` and writes ``buf`` back. Closes on EOS (once flushed), error or
    timeout."""

    current_stat = CURRENT

    def __init__(self, service: EchoService, vc: UnixNetVConnection) -> None:
        super().__init__(service)
        self.vc = vc
        buf = MIOBuffer(BLOCK_SIZE, WATER_MARK)
        reader = buf.alloc_reader()
        self.set_handler(self.handle)
        if service.inactivity_timeout:
            vc.set_inactivity_timeout(service.inactivity_timeout)
        service.stats.incr(TOTAL)
        service.stats.incr(CURRENT)
        service.add_session(self)
        with self.mutex:  # type: ignore[union-attr]
            self.rvio = vc.do_io_read(self, INT64_MAX, buf)
            self.wvio = vc.do_io_write(self, INT64_MAX, reader)

    def handle(self, event: int, vio: Any) -> None:
        if self.closed:
            return
        if event == _READ_READY:
            self.wvio.reenable()
        elif event == _WRITE_READY:
            self.rvio.reenable()
        elif event == _EOS:
            # The client half-closed: send back what is still buffered, then close.
            self.wvio.done()
            if self.wvio.ntodo() <= 0:
                self.close()
            else:
                self.wvio.reenable()
        elif event == _WRITE_COMPLETE:
            self.close()
        else:  # VC_EVENT_ERROR, INACTIVITY_TIMEOUT, ACTIVE_TIMEOUT
            self.close()


class EchoService(Service):
    """``ats-cffi echo``."""

    name = "echo"
    stat_names = (TOTAL, CURRENT)

    def start_session(self, vc: UnixNetVConnection) -> None:
        EchoSession(self, vc)
