"""Splice: a blind tunnel whose bytes move natively (ATS's OneWayTunnel, pumped in C).

``Splice(cont, a, b)`` joins two VCs of one net thread: what ``a`` sends is written to ``b``
and what ``b`` sends to ``a``. ``Splice(cont, a)`` joins ``a`` to itself: an echo. Each
direction is a *pipe* (``struct ats_pipe``): a buffer of ``buffer_size`` bytes that the
source's reads fill and the sink's writes drain. Reading stops while the buffer is full
(back-pressure: memory stays bounded by a slow sink) and resumes when the sink takes bytes.
The buffer is held only while bytes wait for the sink: what the sink takes at once goes
through the thread's one scratch buffer, and a drained buffer goes back to the thread's
freelist, which the InactivityCop trims. An idle splice holds no buffer.

Why native. With a Python continuation, every transfer costs a READ_READY and a
WRITE_READY event, two VIO re-enables and two mutex round trips (DESIGN.md section 5); a
tunnel needs none of that logic per transfer. So each spliced socket's epoll registration
carries the address of its *end* (``struct ats_splice_end``, token bit 63 set), and the
NetHandler's one native call per pass (``ats_net_wait``) pumps the pipes of the ends that
became ready: read until EAGAIN or the buffer is full, write until EAGAIN, as the Python
path would, without returning to Python. Edge-trigger rules are the VC's: readiness is kept
per pipe side until EAGAIN (or a short read without a hang-up) clears it.

Python hears of an end only when a pipe stopped at its per-pass budget
(``proxy.config.net.max_read_per_pass``: pumped again on the next pass, so one flooding
client cannot starve the others), finished, or failed. ATS's machinery stays in charge of
everything else: the VCs stay open VCs of their NetHandler (stats, ``connections_currently
_open``, shutdown); their read and write VIOs belong to the splice, so the InactivityCop's
timeouts (``set_inactivity_timeout``, ``default_inactivity_timeout``, active timeouts) reach
it (the pumps list the ends whose bytes moved, once per cop period, and the cop pushes those
VCs' deadlines); the pumps' reads and writes are added to ``proxy.process.net.*`` at each
cop run and when a splice stops.

What an idle spliced connection holds: its VC, the ``Splice`` (each VC's ``splice_end``:
no Python object per end), and one native array of its ends, each with the pipe that reads
it (an echo's one end: 112 bytes, one allocation); no buffer, and no entry in any
per-thread collection.

Events to ``cont`` (with its mutex held, ``data`` the Splice):

- ``VC_EVENT_EOS``: every direction ended normally: its source reached EOF, every byte was
  written to the sink, and the sink was shut down for writing (the half-close passed on);
- ``VC_EVENT_ERROR``: a read or write failed (``splice.lerrno``, ``splice.error_vc``); no
  byte moves any more;
- ``VC_EVENT_INACTIVITY_TIMEOUT`` / ``VC_EVENT_ACTIVE_TIMEOUT``: from the cop, for either VC.

The usual answer to each is ``splice.close()``, which closes both VCs. Closing one of the
VCs directly (``do_io_close``) stops the splice too. From the net thread (the events above,
or any handler of it), a close stops the pumps at once. From another thread, the pump does
not take the owner's mutex: it sees the close before its next read or write, but one
already in progress on the net thread completes (at most a buffer's worth, or what the
socket takes). Once spliced, a VC's VIOs must not be used; bytes already read into a VIO's
buffer before the splice stay in that buffer, the caller's to send on (they are not carried
over). A VC shut down before the splice (``do_io_shutdown``) stays so: a pipe writing to a
shut write side fails at its first write (``VC_EVENT_ERROR``, EPIPE), and a shut read side
reads EOF at once (its direction ends, passing the half-close on).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

from ats_cffi import _fastio
from ats_cffi._native import ffi, lib
from ats_cffi.eventsystem import codes as _codes
from ats_cffi.eventsystem.continuation import (
    Continuation,
    check_continuation,
    deliver,
    freed_handler,
)
from ats_cffi.eventsystem.mutex import get_ident
from ats_cffi.eventsystem.vio import INT64_MAX
from ats_cffi.net import stats as st
from ats_cffi.net.eventio import READ_WRITE
from ats_cffi.net.netvc import UnixNetVConnection
from ats_cffi.net.tls.sslvc import SSLNetVConnection

if TYPE_CHECKING:
    from ats_cffi.net.nethandler import NetHandler

log: Final = logging.getLogger("ats.iocore_net")

EVENT_DONE: Final[int] = _codes.EVENT_DONE
VC_EVENT_ACTIVE_TIMEOUT: Final[int] = _codes.VC_EVENT_ACTIVE_TIMEOUT
VC_EVENT_EOS: Final[int] = _codes.VC_EVENT_EOS
VC_EVENT_ERROR: Final[int] = _codes.VC_EVENT_ERROR
VC_EVENT_INACTIVITY_TIMEOUT: Final[int] = _codes.VC_EVENT_INACTIVITY_TIMEOUT

#: Bit 63 of an epoll token: the rest is the address of a ``struct ats_splice_end``.
SPLICE_TAG: Final = lib.ATS_SPLICE_TAG

#: Bounds and default of a pipe's buffer (``buffer_size``), in bytes.
MIN_BUFFER_SIZE: Final = 1024
MAX_BUFFER_SIZE: Final = 64 << 20
DEFAULT_BUFFER_SIZE: Final = 65536

_MORE: Final[int] = lib.ATS_SPLICE_MORE
_DONE: Final[int] = lib.ATS_SPLICE_DONE
_ERROR: Final[int] = lib.ATS_SPLICE_ERROR
_REG_EVENTS: Final = READ_WRITE | lib.EPOLLET | lib.EPOLLRDHUP
_CTR_READS: Final[int] = lib.ATS_CTR_READS
_CTR_READ_BYTES: Final[int] = lib.ATS_CTR_READ_BYTES
_CTR_WRITES: Final[int] = lib.ATS_CTR_WRITES
_CTR_WRITE_BYTES: Final[int] = lib.ATS_CTR_WRITE_BYTES
_CTR_COUNT: Final[int] = lib.ATS_CTR_COUNT
# A pipe's ``done`` is the one field another thread may write (a close): C11 atomic, so it
# is set and read through these (one call for all of a splice's pipes), never as a field.
_splice_stop: Final = lib.ats_splice_stop
# The per-connection calls, made with the GIL held (_fastio_splice.c): each took 800 to
# 2,100 instructions through cffi, which releases the GIL around every call.
_splice_finished: Final = _fastio.splice_finished
_splice_take: Final = _fastio.splice_take
_splice_release: Final = _fastio.splice_release
_splice_setup: Final = _fastio.splice_setup
_splice_stop_report: Final = _fastio.splice_stop_report


def _address(cdata: Any) -> int:
    """The address a cffi pointer, array or function holds, as an int."""
    return int(ffi.cast("uintptr_t", cdata))


_fastio.splice_bind(
    (
        _address(ffi.addressof(lib, "ats_splice_setup")),
        _address(ffi.addressof(lib, "ats_splice_take")),
        _address(ffi.addressof(lib, "ats_splice_stop_report")),
        _address(ffi.addressof(lib, "ats_splice_release")),
        _address(ffi.addressof(lib, "ats_splice_finished")),
    )
)
_END_ARRAY: Final = ffi.typeof("struct ats_splice_end[]")
_END_SIZE: Final[int] = ffi.sizeof("struct ats_splice_end")
#: ``ats_splice_stop_report``'s output: each pipe's nread and nwritten (two pipes at most).
_REPORT: Final = ffi.typeof("uint64_t[4]")
_get_ident: Final = get_ident
_freed_handler: Final = freed_handler  # compiled, an imported name is looked up per use
_trim: Final = lib.ats_splice_trim
_moved: Final = lib.ats_splice_moved
# ``Splice.in_ready``: ends to pump (bit i: end i), and whether it is on the ready list.
_LISTED: Final[int] = 4


class SpliceDriver:
    """The spliced ends of one net thread: its NetHandler's ``splice``.

    The NetHandler calls it at two points of each pass: ``after_wait``, once
    ``epoll_wait``'s native part has pumped the ends that had events (it takes the status of
    those that need Python), and ``after_ready``, after the VCs' ready lists (it pumps the
    ends queued by ``kick``: just spliced, stopped at their read budget, or whose retry came
    due). Before it waits, the NetHandler reads ``ready`` (non-empty: do not sleep) and
    ``retry_due``. The InactivityCop calls ``before_cop`` at each of its runs. Only the
    thread's own code touches it.
    """

    __slots__ = (
        "nh",
        "ready",
        "retries",
        "retry_due",
        "moved_p",
        "report",
        "report_at",
        "counters_at",
    )

    def __init__(self, nh: NetHandler) -> None:
        self.nh = nh
        #: Splices with ends to pump (or whose status to take) on this pass.
        self.ready: list[Splice] = []
        #: Splices whose owner's mutex was busy; all due at ``retry_due`` (0.0: none).
        self.retries: list[Splice] = []
        self.retry_due = 0.0
        #: Where ``ats_splice_moved`` puts its list (the thread's: no copy).
        self.moved_p = ffi.new("uint64_t **")
        #: Where a splice stopped on this thread has its pipes reported (``Splice.stop``).
        self.report = ffi.new(_REPORT)
        self.report_at = _address(self.report)
        #: The address of the NetHandler's native counters (the pumps add to them).
        self.counters_at = _address(nh.pd.counters_c)

    def kick(self, splice: Splice, i: int) -> None:
        """Pump ``splice``'s end ``i`` (and take its status) on this pass or the next."""
        r = splice.in_ready
        splice.in_ready = r | (1 << i) | _LISTED
        if not r & _LISTED:
            self.ready.append(splice)

    def retry_later(self, splice: Splice) -> None:
        """``splice``'s owner's mutex is busy: its event again after ``net.retry_delay``
        (as ``NetHandler.retry_later`` for a VC side)."""
        if not self.retries:
            nh = self.nh
            self.retry_due = nh.clock() + nh.config.retry_delay / 1000.0
        self.retries.append(splice)

    def after_wait(self) -> None:
        """Take the status of the ends the native pass reported."""
        pd = self.nh.pd
        m: int = pd.nnotify_c[0]
        if not m:
            return
        notify = pd.notify
        for i in range(m):
            eio = pd.lookup(notify[i])
            if eio is not None:
                vc = eio.data
                splice: Splice | None = vc.splice_end
                if splice is not None:
                    splice.take(0 if vc is splice.a else 1, 0)

    def after_ready(self) -> None:
        """Pump the ends queued for this pass, the ones whose retry is due included."""
        if self.retries and self.retry_due <= self.nh.now:
            retries, self.retries = self.retries, []
            self.retry_due = 0.0
            for splice in retries:  # (its event goes through an end still spliced)
                self.kick(splice, 0 if splice.a.splice_end is splice else 1)
        if not self.ready:
            return
        ready, self.ready = self.ready, []
        for splice in ready:
            bits = splice.in_ready
            splice.in_ready = 0
            if bits & 1 and splice.a.splice_end is splice:
                splice.take(0, 1)
            b = splice.b
            if bits & 2 and b is not None and b.splice_end is splice:
                splice.take(1, 1)

    def fold_counters(self) -> None:
        """Add the native pumps' reads and writes to this thread's net stats."""
        nh = self.nh
        c = nh.pd.counters_c
        if c[_CTR_READS] or c[_CTR_WRITES]:
            stats = nh.stats
            stats[st.CALLS_TO_READ] += c[_CTR_READS]
            stats[st.READ_BYTES] += c[_CTR_READ_BYTES]
            stats[st.CALLS_TO_WRITE] += c[_CTR_WRITES]
            stats[st.WRITE_BYTES] += c[_CTR_WRITE_BYTES]
            for i in range(_CTR_COUNT):
                c[i] = 0

    def before_cop(self, now: float) -> None:
        """The InactivityCop's run: fold the counters, push the inactivity deadline of every
        spliced VC whose bytes moved (natively: no read or write step saw them) since the
        last run (the pumps listed their tokens), and free the thread's pipe buffers that
        no pipe needed since then."""
        self.fold_counters()
        _trim()
        p = self.moved_p
        n: int = _moved(p)
        if not n:
            return
        tokens = p[0]
        pd = self.nh.pd
        for i in range(n):
            eio = pd.lookup(tokens[i])
            if eio is not None:  # (a VC freed since has no EventIO any more)
                eio.data.net_activity(now)

    def close(self) -> None:
        """The NetHandler closes (``NetHandler.close``): fold the counters, and free the
        thread's pipe buffers. Those are per OS thread, and the close runs on the net
        thread as it ends (``EThread._release``, from its loop's ``finally``); called from
        another thread (an EThread that never started, released by ``join``), it must not
        free that thread's: no pipe of this handler ever ran there anyway."""
        self.fold_counters()
        if self.nh.thread.tid == _get_ident():
            lib.ats_splice_free_all()

    def start_io_failed(self, vc: UnixNetVConnection, err: int) -> None:
        """``vc``'s socket could not be registered: no byte will move on it."""
        splice: Splice | None = vc.splice_end
        if splice is not None:
            splice.fail(vc, err)

    def release(self, splice: Splice) -> None:
        """A VC of ``splice`` was freed (``NetHandler.free_netevent``): no pipe may touch its
        fd again. Once no VC of the splice is left, nothing reaches the splice any more:
        its pipes' buffers go back to this thread now (no pump runs on them any more), and
        its handler drops any event that still comes."""
        splice.vc_closed()
        splice.release_end()


def _check_splice(vcs: tuple[UnixNetVConnection, ...], buffer_size: Any) -> NetHandler:
    """``Splice``'s arguments checked: ``TypeError``/``ValueError``/``RuntimeError`` naming
    the bad one. The VCs' NetHandler (the calling thread's)."""
    for name, vc in zip(("a", "b"), vcs):
        if not isinstance(vc, UnixNetVConnection):
            raise TypeError(f"Splice: {name} must be a UnixNetVConnection")
    if type(buffer_size) is not int:
        raise TypeError("Splice: buffer_size must be an int")
    if not MIN_BUFFER_SIZE <= buffer_size <= MAX_BUFFER_SIZE:
        raise ValueError(
            f"Splice: buffer_size must be in {MIN_BUFFER_SIZE}..{MAX_BUFFER_SIZE}, "
            f"got {buffer_size}"
        )
    nh = vcs[0].nh
    for name, vc in zip(("a", "b"), vcs):
        if vc.closed or vc.fd < 0:
            raise RuntimeError(f"Splice: {name} is closed")
        if vc.nh is None or vc.connecting:
            raise RuntimeError(f"Splice: {name} is not connected on a net thread")
        if vc.nh is not nh:
            raise RuntimeError("Splice: a and b are on different net threads")
        if vc.splice_end is not None:
            raise RuntimeError(f"Splice: {name} is already spliced")
        if isinstance(vc, SSLNetVConnection):
            raise TypeError(
                f"Splice: {name} is a TLS connection: its socket carries records, not "
                "the bytes (move them through its VIOs)"
            )
    assert nh is not None
    if nh.thread.tid != _get_ident():
        raise RuntimeError("Splice: must be created on the VCs' net thread")
    return nh


class Splice(Continuation):
    """Joins ``a`` to ``b`` (or ``a`` to itself) natively; see the module doc.

    Create it on the VCs' net thread, in a handler (``cont``'s mutex held). ``ValueError`` /
    ``TypeError`` name a bad argument; ``RuntimeError`` if the VCs are closed, not on this
    net thread, not on the same one, still connecting, or already spliced.
    """

    def __init__(
        self,
        cont: Continuation,
        a: UnixNetVConnection,
        b: UnixNetVConnection | None = None,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
    ) -> None:
        check_continuation("Splice", cont)
        if b is a:
            b = None
        nh = _check_splice((a,) if b is None else (a, b), buffer_size)
        super().__init__(cont.mutex)
        self.cont = cont
        self.nh = nh
        self.lerrno = 0
        self.error_vc: UnixNetVConnection | None = None
        self.stopped = False
        self.closed = False
        #: An event for ``cont`` that could not be delivered yet (its mutex was busy).
        self.pending_event = 0
        # (No handler set: ``handle_event``. Two fields, not a tuple; no object per end.)
        self.a = a
        self.b = b
        #: The ends whose pump is due (bit i: end i), and ``_LISTED`` (SpliceDriver).
        self.in_ready = 0
        #: The native ends, each with the pipe that reads it (pipe i: end i's fd to end
        #: i+1's, mod n): a bytearray, one allocation, Python's (the native calls take it
        #: as it is: no address to compute). The VCs keep it alive (through their
        #: ``splice_end``) while the sockets are registered, and only the net thread drops
        #: the last reference (free_netevent), never during a pump. A pipe's buffer is
        #: native: taken from the thread's freelist only while bytes wait for the sink,
        #: given back as soon as none do (an idle splice holds no buffer), or at the release.
        self.ends = bytearray(_END_SIZE if b is None else 2 * _END_SIZE)
        for vc in self.vcs:
            # The VC's VIOs, taken by the splice with no buffer: it moves no byte itself.
            vc.do_io_read(self, INT64_MAX, None)
            vc.do_io_write(self, INT64_MAX, None)
        self._start(buffer_size)

    @property
    def c(self) -> Any:
        """The native ends as cffi sees them (``struct ats_splice_end[]``), over ``ends``."""
        return ffi.from_buffer(_END_ARRAY, self.ends, require_writable=True)

    @property
    def n(self) -> int:
        """The number of ends: 2, or 1 (an echo)."""
        return 1 if self.b is None else 2

    def _vc(self, i: int) -> UnixNetVConnection:
        b = self.b
        return b if i and b is not None else self.a

    def _start(self, buffer_size: int) -> None:
        """Set the pipes up from each VC's edge state (it hands its pending error over),
        then register the sockets to the native side."""
        n = self.n
        nh = self.nh
        state = [vc.start_splice(self) for vc in self.vcs]
        budget = min(nh.max_read_per_pass, 0xFFFFFFFF)
        tags = []
        for i in range(n):
            j = (i + 1) % n
            src_triggered, src_hup, src_error, _ = state[i]  # src_error: after its data
            src = self._vc(i)
            tags.append(
                _splice_setup(
                    self.ends, n, i, src.fd, self._vc(j).fd, buffer_size, budget, src_triggered,
                    src_hup, state[j][3], src_error, src.ep.token,
                )
            )  # fmt: skip
        driver = nh.splice
        pd = nh.pd
        for i in range(n):
            # EPOLL_CTL_MOD also re-arms the edges: readiness pending now is reported on the
            # next pass, to the native side. A VC whose ADD is still queued (just accepted)
            # has seen no event: the ADD reports its readiness to the native side, so its
            # end needs a pump now only to report an error it starts with.
            if not pd.modify(self._vc(i).fd, _REG_EVENTS, tags[i]) or state[i][2]:
                driver.kick(self, i)

    @property
    def vcs(self) -> tuple[UnixNetVConnection, ...]:
        """The spliced VCs: ``(a, b)``, or ``(a,)``."""
        b = self.b
        return (self.a,) if b is None else (self.a, b)

    @property
    def pipes(self) -> tuple[Any, ...]:
        """The native pipes (``struct ats_pipe *``): ``(a->b, b->a)``, or ``(a->a,)``;
        valid while the splice is (for tests and debugging)."""
        return tuple(ffi.addressof(self.c[i], "pipe") for i in range(self.n))

    # ------------------------------------------------------------------ the NetHandler side

    def take(self, i: int, pump: int) -> None:
        """Act on the status bits the native side left on end ``i`` (NetHandler thread),
        after pumping its pipes first if ``pump`` (its turn on the ready list)."""
        status: int = _splice_take(
            self.ends, i, pump and not self.stopped, self.nh.splice.counters_at
        )
        if self.stopped:
            if self.pending_event:
                self.deliver(self.pending_event)
            return
        if status & _ERROR:
            failed = self._stop()
            if failed:  # the first pipe that failed: its errno, and the end it failed on
                self.lerrno = failed & 0xFFFFFFFF
                self.error_vc = self._vc(failed >> 32)
            self.deliver(VC_EVENT_ERROR)
        elif status & _DONE and _splice_finished(self.ends, self.n):
            self.stop()
            self.deliver(VC_EVENT_EOS)
        elif status & _MORE:
            self.nh.splice.kick(self, i)

    def deliver(self, event: int) -> None:
        """Tell ``cont`` (try-lock; on failure, again after ``net.retry_delay``)."""
        m = self.mutex
        assert m is not None
        if not m.try_lock():
            self.pending_event = event
            self.nh.splice.retry_later(self)
            return
        self.pending_event = 0
        try:
            if not self.closed:
                self.tell(event)
        finally:
            m.unlock()

    def tell(self, event: int) -> None:
        try:
            deliver(self.cont, event, self)
        except Exception:
            log.exception("handler of %r raised on event %d: closing the splice", self, event)
            self.close()

    def handle_event(self, event: int = 0, data: Any = None) -> Any:
        """The VCs' events go to ``vc_event`` (no bound method is kept per splice for it);
        once the splice is released, to its ``freed_handler``."""
        h = self.handler
        if h is None:
            return self.vc_event(event, data)
        return h(event, data)

    def vc_event(self, event: int, vio: Any) -> int:
        """Events of the VCs' VIOs: the InactivityCop's timeouts (mutex held)."""
        if event in (VC_EVENT_INACTIVITY_TIMEOUT, VC_EVENT_ACTIVE_TIMEOUT) and not self.closed:
            self.tell(event)
        return EVENT_DONE

    # ------------------------------------------------------------------ life

    def stop(self) -> None:
        """Stop moving bytes (the VCs stay open). Idempotent."""
        if not self.stopped:
            self._stop()

    def _stop(self) -> int:
        """Stop the pipes, then bring the VIOs' ``ndone`` and (on the net thread, whose
        counters they are) the thread's net stats up to date: one native call reports the
        pipes. Returns what ``ats_splice_stop_report`` tells of the first failed pipe."""
        nh = self.nh
        on_thread = nh.thread.tid == _get_ident()
        if on_thread:
            out = nh.splice.report
            failed: int = _splice_stop_report(self.ends, self.n, nh.splice.report_at)
        else:
            out = ffi.new(_REPORT)
            failed = _splice_stop_report(self.ends, self.n, _address(out))
        self.stopped = True  # (after the native stop: vc_closed relies on it)
        a = self.a
        b = self.b
        a.read.ndone = out[0]
        if b is None:
            a.write.ndone = out[1]
        else:  # pipe 0 reads a and writes b, pipe 1 reads b and writes a
            b.write.ndone = out[1]
            b.read.ndone = out[2]
            a.write.ndone = out[3]
        if on_thread:
            nh.splice.fold_counters()
        return failed

    def fail(self, vc: UnixNetVConnection, err: int) -> None:
        """``vc`` can move no byte any more (its epoll registration failed): stop and tell
        ``cont`` ``VC_EVENT_ERROR`` (net thread)."""
        if self.stopped:
            return
        self.lerrno = err
        self.error_vc = vc
        self.stop()
        self.deliver(VC_EVENT_ERROR)

    def transferred(self) -> tuple[int, ...]:
        """Bytes written so far per direction: ``(a->b, b->a)``, or ``(a->a,)``."""
        return tuple(self.c[i].pipe.nwritten for i in range(self.n))

    def vc_closed(self) -> None:
        """A VC of the splice is being closed (by anyone): no pipe may touch its fd again
        (``stopped`` is set only once the pipes are)."""
        if not self.stopped:
            _splice_stop(self.c, self.n)
            self.stopped = True

    def release_end(self) -> None:
        """A VC of the splice was freed (``SpliceDriver.release``, net thread). Once none is
        left (a freed VC drops its ``splice_end``), nothing reaches the splice any more: its
        pipes' buffers go back, and its events go to ``freed_handler``. (No cycle is left to
        cut: a freed VC drops its VIOs' continuation too.)"""
        b = self.b
        if self.a.splice_end is not None or (b is not None and b.splice_end is not None):
            return
        _splice_release(self.ends, self.n)
        self.handler = _freed_handler

    def close(self) -> None:
        """Stop and close both VCs (with ``cont``'s mutex held, or on the net thread)."""
        if self.closed:
            return
        self.closed = True
        self.stop()
        for vc in self.vcs:
            vc.do_io_close()

    def __repr__(self) -> str:
        fds = ",".join(str(vc.fd) for vc in self.vcs)
        return f"<Splice fds={fds} moved={self.transferred()} stopped={self.stopped}>"


__all__ = ["DEFAULT_BUFFER_SIZE", "SPLICE_TAG", "Splice", "SpliceDriver"]
