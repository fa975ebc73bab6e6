"""Accepting on the net threads (``accept_threads == 0``): ATS's ``acceptFastEvent``.

The listen socket is in every net thread's epoll with ``EPOLLEXCLUSIVE`` (the kernel wakes
one thread per connection), or, with ``reuseport``, each net thread has a listen socket of
its own (``SO_REUSEPORT``: the kernel spreads the connections); with
``frequent_accept=False`` one net thread polls it on every loop pass instead. Either way
the accept pass runs inline on the net thread, which starts the new VCs itself.

Why a pass re-schedules itself: a pass takes at most ``additional_accepts + 1``
connections (so that a flood of connections cannot starve the thread's VCs) and, when
that budget is spent, schedules another pass right away. With edge trigger the listen
socket will not report the same edge again: a pass that stopped early without
re-scheduling would strand the rest of the backlog until the next connection happened to
arrive. A resource error (EMFILE, ...) schedules the next pass after ``throttle_delay``
instead, and until a scheduled pass runs, the passes that new edges bring return at once,
so that a back-off stays a back-off however many connections come meanwhile.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from ats_cffi._native import lib
from ats_cffi.eventsystem.continuation import Continuation
from ats_cffi.eventsystem.processor import run_on_threads
from ats_cffi.net.accept_errors import FATAL, RESOURCE
from ats_cffi.net.codes import EVENTIO_NETACCEPT, EVENTIO_READ
from ats_cffi.net.config import ACCEPT_BATCH, net_config
from ats_cffi.net.eventio import EventIO

if TYPE_CHECKING:
    from ats_cffi.eventsystem.ethread import EThread
    from ats_cffi.net.accept import NetAccept
    from ats_cffi.net.nethandler import NetHandler

_EAGAIN = errno.EAGAIN


class FastAccept:
    """A listener's accept passes on the net threads (see the module doc): the EventIOs of
    its listen sockets, the periodic poll, and the passes scheduled to run again."""

    def __init__(self, na: NetAccept) -> None:
        self.na = na
        self.ios: list[EventIO] = []
        #: The event of ``frequent_accept=False``'s poll on every pass, or None.
        self.periodic: Any = None
        #: ``(NetHandler, fd)`` of the passes scheduled to run again (``retry_later``).
        self.retries: set[tuple[NetHandler, int]] = set()

    def register(self, threads: list[EThread], get_nh: Any) -> None:
        """Register the listen socket in each net thread's epoll; with ``reuseport``, give
        each thread a socket of its own on the same port first."""
        na = self.na
        fds = [na.server_fd] * len(threads)
        if na.opt.reuseport:
            na.open_reuseport_sockets(len(threads) - 1)
            fds = list(na.server_fds)
        plan = dict(zip(threads, fds))
        extra = 0 if na.opt.reuseport else lib.EPOLLEXCLUSIVE

        def register(thread: EThread) -> None:
            nh = get_nh(thread)
            eio = EventIO(EVENTIO_NETACCEPT, na)
            eio.start(nh.pd, plan[thread], EVENTIO_READ, extra)
            with na.fd_lock:
                self.ios.append(eio)

        run_on_threads(threads, register, "accept")

    def register_on(self, nh: NetHandler, fd: int) -> None:
        """Register ``fd`` in ``nh``'s epoll alone (from ``nh``'s thread)."""
        eio = EventIO(EVENTIO_NETACCEPT, self.na)
        eio.start(nh.pd, fd, EVENTIO_READ)
        with self.na.fd_lock:
            self.ios.append(eio)

    def poll_every_pass(self, thread: EThread) -> None:
        """Run the accept pass on every loop pass of ``thread``."""
        na = self.na
        cont = Continuation(handler=lambda ev, e: na.accept_fast_event(e.ethread.tail_cb))
        self.periodic = thread.schedule_every(cont, -1)

    def accept_pass(self, nh: NetHandler, fd: int | None = None) -> None:
        """Accept on ``fd`` (default: the first listen socket) until EAGAIN, or take
        ``additional_accepts + 1`` connections and re-schedule the pass (module doc).

        The fd lock is held around each ``accept4`` batch only (``close_listener`` cannot
        close the fd under it), never while the continuation runs: its handler may cancel
        the accept (``close_listener`` takes the lock) from this very pass."""
        na = self.na
        if na.action.cancelled:
            return
        if fd is None:
            fd = na.server_fd
        if self.retries and (nh, fd) in self.retries:
            return  # backing off (or the budget was spent): the scheduled retry accepts
        periodic = self.periodic is not None
        limit = net_config.additional_accepts
        budget = limit + 1 if limit >= 0 else -1
        while budget != 0:
            count = ACCEPT_BATCH if budget < 0 else min(budget, ACCEPT_BATCH)
            with na.fd_lock:
                if fd < 0 or fd not in na.server_fds:
                    return  # closed (cancelled) meanwhile
                fds, err = na.accept_batch(fd, count)
            if fds:
                na.start_vcs(nh, na.make_vcs(fds, nh.stats))
                if na.action.cancelled:
                    return
            if budget > 0:
                budget -= len(fds)
            if err == 0:
                continue  # the batch was full: more may be waiting
            if err == _EAGAIN:
                return  # the backlog is empty: the next connection brings a new edge
            seriousness = na.accept_error(err, nh.stats)
            if seriousness == RESOURCE:
                self.retry_later(nh, fd, net_config.throttle_delay / 1000.0)
            if seriousness == RESOURCE or seriousness == FATAL:
                return
        if not periodic and not na.action.cancelled:
            self.retry_later(nh, fd, 0.0)  # the budget is spent: the rest on the next pass

    def retry_later(self, nh: NetHandler, fd: int, delay: float) -> None:
        """Run the accept pass of ``fd`` on ``nh`` again after ``delay`` s. One retry at most
        is pending per socket and thread (module doc)."""
        key = (nh, fd)
        if key in self.retries:
            return
        self.retries.add(key)

        def retry(event: int, e: Any) -> None:
            self.retries.discard(key)
            self.na.accept_fast_event(nh, fd)

        cont = Continuation(handler=retry)
        if delay > 0:
            nh.thread.schedule_in(cont, delay)
        else:
            nh.thread.schedule_imm(cont)

    def cancel_periodic(self) -> None:
        periodic, self.periodic = self.periodic, None
        if periodic is not None:
            periodic.cancel()

    def stop_ios(self) -> None:
        """Take the listen sockets out of the net threads' epolls (the caller holds the
        listener's fd lock)."""
        for eio in self.ios:
            eio.stop()
        self.ios.clear()
