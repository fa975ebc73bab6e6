"""UnixNetVConnection: a TCP connection driven by its thread's NetHandler through VIOs.

What a connection is to its users, and the state flags every step below keeps, are in
``netvconnection.py`` (NetVConnection, NetState). This module is how a socket's VC moves:
the read and write steps the NetHandler runs (``net_read_io``, ``write_to_net``: the bytes
move in ``vcio.py``; here is what they mean: VIO progress, events, the flags), the signals
to the continuation, closing and freeing, and the timeouts the InactivityCop
(``nethandler.py``) hands to ``main_event``. An outgoing connect until ``NET_EVENT_OPEN`` is
``connect.py``'s; a spliced VC's bytes move natively (``splice.py``, entered through
``start_splice``, left through its end's ``vc_closed``).
"""

from __future__ import annotations

import errno
import logging
import os
from typing import TYPE_CHECKING, Any, Final

from ats_cffi import _fastio
from ats_cffi import sys as _sys
from ats_cffi._native import ffi, lib
from ats_cffi.eventsystem import codes as _codes
from ats_cffi.eventsystem.continuation import Continuation, deliver, freed_handler
from ats_cffi.eventsystem.ethread import on_event_thread
from ats_cffi.eventsystem.iobuffer import IOBufferReader, MIOBuffer
from ats_cffi.eventsystem.mutex import ProxyMutex, get_ident
from ats_cffi.eventsystem.vio import VIO, VIOOp
from ats_cffi.net import stats as st
from ats_cffi.net.config import INT_RECORD_MAX, SOCK_OPT_LINGER_ON
from ats_cffi.net.connect import ConnectAction
from ats_cffi.net.eventio import READ_WRITE
from ats_cffi.net.netvconnection import (
    NET_VC_SHUTDOWN_READ,
    NET_VC_SHUTDOWN_WRITE,
    NetState,
    NetVConnection,
)
from ats_cffi.net.options import NetVCOptions
from ats_cffi.net.vcio import drop_kept, keep_emptied, read_into_buffer, write_from_reader

if TYPE_CHECKING:
    from ats_cffi.net.nethandler import NetHandler
    from ats_cffi.net.splice import Splice

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
_AGAIN: Final[int] = _sys.AGAIN
_ECONNRESET: Final[int] = errno.ECONNRESET
_get_ident: Final = get_ident
_lib_close: Final = lib.close
_close_fd: Final = _fastio.close_fd
# Bound once: compiled, a plain imported name is looked up in the module's dict on every use.
_ConnectAction: Final = ConnectAction
_freed_handler: Final = freed_handler
_INT_RECORD_MAX: Final[int] = INT_RECORD_MAX

# Events that close a VC whose VIO has no continuation to tell.
_CLOSING_EVENTS: Final = frozenset(
    (VC_EVENT_EOS, VC_EVENT_ERROR, VC_EVENT_INACTIVITY_TIMEOUT, VC_EVENT_ACTIVE_TIMEOUT)
)


class UnixNetVConnection(NetVConnection):
    """A connection on one net thread. Events to the read VIO's continuation:
    ``VC_EVENT_READ_READY``, ``READ_COMPLETE``, ``EOS``, ``ERROR`` (``vc.lerrno``),
    ``INACTIVITY_TIMEOUT``, ``ACTIVE_TIMEOUT``; to the write VIO's: ``WRITE_READY``,
    ``WRITE_COMPLETE``, ``ERROR`` and the timeouts."""

    __slots__ = ()

    def __init__(self, options: Any = None) -> None:
        """``TypeError`` unless ``options`` is NetVCOptions or None."""
        super().__init__(options)

    def handle_event(self, event: int = 0, data: Any = None) -> Any:
        """The InactivityCop's timeouts go to ``main_event`` (no bound method is kept per VC
        for it); once the VC is freed, to its ``freed_handler``."""
        h = self.handler
        if h is None:
            return self.main_event(event, data)
        return h(event, data)

    def reenable_re(self, vio: VIO) -> None:
        """Re-enable and, on the VC's thread, process the VIO at once (ATS's reenable_re)."""
        self.reenable(vio)
        nh = self.nh
        # On the thread of the handler's pass (its ``tid``, which the turn's mutex is taken
        # as): the turn runs now; otherwise the reenable above queued it.
        if nh is not None and nh.tid == _get_ident() and not self.closed:
            s = self._state_of(vio)
            if s.enabled and s.triggered:
                if s is self.read:
                    self.net_read_io(nh)
                else:
                    self.write_to_net(nh)

    # ------------------------------------------------------------------ closing

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
        if type(alerrno) is not int and (isinstance(alerrno, bool) or not isinstance(alerrno, int)):
            raise TypeError(f"do_io_close: alerrno must be an int, not {type(alerrno).__name__}")
        err: int = alerrno  # an int (checked above): compared as one from here
        if not -1 <= err <= _INT_RECORD_MAX:
            raise ValueError(f"do_io_close: alerrno must be -1 or an errno, got {err}")
        if self.closed:
            return
        nh = self.nh
        if nh is not None and nh.tid != _get_ident():
            held: list[ProxyMutex] = []
            try:
                for s in (self.read, self.write):
                    m = s.mutex
                    if m is None or m in held:
                        continue
                    if not m.try_lock():
                        if on_event_thread():
                            continue  # do not wait (doc): close without it
                        m.lock()
                    held.append(m)
                self._close_locked(err, nh, False)
            finally:
                for m in reversed(held):
                    m.unlock()
            return
        drop_kept(self.write)  # on the VC's thread, by its write VIO's continuation
        self._close_locked(err, nh, self.recursion == 0)

    def _close_locked(self, alerrno: int, nh: NetHandler | None, close_inline: bool) -> None:
        if self.closed:
            return
        self.read.quiet()
        self.write.quiet()
        if alerrno != 0 and alerrno != -1:
            self.lerrno = alerrno
        if self.splice_end is not None:
            self.splice_end.vc_closed()  # its pipes stop touching this fd now
        # Mark closed last: another thread that sees it set sees a quiet VC.
        self.closed = 1 if alerrno == -1 else -1
        if close_inline:
            if nh is not None:
                nh.free_netevent(self)
            else:
                self.free()
        elif nh is not None and nh.tid != _get_ident():
            nh.enqueue_enable(self, self.read)  # freed on its own thread's next pass

    # ------------------------------------------------------------------ signals

    def _signal_and_update(self, s: NetState, event: int) -> int:
        """Deliver ``event`` to the VIO's continuation; free the VC if it was closed and no
        other signal of it is on the stack. EVENT_DONE when the VC is gone."""
        vio = s
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

    def _disable(self, s: NetState, other: NetState) -> None:
        # The inactivity clock stops only when no VIO has work left: a VIO held back by
        # back-pressure or by an empty write buffer is idle, and may time out. (After nearly
        # every write the reader is empty: io_pending only when the other side is off too.)
        if not other.enabled and not self.io_pending():
            self.next_inactivity_timeout_at = 0.0
        s.enabled = False
        s.in_ready = False

    def _take_turn(
        self, nh: NetHandler, s: NetState, op: int, other: NetState
    ) -> ProxyMutex | None:
        """The VIO's mutex, taken for side ``s``'s turn. None when the side has nothing to do
        (it is disabled) or another thread holds the mutex (the turn is retried later)."""
        vio = s
        if not s.enabled or vio.op != op:
            self._disable(s, other)
            return None
        m = vio.mutex
        assert m is not None  # an active VIO holds its continuation's mutex (or the VC's)
        if not m.try_lock_as(nh.tid):  # the pass runs on the handler's thread
            nh.retry_later(self, s)
            return None
        return m

    # ------------------------------------------------------------------ read path

    def net_read_io(self, nh: NetHandler) -> None:
        """Read what the socket has into the read VIO's buffer and signal the continuation
        (ATS's read_from_net). Called by the NetHandler for a VC enabled and triggered."""
        s = self.read
        m = self._take_turn(nh, s, _READ, self.write)
        if m is None:
            return
        vio = s
        try:
            err = s.pending_error
            if err:
                s.pending_error = 0
                s.triggered = False
                if err == _ECONNRESET:
                    self._signal_done(s, VC_EVENT_EOS, nh)
                else:
                    self._signal_error(s, err, nh)
                return
            limit = vio.nbytes - vio.ndone
            if limit <= 0:
                self._disable(s, self.write)
                return
            if limit > nh.max_read_per_pass:
                limit = nh.max_read_per_pass
            buf: MIOBuffer = vio.buffer  # type: ignore[assignment]
            total, last = self.read_bytes(nh, buf, limit)
            if total:
                self._read_signal_and_update(nh, s, m, total, last)
            else:
                self._read_nothing(nh, s, last)
        finally:
            m.unlock_as(nh.tid)

    def read_bytes(self, nh: NetHandler, buf: MIOBuffer, limit: int) -> tuple[int, int]:
        """Move up to ``limit`` bytes from the socket into ``buf`` (vcio.py): ``(moved,
        last)``; into the thread's spare block too from the first read only after a step
        that brought a block or more (``NetState.spill_first``). An SSLNetVConnection
        decrypts instead (net/tls/sslvc.py)."""
        s = self.read
        total, last = read_into_buffer(nh, self.fd, buf, limit, not s.hup, None, s.spill_first)
        if total:
            s.spill_first = total >= buf.block_size
        return total, last

    def write_bytes(self, nh: NetHandler, reader: IOBufferReader, towrite: int) -> tuple[int, int]:
        """Move ``towrite`` bytes of ``reader`` to the socket (vcio.py): ``(moved, last)``.
        An SSLNetVConnection encrypts instead."""
        return write_from_reader(nh, self.fd, reader, towrite)

    def _read_signal_and_update(
        self, nh: NetHandler, s: NetState, m: ProxyMutex, total: int, last: int
    ) -> None:
        """``total`` bytes were read: count them, then ``READ_COMPLETE`` or ``READ_READY``,
        and queue the side again while the socket may hold more."""
        vio = s
        vio.ndone += total
        self.net_activity(nh.now)
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
        if vio.mutex is not m:  # handed to another continuation: take its mutex
            self._reschedule(s, nh)
            return
        buf: MIOBuffer | None = vio.buffer  # type: ignore[assignment]
        if (
            vio.nbytes - vio.ndone <= 0
            or not s.enabled
            or vio.op != _READ
            or buf is None
            or not buf.has_room()
        ):
            self._disable(s, self.write)
            return
        if s.pending_error or last == 0:
            s.triggered = True
        self._reschedule(s, nh)

    def _read_nothing(self, nh: NetHandler, s: NetState, last: int) -> None:
        """A read step that moved no byte: drained, EOS, an error, or no room to read into."""
        if last == _AGAIN:
            s.triggered = False
            s.in_ready = False
        elif last == 0 or last == -_ECONNRESET:
            s.triggered = False
            self._signal_done(s, VC_EVENT_EOS, nh)
        elif last < 0:
            s.triggered = False
            self._signal_error(s, -last, nh)
        else:  # back-pressure: wait for reenable
            self._disable(s, self.write)

    # ------------------------------------------------------------------ write path

    def write_to_net(self, nh: NetHandler) -> None:
        """Write what the write VIO's reader holds to the socket and signal the continuation.

        Called by the NetHandler for a VC that is enabled and triggered (or connecting: the
        connect's first write edge goes to its ConnectAction)."""
        if self.connecting:
            action: ConnectAction = self.action  # type: ignore[assignment]
            action.complete(nh)
            return
        s = self.write
        m = self._take_turn(nh, s, _WRITE, self.read)
        if m is None:
            return
        vio = s
        try:
            towrite, signalled = self._write_amount(nh, s, m)
            if towrite > 0:
                reader: IOBufferReader = vio.buffer  # type: ignore[assignment]
                total, last = self.write_bytes(nh, reader, towrite)
                keep_emptied(nh, s, reader, total)  # a small message's block stays
                self._write_signal_and_update(nh, s, m, total, last, signalled)
        finally:
            m.unlock_as(nh.tid)

    def _write_amount(self, nh: NetHandler, s: NetState, m: ProxyMutex) -> tuple[int, bool]:
        """How many bytes this write step may write, and whether ``WRITE_READY`` went first.

        It goes first while the VIO wants more than the buffer holds and the buffer has room
        (the continuation may add to it now). 0: nothing to write (the side is disabled), or
        that signal closed the VC or handed the VIO over (it is queued for its new owner)."""
        vio = s
        ntodo = vio.nbytes - vio.ndone
        if ntodo <= 0:
            self._disable(s, self.read)
            return 0, False
        reader: IOBufferReader = vio.buffer  # type: ignore[assignment]
        w = reader.writer
        if w is None:  # the continuation deallocated the reader of a live write VIO
            log.error("%r: the write VIO's reader was deallocated: VC_EVENT_ERROR", self)
            self._signal_error(s, errno.EINVAL, nh)
            return 0, False
        towrite = reader.read_avail()
        signalled = False
        if towrite < ntodo and not w.high_water():
            if self._signal_and_update(s, VC_EVENT_WRITE_READY) != EVENT_CONT:
                return 0, False
            if vio.mutex is not m:
                self._reschedule(s, nh)
                return 0, False
            reader = vio.buffer  # type: ignore[assignment]
            ntodo = vio.nbytes - vio.ndone
            if not s.enabled or vio.op != _WRITE or reader is None or ntodo <= 0:
                self._disable(s, self.read)
                return 0, False
            signalled = True
            towrite = reader.read_avail()
        if towrite > ntodo:
            towrite = ntodo
        if towrite <= 0:
            self._disable(s, self.read)
        return towrite, signalled

    def _write_signal_and_update(
        self, nh: NetHandler, s: NetState, m: ProxyMutex, total: int, last: int, signalled: bool
    ) -> None:
        """``total`` bytes were written: count them, then ``WRITE_COMPLETE``, an error, or
        ``WRITE_READY`` (unless sent before the write and the buffer is still full), and
        queue the side again while its reader holds more."""
        vio = s
        if total > 0:
            vio.ndone += total
            self.net_activity(nh.now)
        if last < 0:
            s.triggered = False
            if last == _AGAIN:
                s.in_ready = False
            else:
                self._signal_error(s, -last, nh)
            return
        if vio.nbytes - vio.ndone <= 0:
            self._signal_done(s, VC_EVENT_WRITE_COMPLETE, nh)
            return
        reader: IOBufferReader = vio.buffer  # type: ignore[assignment]
        w = reader.writer
        if not signalled or (w is not None and not w.high_water()):
            if self._signal_and_update(s, VC_EVENT_WRITE_READY) != EVENT_CONT:
                return
            if vio.mutex is not m:
                self._reschedule(s, nh)
                return
        reader = vio.buffer  # type: ignore[assignment]
        if vio.op != _WRITE or reader is None or not reader.read_avail():
            self._disable(s, self.read)
            return
        self._reschedule(s, nh)

    # ------------------------------------------------------------------ hand-overs

    def signal_action(self, cont: Continuation, event: int) -> None:
        """Hand this VC to the continuation of its accept or connect (``NET_EVENT_ACCEPT`` /
        ``NET_EVENT_OPEN``), whose mutex the caller holds. A handler that raises gets the VC
        closed; the caller frees it once no handler of it is on the stack."""
        self.recursion += 1
        try:
            deliver(cont, event, self)
        except Exception:
            log.exception("handler of event %d raised: closing the VC", event)
            self.do_io_close()
        finally:
            self.recursion -= 1

    def connected(self, nh: NetHandler) -> None:
        """After ``NET_EVENT_OPEN`` (connect.py): free the VC if its new owner closed it;
        else keep the connect's write edge, the socket's first, for a write VIO."""
        if self.closed:
            if self.recursion == 0:
                nh.free_netevent(self)
            return
        self._reschedule(self.write, nh)
        self._reschedule(self.read, nh)

    def start_splice(self, splice: Splice) -> tuple[bool, bool, int, bool]:
        """From now on ``splice`` (splice.py) moves this VC's bytes natively; it has
        taken both VIOs, with no buffer. Returns the edge state its pipes start from: read
        triggered, hang-up seen, the error a read found after its data (handed over: the VC
        will not deliver it), write triggered."""
        r = self.read
        state = (r.triggered, r.hup, r.pending_error, self.write.triggered)
        r.pending_error = 0
        self.splice_end = splice
        return state

    # ------------------------------------------------------------------ timeouts

    def main_event(self, event: int, e: Any) -> int:
        """Timeouts from the InactivityCop: to the reader, then (if it did not re-arm the
        timeout and does not also own the write VIO) to the writer."""
        if event not in (VC_EVENT_INACTIVITY_TIMEOUT, VC_EVENT_ACTIVE_TIMEOUT):
            return EVENT_DONE
        nh = self.nh
        if nh is None:
            return EVENT_DONE
        rm = self.read.mutex if self.read.op == _READ else None
        wm = self.write.mutex if self.write.op == _WRITE else None
        locked = []
        try:
            for m in (rm, wm):
                if m is not None:
                    if not m.try_lock():
                        return EVENT_CONT  # try again on the next cop run
                    locked.append(m)
            if self.closed:
                nh.free_netevent(self)
            elif self._timeout_due(nh, event == VC_EVENT_INACTIVITY_TIMEOUT):
                self._signal_timeout(event)
            return EVENT_DONE
        finally:
            for m in locked:
                m.unlock()

    def _timeout_due(self, nh: NetHandler, inactivity: bool) -> bool:
        """The deadline still passed (a continuation holding its own mutex, on another
        thread, may have re-armed or cancelled it since the cop saw it): clear and count it."""
        due = self.next_inactivity_timeout_at if inactivity else self.next_activity_timeout_at
        if not due or due >= nh.now:
            return False
        if inactivity:
            self.next_inactivity_timeout_at = 0.0
            nh.stats[st.INACTIVITY_TIMEOUTS] += 1
        else:
            self.next_activity_timeout_at = 0.0
            nh.stats[st.ACTIVE_TIMEOUTS] += 1
        return True

    def _signal_timeout(self, event: int) -> None:
        inactivity = event == VC_EVENT_INACTIVITY_TIMEOUT
        reader_cont = None
        writer_cont = self.write.cont
        if self.read.op == _READ and not self.shutdown_flags & NET_VC_SHUTDOWN_READ:
            reader_cont = self.read.cont
            if self._signal_and_update(self.read, event) == EVENT_DONE:
                return
        rearmed = self.next_inactivity_timeout_at if inactivity else self.next_activity_timeout_at
        if (
            not rearmed
            and not self.closed
            and self.write.op == _WRITE
            and not self.shutdown_flags & NET_VC_SHUTDOWN_WRITE
            and reader_cont is not self.write.cont
            and writer_cont is self.write.cont
        ):
            self._signal_and_update(self.write, event)

    # ------------------------------------------------------------------ freeing

    def free(self) -> None:
        """Close the fd and drop the VIOs (ATS's free_thread and clear). Idempotent. Once
        per connection, so its steps are written out.

        It also cuts the VC's reference cycles (its EventIO; its VIOs' ``vc_server``, as
        ATS's clear), so that reference counting frees it now, not the cyclic collector
        later (which cost about a tenth of the CPU of a server taking a new connection per
        request). A VIO kept by its continuation then has no ``vc_server``, and its
        ``reenable`` does nothing, as in ATS. An event that still comes goes to
        ``freed_handler``."""
        ep = self.ep
        if ep.pd is not None:
            ep.stop()
        ep.data = None
        self.handler = _freed_handler
        self.splice_end = None
        fd = self.fd
        if fd >= 0:
            self.fd = -1
            # (With the GIL held, as a close cannot block, unless SO_LINGER is set.)
            if self.options.sockopt_flags & SOCK_OPT_LINGER_ON:
                err = ffi.errno if _lib_close(fd) < 0 else 0
            else:
                err = _close_fd(fd)
            if err and err != errno.EINTR:
                log.error("close of fd %d failed: %s", fd, os.strerror(err))
        self.read.clear()
        self.write.clear()
        action = self.action
        if action is not None:
            self.action = None
            if type(action) is _ConnectAction:  # (a pointer compare, compiled)
                action.cancel_timeout()


__all__ = [
    "NET_VC_SHUTDOWN_READ",
    "NET_VC_SHUTDOWN_WRITE",
    "NetState",
    "NetVCOptions",
    "UnixNetVConnection",
    "READ_WRITE",
]
