"""TransportVC: the UnixNetVConnection of a VCTransport, whose reads for a plain asyncio
``Protocol`` become ``bytes`` as they leave the socket.

A transport's VC reads into the loop's one read buffer (``Loop._read_buffer``), and the
dispatch then copies what it holds out into the ``bytes`` that ``data_received`` takes
(``dispatch.py``). For a plain ``Protocol`` this VC skips the buffer: its read step
(``read_bytes``, which ``UnixNetVConnection.net_read_io`` calls) reads into a new ``bytes``
(``vcio.read_to_bytes``) and leaves it in the transport's core (``TransportCore.data``),
where the dispatch takes it when the step's ``VC_EVENT_READ_READY`` arrives: the same
VIO, the same counting, the same events, one copy less, and none at all for a large read,
which goes straight into the new object (uvloop copies every read out of its loop-wide
buffer). A ``BufferedProtocol``'s reads keep the buffer (its ``get_buffer`` is asked after
the read), and so does any read while the buffer holds bytes, which go first.

Compiled (``ats_cffi/_compiled.py``): it is the read step of every round trip.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from ats_cffi.asyncio.dispatch import TransportCore
from ats_cffi.eventsystem.iobuffer import MIOBuffer
from ats_cffi.net.netvc import UnixNetVConnection
from ats_cffi.net.vcio import read_to_bytes

if TYPE_CHECKING:
    from ats_cffi.net.nethandler import NetHandler

#: A read that brings at least this many bytes makes the next one go straight into a new
#: ``bytes`` (``vcio.read_to_bytes``'s ``large``); a smaller one, through the thread's
#: spare block. Measured on the Protocol echo (server CPU per round trip, one core): at
#: 10 KiB messages the direct read saves ~0.5 us of ~4 us of user time, at 100 KiB ~6 us of
#: ~12; at 1 KiB both cost the same (callgrind: 6,004 and 5,950 instructions), and the
#: spare block keeps small reads from carving 126 KiB out of the heap each time.
LARGE_READ: Final = 8 * 1024


class TransportVC(UnixNetVConnection):
    """A VCTransport's VC (see the module doc). ``core``: the transport's, set by the
    transport while it is open (None: every read goes to the buffer)."""

    __slots__ = ("core", "large")

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.core: TransportCore | None = None
        #: The last read brought ``LARGE_READ`` bytes or more.
        self.large = False

    def read_bytes(self, nh: NetHandler, buf: MIOBuffer, limit: int) -> tuple[int, int]:
        c = self.core
        if c is None or c.protocol is None or buf.max_read_avail():
            return super().read_bytes(nh, buf, limit)
        data, last = read_to_bytes(nh, self.fd, limit, not self.read.hup, self.large)
        n = len(data)
        if n:
            self.large = n >= LARGE_READ
            held = c.data
            # (Taken by the READ_READY that follows each read step; never lost if not.)
            c.data = data if held is None else held + data
        return n, last
