"""The VIO echo of ``perf/servers.py ats``: README's echo continuation, written as a user
writes it (a module-level class comparing events with the imported codes), interpreted.

It reads into a buffer whose reader is the write VIO's: every read is written back. Reading
pauses while more than ``water_mark`` bytes wait to be written (0: at each full 32 KiB
block). The write VIO's ``nbytes`` follows the read VIO's ``ndone``, so each write ends in
one ``WRITE_COMPLETE`` (which resumes reading) rather than a ``WRITE_READY`` before and
after it (as ``ats-cffi echo --vio``).
"""

from __future__ import annotations

from typing import Any

from ats_cffi.eventsystem import (
    INT64_MAX,
    VC_EVENT_EOS,
    VC_EVENT_ERROR,
    VC_EVENT_READ_READY,
    VC_EVENT_WRITE_COMPLETE,
    VC_EVENT_WRITE_READY,
    Continuation,
    MIOBuffer,
    ProxyMutex,
)


class Echo(Continuation):
    __slots__ = ("vc", "buf", "rvio", "wvio")

    def __init__(self, vc: Any, water_mark: int) -> None:
        super().__init__(ProxyMutex())
        self.vc = vc
        self.buf = MIOBuffer(32768, water_mark)
        reader = self.buf.alloc_reader()
        self.set_handler(self.on_event)
        self.rvio = vc.do_io_read(self, INT64_MAX, self.buf)
        self.wvio = vc.do_io_write(self, 0, reader)

    def on_event(self, event: int, vio: Any) -> None:
        if event == VC_EVENT_READ_READY:
            wvio = self.wvio
            wvio.nbytes = self.rvio.ndone
            wvio.reenable()
        elif event == VC_EVENT_WRITE_COMPLETE or event == VC_EVENT_WRITE_READY:
            self.rvio.reenable()
        elif event == VC_EVENT_EOS or event == VC_EVENT_ERROR:
            self.vc.do_io_close()
