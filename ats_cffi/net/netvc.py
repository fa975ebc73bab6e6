"""UnixNetVConnection: a TCP connection driven by its thread's NetHandler through VIOs.

State flags, per direction (``vc.read`` / ``vc.write``, a :class:`NetState`):

- ``enabled``: the continuation wants this direction to move (a VIO is set and not
  disabled by back-pressure or completion). Set by ``reenable``, cleared by ``*_disable``.
- ``triggered``: the kernel reported an edge and we have not seen EAGAIN since. Only EAGAIN,
  EOS or an error clear it. A VC that stops early (VIO done, buffer full, disabled) keeps
  it, so re-enabling processes the bytes already in the socket without a new edge.
- ``in_ready`` / ``in_enabled``: membership flags of the NetHandler's ready list and of the
  cross-thread enable list (so both lists stay duplicate-free without searching them).

Per VC:

- ``closed``: 0 while open; set to 1 (or -1 for an abort) *last* by ``do_io_close``, after
  both directions were disabled, so that a thread that sees it set sees a quiet VC.
- ``recursion``: how many of this VC's signal calls are on the stack. The VC is freed
  (``close_net_vc``) only when it is 0; otherwise the outermost signal frees it.

Lock rule: every event to a continuation is delivered with the VIO's mutex (the
continuation's) held by the VC's thread; the NetHandler only try-locks and retries on the
next pass. ``do_io_*`` must be called on the VC's thread or with the continuation's mutex
held; ``reenable`` and ``do_io_close`` may be called from any thread.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING, Any, Final

from ats_cffi import sys as _sys
from ats_cffi._native import ffi, lib
from ats_cffi.eventsystem import codes as _codes
from ats_cffi.eventsystem.continuation import Continuation, check_continuation, deliver
from ats_cffi.eventsystem.ethread import on_event_thread
from ats_cffi.eventsystem.event import Action
from ats_cffi.eventsystem.iobuffer import IOBufferReader, MIOBuffer
from ats_cffi.eventsystem.mutex import ProxyMutex
from ats_cffi.eventsystem.vio import INT64_MAX, VIO, VIOOp
from ats_cffi.net import stats as st
from ats_cffi.net.codes import (
    EVENTIO_READWRITE_VC,
    IO_SHUTDOWN_READ,
    IO_SHUTDOWN_READWRITE,
    IO_SHUTDOWN_WRITE,
    NET_EVENT_OPEN,
    NET_EVENT_OPEN_FAILED,
)
from ats_cffi.net.config import (
    INT_RECORD_MAX,
)
from ats_cffi.net.eventio import READ_WRITE, EventIO
from ats_cffi.net.options import NetVCOptions

if TYPE_CHECKING:
    from ats_cffi.eventsystem.ethread import EThread
    from ats_cffi.net.nethandler import NetHandler

log: Final = logging.getLogger("ats.iocore_net")

# The event codes as ints: compiled, a comparison with them is an integer comparison, not a
# lookup in this module's dict and a rich comparison of enum members.
EVENT_CONT: Final[int] = _codes.EVENT_CONT
EVENT_DONE: Final[int] = _codes.EVENT_DONE
VC_EVENT_ACTIVE_TIMEOUT: Final[int] = _codes.VC_EVENT_ACTIVE_TIMEOUT
VC_EVENT_EOS: Final[int] = _codes.VC_EVENT_EOS
VC_EVENT_ERROR: Final[int] = _codes.VC_EVENT_ERROR
VC_EVENT_INACTIVITY_TIMEOUT: Final[int] = _codes.VC_EVENT_INACTIVITY_TIMEOUT
VC_EVENT_READ_COMPLETE: Final[int] = _codes.VC_EVENT_READ_COMPLETE
VC_EVENT_READ_READY: Final[int] = _codes.VC_EVENT_READ_READY
VC_EVENT_WRITE_COMPLETE: Final[int] = _codes.VC_EVENT_WRITE_COMPLETE
VC_EVENT_WRITE_READY: Final[int] = _codes.VC_EVENT_WRITE_READY
_READ: Final[int] = VIOOp.READ
_WRITE: Final[int] = VIOOp.WRITE
_NONE: Final = VIOOp.NONE
_AGAIN: Final[int] = _sys.AGAIN
_ECONNRESET: Final[int] = errno.ECONNRESET
_IOV_MAX: Final = 64
_FLOAT_MAX: Final = sys.float_info.max
_get_ident: Final = threading.get_ident
_lib_close: Final = lib.close
_AF_INET: Final = lib.AF_INET
# The native helpers behind NetHandler.read_fill/write_block, called directly on the hot
# paths (one Python frame less per read and per write); their out-parameter is nh.last.
_read_fill: Final = lib.ats_read_fill
_write_all: Final = lib.ats_write_all
_CALLS_TO_READ: Final = st.CALLS_TO_READ
_CALLS_TO_READ_NODATA: Final = st.CALLS_TO_READ_NODATA
_READ_BYTES: Final = st.READ_BYTES
_CALLS_TO_WRITE: Final = st.CALLS_TO_WRITE
_CALLS_TO_WRITE_NODATA: Final = st.CALLS_TO_WRITE_NODATA
_WRITE_BYTES: Final = st.WRITE_BYTES


def _high_water(w: Any) -> bool:
    """``w.high_water()`` (MIOBuffer ``w``), without its extra call for the usual one reader:
    once per write event."""
    rs = w._readers
    if len(rs) == 1:
        return w._written - rs[0]._pos > w._water_mark  # type: ignore[no-any-return]
    return w.high_water()  # type: ignore[no-any-return]


NET_VC_SHUTDOWN_READ: Final = 1
NET_VC_SHUTDOWN_WRITE: Final = 2

# Events that close a VC whose VIO has no continuation to tell.
_CLOSING_EVENTS: Final = frozenset(
    (VC_EVENT_EOS, VC_EVENT_ERROR, VC_EVENT_INACTIVITY_TIMEOUT, VC_EVENT_ACTIVE_TIMEOUT)
)


def _tell_open_failed(action: Action, err: int) -> None:
    """``NET_EVENT_OPEN_FAILED`` with ``-err`` to the connect's continuation, unless the
    connect was cancelled (the caller holds the action's mutex)."""
    if action.cancelled:
        return
    try:
        action.continuation.handle_event(NET_EVENT_OPEN_FAILED, -err)  # type: ignore[union-attr]
    except Exception:
        log.exception("NET_EVENT_OPEN_FAILED handler raised")


def _freed_handler(event: int, data: Any) -> int:
    """A freed VC's handler: an event that still comes is dropped."""
    return EVENT_DONE


class NetState:
    """One direction of a VC: its VIO and the edge-trigger flags (see the module doc)."""

    __slots__ = ("vio", "enabled", "triggered", "in_ready", "in_enabled", "pending_error", "hup")

    def __init__(self) -> None:
        self.vio = VIO(_NONE)  # do_io_read/do_io_write set its op
        self.enabled = False
        self.triggered = False
        self.in_ready = False
        self.in_enabled = False
        # An error seen after data in the same read: delivered on the next pass, after
        # the data (nothing received is dropped).
        self.pending_error = 0
        # The kernel reported a hang-up (EPOLLRDHUP/HUP/ERR) with a read edge: from then on
        # only EOF, an error or EAGAIN ends a read (see net_read_io on short reads).
        self.hup = False


class UnixNetVConnection(Continuation):
    """A connection on one net thread. Events to the read VIO's continuation:
    ``VC_EVENT_READ_READY``, ``READ_COMPLETE``, ``EOS``, ``ERROR`` (``vc.lerrno``),
    ``INACTIVITY_TIMEOUT``, ``ACTIVE_TIMEOUT``; to the write VIO's: ``WRITE_READY``,
    ``WRITE_COMPLETE``, ``ERROR`` and the timeouts."""

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
        "in_open",
        "counted_open",
        "connecting",
        "action",
        "connect_timeout_event",
        "_local_addr",
        "_remote_addr",
        "splice_end",
    )

    def __init__(self, options: Any = None) -> None:
        # Continuation.__init__ and set_handler, inlined (a VC is made per accept): their
        # checks cannot fail here.
        self.mutex = ProxyMutex()
        self.handler = self.main_event
        self.fd = -1
        self.family = _AF_INET
        if type(options) is not NetVCOptions:  # one test per VC: the accept path's case
            if options is None:
                options = NetVCOptions()
            elif not isinstance(options, NetVCOptions):
                raise TypeError(
                    "UnixNetVConnection: options must be NetVCOptions or None, "
                    f"not {type(options).__name__}"
                )
        self.options = options
        self.read = r = NetState()
        self.write = w = NetState()
        r.vio.vc_server = self
        w.vio.vc_server = self
        self.closed = 0
        self.recursion = 0
        self.lerrno = 0
        self.shutdown_flags = 0
        self.nh: NetHandler | None = None
        self.thread: EThread | None = None
        self.ep = EventIO(EVENTIO_READWRITE_VC, self)
        self.inactivity_timeout_in = 0.0
        self.active_timeout_in = 0.0
        self.next_inactivity_timeout_at = 0.0
        self.next_activity_timeout_at = 0.0
        self.in_cop = False
        self.in_open = False
        # Counted in connections_currently_open (by the accept path at accept time, or by
        # start_io); uncounted exactly once, by free_netevent.
        self.counted_open = False
        self.connecting = False
        self.action: Action | None = None
        self.connect_timeout_event: Any = None
        self._local_addr: Any = None
        self._remote_addr: Any = None
        #: Set while the VC's bytes move natively (net/splice.py): its SpliceEnd.
        self.splice_end: Any = None

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
        if nbytes.__class__ is not int or not 0 <= nbytes <= INT64_MAX:
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
        if nbytes.__class__ is not int or not 0 <= nbytes <= INT64_MAX:
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
        vio = s.vio
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
            self._disable(s)
        return vio

    def _disable(self, s: NetState) -> None:
        s.enabled = False
        s.in_ready = False

    def _state_of(self, vio: VIO) -> NetState:
        if vio is self.read.vio:
            return self.read
        if vio is self.write.vio:
            return self.write
        raise ValueError("reenable: the VIO does not belong to this VC")

    def reenable(self, vio: VIO) -> None:
        """Let ``vio`` move again (from any thread): bytes already in the socket are processed
        without waiting for a new edge."""
        # Called for nearly every event (the continuation's answer to it): _state_of and
        # rearm_inactivity are inlined.
        s = self.read
        if vio is not s.vio:
            s = self.write
            if vio is not s.vio:
                raise ValueError("reenable: the VIO does not belong to this VC")
        if s.enabled or self.closed:
            return
        s.enabled = True
        nh = self.nh
        if nh is None:
            return
        if nh.thread.tid == _get_ident():
            if self.inactivity_timeout_in and not self.next_inactivity_timeout_at:
                self.next_inactivity_timeout_at = nh.now + self.inactivity_timeout_in
            if s.triggered and not s.in_ready:
                nh.enqueue_ready(self, s)
        else:
            nh.enqueue_enable(self, s)  # its thread re-arms the timeout and queues it

    def rearm_inactivity(self, nh: NetHandler) -> None:
        """Restart the inactivity clock stopped by a disable (VC's thread only)."""
        if self.inactivity_timeout_in and not self.next_inactivity_timeout_at:
            self.next_inactivity_timeout_at = nh.now + self.inactivity_timeout_in

    def reenable_re(self, vio: VIO) -> None:
        """Re-enable and, on the VC's thread, process the VIO at once (ATS's reenable_re)."""
        self.reenable(vio)
        nh = self.nh
        if nh is not None and nh.thread.tid == _get_ident() and not self.closed:
            s = self._state_of(vio)
            if s.enabled and s.triggered:
                if s is self.read:
                    self.net_read_io(nh)
                else:
                    self.write_to_net(nh)

    def do_io_close(self, alerrno: Any = -1) -> None:
        """Close: no event is delivered after this call. The fd is closed at once when no
        handler of this VC is on the stack, else when the outermost one returns; from
        another thread, on the VC's thread's next pass.

        From another thread, the call takes the VIOs' mutexes first (re-entrant: the caller
        may hold them), so that no delivery is under way either. Except on an event thread:
        it never waits for a mutex another thread holds (two net threads closing each
        other's VCs from their handlers would deadlock), so a delivery under way there
        finishes; no other starts (``_signal_and_update`` sees the VC closed).

        ``alerrno``: -1 (a normal close) or an errno >= 0 (an abort; a non-zero one is kept
        in ``lerrno``). ``TypeError``/``ValueError`` for anything else."""
        if alerrno.__class__ is not int and (
            isinstance(alerrno, bool) or not isinstance(alerrno, int)
        ):
            raise TypeError(f"do_io_close: alerrno must be an int, not {type(alerrno).__name__}")
        if not -1 <= alerrno <= INT_RECORD_MAX:
            raise ValueError(f"do_io_close: alerrno must be -1 or an errno, got {alerrno}")
        if self.closed:
            return
        nh = self.nh
        if nh is not None and nh.thread.tid != _get_ident():
            held: list[ProxyMutex] = []
            try:
                for s in (self.read, self.write):
                    m = s.vio.mutex
                    if m is None or m in held:
                        continue
                    if not m.try_lock():
                        if on_event_thread():
                            continue  # do not wait (doc): close without it
                        m.lock()
                    held.append(m)
                self._close_locked(alerrno, nh, False)
            finally:
                for m in reversed(held):
                    m.unlock()
            return
        self._close_locked(alerrno, nh, self.recursion == 0)

    def _close_locked(self, alerrno: int, nh: NetHandler | None, close_inline: bool) -> None:
        if self.closed:
            return
        r = self.read
        w = self.write
        r.enabled = w.enabled = False
        vio = r.vio
        vio.op = _NONE
        vio.nbytes = 0
        vio.buffer = None
        vio = w.vio
        vio.op = _NONE
        vio.nbytes = 0
        vio.buffer = None
        if alerrno not in (0, -1):
            self.lerrno = alerrno
        if self.splice_end is not None:
            self.splice_end.splice.vc_freed(self)  # its pipes stop touching this fd now
        # Mark closed last: another thread that sees it set sees a quiet VC.
        self.closed = 1 if alerrno == -1 else -1
        if close_inline:
            if nh is not None:
                nh.free_netevent(self)
            else:
                self.free()
        elif nh is not None and nh.thread.tid != _get_ident():
            nh.enqueue_enable(self, self.read)  # freed on its own thread's next pass

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
        if howto in (IO_SHUTDOWN_READ, IO_SHUTDOWN_READWRITE):
            self._disable(self.read)
            self.read.vio.buffer = None
            self.read.vio.nbytes = 0
            self.read.vio.cont = None
            self.shutdown_flags |= NET_VC_SHUTDOWN_READ
        if howto in (IO_SHUTDOWN_WRITE, IO_SHUTDOWN_READWRITE):
            self._disable(self.write)
            self.write.vio.buffer = None
            self.write.vio.nbytes = 0
            self.write.vio.cont = None
            self.shutdown_flags |= NET_VC_SHUTDOWN_WRITE

    def input_pending(self) -> bool:
        """True if the peer sent bytes that are still in the socket, not yet read into the
        read VIO's buffer. Closing the VC then makes the kernel send a reset instead of a
        FIN, and a reset can destroy what was written before it, unread by the peer (an
        application lingers instead: shut the write side, read on, close at EOS)."""
        self._check_open("input_pending")
        return _sys.input_pending(self.fd)

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

    # ------------------------------------------------------------------ signals

    def _signal_and_update(self, s: NetState, event: int) -> int:
        """Deliver ``event`` to the VIO's continuation; free the VC if it was closed and no
        other signal of it is on the stack. EVENT_DONE when the VC is gone."""
        vio = s.vio
        cont = vio.cont
        self.recursion += 1
        try:
            if self.closed:
                pass  # closed up the stack, or by another thread: nothing more is delivered
            elif cont is not None and vio.mutex is cont.mutex:
                try:
                    deliver(cont, event, vio)
                except Exception:
                    log.exception("handler of %r raised on event %d: closing the VC", self, event)
                    self.do_io_close()
            elif event in _CLOSING_EVENTS:
                self.closed = 1  # nobody to tell: close it
        finally:
            self.recursion -= 1
        if self.recursion == 0 and self.closed:
            nh = self.nh
            if nh is not None:
                nh.free_netevent(self)
            else:
                self.free()
            return EVENT_DONE
        return EVENT_CONT

    def _signal_done(self, s: NetState, event: int, nh: NetHandler) -> int:
        s.enabled = False
        if self._signal_and_update(s, event) == EVENT_DONE:
            return EVENT_DONE
        if not s.enabled:
            s.in_ready = False
        return EVENT_CONT

    def _signal_error(self, s: NetState, err: int, nh: NetHandler) -> int:
        self.lerrno = err
        return self._signal_done(s, VC_EVENT_ERROR, nh)

    def _reschedule(self, s: NetState, nh: NetHandler) -> None:
        if s.triggered and s.enabled:
            nh.enqueue_ready(self, s)
        else:
            s.in_ready = False

    def io_pending(self) -> bool:
        """True while a read or write VIO has bytes to do (enabled or held back)."""
        r = self.read.vio
        w = self.write.vio
        return (r.op == _READ and r.nbytes > r.ndone) or (w.op == _WRITE and w.nbytes > w.ndone)

    def _read_disable(self) -> None:
        # The inactivity clock stops only when no VIO has work left: a VIO held back by
        # back-pressure or by an empty write buffer is idle, and may time out.
        s = self.read
        if not self.write.enabled and not self.io_pending():
            self.next_inactivity_timeout_at = 0.0
        s.enabled = False
        s.in_ready = False

    def _write_disable(self) -> None:
        # Called after nearly every write (the reader is empty): io_pending only when the
        # read side is disabled too.
        s = self.write
        if not self.read.enabled and not self.io_pending():
            self.next_inactivity_timeout_at = 0.0
        s.enabled = False
        s.in_ready = False

    # ------------------------------------------------------------------ read path

    def net_read_io(self, nh: NetHandler) -> None:
        """Read what the socket has into the read VIO's buffer and signal the continuation.

        Called by the NetHandler for a VC that is enabled and triggered.
        """
        # The hottest path of the net layer (once per read event): the buffer's fill and
        # writable_block_if_room (while the tail block has room), the native call's wrapper
        # and the locked body are inlined.
        s = self.read
        vio = s.vio
        if not s.enabled or vio.op != _READ:
            self._read_disable()
            return
        m = vio.mutex
        assert m is not None  # an active VIO holds its continuation's mutex (or the VC's)
        if not m.try_lock():
            nh.retry_later(self, s)
            return
        try:
            if s.pending_error:
                err, s.pending_error = s.pending_error, 0
                s.triggered = False
                if err == _ECONNRESET:
                    self._signal_done(s, VC_EVENT_EOS, nh)
                else:
                    self._signal_error(s, err, nh)
                return
            limit = vio.nbytes - vio.ndone
            if limit <= 0:
                self._read_disable()
                return
            quota = nh.max_read_per_pass
            if limit > quota:
                limit = quota
            buf: MIOBuffer = vio.buffer  # type: ignore[assignment]
            stats = nh.stats
            fd = self.fd
            lastp = nh.last
            stop_short = not s.hup
            total = 0
            last: int = 1
            t = buf._tail
            while True:
                end = t.end
                room = t.size - end
                if not room:
                    nt = buf.writable_block_if_room()
                    if nt is None:
                        break
                    t = nt
                    end = t.end
                    room = t.size - end
                toread = limit - total
                if toread > room:
                    toread = room
                if toread <= 0:
                    break
                c = t._cdata
                if c is None:
                    c = t.cdata
                r: int = _read_fill(fd, c, end, toread, stop_short, lastp)
                last = lastp[0]
                stats[_CALLS_TO_READ] += 1
                if r > 0:
                    # buf.fill(r): the native call wrote r <= toread bytes at t.end.
                    t.end = end + r
                    buf._written += r
                    total += r
                    if r < toread and stop_short:
                        # A short read took everything the socket held: with EPOLLET, Linux
                        # reports a new edge for every arrival on a TCP socket, so this
                        # counts as drained without a second read() just to see EAGAIN
                        # (libuv does the same). Not when a hang-up was reported: data and
                        # FIN can share one edge, and then only reading on to EOF reveals
                        # the FIN.
                        last = _AGAIN
                        break
                if last <= 0:
                    break
            if total:
                vio.ndone += total
                stats[_READ_BYTES] += total
                if self.inactivity_timeout_in:
                    self.next_inactivity_timeout_at = nh.now + self.inactivity_timeout_in
                if last == _AGAIN:
                    s.triggered = False
                elif last < 0:
                    s.pending_error = -last  # deliver the data first, the error next pass
                # last == 0 (EOF): keep triggered, the next read sees EOF again: EOS.
                if vio.nbytes - vio.ndone <= 0:
                    self._signal_done(s, VC_EVENT_READ_COMPLETE, nh)
                    return
                if self._signal_and_update(s, VC_EVENT_READ_READY) != EVENT_CONT:
                    return
                if vio.mutex is not m:
                    self._reschedule(s, nh)
                    return
                buf = vio.buffer  # type: ignore[assignment]
                if (
                    vio.nbytes - vio.ndone <= 0
                    or not s.enabled
                    or vio.op != _READ
                    or buf is None
                    or (buf._tail.end == buf._tail.size and buf.writable_block_if_room() is None)
                ):
                    self._read_disable()
                    return
                if s.pending_error or last == 0:
                    s.triggered = True
                if s.triggered:
                    nh.enqueue_ready(self, s)
                else:
                    s.in_ready = False
                return
            if last == _AGAIN:
                stats[_CALLS_TO_READ_NODATA] += 1
                s.triggered = False
                s.in_ready = False
                return
            if last == 0 or last == -_ECONNRESET:
                s.triggered = False
                self._signal_done(s, VC_EVENT_EOS, nh)
                return
            if last < 0:
                s.triggered = False
                self._signal_error(s, -last, nh)
                return
            # No room in the buffer (back-pressure) or nothing to do: wait for reenable.
            self._read_disable()
        finally:
            m.unlock()

    # ------------------------------------------------------------------ write path

    def write_to_net(self, nh: NetHandler) -> None:
        """Write what the write VIO's reader holds to the socket and signal the continuation.

        Called by the NetHandler for a VC that is enabled and triggered.
        """
        # Once per write event: the locked body, the one-block write and the reader's
        # read_avail/consume are inlined.
        if self.connecting:
            self.connect_complete(nh)
            return
        s = self.write
        vio = s.vio
        if not s.enabled or vio.op != _WRITE:
            self._write_disable()
            return
        m = vio.mutex
        assert m is not None  # an active VIO holds its continuation's mutex (or the VC's)
        if not m.try_lock():
            nh.retry_later(self, s)
            return
        try:
            ntodo = vio.nbytes - vio.ndone
            if ntodo <= 0:
                self._write_disable()
                return
            reader: IOBufferReader = vio.buffer  # type: ignore[assignment]
            w = reader.writer
            if w is None:  # the continuation deallocated the reader of a live write VIO
                log.error("%r: the write VIO's reader was deallocated: VC_EVENT_ERROR", self)
                self._signal_error(s, errno.EINVAL, nh)
                return
            towrite = w._written - reader._pos  # type: ignore[union-attr]
            if towrite > ntodo:
                towrite = ntodo
            signalled = False
            # WRITE_READY before the write while the VIO wants more than the buffer holds
            # and the buffer has room for it.
            if towrite != ntodo and not _high_water(w):
                if self._signal_and_update(s, VC_EVENT_WRITE_READY) != EVENT_CONT:
                    return
                if vio.mutex is not m:  # handed to another continuation: take its mutex
                    self._reschedule(s, nh)
                    return
                if not s.enabled or vio.op != _WRITE or vio.buffer is None:
                    self._write_disable()
                    return
                ntodo = vio.nbytes - vio.ndone
                if ntodo <= 0:
                    self._write_disable()
                    return
                signalled = True
                reader = vio.buffer  # type: ignore[assignment]
                towrite = reader.read_avail()
                if towrite > ntodo:
                    towrite = ntodo
                w = reader.writer
            if towrite <= 0:
                self._write_disable()
                return
            b = reader._block
            start = reader._off
            if start >= b.end and b.next is not None:
                # The reader stands at the end of a block (a new buffer's empty first one,
                # or one written full): step onto the next.
                b, start = reader.first_block()
            if b.end - start >= towrite:
                # The common case: everything to write sits in the reader's current block.
                c = b._cdata
                if c is None:
                    c = b.cdata
                total: int = _write_all(self.fd, c, start, towrite, nh.last)
                last: int = nh.last[0]
                if total > 0:
                    # reader.consume(total), unchecked: it was read_avail.
                    reader._pos += total
                    reader._off = off = start + total
                    if off >= b.end and b.next is not None:
                        reader._advance(0)  # step onto the next block (drop this one)
            else:
                total, last = self.load_buffer_and_write(nh, towrite, reader)
                if total > 0:
                    reader._advance(total)
            stats = nh.stats
            stats[_CALLS_TO_WRITE] += 1
            if total > 0:
                vio.ndone += total
                stats[_WRITE_BYTES] += total
                if self.inactivity_timeout_in:
                    self.next_inactivity_timeout_at = nh.now + self.inactivity_timeout_in
            else:
                stats[_CALLS_TO_WRITE_NODATA] += 1
            if last < 0:
                s.triggered = False
                if last == _AGAIN:
                    s.in_ready = False
                    return
                self._signal_error(s, -last, nh)
                return
            if vio.nbytes - vio.ndone <= 0:
                self._signal_done(s, VC_EVENT_WRITE_COMPLETE, nh)
                return
            if not signalled or not _high_water(w):
                if self._signal_and_update(s, VC_EVENT_WRITE_READY) != EVENT_CONT:
                    return
                if vio.mutex is not m:
                    self._reschedule(s, nh)
                    return
            reader = vio.buffer  # type: ignore[assignment]
            if vio.op != _WRITE or reader is None or not reader.read_avail():
                self._write_disable()
                return
            self._reschedule(s, nh)
        finally:
            m.unlock()

    def load_buffer_and_write(
        self, nh: NetHandler, towrite: int, reader: IOBufferReader
    ) -> tuple[int, int]:
        """Write up to ``towrite`` bytes of ``reader``'s blocks in one native call (writev of
        at most 64 blocks, repeated until done or EAGAIN). Returns ``(written, last)``.
        Nothing is consumed."""
        block, start = reader.first_block()
        if block.end - start >= towrite:
            # Everything to write sits in one block.
            return nh.write_block(self.fd, block.cdata, start, towrite), nh.last[0]
        bases = nh.iov_bases
        offs = nh.iov_offs
        lens = nh.iov_lens
        n = 0
        left = towrite
        for block, start, end in reader.readable_blocks():
            k = end - start
            if k > left:
                k = left
            bases[n] = block.cdata
            offs[n] = start
            lens[n] = k
            n += 1
            left -= k
            if left <= 0 or n == _IOV_MAX:
                break
        total = nh.writev_blocks(self.fd, bases, offs, lens, n)
        return total, nh.last[0]

    # ------------------------------------------------------------------ connect

    def connect_up(self, nh: NetHandler, address: Any) -> None:
        """Open the socket, register it, then ``connect()`` (in that order: with edge trigger,
        the connect's writable edge could otherwise come before the registration). The
        result reaches ``self.action``'s continuation from ``connect_complete``."""
        action = self.action
        assert action is not None
        try:
            self.fd = _sys.socket(self.family, lib.SOCK_STREAM)
            self.options.apply(self.fd, self.family)
            if self.options.local_address is not None:
                _sys.bind(self.fd, self.options.local_address)
            nh.start_io(self)
            self.connecting = True
            _sys.connect(self.fd, address)
        except OSError as exc:
            self.connect_failed(nh, exc.errno or errno.EIO)
            return
        except Exception:  # options changed after connect_re checked them, say
            log.exception("connect_re: setting up the socket failed")
            self.connect_failed(nh, errno.EINVAL)
            return
        self._remote_addr = address
        nh.start_cop(self)
        timeout = self.options.connect_timeout
        if timeout is None:
            timeout = nh.config.connect_timeout
        if timeout:
            self.connect_timeout_event = nh.thread.schedule_in(
                Continuation(self.mutex, self._connect_timed_out), timeout
            )

    def _connect_timed_out(self, event: int, e: Any) -> None:
        self.connect_timeout_event = None
        if self.connecting and not self.closed:
            self.connect_failed(self.nh, errno.ETIMEDOUT)  # type: ignore[arg-type]

    def signal_action(self, cont: Continuation, event: int) -> None:
        """Hand this VC to the continuation of its accept or connect (``NET_EVENT_ACCEPT`` /
        ``NET_EVENT_OPEN``), whose mutex the caller holds. A handler that raises gets the VC
        closed; the caller frees it once no handler of it is on the stack."""
        self.recursion += 1
        try:
            cont.handle_event(event, self)
        except Exception:
            log.exception("handler of event %d raised: closing the VC", event)
            self.do_io_close()
        finally:
            self.recursion -= 1

    def connect_complete(self, nh: NetHandler) -> None:
        """First write edge of a connecting socket: read ``SO_ERROR`` and report the result."""
        err = _sys.so_error(self.fd)
        if err:
            self.connect_failed(nh, err)
            return
        self.connecting = False
        self._cancel_connect_timeout()
        action = self.action
        assert action is not None
        cont = action.continuation
        m = action.mutex
        assert m is not None  # an Action takes its continuation's mutex
        if not m.try_lock():  # another thread holds it: retry after net.retry_delay
            self.connecting = True
            nh.retry_later(self, self.write)
            return
        try:
            if action.cancelled:
                self.do_io_close()
                return
            self.signal_action(cont, NET_EVENT_OPEN)  # type: ignore[arg-type]
        finally:
            m.unlock()
        if self.closed:
            if self.recursion == 0:
                nh.free_netevent(self)
            return
        # The connect's write edge is the socket's first: keep it for a write VIO.
        self._reschedule(self.write, nh)
        self._reschedule(self.read, nh)

    def connect_failed(self, nh: NetHandler | None, err: int) -> None:
        """Report ``NET_EVENT_OPEN_FAILED`` with ``-err`` (unless cancelled) and free the VC."""
        self.connecting = False
        self._cancel_connect_timeout()
        self.lerrno = err
        if nh is not None:
            nh.stats[st.CONNECT_FAILURES] += 1
        action = self.action
        if action is not None and not action.cancelled:
            m = action.mutex
            if m.try_lock():  # type: ignore[union-attr]
                try:
                    _tell_open_failed(action, err)
                finally:
                    m.unlock()  # type: ignore[union-attr]
            elif nh is not None:
                # Another thread holds the continuation's mutex: a net thread never waits
                # for one. An event tells it instead; the thread delivers it with the mutex
                # held, retrying while it is busy.
                nh.thread.schedule_imm(
                    Continuation(m, lambda event, e: _tell_open_failed(action, err))
                )
            else:
                with m:  # type: ignore[union-attr]
                    _tell_open_failed(action, err)
        self.closed = 1
        if nh is not None and self.nh is not None:
            nh.free_netevent(self)
        else:
            self.free()

    def _cancel_connect_timeout(self) -> None:
        ev, self.connect_timeout_event = self.connect_timeout_event, None
        if ev is not None:
            ev.cancelled = True  # we run on the VC's thread: no lock needed to stop it
            # A cancelled event stays queued until its time: its continuation must not keep
            # the VC (its handler was a bound method of it) alive until then.
            ev.continuation.handler = _freed_handler

    # ------------------------------------------------------------------ events

    def main_event(self, event: int, e: Any) -> int:
        """Timeouts from the InactivityCop: to the reader, then (if it did not re-arm the
        timeout and does not also own the write VIO) to the writer."""
        if event not in (VC_EVENT_INACTIVITY_TIMEOUT, VC_EVENT_ACTIVE_TIMEOUT):
            return EVENT_DONE
        nh = self.nh
        if nh is None:
            return EVENT_DONE
        rm = self.read.vio.mutex if self.read.vio.op == _READ else None
        wm = self.write.vio.mutex if self.write.vio.op == _WRITE else None
        locked = []
        try:
            for m in (rm, wm):
                if m is not None:
                    if not m.try_lock():
                        return EVENT_CONT  # try again on the next cop run
                    locked.append(m)
            if self.closed:
                nh.free_netevent(self)
                return EVENT_DONE
            inactivity = event == VC_EVENT_INACTIVITY_TIMEOUT
            # The cop saw the deadline pass under the VC's mutex; a continuation holding its
            # own (another thread) may have re-armed or cancelled it since: check again.
            due = self.next_inactivity_timeout_at if inactivity else self.next_activity_timeout_at
            if not due or due >= nh.now:
                return EVENT_DONE
            if inactivity:
                self.next_inactivity_timeout_at = 0.0
                nh.stats[st.INACTIVITY_TIMEOUTS] += 1
            else:
                self.next_activity_timeout_at = 0.0
                nh.stats[st.ACTIVE_TIMEOUTS] += 1
            reader_cont = None
            writer_cont = self.write.vio.cont
            if self.read.vio.op == _READ and not self.shutdown_flags & NET_VC_SHUTDOWN_READ:
                reader_cont = self.read.vio.cont
                if self._signal_and_update(self.read, event) == EVENT_DONE:
                    return EVENT_DONE
            if inactivity:
                rearmed = self.next_inactivity_timeout_at
            else:
                rearmed = self.next_activity_timeout_at
            if (
                not rearmed
                and not self.closed
                and self.write.vio.op == _WRITE
                and not self.shutdown_flags & NET_VC_SHUTDOWN_WRITE
                and reader_cont is not self.write.vio.cont
                and writer_cont is self.write.vio.cont
            ):
                self._signal_and_update(self.write, event)
            return EVENT_DONE
        finally:
            for m in locked:
                m.unlock()

    # ------------------------------------------------------------------ freeing

    def free(self) -> None:
        """Close the fd and drop the VIOs (ATS's free_thread and clear). Idempotent. Once
        per connection, so its steps are written out.

        It also cuts the VC's reference cycles (its handler, a bound method; its EventIO;
        its VIOs' ``vc_server``, as ATS's clear), so that reference counting frees it now,
        not the cyclic collector later (which cost about a tenth of the CPU of a server
        taking a new connection per request). A VIO kept by its continuation then has no
        ``vc_server``, and its ``reenable`` does nothing, as in ATS."""
        ep = self.ep
        if ep.pd is not None:
            ep.stop()
        ep.data = None
        self.handler = _freed_handler
        end = self.splice_end
        if end is not None:
            self.splice_end = None
            end.splice.vc_released(self)
        fd = self.fd
        if fd >= 0:
            self.fd = -1
            if _lib_close(fd) < 0 and ffi.errno != errno.EINTR:
                log.error("close of fd %d failed: %s", fd, os.strerror(ffi.errno))
        r = self.read
        r.enabled = r.triggered = r.in_ready = False
        vio = r.vio
        vio.cont = vio.buffer = vio.vc_server = None
        vio.op = _NONE
        w = self.write
        w.enabled = w.triggered = w.in_ready = False
        vio = w.vio
        vio.cont = vio.buffer = vio.vc_server = None
        vio.op = _NONE
        if self.connect_timeout_event is not None:
            self._cancel_connect_timeout()
        self.action = None

    def __repr__(self) -> str:
        return f"<UnixNetVConnection fd={self.fd} closed={self.closed}>"


__all__ = [
    "NET_VC_SHUTDOWN_READ",
    "NET_VC_SHUTDOWN_WRITE",
    "NetState",
    "NetVCOptions",
    "UnixNetVConnection",
    "READ_WRITE",
]
