"""NetHandler: the per-thread driver of every VC on one epoll (ATS's NetHandler), and the
InactivityCop that closes idle connections.

One pass (``wait_for_activity``, installed as the EThread's poll step):

0. the VCs whose continuation's mutex was busy (another thread held it) go back on the
   ready lists once ``net.retry_delay`` has passed (``retry_later``); until then the wait
   is bounded by that time, and nothing spins on the lock (the spliced ends' retries, kept
   by the thread's ``SpliceDriver``, bound it too);
1. ``process_enabled_list``: VCs re-enabled (or closed) from other threads move to the ready
   lists if ``enabled and triggered``, or are freed if ``closed``;
2. ``epoll_wait`` (``ats_net_wait``, after the deferred registrations are issued): timeout 0
   when a ready list is non-empty, else as long as the EThread allows (its next timer; its
   eventfd wakes it for cross-thread work). Events of spliced sockets (net/splice.py) are
   pumped natively inside that call; the thread's ``SpliceDriver`` takes the status of
   the ends that need Python (``splice.after_wait``);
3. dispatch each result by its EventIO type: READWRITE_VC sets ``triggered`` and queues the
   VC on the ready list of each side that would take a turn (a side that is off is queued
   by its reenable), and clears its ``in_cop`` (it is active); DNS_CONNECTION
   triggers the connection and refreshes its edge; ASYNC_SIGNAL drains the eventfd;
   NETACCEPT runs the listener's accept pass; READINESS (a level-triggered fd of the asyncio
   loop) hands the mask to its owner (``ats_cffi/asyncio/selector.py``);
4. ``process_ready_list``: each queued VC once — closed → freed; ``enabled and triggered`` →
   ``net_read_io`` / ``write_to_net``, every read side first, then the write sides (as in
   ATS: the replies of a pass go out together, see ``WRITE_BATCH_BYTES``; a large one goes
   out in its read's turn, ``WRITE_NOW_BYTES``). A VC that is
   still triggered after its turn is queued for the *next* pass, so one flooding VC cannot
   starve the others. Then the spliced ends that stopped at their read budget (or wait to
   deliver an event) get their turn (``splice.after_ready``).

Everything here runs on the handler's own thread; other threads reach it only through
``enqueue_enable`` (a locked list and the thread's eventfd).
"""

from __future__ import annotations

import errno
import logging
import math
import os
import threading
from typing import TYPE_CHECKING, Any, Final

from mypy_extensions import u8

from ats_cffi import _fastio
from ats_cffi._native import ffi, lib
from ats_cffi.eventsystem import codes as _codes
from ats_cffi.eventsystem.continuation import Continuation
from ats_cffi.eventsystem.ethread import EThread, this_ethread
from ats_cffi.eventsystem.ioblock import (
    IOBufferBlock,
    adopt_thread_pool,
    new_thread_pool,
    take_block,
    trim_pools,
)
from ats_cffi.eventsystem.mutex import ProxyMutex, get_ident
from ats_cffi.net import codes as _ncodes
from ats_cffi.net import stats as st
from ats_cffi.net.config import NetConfig, net_config
from ats_cffi.net.eventio import READ_WRITE, EventIO
from ats_cffi.net.poll import PollCont
from ats_cffi.net.queues import ConnectionQueues, OpenList
from ats_cffi.net.splice import SpliceDriver
from ats_cffi.net.stats import StatBlock, net_stats, tls_stats
from ats_cffi.net.throttle import ThrottleType, check_net_throttle
from ats_cffi.net.vcio import IOV_MAX, SPILL_SIZE, TLS_MAX_RECORD, sweep_kept

if TYPE_CHECKING:
    from ats_cffi.net.netvc import NetState, UnixNetVConnection

# Final: compiled, each use is a C static, not a lookup in this module's dict.
EVENT_DONE: Final[int] = _codes.EVENT_DONE
VC_EVENT_ACTIVE_TIMEOUT: Final[int] = _codes.VC_EVENT_ACTIVE_TIMEOUT
VC_EVENT_INACTIVITY_TIMEOUT: Final[int] = _codes.VC_EVENT_INACTIVITY_TIMEOUT
EVENTIO_ASYNC_SIGNAL: Final = _ncodes.EVENTIO_ASYNC_SIGNAL
EVENTIO_DNS_CONNECTION: Final = _ncodes.EVENTIO_DNS_CONNECTION
EVENTIO_NETACCEPT: Final = _ncodes.EVENTIO_NETACCEPT
EVENTIO_READ: Final = _ncodes.EVENTIO_READ
EVENTIO_READINESS: Final = _ncodes.EVENTIO_READINESS
EVENTIO_READWRITE_VC: Final = _ncodes.EVENTIO_READWRITE_VC

log: Final = logging.getLogger("ats.iocore_net")
cop_log: Final = logging.getLogger("ats.inactivity_cop")

_READ_BITS: Final[int] = lib.EPOLLIN | lib.EPOLLERR | lib.EPOLLHUP | lib.EPOLLRDHUP | lib.EPOLLPRI
_WRITE_BITS: Final[int] = lib.EPOLLOUT | lib.EPOLLERR | lib.EPOLLHUP
_HUP_BITS: Final[int] = lib.EPOLLRDHUP | lib.EPOLLHUP | lib.EPOLLERR
_RDHUP: Final = lib.EPOLLRDHUP
_ready_events: Final = _fastio.ready_events
_get_ident: Final = get_ident
_NET_HANDLER_RUN: Final[int] = st.NET_HANDLER_RUN
_OPEN: Final[int] = st.CONNECTIONS_CURRENTLY_OPEN
_READ_BYTES: Final[int] = st.READ_BYTES
#: How many bytes the read turns of one pass may bring in before the writes they enabled
#: go out: below it, a write side that its own VC's read turn enabled waits for the pass's
#: write sides, as in ATS; past it, it is written in that turn, while the bytes just read
#: are still in the CPU's cache (100 KiB x 100 echo: a pass would hold every connection's
#: message at once). Replies written together reach a peer that is still awake from the
#: first one: each write to a peer asleep in its wait makes the kernel wake it, an
#: interrupt to its CPU that the writer pays (1 KiB x 10 echo: about 0.3 such wake-ups a
#: round trip written at once, 0.13 written together, and ~1.5 us less system time).
WRITE_BATCH_BYTES: Final = 256 * 1024
#: A VC whose read turn brought this many bytes or more writes what its continuation enabled
#: in that turn, whatever the pass read: a large reply's bytes are still in the CPU's cache
#: (the read's copy out of the kernel put them there), where a reply held for the end of
#: the pass is copied back from further out; the wake-up saved by writing together is the
#: same for any size (10 KiB x 100 echo, A/B on one core: 0.92x the server CPU per round
#: trip; 1 KiB x 10, written together as before).
WRITE_NOW_BYTES: Final = 4096

#: Every fourth pass gives back the blocks that idle connections' buffers kept
#: (vcio.sweep_kept): a busy connection's stays on the list, looked at once per sweep.
_SWEEP_MASK: Final = 3

#: The EventProcessor slot holding each net thread's NetHandler (set by the processor).
NET_HANDLER_SLOT: int | None = None


def _takes_turn(vc: UnixNetVConnection, s: NetState, writing: bool) -> bool:
    """Whether side ``s`` of ``vc``, while triggered, has a turn to take: it is enabled, or
    the VC is a TLS one whose handshake moves on either side's edge, or (``writing``) a
    connect waiting for its write edge. The dispatch queues only such sides (and those of
    closed VCs, to free them); each turn asks again, as the side may have changed since."""
    return s.enabled or vc.tls_turns or (writing and vc.connecting)


def get_net_handler(thread: EThread | None = None) -> NetHandler:
    """The NetHandler of ``thread`` (default: the calling thread). ``RuntimeError`` if it is
    not a net thread."""
    t = thread if thread is not None else this_ethread()
    nh = None
    if t is not None and NET_HANDLER_SLOT is not None and NET_HANDLER_SLOT < len(t.slots):
        nh = t.slots[NET_HANDLER_SLOT]
    if nh is None:
        raise RuntimeError("get_net_handler: not a net thread (is net_processor started?)")
    return nh


class NetHandler(Continuation):
    """The net side of one EThread. Only its thread touches its lists (see module doc)."""

    def __init__(self, thread: EThread, config: NetConfig = net_config) -> None:
        super().__init__(ProxyMutex())
        self.thread = thread
        #: ``thread.tid``, read again at the start of each pass: what ``reenable`` compares
        #: with the calling thread (a typed field, not an attribute of the EThread looked up
        #: per call). The thread that runs a pass is the handler's until the next one (the
        #: calling thread's ident when the EThread has none: passes run by hand). The VCs'
        #: turns take their VIO's mutex as this thread (``ProxyMutex.try_lock_as``).
        self.tid: int = thread.tid or 0
        self.clock = thread.clock
        self.config = config
        #: The stat blocks as registered (retired at close; ``new_owned_block``).
        self._stats_owned = net_stats.new_owned_block()
        self._tls_stats_owned = tls_stats.new_owned_block()
        self.stats: StatBlock = self._stats_owned
        self.poll_cont = PollCont(ProxyMutex(), config.poll_timeout)
        self.pd = self.poll_cont.poll_descriptor
        self.read_ready_list: list[UnixNetVConnection] = []
        self.write_ready_list: list[UnixNetVConnection] = []
        self.read_enable_list: list[UnixNetVConnection] = []
        self.write_enable_list: list[UnixNetVConnection] = []
        self._enable_lock = threading.Lock()
        #: VC sides whose continuation's mutex another thread held: their turn comes again
        #: ``retry_delay`` ms later (``retry_later``), not on the next pass.
        self.retry_states: list[tuple[UnixNetVConnection, NetState]] = []
        self.retry_due = 0.0
        #: Every VC started here and not freed (net/queues.py). A VC's ``in_cop`` says the
        #: InactivityCop visits it on its next run: no event since the last one.
        self.open_list = OpenList()
        self.now = self.clock()
        self.max_read_per_pass: int = config.max_read_per_pass
        #: ``WRITE_BATCH_BYTES`` and ``WRITE_NOW_BYTES``, per handler (a test may change them).
        self.write_batch_bytes: int = WRITE_BATCH_BYTES
        self.write_now_bytes: int = WRITE_NOW_BYTES
        #: The passes run; the write sides whose step emptied their buffer, which keeps its
        #: block until a sweep finds it idle (vcio.keep_emptied, sweep_kept).
        self.passes = 0
        self.kept: list[NetState] = []
        # Native scratch of the byte moves (net/vcio.py), made once per thread: the C
        # helpers' out-parameter and iovec arrays.
        self.last = ffi.new("ssize_t *")
        self.iov_bases = ffi.new("char *[]", IOV_MAX)
        self.iov_offs = ffi.new("size_t[]", IOV_MAX)
        self.iov_lens = ffi.new("size_t[]", IOV_MAX)
        # ... and the TLS write's (a result and a retry size; a record gathered from small
        # blocks), and the thread's TLS counters (net/stats.py, tls_stats).
        self.tls_last = ffi.new("ssize_t[2]")
        self.tls_gather = ffi.new("char[]", TLS_MAX_RECORD)
        self.tls_stats: StatBlock = self._tls_stats_owned
        #: The thread's IOBuffer block freelist (ioblock.py), handed to the buffers by the
        #: byte moves; the thread's own from its first event (``start_net_event``).
        self.pool = new_thread_pool()
        #: The spare block a read spills into past the tail block's free space (vcio.py).
        self.spill: IOBufferBlock = take_block(SPILL_SIZE, self.pool)
        self.signal_io = EventIO(EVENTIO_ASYNC_SIGNAL, thread)
        #: This thread's spliced ends (net/splice.py).
        self.splice = SpliceDriver(self)
        #: ATS's keep-alive and active queues (net/queues.py).
        self.queues = ConnectionQueues(self)
        self.cop: InactivityCop | None = None
        self.set_handler(self.start_net_event)

    # ------------------------------------------------------------------ events

    def start_net_event(self, event: int, e: Any) -> int:
        """First event on the thread: from now on this handler runs one pass per call."""
        adopt_thread_pool(self.pool)
        self.set_handler(self.main_net_event)
        return EVENT_DONE

    def main_net_event(self, event: int, e: Any) -> int:
        """One non-blocking pass (for callers that drive the handler as an event)."""
        self.wait_for_activity(0)
        return EVENT_DONE

    # ------------------------------------------------------------------ lists

    def enqueue_ready(self, vc: UnixNetVConnection, s: NetState) -> None:
        """Queue ``vc`` for the next pass of its read or write side (own thread only)."""
        if not s.in_ready:
            s.in_ready = True
            if s is vc.read:
                self.read_ready_list.append(vc)
            else:
                self.write_ready_list.append(vc)

    def enqueue_enable(self, vc: UnixNetVConnection, s: NetState) -> None:
        """From another thread: hand ``vc`` to this thread and wake it."""
        with self._enable_lock:
            if not s.in_enabled:
                s.in_enabled = True
                if s is vc.read:
                    self.read_enable_list.append(vc)
                else:
                    self.write_enable_list.append(vc)
        self.thread.signal()

    def retry_later(self, vc: UnixNetVConnection, s: NetState) -> None:
        """``vc``'s side ``s`` could not take its VIO's mutex (another thread holds it): give
        it its turn again after ``net.retry_delay`` (DESIGN.md section 4). Queued on the
        ready list instead, it would make every pass a non-blocking one while the mutex is
        held: a net thread spinning on a lock. Until then it counts as queued (``in_ready``),
        so new edges and re-enables do not queue it again. A thread that re-takes the mutex
        back to back, with no gap, starves the VC for as long as it does so (each retry finds
        the mutex busy): hold a continuation's mutex briefly, as in ATS."""
        s.in_ready = True
        if not self.retry_states:  # the first retry of a batch sets when they all come due
            self.retry_due = self.clock() + self.config.retry_delay / 1000.0
        self.retry_states.append((vc, s))

    def process_retries(self) -> None:
        """The retries are due: back on the ready lists (once per pass, ``wait_for_activity``)."""
        states, self.retry_states = self.retry_states, []
        for vc, s in states:
            s.in_ready = False
            self.enqueue_ready(vc, s)  # its turn checks what it still has to do

    def process_enabled_list(self) -> None:
        if not self.read_enable_list and not self.write_enable_list:
            return
        with self._enable_lock:
            rl, self.read_enable_list = self.read_enable_list, []
            wl, self.write_enable_list = self.write_enable_list, []
            for vc in rl:
                vc.read.in_enabled = False
            for vc in wl:
                vc.write.in_enabled = False
        self._enabled(rl, True)
        self._enabled(wl, False)

    def _enabled(self, vcs: list[UnixNetVConnection], reading: bool) -> None:
        """VCs re-enabled or closed from another thread: free the closed ones, queue the
        others' side if it is enabled and triggered (and restart its inactivity clock)."""
        for vc in vcs:
            s = vc.read if reading else vc.write
            if vc.closed:
                if vc.recursion == 0:
                    self.free_netevent(vc)
            elif s.enabled:
                vc.rearm_inactivity(self)
                if s.triggered:
                    self.enqueue_ready(vc, s)

    def process_ready_list(self) -> None:
        """Each queued VC side once: read sides first, then write sides (those the read
        turns enabled among them). A write side that its VC's read turn enabled (an echo, a
        proxy's response) is written in that turn once the pass's reads brought in more than
        ``write_batch_bytes``, or that turn read ``write_now_bytes`` or more."""
        rl = self.read_ready_list
        if rl:
            self.read_ready_list = []
            self._turns(rl, True)
        wl = self.write_ready_list
        if wl:
            self.write_ready_list = []
            self._turns(wl, False)

    def _turns(self, vcs: list[UnixNetVConnection], reading: bool) -> None:
        # A VC whose turn raises (a bug, or a continuation that broke its buffers) is closed
        # on its own: the VCs after it on the list still get theirs.
        stats = self.stats
        batch_end = stats[_READ_BYTES] + self.write_batch_bytes
        now_bytes = self.write_now_bytes
        for vc in vcs:
            s = vc.read if reading else vc.write
            if not s.in_ready:
                continue
            s.in_ready = False
            try:
                if vc.closed:
                    self.free_netevent(vc)
                elif reading:
                    if s.triggered and _takes_turn(vc, s, False):
                        before = stats[_READ_BYTES]
                        vc.net_read_io(self)
                        w = vc.write
                        read = stats[_READ_BYTES]
                        if (
                            w.in_ready
                            and not vc.closed
                            and (read > batch_end or read - before >= now_bytes)
                        ):
                            # Its continuation enabled the write side, and this turn read a
                            # large message or the pass more than a batch: write now, not
                            # after the pass's reads.
                            w.in_ready = False
                            if w.triggered and _takes_turn(vc, w, True):
                                vc.write_to_net(self)
                elif s.triggered and _takes_turn(vc, s, True):
                    vc.write_to_net(self)
            except Exception:
                self.vc_failed(vc)

    def vc_failed(self, vc: UnixNetVConnection) -> None:
        """``vc``'s turn raised: log it and close the VC (its fd is freed)."""
        log.exception("net loop: processing %r raised: closing it", vc)
        try:
            if vc.closed:
                self.free_netevent(vc)
            else:
                vc.do_io_close(errno.EIO)
        except Exception:
            log.exception("net loop: closing %r raised", vc)

    # ------------------------------------------------------------------ the pass

    def wait_for_activity(self, timeout_ms: int) -> None:
        """One pass of the net loop (see the module doc); the EThread's poll step."""
        tid = self.thread.tid
        self.tid = tid if tid is not None else _get_ident()
        self.stats[_NET_HANDLER_RUN] += 1
        self.passes += 1
        if self.retry_states and self.retry_due <= self.clock():
            self.process_retries()
        self.process_enabled_list()
        splice = self.splice
        if self.read_ready_list or self.write_ready_list or splice.ready:
            timeout_ms = 0
        else:
            timeout_ms = self.bounded_wait(timeout_ms)
        n = self.poll_cont.do_poll(timeout_ms)
        self.now = self.clock()
        if n:
            self.dispatch(n)
        splice.after_wait()
        self.process_ready_list()
        splice.after_ready()
        if self.kept and not self.passes & _SWEEP_MASK:
            sweep_kept(self)

    def bounded_wait(self, timeout_ms: int) -> int:
        """The wait's timeout: at most ``poll_timeout``, and over when the first retry is due
        (of a VC side, or of a spliced end)."""
        limit: int = self.config.poll_timeout  # one lookup: the config is a plain object
        if timeout_ms > limit:
            timeout_ms = limit
        due = self.retry_due if self.retry_states else 0.0
        splice_due = self.splice.retry_due
        if splice_due and (not due or splice_due < due):
            due = splice_due
        if due:
            wait_ms = math.ceil((due - self.clock()) * 1000.0)
            if wait_ms < timeout_ms:
                timeout_ms = wait_ms if wait_ms > 0 else 0
        return timeout_ms

    def dispatch(self, n: int) -> None:
        # [eio, mask, ...]: the pass's events whose token is still registered (poll.py).
        pd = self.pd
        evs = _ready_events(pd.tokens, pd.masks, n, pd.slots, pd.slot_tokens)
        rl = self.read_ready_list
        wl = self.write_ready_list
        for i in range(0, len(evs), 2):
            eio: EventIO = evs[i]
            t = eio.type
            if t is EVENTIO_READWRITE_VC:
                vc: UnixNetVConnection = eio.data
                flags: int = evs[i + 1]
                if vc.in_cop and not vc.active_timeout_in:
                    # Active: it cannot be idle before the next cop run. A VC with an active
                    # timeout stays due, or a busy one would never be checked.
                    vc.in_cop = False
                # A side is queued only if it takes a turn (or its VC is closed): one that
                # is off waits for the reenable, which queues it while triggered.
                if flags & _READ_BITS:
                    s = vc.read
                    s.triggered = True
                    if flags & _HUP_BITS:
                        s.hup = True  # a short read no longer proves the socket drained
                    if not s.in_ready and (vc.closed or _takes_turn(vc, s, False)):
                        s.in_ready = True
                        rl.append(vc)
                if flags & _WRITE_BITS:
                    s = vc.write
                    s.triggered = True
                    if not s.in_ready and (vc.closed or _takes_turn(vc, s, True)):
                        s.in_ready = True
                        wl.append(vc)
            elif t is EVENTIO_ASYNC_SIGNAL:
                evfd = self.thread.evfd
                if evfd is not None:
                    evfd.read()  # the wake-up has done its job
            elif t is EVENTIO_DNS_CONNECTION:
                eio.data.trigger()
                eio.refresh(EVENTIO_READ)
            elif t is EVENTIO_NETACCEPT:
                eio.data.accept_fast_event(self, eio.fd)
            elif t is EVENTIO_READINESS:
                eio.data.readiness(eio.fd, evs[i + 1])

    # ------------------------------------------------------------------ VC life

    def start_io(self, vc: UnixNetVConnection, defer: bool = False) -> None:
        """Register ``vc``'s socket (once, for its life) and count it open.

        ``defer`` (the accept path): the ``EPOLL_CTL_ADD`` waits for this thread's next
        ``epoll_wait`` (``EventIO.start``), so that a VC closed before then never reaches the
        kernel's epoll set; if that ADD fails, ``start_io_failed`` tells the VC."""
        vc.nh = self
        vc.thread = self.thread
        vc.ep.start(self.pd, vc.fd, READ_WRITE, _RDHUP, defer)
        self.open_list.add(vc)
        if not vc.counted_open:
            vc.counted_open = True
            self.stats[_OPEN] += 1

    def count_connect(self, vc: UnixNetVConnection) -> None:
        """``connect_re`` on this thread: count ``vc`` open now, before its socket exists,
        so that the throttle sees it at once (``start_io`` does not count it again), unless
        the connections throttle refuses it (``connect_up`` then reports that)."""
        if not check_net_throttle(ThrottleType.CONNECT):
            vc.counted_open = True
            self.stats[_OPEN] += 1

    def free_unstarted(self, vc: UnixNetVConnection) -> None:
        """Free ``vc``, which never reached ``start_io`` (a connect cancelled or failed
        before), and uncount it if ``count_connect`` counted it."""
        if vc.counted_open:
            vc.counted_open = False
            self.stats[_OPEN] -= 1
        vc.free()

    def start_io_failed(self, vc: UnixNetVConnection, err: int) -> None:
        """The deferred registration of ``vc`` failed (ENOMEM, ENOSPC): no edge will ever be
        reported, so its read VIO gets ``VC_EVENT_ERROR`` with ``err`` when it is (or once
        it gets) enabled, and its writes go on until EAGAIN, then the timeouts apply."""
        log.error("epoll_ctl(ADD) of fd %d failed: %s", vc.fd, os.strerror(err))
        if vc.closed:
            return
        if vc.splice_end is not None:
            self.splice.start_io_failed(vc, err)
            return
        vc.lerrno = err
        vc.read.pending_error = u8(err)  # an errno: below 256
        vc.read.triggered = True
        vc.write.triggered = True
        if vc.read.enabled:
            self.enqueue_ready(vc, vc.read)
        if vc.write.enabled:
            self.enqueue_ready(vc, vc.write)

    def start_cop(self, vc: UnixNetVConnection) -> None:
        """Put ``vc`` under the InactivityCop (from its next refill on)."""
        self.open_list.add(vc)

    def free_netevent(self, vc: UnixNetVConnection) -> None:
        """ATS's close_UnixNetVConnection: unlist, unregister and close ``vc``. Idempotent."""
        self.open_list.remove(vc)
        if vc.counted_open:
            vc.counted_open = False
            self.stats[_OPEN] -= 1
        self.queues.remove(vc)
        vc.in_cop = False
        vc.read.in_ready = False
        vc.write.in_ready = False
        vc.next_inactivity_timeout_at = 0.0
        vc.next_activity_timeout_at = 0.0
        vc.inactivity_timeout_in = 0.0
        vc.active_timeout_in = 0.0
        # free() closes the fd right after: that removes it from the epoll set (or drops its
        # deferred registration), no EPOLL_CTL_DEL needed. Except for a spliced VC: its
        # registration carries the address of a struct Python is about to free, and the
        # kernel drops it only when the last reference to the socket goes (a child between
        # fork and exec may hold one): it is deleted for sure.
        end = vc.splice_end
        vc.ep.stop(end is None)
        vc.free()
        if end is not None:
            self.splice.release(end)

    # ------------------------------------------------------------------ thread life

    def close(self) -> None:
        """Free every VC still open and close the epoll fd (thread shutdown)."""
        for vc in self.open_list.vcs():
            vc.closed = vc.closed or 1
            self.free_netevent(vc)
        self.splice.close()
        self.signal_io.stop()
        self.poll_cont.close()
        net_stats.retire(self._stats_owned)
        tls_stats.retire(self._tls_stats_owned)


class InactivityCop(Continuation):
    """Runs every ``inactivity_check_frequency`` seconds on its NetHandler's thread.

    Visits only the VCs that had no epoll event since its last run (ATS's cop list: the open
    VCs whose ``in_cop`` each run sets at its end and an event clears; a flag in the VC, not
    a second set of VCs); try-locks each (failures are counted in
    ``inactivity_cop_lock_acquire_failure``), frees closed ones, applies
    ``default_inactivity_timeout`` to VCs with pending I/O and none set, and signals
    ``VC_EVENT_INACTIVITY_TIMEOUT`` / ``VC_EVENT_ACTIVE_TIMEOUT``. ``visited`` counts visits.
    Each run also trims the thread's IOBuffer block freelist (``ioblock.trim_pools``).
    """

    def __init__(self, nh: NetHandler) -> None:
        super().__init__(nh.mutex)
        self.nh = nh
        self.visited = 0
        self.runs = 0
        self.set_handler(self.check_inactivity)

    def check_inactivity(self, event: int, e: Any) -> int:
        nh = self.nh
        now = nh.clock()
        nh.now = now
        self.runs += 1
        stats = nh.stats
        default = nh.config.default_inactivity_timeout
        nh.splice.before_cop(now)
        trim_pools()  # the IOBuffer blocks not needed since the last run go back
        nh.queues.manage_keep_alive_queue()
        for vc in nh.open_list.vcs():  # a snapshot: one VC's turn may free others
            if not vc.in_cop:
                continue  # an event since the last run (or opened since, or freed)
            vc.in_cop = False
            self.visited += 1
            m = vc.mutex
            if not m.try_lock():  # type: ignore[union-attr]
                stats[st.INACTIVITY_COP_LOCK_ACQUIRE_FAILURE] += 1
                continue
            try:
                if vc.closed:
                    if vc.recursion == 0:
                        nh.free_netevent(vc)
                else:
                    self.check_vc(vc, now, default, e)
            finally:
                m.unlock()  # type: ignore[union-attr]
        for vc in nh.open_list:
            vc.in_cop = True
        return EVENT_DONE

    def check_vc(self, vc: UnixNetVConnection, now: float, default: Any, e: Any) -> None:
        """One open VC's turn (its mutex held): apply the default inactivity timeout, and
        signal the timeout that expired, if any."""
        stats = self.nh.stats
        if not vc.next_inactivity_timeout_at and default > 0 and vc.io_pending():
            cop_log.debug("vc %r: applying the default inactivity timeout %s", vc, default)
            vc.inactivity_timeout_in = default
            vc.next_inactivity_timeout_at = now + default
            stats[st.DEFAULT_INACTIVITY_TIMEOUT_APPLIED] += 1
        if vc.next_inactivity_timeout_at and vc.next_inactivity_timeout_at < now:
            vc.handle_event(VC_EVENT_INACTIVITY_TIMEOUT, e)
        elif vc.next_activity_timeout_at and vc.next_activity_timeout_at < now:
            vc.handle_event(VC_EVENT_ACTIVE_TIMEOUT, e)
