"""Dedicated accept threads (``accept_threads > 0``): ATS's ``acceptLoopEvent`` and
``do_blocking_accept``.

Each thread takes the whole backlog per native call (up to ``ACCEPT_BATCH``) and blocks in
``poll`` while it is empty; the listen socket stays non-blocking, and ``close_listener``'s
shutdown wakes the ``poll``. Each new VC is assigned round-robin to a net thread (or to the
one ``target`` thread: an asyncio loop's, whose servers' accept threads are their own
EThreads, not the event processor's), and each
net thread gets its share of a batch through its inbox (``_AcceptInbox``): one
``schedule_imm_signal``, whose handler starts their IO there (``NetAccept.start_vcs``),
while none is pending; later batches join the pending one. A resource error sleeps
``throttle_delay`` ms: the thread is the listener's own, nobody else waits on it.
"""

from __future__ import annotations

import errno
import logging
import select
import threading
import time
from typing import TYPE_CHECKING, Any

from ats_cffi.eventsystem.codes import EVENT_IMMEDIATE
from ats_cffi.eventsystem.continuation import Continuation
from ats_cffi.eventsystem.ethread import DEDICATED, EThread
from ats_cffi.eventsystem.event import Event
from ats_cffi.eventsystem.mutex import ProxyMutex
from ats_cffi.net import stats as st
from ats_cffi.net.accept_errors import FATAL, RESOURCE
from ats_cffi.net.config import ACCEPT_BATCH, net_config
from ats_cffi.net.netvc import UnixNetVConnection
from ats_cffi.net.stats import StatBlock, net_stats

if TYPE_CHECKING:
    from ats_cffi.eventsystem.processor import EventProcessor
    from ats_cffi.net.accept import NetAccept
    from ats_cffi.net.nethandler import NetHandler

log = logging.getLogger("ats.iocore_net_accept")
_EAGAIN = errno.EAGAIN


class AcceptThreads:
    """A listener's dedicated accept threads and their inboxes on the net threads."""

    def __init__(self, na: NetAccept) -> None:
        self.na = na
        self.threads: list[EThread] = []
        #: The hand-off per net thread (``_AcceptInbox``), made on first use.
        self.inboxes: dict[EThread, _AcceptInbox] = {}
        #: The one NetHandler every VC goes to (an asyncio loop's), or None: round-robin
        #: over the net processor's threads.
        self.target: NetHandler | None = None

    def start(self, ep: EventProcessor | None, n_threads: int, target: NetHandler | None) -> None:
        """Start ``n_threads`` accept threads on the listen socket: ``ep``'s dedicated
        threads handing VCs to its net threads, or, with ``target``, threads of their own
        handing every VC to ``target``'s thread (joined by ``stop``)."""
        self.target = target
        for i in range(n_threads):
            port = self.na.port
            cont = Continuation(handler=self.na.accept_loop_event)
            name = f"[ACCEPT {i}:{port}]"
            if target is None:
                assert ep is not None
                self.threads.append(ep.spawn_thread(cont, name))
                continue
            t = EThread(DEDICATED, -1, i, target.thread.clock, name)
            self.threads.append(t)
            t.start(oneevent=Event(cont, EVENT_IMMEDIATE))

    def run(self) -> None:
        """Body of an accept thread: ``do_blocking_accept`` with a stat block of its own."""
        stats = net_stats.new_block()
        try:
            self.do_blocking_accept(stats)
        finally:
            net_stats.retire(stats)

    def do_blocking_accept(self, stats: StatBlock) -> None:
        """Until cancelled: take the backlog, hand the VCs off, wait (module doc)."""
        na = self.na
        fd = na.server_fd
        ep = na.processor.event_processor if na.processor is not None else None
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        wait = poller.poll
        while not na.action.cancelled:
            fds, err = na.accept_batch(fd, ACCEPT_BATCH)
            if fds and not self.hand_off(na.make_vcs(fds, stats), ep):
                return
            if err == 0:
                continue  # the batch was full: more may be waiting
            if err == _EAGAIN:
                try:
                    wait()
                except InterruptedError:
                    pass
                continue
            if na.action.cancelled:
                return
            seriousness = na.accept_error(err, stats)
            if seriousness == RESOURCE:
                time.sleep(net_config.throttle_delay / 1000.0)  # a dedicated thread
            elif seriousness == FATAL:
                return

    def hand_off(self, vcs: list[UnixNetVConnection], ep: EventProcessor | None) -> bool:
        """Assign each VC round-robin to a net thread and put each chosen thread's share in
        its inbox. False (VCs closed) if there is no net thread to give them to."""
        if not vcs:
            return True
        etype = self.na.opt.etype
        shares: dict[EThread, list[UnixNetVConnection]] = {}
        only = self.target
        for vc in vcs:
            if only is not None:
                target: EThread | None = only.thread
            else:
                target = ep.assign_thread(etype) if ep is not None else None
            if target is None:
                for v in vcs:
                    v.closed = 1
                    v.free()
                return False
            share = shares.get(target)
            if share is None:
                shares[target] = [vc]
            else:
                share.append(vc)
        inboxes = self.inboxes
        for target, share in shares.items():
            inbox = inboxes.get(target)
            if inbox is None:
                inbox = inboxes.setdefault(target, _AcceptInbox(self.na, target, only))
            inbox.add(share)
        return True

    def stop(self) -> None:
        """Join the accept threads (but the calling one, which ends when its handler
        returns) and close the VCs still in the inboxes. After the listen socket's
        shutdown, which wakes them."""
        me = threading.get_ident()
        for t in self.threads:
            if t.tid == me:
                continue  # called by this accept thread (from EVENT_ERROR): it ends on return
            if not t.join(10.0):
                log.error("accept thread %s did not stop", t.name)
        self.threads.clear()
        for inbox in list(self.inboxes.values()):
            inbox.drop()


class _AcceptInbox(Continuation):
    """The VCs the accept threads have for one net thread, started there (``start_vcs``) by
    one event: while that event is pending, later batches join it instead of scheduling
    (and waking the thread) again. One per listener and net thread, made once."""

    def __init__(self, na: NetAccept, thread: EThread, nh: NetHandler | None) -> None:
        super().__init__(ProxyMutex(), self.start)
        self.na = na
        self.thread = thread
        #: ``thread``'s NetHandler if known (an asyncio loop's: its thread is none of the
        #: net processor's), else looked up in the thread's slot.
        self.nh = nh
        self.vcs: list[UnixNetVConnection] = []
        self.lock = threading.Lock()
        self.scheduled = False

    def add(self, vcs: list[UnixNetVConnection]) -> None:
        """From an accept thread: queue ``vcs``; schedule the event unless it is pending."""
        with self.lock:
            self.vcs += vcs
            if self.scheduled:
                return
            self.scheduled = True
        self.thread.schedule_imm_signal(self)

    def drop(self) -> None:
        """The listener closed (the accept is cancelled): close the VCs not yet started
        here, as ``start_vcs`` would. Left queued, they would leak if the net thread
        stopped before running the event (net_processor.shutdown right after a connect)."""
        with self.lock:
            vcs, self.vcs = self.vcs, []
        stats = self.na.stats
        for vc in vcs:
            if vc.counted_open:
                vc.counted_open = False
                stats[st.CONNECTIONS_CURRENTLY_OPEN] -= 1
            vc.closed = 1
            vc.free()

    def start(self, event: int, e: Any) -> None:
        from ats_cffi.net.nethandler import get_net_handler

        with self.lock:
            vcs, self.vcs = self.vcs, []
            self.scheduled = False
        if vcs:
            nh = self.nh
            self.na.start_vcs(nh if nh is not None else get_net_handler(e.ethread), vcs)
