"""NetVConnection: a connection as its users see it (ATS's NetVConnection): its VIOs, the
per-direction state the NetHandler keeps for them, its options, addresses and timeouts.

``UnixNetVConnection`` (``netvc.py``) is the one kind there is: it adds how a socket's bytes
move and how its continuation is signalled. The state is defined here, once.

State flags, per direction (``vc.read`` / ``vc.write``, a :class:`NetState`):

- ``enabled``: the continuation wants this direction to move (a VIO is set and not
  disabled by back-pressure or completion). Set by ``reenable``, cleared by a disable.
- ``triggered``: the kernel reported an edge and we have not seen EAGAIN since. Only EAGAIN,
  EOS or an error clear it. A VC that stops early (VIO done, buffer full, disabled) keeps
  it, so re-enabling processes the bytes already in the socket without a new edge.
- ``in_ready`` / ``in_enabled``: membership flags of the NetHandler's ready list and of the
  cross-thread enable list (so both lists stay duplicate-free without searching them).

Per VC:

- ``closed``: 0 while open; set to 1 (or -1 for an abort) *last* by ``do_io_close``, after
  both directions were disabled, so that a thread that sees it set sees a quiet VC.
- ``recursion``: how many of this VC's signal calls are on the stack. The VC is freed
  (``NetHandler.free_netevent``) only when it is 0; otherwise the outermost signal frees it.

Lock rule: every event to a continuation is delivered with the VIO's mutex (the
continuation's) held by the VC's thread; the NetHandler only try-locks and retries on the
next pass. ``do_io_*`` must be called on the VC's thread or with the continuation's mutex
held; ``reenable`` and ``do_io_close`` may be called from any thread.
"""

from __future__ import annotations

import errno
import sys
from typing import TYPE_CHECKING, Any, Final

from mypy_extensions import u8

from ats_cffi import sys as _sys
from ats_cffi._native import lib
from ats_cffi.eventsystem.continuation import Continuation, check_continuation
from ats_cffi.eventsystem.event import Action
from ats_cffi.eventsystem.iobuffer import IOBufferReader, MIOBuffer
from ats_cffi.eventsystem.mutex import ProxyMutex, get_ident
from ats_cffi.eventsystem.vio import INT64_MAX, VIO, VIOOp
from ats_cffi.net.codes import (
    EVENTIO_READWRITE_VC,
    IO_SHUTDOWN_READ,
    IO_SHUTDOWN_READWRITE,
    IO_SHUTDOWN_WRITE,
)
from ats_cffi.net.eventio import EventIO
from ats_cffi.net.options import NetVCOptions
from ats_cffi.net.queues import NO_QUEUE

if TYPE_CHECKING:
    from ats_cffi.eventsystem.ethread import EThread
    from ats_cffi.net.nethandler import NetHandler
    from ats_cffi.net.netvc import UnixNetVConnection
    from ats_cffi.net.queues import ConnectionQueues

_READ: Final[int] = VIOOp.READ
_WRITE: Final[int] = VIOOp.WRITE
_NONE: Final = VIOOp.NONE
_FLOAT_MAX: Final = sys.float_info.max
_get_ident: Final = get_ident
_AF_INET: Final = lib.AF_INET
# Names of interpreted modules, bound once (compiled, a plain imported name is looked up in
# the module's dict on every use): a VC is made per connection.
_NetVCOptions: Final = NetVCOptions
_EVENTIO_READWRITE_VC: Final = EVENTIO_READWRITE_VC

#: ``shutdown_flags`` bits: the direction was shut down (``do_io_shutdown``).
NET_VC_SHUTDOWN_READ: Final = 1
NET_VC_SHUTDOWN_WRITE: Final = 2


class NetState(VIO):
    """One direction of a VC: its VIO and the edge-trigger flags (see the module doc).

    ATS's NetState holds its VIO by value; here the state *is* the VIO (a subclass): one
    object per direction instead of two."""

    __slots__ = (
        "enabled", "triggered", "in_ready", "in_enabled", "pending_error", "hup", "spill_first",
        "kept_at",
    )  # fmt: skip

    def __init__(self, vc: NetVConnection) -> None:
        super().__init__(_NONE)  # do_io_read/do_io_write set its op
        self.vc_server = vc
        self.enabled = False
        self.triggered = False
        self.in_ready = False
        self.in_enabled = False
        # An error seen after data in the same read: delivered on the next pass, after
        # the data (nothing received is dropped). An errno (Linux's are below 256): a byte,
        # which with the flags fits in the word before ``kept_at``, so that a state takes
        # 112 bytes, not 128 (two per connection: 32 of the 1,200 or so that an idle one
        # holds).
        self.pending_error: u8 = 0
        # The kernel reported a hang-up (EPOLLRDHUP/HUP/ERR) with a read edge: from then on
        # only EOF, an error or EAGAIN ends a read (vcio.read_into_buffer's stop_short).
        self.hup = False
        # The last read step brought a block or more: the next one reads into the thread's
        # spare block too from its first read (vcio.read_into_buffer's spill_first).
        self.spill_first = False
        # The pass in which a write step emptied this side's buffer and left it its block
        # (vcio.keep_emptied; 0: none since).
        self.kept_at = 0

    def reenable(self) -> None:
        """``vc_server.reenable(self)``, as ``VIO.reenable``, with the VC's type known: a
        compiled call, not a lookup by name (the VIO path's every READ_READY/WRITE_READY).
        The one kind of VC there is: its type is checked as exactly that (or a subclass the
        compiler knows), where ``NetVConnection`` took a walk up the object's class's MRO."""
        vc: UnixNetVConnection | None = self.vc_server
        if vc is not None:
            vc.reenable_state(self)

    def reenable_re(self) -> None:
        """``vc_server.reenable_re(self)``, as ``VIO.reenable_re``, called as ``reenable``."""
        vc: UnixNetVConnection | None = self.vc_server
        if vc is not None:
            vc.reenable_re(self)

    def quiet(self) -> None:
        """The VC is closing: this side is off and its VIO asks for nothing."""
        self.enabled = False
        self.op = _NONE
        self.nbytes = 0
        self.buffer = None

    def clear(self) -> None:
        """The VC is freed (ATS's ``clear``): this side is off and its VIO holds nothing,
        its continuation and VC included (no reference cycle is left)."""
        self.enabled = self.triggered = self.in_ready = False
        self.cont = self.buffer = self.vc_server = None
        self.op = _NONE

    @property
    def vio(self) -> VIO:
        """The VIO of this direction: this object (a property, not a field, so that a state
        is no reference cycle of its own)."""
        return self


class NetVConnection(Continuation):
    """A connection's API and state; see the module doc. Made only as a
    ``UnixNetVConnection``, which handles its timeouts (``handle_event``)."""

    __slots__ = (
        "fd",
        "family",
        "options",
        "read",
        "write",
        "closed",
        "recursion",
        "lerrno",
        "shutdown_flags",
        "nh",
        "thread",
        "ep",
        "inactivity_timeout_in",
        "active_timeout_in",
        "next_inactivity_timeout_at",
        "next_activity_timeout_at",
        "in_cop",
        "open_index",
        "counted_open",
        "connecting",
        "tls_turns",
        "action",
        "_local_addr",
        "_remote_addr",
        "splice_end",
        "queue",
        "queue_prev",
        "queue_next",
    )

    def __init__(self, options: Any) -> None:
        super().__init__(ProxyMutex())
        self.fd = -1
        self.family = _AF_INET
        if type(options) is not _NetVCOptions:  # one test per VC: the accept path's case
            if options is None:
                options = _NetVCOptions()
            elif not isinstance(options, _NetVCOptions):
                raise TypeError(
                    "UnixNetVConnection: options must be NetVCOptions or None, "
                    f"not {type(options).__name__}"
                )
        self.options = options
        self.read = NetState(self)
        self.write = NetState(self)
        self.closed = 0
        self.recursion = 0
        self.lerrno = 0
        self.shutdown_flags = 0
        self.nh: NetHandler | None = None
        self.thread: EThread | None = None
        self.ep = EventIO(_EVENTIO_READWRITE_VC, self)
        self.inactivity_timeout_in = 0.0
        self.active_timeout_in = 0.0
        self.next_inactivity_timeout_at = 0.0
        self.next_activity_timeout_at = 0.0
        self.in_cop = False
        #: Its place in its NetHandler's open list (-1: in none): net/queues.py's OpenList.
        self.open_index = -1
        # Counted in connections_currently_open (by the accept path at accept time, or by
        # start_io); uncounted exactly once, by free_netevent.
        self.counted_open = False
        #: Set from connect_up until the connect's first write edge (connect.py).
        self.connecting = False
        #: Set while OpenSSL needs the VC's turns whether or not a VIO is enabled: during
        #: the handshake, and while a read waits for the socket to take a write or the
        #: other way round (an SSLNetVConnection's, net/tls/sslvc.py).
        self.tls_turns = False
        #: The Action of the accept or connect that made the VC (a ConnectAction drives
        #: the connect).
        self.action: Action | None = None
        self._local_addr: Any = None
        self._remote_addr: Any = None
        #: Set while the VC's bytes move natively (splice.py): its Splice.
        self.splice_end: Any = None
        #: The NetHandler's connection queue the VC is in (``NO_QUEUE``,
        #: ``KEEP_ALIVE``, ``ACTIVE``) and its neighbours there: written by net/queues.py only.
        self.queue = NO_QUEUE
        self.queue_prev: NetVConnection | None = None
        self.queue_next: NetVConnection | None = None

    # ------------------------------------------------------------------ addresses

    def get_local_addr(self) -> Any:
        """The socket's local address, read once."""
        if self._local_addr is None and self.fd >= 0:
            self._local_addr = _sys.getsockname(self.fd)
        return self._local_addr

    def get_remote_addr(self) -> Any:
        """The peer's address, read once (``getpeername``)."""
        if self._remote_addr is None and self.fd >= 0:
            self._remote_addr = _sys.getpeername(self.fd)
        return self._remote_addr

    def set_remote_addr(self, address: Any) -> None:
        """The peer's address as already known (the one connected to)."""
        self._remote_addr = address

    @property
    def local_addr(self) -> Any:
        """``get_local_addr()``."""
        return self.get_local_addr()

    @property
    def remote_addr(self) -> Any:
        """``get_remote_addr()``."""
        return self.get_remote_addr()

    # ------------------------------------------------------------------ do_io

    def _check_open(self, call: str) -> None:
        if self.closed:
            raise RuntimeError(f"{call}: the VC is closed")

    @staticmethod
    def _check_nbytes(call: str, nbytes: Any) -> None:
        if type(nbytes) is not int:
            raise TypeError(f"{call}: nbytes must be an int, not {type(nbytes).__name__}")
        if nbytes < 0 or nbytes > INT64_MAX:
            raise ValueError(f"{call}: nbytes must be in 0..INT64_MAX, got {nbytes}")

    def do_io_read(self, cont: Any, nbytes: Any = INT64_MAX, buf: Any = None) -> VIO:
        """Read up to ``nbytes`` into ``buf`` for ``cont``; ``buf=None`` stops reading."""
        if self.closed:
            self._check_open("do_io_read")
        if type(nbytes) is not int or not 0 <= nbytes <= INT64_MAX:
            self._check_nbytes("do_io_read", nbytes)
        if cont is not None:
            check_continuation("do_io_read", cont)
        if buf is not None and not isinstance(buf, MIOBuffer):
            raise TypeError(f"do_io_read: buf must be an MIOBuffer, not {type(buf).__name__}")
        return self._start_vio(self.read, _READ, cont, nbytes, buf)

    def do_io_write(self, cont: Any, nbytes: Any = INT64_MAX, reader: Any = None) -> VIO:
        """Write ``nbytes`` from ``reader`` for ``cont``; ``reader=None`` stops writing."""
        if self.closed:
            self._check_open("do_io_write")
        if type(nbytes) is not int or not 0 <= nbytes <= INT64_MAX:
            self._check_nbytes("do_io_write", nbytes)
        if cont is not None:
            check_continuation("do_io_write", cont)
        if reader is not None:
            if not isinstance(reader, IOBufferReader):
                raise TypeError(
                    f"do_io_write: reader must be an IOBufferReader, not {type(reader).__name__}"
                )
            if reader.writer is None:
                raise ValueError("do_io_write: reader has been deallocated")
        return self._start_vio(self.write, _WRITE, cont, nbytes, reader)

    def _start_vio(
        self, s: NetState, op: int, cont: Continuation | None, nbytes: int, buffer: Any
    ) -> VIO:
        """Set up ``s``'s VIO for a checked do_io call; a ``buffer`` starts it moving."""
        vio = s
        vio.op = op
        vio.cont = cont
        vio.mutex = cont.mutex if cont is not None else self.mutex
        vio.nbytes = nbytes
        vio.ndone = 0
        vio.buffer = buffer
        if buffer is not None:
            s.enabled = False
            self.reenable(vio)
        else:
            s.enabled = False
            s.in_ready = False
        return vio

    def _state_of(self, vio: VIO) -> NetState:
        if vio is self.read:
            return self.read
        if vio is self.write:
            return self.write
        raise ValueError("reenable: the VIO does not belong to this VC")

    def reenable(self, vio: VIO) -> None:
        """Let ``vio`` move again (from any thread): bytes already in the socket are processed
        without waiting for a new edge."""
        self.reenable_state(self._state_of(vio))

    def reenable_state(self, s: NetState) -> None:
        """``reenable`` of side ``s``, one of this VC's two (``NetState.reenable``: a VIO's
        own call, which need not ask which side it is)."""
        if s.enabled or self.closed:
            return
        s.enabled = True
        nh = self.nh
        if nh is None:
            return
        vc: UnixNetVConnection = self  # type: ignore[assignment]  # the one kind there is
        if nh.tid == _get_ident():
            self.rearm_inactivity(nh)
            if s.triggered and not s.in_ready:
                nh.enqueue_ready(vc, s)
        else:
            nh.enqueue_enable(vc, s)  # its thread re-arms the timeout and queues it

    def rearm_inactivity(self, nh: NetHandler) -> None:
        """Restart the inactivity clock stopped by a disable (VC's thread only)."""
        if self.inactivity_timeout_in and not self.next_inactivity_timeout_at:
            self.next_inactivity_timeout_at = nh.now + self.inactivity_timeout_in

    def net_activity(self, now: float) -> None:
        """Bytes moved at ``now``: push the inactivity deadline (ATS's net_activity)."""
        if self.inactivity_timeout_in:
            self.next_inactivity_timeout_at = now + self.inactivity_timeout_in

    def do_io_shutdown(self, howto: Any) -> None:
        """Shut one or both directions down; no event is sent. ``ValueError`` for a bad howto."""
        self._check_open("do_io_shutdown")
        if (
            isinstance(howto, bool)
            or not isinstance(howto, int)
            or howto not in (IO_SHUTDOWN_READ, IO_SHUTDOWN_WRITE, IO_SHUTDOWN_READWRITE)
        ):
            raise ValueError(f"do_io_shutdown: howto must be an IO_SHUTDOWN_* value, got {howto!r}")
        if howto == IO_SHUTDOWN_READ:
            how = lib.SHUT_RD
        elif howto == IO_SHUTDOWN_WRITE:
            how = lib.SHUT_WR
        else:
            how = lib.SHUT_RDWR
        try:
            _sys.shutdown(self.fd, how)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise
        for s, flag, side in (
            (self.read, NET_VC_SHUTDOWN_READ, IO_SHUTDOWN_READ),
            (self.write, NET_VC_SHUTDOWN_WRITE, IO_SHUTDOWN_WRITE),
        ):
            if howto in (side, IO_SHUTDOWN_READWRITE):
                s.enabled = False
                s.in_ready = False
                s.buffer = None
                s.nbytes = 0
                s.cont = None
                self.shutdown_flags |= flag

    def input_pending(self) -> bool:
        """True if the peer sent bytes that are still in the socket, not yet read into the
        read VIO's buffer. Closing the VC then makes the kernel send a reset instead of a
        FIN, and a reset can destroy what was written before it, unread by the peer (an
        application lingers instead: shut the write side, read on, close at EOS)."""
        self._check_open("input_pending")
        return _sys.input_pending(self.fd)

    # ------------------------------------------------------------------ queues

    def add_to_keep_alive_queue(self) -> None:
        """The session waits idle for its next request (VC's thread): the thread may close
        it, oldest first, over ``max_connections_in`` (net/queues.py)."""
        self._queues("add_to_keep_alive_queue").add_keep_alive(self)

    def add_to_active_queue(self) -> bool:
        """A request begins (VC's thread): False when the thread serves
        ``max_requests_in`` requests already; the session then closes the connection."""
        return self._queues("add_to_active_queue").add_active(self)

    def _queues(self, call: str) -> ConnectionQueues:
        nh = self.nh
        if nh is None or self.closed:
            raise RuntimeError(f"{call}: the VC is closed or not on a net thread")
        return nh.queues

    # ------------------------------------------------------------------ timeouts

    @staticmethod
    def _check_timeout(call: str, seconds: Any) -> float:
        """``seconds`` as a float, or ``TypeError``/``ValueError`` naming ``call``: a finite
        number >= 0 (0: no timeout; NaN, inf and ints too large for a float are refused)."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError(f"{call}: timeout must be a number of seconds")
        if not 0 <= seconds <= _FLOAT_MAX:
            what = "an int too large" if isinstance(seconds, int) else seconds
            raise ValueError(f"{call}: timeout must be a finite number >= 0, got {what}")
        return float(seconds)

    def _now(self) -> float:
        nh = self.nh
        if nh is not None:
            return nh.clock()
        thread = self.thread
        return thread.clock() if thread is not None else 0.0

    def set_inactivity_timeout(self, seconds: Any) -> None:
        """``VC_EVENT_INACTIVITY_TIMEOUT`` after ``seconds`` with no byte moved (0: none)."""
        seconds = self._check_timeout("set_inactivity_timeout", seconds)
        self.inactivity_timeout_in = seconds
        self.next_inactivity_timeout_at = self._now() + seconds if seconds else 0.0

    def set_active_timeout(self, seconds: Any) -> None:
        """``VC_EVENT_ACTIVE_TIMEOUT`` ``seconds`` from now, whatever the activity (0: none)."""
        seconds = self._check_timeout("set_active_timeout", seconds)
        self.active_timeout_in = seconds
        self.next_activity_timeout_at = self._now() + seconds if seconds else 0.0

    def cancel_inactivity_timeout(self) -> None:
        self.inactivity_timeout_in = 0.0
        self.next_inactivity_timeout_at = 0.0

    def cancel_active_timeout(self) -> None:
        self.active_timeout_in = 0.0
        self.next_activity_timeout_at = 0.0

    def io_pending(self) -> bool:
        """True while a read or write VIO has bytes to do (enabled or held back)."""
        r = self.read
        w = self.write
        return (r.op == _READ and r.nbytes > r.ndone) or (w.op == _WRITE and w.nbytes > w.ndone)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} fd={self.fd} closed={self.closed}>"
