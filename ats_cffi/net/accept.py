"""NetAccept: a listen socket and the loops that turn its connections into VCs.

Three ways to accept (chosen by ``AcceptOptions``):

- ``accept_threads > 0`` — ``init_accept_loop``: that many dedicated threads accept
  (``do_blocking_accept``: the whole backlog per native call, blocking in ``poll`` while it
  is empty); each new VC is assigned round-robin to a net thread, and each thread gets its
  share of a batch through its inbox: one ``schedule_imm_signal``, whose handler starts
  their IO there, while none is pending (later batches join the pending one).
- ``accept_threads == 0`` — ``init_accept_per_thread``: the listen socket is in every net
  thread's epoll with ``EPOLLEXCLUSIVE`` (the kernel wakes one thread per connection) and is
  accepted on inline by ``accept_fast_event``; with ``reuseport``, each net thread gets a
  listen socket of its own (``SO_REUSEPORT``), and the kernel spreads connections.
- ``frequent_accept=False`` — ``init_accept``: one net thread polls the listen socket on
  every loop pass.

An accept pass takes at most ``additional_accepts + 1`` connections and then re-schedules
itself: with edge trigger the listen socket will not report the same edge again, so
stopping early without re-scheduling would strand the backlog.

Errors (``accept_error_seriousness``): ECONNABORTED is ignored; EAGAIN/ECONNRESET/EPIPE/EINTR
are transient (try again); EMFILE/ENFILE/ENOBUFS/ENOMEM are resource errors (log once, back
off ``throttle_delay`` ms: never a busy loop); anything else is fatal (``EVENT_ERROR`` with
``-errno`` to the accept continuation, and this listener stops).

Per accepted connection, the net thread's work is ``start_vcs`` (ATS's acceptEvent): start
IO, then ``NET_EVENT_ACCEPT`` to the accept continuation with its mutex held. The epoll
registration is deferred to the thread's next ``epoll_wait`` (``EventIO.start(defer=True)``),
so a connection the continuation closes at once costs neither ``EPOLL_CTL_ADD`` nor ``DEL``;
one that lives is registered before anything could wait for its edges, and the ADD reports
readiness already pending, so no edge is lost.

Throttling: when ``check_net_throttle`` says the process holds too many connections (or an
fd comes within the emergency headroom of ``RLIMIT_NOFILE``), a new connection gets the
optional ``throttle_message`` and is closed at once, counted in ``connections_throttled_in``.
``backdoor`` listeners are exempt from the connections throttle.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ats_cffi import sys as _sys
from ats_cffi._native import ffi, lib
from ats_cffi.eventsystem.codes import EVENT_ERROR
from ats_cffi.eventsystem.continuation import Continuation, check_continuation
from ats_cffi.eventsystem.event import Action
from ats_cffi.eventsystem.mutex import ProxyMutex
from ats_cffi.eventsystem.processor import ET_NET, EventProcessor, run_on_threads
from ats_cffi.net import stats as st
from ats_cffi.net.codes import EVENTIO_NETACCEPT, EVENTIO_READ, NET_EVENT_ACCEPT
from ats_cffi.net.config import (
    INT_RECORD_MAX,
    MAX_ACCEPT_THREADS,
    SOCK_OPT_NO_DELAY,
    net_config,
)
from ats_cffi.net.eventio import EventIO
from ats_cffi.net.netvc import NetVCOptions, UnixNetVConnection
from ats_cffi.net.stats import net_stats
from ats_cffi.net.throttle import batch_may_throttle, check_emergency_throttle, check_net_throttle

if TYPE_CHECKING:
    from ats_cffi.eventsystem.ethread import EThread
    from ats_cffi.net.nethandler import NetHandler

log = logging.getLogger("ats.iocore_net_accept")

#: Most connections one native accept call takes (bounded by the helper's scratch array).
ACCEPT_BATCH = 64

_EAGAIN = errno.EAGAIN
_TOTAL_ACCEPTS = st.TOTAL_ACCEPTS
_CONNECTIONS_CURRENTLY_OPEN = st.CONNECTIONS_CURRENTLY_OPEN
# TCP_NODELAY on each accepted socket, the one option of the default NetVCOptions: set with
# one cffi call from a value made once (read-only, so shared by every thread).
_NODELAY_VALUE = ffi.new("int *", 1)
_INT_SIZE = ffi.sizeof("int")
_setsockopt = lib.setsockopt
_IPPROTO_TCP = lib.IPPROTO_TCP
_TCP_NODELAY = lib.TCP_NODELAY
_SO_ACCEPTCONN = socket.SO_ACCEPTCONN  # not in the cdef; the same value on every Linux

_IGNORE = 2
_TRANSIENT = 1
_RESOURCE = 0
_FATAL = -1

_SERIOUSNESS = {
    errno.ECONNABORTED: _IGNORE,
    errno.EAGAIN: _TRANSIENT,
    errno.ECONNRESET: _TRANSIENT,
    errno.EPIPE: _TRANSIENT,
    errno.EINTR: _TRANSIENT,
    errno.EPROTO: _TRANSIENT,
    errno.EMFILE: _RESOURCE,
    errno.ENFILE: _RESOURCE,
    errno.ENOBUFS: _RESOURCE,
    errno.ENOMEM: _RESOURCE,
}


def accept_error_seriousness(err: int) -> int:
    """ATS's classes: 2 ignore, 1 transient (retry), 0 resource (back off), -1 fatal."""
    return _SERIOUSNESS.get(err, _FATAL)


@dataclass
class AcceptOptions:
    """Where and how to listen (ATS's NetProcessor::AcceptOptions).

    ``local_address`` None listens on all addresses of ``ip_family`` (or only loopback with
    ``localhost_only``). ``accept_threads``/``defer_accept``/``backlog`` None take the
    ``proxy.config.accept_threads`` / ``net.defer_accept`` / ``net.listen_backlog`` records.
    ``throttle_message`` is sent to a connection refused by the throttle before it is closed.
    """

    port: int = 0
    local_address: str | None = None
    localhost_only: bool = False
    ip_family: int = lib.AF_INET
    accept_threads: int | None = None
    frequent_accept: bool = True
    recv_bufsize: int = 0
    send_bufsize: int = 0
    sockopt_flags: int = SOCK_OPT_NO_DELAY
    packet_mark: int = 0
    packet_tos: int = 0
    defer_accept: int | None = None
    backdoor: bool = False
    f_inbound_transparent: bool = False
    etype: int = ET_NET
    backlog: int | None = None
    reuseport: bool = False
    throttle_message: bytes | None = None

    def validate(self, call: str) -> None:
        if type(self.port) is not int:
            raise TypeError(f"{call}: AcceptOptions.port must be an int")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"{call}: AcceptOptions.port must be in 0..65535, got {self.port}")
        if type(self.ip_family) is not int or self.ip_family not in (lib.AF_INET, lib.AF_INET6):
            raise ValueError(f"{call}: AcceptOptions.ip_family must be AF_INET or AF_INET6")
        if self.local_address is not None and not isinstance(self.local_address, str):
            raise TypeError(f"{call}: AcceptOptions.local_address must be a str or None")
        for name in ("recv_bufsize", "send_bufsize", "sockopt_flags", "packet_mark",
                     "packet_tos"):  # fmt: skip
            v = getattr(self, name)
            hi = 255 if name == "packet_tos" else INT_RECORD_MAX  # a byte; else a C int
            if type(v) is not int or not 0 <= v <= hi:
                raise ValueError(f"{call}: AcceptOptions.{name} must be an int in 0..{hi}")
        for name in ("localhost_only", "frequent_accept", "backdoor", "reuseport",
                     "f_inbound_transparent"):  # fmt: skip
            v = getattr(self, name)
            if type(v) is not bool and not (type(v) is int and v in (0, 1)):
                raise TypeError(f"{call}: AcceptOptions.{name} must be a bool (or 0/1), not {v!r}")
        if type(self.etype) is not int:
            raise TypeError(f"{call}: AcceptOptions.etype must be an int")
        for name in ("accept_threads", "defer_accept", "backlog"):
            v = getattr(self, name)
            hi = MAX_ACCEPT_THREADS if name == "accept_threads" else INT_RECORD_MAX
            if v is not None and (type(v) is not int or not 0 <= v <= hi):
                raise ValueError(f"{call}: AcceptOptions.{name} must be None or an int in 0..{hi}")
        if self.throttle_message is not None and not isinstance(self.throttle_message, bytes):
            raise TypeError(f"{call}: AcceptOptions.throttle_message must be bytes or None")
        if self.f_inbound_transparent:
            raise ValueError(f"{call}: AcceptOptions.f_inbound_transparent is not supported")

    def family(self) -> int:
        if self.local_address is not None and ":" in self.local_address:
            return lib.AF_INET6
        return self.ip_family

    def bind_address(self) -> tuple[str, int]:
        if self.local_address is not None:
            return (self.local_address, self.port)
        v6 = self.family() == lib.AF_INET6
        if self.localhost_only:
            return ("::1" if v6 else "127.0.0.1", self.port)
        return ("::" if v6 else "0.0.0.0", self.port)

    def n_accept_threads(self) -> int:
        n = self.accept_threads
        return net_config.accept_threads if n is None else n

    def defer_seconds(self) -> int:
        d = self.defer_accept
        return net_config.defer_accept if d is None else d

    def vc_options(self) -> NetVCOptions:
        return NetVCOptions(
            sockopt_flags=self.sockopt_flags,
            recv_bufsize=self.recv_bufsize,
            send_bufsize=self.send_bufsize,
            packet_tos=self.packet_tos,
            packet_mark=self.packet_mark,
        )


def open_listen_socket(opt: AcceptOptions, port: int | None = None) -> int:
    """A bound, listening, non-blocking socket for ``opt`` (on ``port`` if given). Raises
    ``OSError`` naming the failing call (``bind`` for a port in use); closes it on failure."""
    family = opt.family()
    fd = _sys.socket(family, lib.SOCK_STREAM)
    try:
        _sys.setsockopt_int(fd, lib.SOL_SOCKET, lib.SO_REUSEADDR, 1)
        if opt.reuseport:
            _sys.setsockopt_int(fd, lib.SOL_SOCKET, lib.SO_REUSEPORT, 1)
        if family == lib.AF_INET6:
            _sys.setsockopt_int(fd, lib.IPPROTO_IPV6, lib.IPV6_V6ONLY, 1)
        defer = opt.defer_seconds()
        if defer:
            _sys.setsockopt_int(fd, lib.IPPROTO_TCP, lib.TCP_DEFER_ACCEPT, defer)
        if opt.recv_bufsize:
            _sys.setsockopt_int(fd, lib.SOL_SOCKET, lib.SO_RCVBUF, opt.recv_bufsize)
        host, p = opt.bind_address()
        _sys.bind(fd, (host, p if port is None else port))
        backlog = opt.backlog if opt.backlog is not None else net_config.listen_backlog
        _sys.listen(fd, backlog if backlog > 0 else 4096)
    except BaseException:
        _sys.close(fd)
        raise
    return fd


def check_listen_fd(call: str, fd: Any) -> int:
    """The family of ``fd`` if it is a listening TCP socket (``AF_INET``/``AF_INET6``,
    ``SOCK_STREAM``, ``SO_ACCEPTCONN``); else ``TypeError``/``ValueError``/``OSError`` naming
    ``fd``. Touches nothing of the socket."""
    _sys.check_fd(call, fd)
    try:
        family = _sys.getsockopt_int(fd, lib.SOL_SOCKET, lib.SO_DOMAIN)
        stype = _sys.getsockopt_int(fd, lib.SOL_SOCKET, lib.SO_TYPE)
        listening = _sys.getsockopt_int(fd, lib.SOL_SOCKET, _SO_ACCEPTCONN)
    except OSError as exc:
        raise OSError(exc.errno, f"{call}: fd {fd} is not a socket ({exc.strerror})") from None
    if family not in (lib.AF_INET, lib.AF_INET6):
        raise ValueError(f"{call}: fd {fd} must be an AF_INET or AF_INET6 socket")
    if stype != lib.SOCK_STREAM:
        raise ValueError(f"{call}: fd {fd} must be a SOCK_STREAM (TCP) socket")
    if not listening:
        raise ValueError(f"{call}: fd {fd} is not listening (call listen() on it first)")
    return family


class NetAccept(Continuation):
    """One listener: its socket(s), the accept continuation (``action``) and its loops.

    ``NET_EVENT_ACCEPT`` reaches the accept continuation on the net thread the new VC runs
    on, with that continuation's mutex held; a fatal accept error reaches it as
    ``EVENT_ERROR`` with ``-errno``.
    """

    def __init__(self, cont: Continuation, opt: AcceptOptions, processor: Any = None) -> None:
        super().__init__()
        check_continuation("accept", cont)
        self.opt = opt
        self.processor = processor
        self.action = AcceptAction(cont, self)
        self.server_fds: list[int] = []
        self.family = opt.family()
        self.vc_options = opt.vc_options()
        self.defer = opt.defer_seconds() > 0
        self._fd_lock = threading.Lock()
        self._ios: list[EventIO] = []
        self._accept_threads: list[EThread] = []
        self._periodic: Any = None
        #: ``(NetHandler, fd)`` of the accept passes scheduled to run again (``_retry_later``).
        self._retries: set[tuple[NetHandler, int]] = set()
        self._resource_logged = 0.0
        #: Counts of this listener (retired, folded into the totals, when it closes); it is
        #: in ``accepts_currently_open`` from its first listen socket until it closes.
        self.stats = net_stats.new_block()
        self._counted = False
        #: The fd given to ``main_accept`` (the caller's until the call succeeded) and its
        #: file status flags before ``do_listen`` made it non-blocking.
        self.caller_fd: int | None = None
        self._caller_flags = 0
        self.n_accepted = 0
        #: Accept threads' hand-off per net thread (``_AcceptInbox``), made on first use.
        self._inboxes: dict[EThread, _AcceptInbox] = {}

    # ------------------------------------------------------------------ the socket

    @property
    def server_fd(self) -> int:
        fds = self.server_fds
        return fds[0] if fds else -1

    @property
    def local_addr(self) -> Any:
        fd = self.server_fd
        return _sys.getsockname(fd) if fd >= 0 else None

    @property
    def port(self) -> int:
        addr = self.local_addr
        return addr[1] if addr else 0

    def do_listen(self, fd: int | None = None) -> None:
        """Use ``fd`` (already listening) or open the socket ``opt`` describes."""
        if fd is not None:
            self.family = check_listen_fd("main_accept", fd)
            # Accepts are non-blocking in every mode (accept threads wait in poll).
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
            self.caller_fd, self._caller_flags = fd, flags
        self.server_fds.append(fd if fd is not None else open_listen_socket(self.opt))
        if not self._counted:
            self._counted = True
            self.stats[st.ACCEPTS_CURRENTLY_OPEN] += 1

    # ------------------------------------------------------------------ the three modes

    def init_accept_loop(self, ep: EventProcessor, n_threads: int) -> None:
        """Start ``n_threads`` dedicated accept threads on the listen socket (which stays
        non-blocking: they block in ``poll`` while the backlog is empty)."""
        for i in range(n_threads):
            port = self.port
            cont = Continuation(handler=self.accept_loop_event)
            self._accept_threads.append(ep.spawn_thread(cont, f"[ACCEPT {i}:{port}]"))

    def init_accept_per_thread(self, threads: list[EThread], get_nh: Any) -> None:
        """Register the listen socket in each net thread's epoll; with ``reuseport``, give
        each thread a socket of its own on the same port first."""
        fds = [self.server_fd] * len(threads)
        if self.opt.reuseport:
            port = self.port
            for _ in threads[1:]:
                self.server_fds.append(open_listen_socket(self.opt, port))
            fds = list(self.server_fds)
        plan = dict(zip(threads, fds))
        extra = 0 if self.opt.reuseport else lib.EPOLLEXCLUSIVE

        def register(thread: EThread) -> None:
            nh = get_nh(thread)
            eio = EventIO(EVENTIO_NETACCEPT, self)
            eio.start(nh.pd, plan[thread], EVENTIO_READ, extra)
            with self._fd_lock:
                self._ios.append(eio)

        run_on_threads(threads, register, "accept")

    def init_accept(self, thread: EThread) -> None:
        """Poll the listen socket on every loop pass of ``thread`` (``frequent_accept=False``)."""
        nh_cont = Continuation(handler=lambda ev, e: self.accept_fast_event(e.ethread.tail_cb))
        self._periodic = thread.schedule_every(nh_cont, -1)

    # ------------------------------------------------------------------ per-thread pass

    def accept_fast_event(self, nh: NetHandler, fd: int | None = None) -> None:
        """Accept on ``fd`` (default: the first listen socket) until EAGAIN, or take
        ``additional_accepts + 1`` connections and re-schedule this pass.

        The fd lock is held around each ``accept4`` batch only (``close_listener`` cannot
        close the fd under it), never while the continuation runs: its handler may cancel
        the accept (``close_listener`` takes the lock) from this very pass."""
        if self.action.cancelled:
            return
        if fd is None:
            fd = self.server_fd
        if (nh, fd) in self._retries:
            return  # backing off (or the budget was spent): the scheduled retry accepts
        periodic = self._periodic is not None
        limit = net_config.additional_accepts
        budget = limit + 1 if limit >= 0 else -1
        while budget != 0:
            count = ACCEPT_BATCH if budget < 0 else min(budget, ACCEPT_BATCH)
            with self._fd_lock:
                if fd < 0 or fd not in self.server_fds:
                    return  # closed (cancelled) meanwhile
                fds, err = _sys.accept_batch(fd, count)
            if fds:
                self.start_vcs(nh, self._make_vcs(fds, nh.stats))
                if self.action.cancelled:
                    return
            if budget > 0:
                budget -= len(fds)
            if err == 0:
                continue  # the batch was full: more may be waiting
            if err == _EAGAIN:
                return  # the backlog is empty: the next connection brings a new edge
            seriousness = accept_error_seriousness(err)
            if seriousness in (_IGNORE, _TRANSIENT):
                continue
            if seriousness == _RESOURCE:
                self._resource_error(err, nh.stats)
                self._retry_later(nh, fd, net_config.throttle_delay / 1000.0)
                return
            self._fatal(err)
            return
        if not periodic and not self.action.cancelled:
            self._retry_later(nh, fd, 0.0)  # the budget is spent: the rest on the next pass

    def _retry_later(self, nh: NetHandler, fd: int, delay: float) -> None:
        """Run the accept pass of ``fd`` on ``nh`` again after ``delay`` s. One retry at most
        is pending per socket and thread: until it runs, the passes that new connections
        (or the periodic mode) bring return at once, so a back-off stays a back-off however
        many connections come meanwhile."""
        key = (nh, fd)
        if key in self._retries:
            return
        self._retries.add(key)

        def retry(event: int, e: Any) -> None:
            self._retries.discard(key)
            self.accept_fast_event(nh, fd)

        cont = Continuation(handler=retry)
        if delay > 0:
            nh.thread.schedule_in(cont, delay)
        else:
            nh.thread.schedule_imm(cont)

    def start_vcs(self, nh: NetHandler, vcs: list[UnixNetVConnection]) -> None:
        """Start the new ``vcs`` on ``nh``'s thread (the calling one) and hand each to the
        accept continuation (``NET_EVENT_ACCEPT``, its mutex held), as ATS's acceptEvent.

        The epoll registration of each is deferred to the thread's next ``epoll_wait``
        (``NetHandler.start_io(defer=True)``): a VC the continuation closes at once (or before
        that wait) never costs an ``epoll_ctl``, and one that lives is registered before any
        wait could miss its edges (the ADD reports readiness already pending)."""
        action = self.action
        start_io = nh.start_io
        free = nh.free_netevent
        for vc in vcs:
            try:
                start_io(vc, True)
            except OSError:
                log.exception("accept: start_io failed")
                vc.closed = 1
                free(vc)
                continue
            # start_io put it on the open list: under the InactivityCop from now on.
            m = action.mutex
            m.lock()  # type: ignore[union-attr]
            try:
                if action.cancelled:
                    vc.do_io_close()
                else:
                    vc.signal_action(action.continuation, NET_EVENT_ACCEPT)  # type: ignore[arg-type]
            finally:
                m.unlock()  # type: ignore[union-attr]
            if vc.closed and vc.recursion == 0 and vc.nh is not None:
                free(vc)

    # ------------------------------------------------------------------ accept threads

    def accept_loop_event(self, event: int, e: Any) -> None:
        """Body of a dedicated accept thread."""
        stats = net_stats.new_block()
        try:
            self.do_blocking_accept(e.ethread, stats)
        finally:
            net_stats.retire(stats)

    def do_blocking_accept(self, thread: EThread, stats: list[int]) -> None:
        """Until cancelled: take the whole backlog (up to ``ACCEPT_BATCH``) in one native
        call, hand the new VCs to the net threads (round-robin, through each thread's inbox)
        and block in ``poll`` while the backlog is empty. The listen socket stays
        non-blocking; ``close_listener``'s shutdown wakes the ``poll``."""
        fd = self.server_fd
        ep = self.processor.event_processor if self.processor is not None else None
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        wait = poller.poll
        while not self.action.cancelled:
            fds, err = _sys.accept_batch(fd, ACCEPT_BATCH)
            if fds and not self._hand_off(self._make_vcs(fds, stats), ep):
                return
            if err == 0:
                continue  # the batch was full: more may be waiting
            if err == _EAGAIN:
                try:
                    wait()
                except InterruptedError:
                    pass
                continue
            if self.action.cancelled:
                return
            seriousness = accept_error_seriousness(err)
            if seriousness == _IGNORE or seriousness == _TRANSIENT:
                continue
            if seriousness == _RESOURCE:
                self._resource_error(err, stats)
                time.sleep(net_config.throttle_delay / 1000.0)  # a dedicated thread
                continue
            self._fatal(err)
            return

    def _hand_off(self, vcs: list[UnixNetVConnection], ep: EventProcessor | None) -> bool:
        """Assign each VC round-robin to a net thread and put each chosen thread's share in
        its inbox (``_AcceptInbox``; ``start_vcs`` runs there). False (VCs closed) if there
        is no net thread to give them to."""
        if not vcs:
            return True
        etype = self.opt.etype
        shares: dict[EThread, list[UnixNetVConnection]] = {}
        for vc in vcs:
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
        inboxes = self._inboxes
        for target, share in shares.items():
            inbox = inboxes.get(target)
            if inbox is None:
                inbox = inboxes.setdefault(target, _AcceptInbox(self, target))
            inbox.add(share)
        return True

    # ------------------------------------------------------------------ shared pieces

    def _throttled(self, fd: int, stats: list[int]) -> bool:
        """Refuse ``fd`` when the process is throttled; True if it was closed."""
        emergency = check_emergency_throttle(fd)
        if not emergency and (self.opt.backdoor or not check_net_throttle()):
            return False
        msg = self.opt.throttle_message
        if msg:
            try:
                _sys.write(fd, msg)
            except OSError:
                pass  # best effort: the peer may be gone already
        _sys.close(fd)
        stats[st.CONNECTIONS_THROTTLED_IN] += 1
        return True

    def _make_vcs(self, fds: list[int], stats: list[int]) -> list[UnixNetVConnection]:
        """VCs for the accepted ``fds`` (any thread), after the throttle: a refused fd is
        closed and counted in ``connections_throttled_in``."""
        # Counted open here, where the fd is born, so that the throttle sees connections
        # still on their way to a net thread.
        if batch_may_throttle(fds, self.opt.backdoor):
            kept = []
            for fd in fds:  # one by one: each one taken counts against the next
                if not self._throttled(fd, stats):
                    stats[_CONNECTIONS_CURRENTLY_OPEN] += 1
                    kept.append(fd)
            fds = kept
        else:
            stats[_CONNECTIONS_CURRENTLY_OPEN] += len(fds)
        n = len(fds)
        stats[_TOTAL_ACCEPTS] += n
        self.n_accepted += n
        options = self.vc_options
        family = self.family
        action = self.action
        defer = self.defer
        nodelay_only = (
            options.sockopt_flags == SOCK_OPT_NO_DELAY
            and not options.recv_bufsize
            and not options.send_bufsize
            and not options.packet_tos
            and not options.packet_mark
        )
        vcs = []
        for fd in fds:
            vc = UnixNetVConnection(options)
            vc.counted_open = True
            vc.fd = fd
            vc.family = family
            vc.action = action
            if defer:
                # TCP_DEFER_ACCEPT: the data arrived before the socket could report an edge.
                vc.read.triggered = True
            if nodelay_only:
                if _setsockopt(fd, _IPPROTO_TCP, _TCP_NODELAY, _NODELAY_VALUE, _INT_SIZE) < 0:
                    log.error("setsockopt(TCP_NODELAY) on accepted fd %d: %s", fd,
                              os.strerror(ffi.errno))  # fmt: skip
            else:
                try:
                    options.apply(fd, family)
                except OSError:
                    log.exception("setting socket options on accepted fd %d", fd)
            vcs.append(vc)
        return vcs

    def _resource_error(self, err: int, stats: list[int]) -> None:
        stats[st.ACCEPTS_THROTTLE_BACKOFF] += 1
        now = time.monotonic()
        if now - self._resource_logged > 60.0:
            self._resource_logged = now
            log.warning(
                "accept on port %d: %s; backing off %d ms",
                self.port,
                os.strerror(err),
                net_config.throttle_delay,
            )

    def _fatal(self, err: int) -> None:
        log.error("accept on port %d failed: %s; the listener stops", self.port, os.strerror(err))
        action = self.action
        if action.cancelled:
            return
        with action.mutex:  # type: ignore[union-attr]
            if not action.cancelled:
                try:
                    action.continuation.handle_event(EVENT_ERROR, -err)  # type: ignore[union-attr]
                except Exception:
                    log.exception("EVENT_ERROR handler of the accept continuation raised")

    # ------------------------------------------------------------------ stopping

    def close_listener(self, refused: bool = False) -> None:
        """Stop every loop, join the accept threads (but the calling one) and close the listen
        socket(s). Any thread, the accept continuation's handler included; idempotent.

        ``refused``: ``main_accept`` failed, so the fd it was given is still the caller's: it
        is handed back open, with its old flags (and not shut down unless accept threads
        blocked on it must be woken)."""
        keep = self.caller_fd if refused else None
        with self._fd_lock:
            fds = list(self.server_fds)
        for fd in fds:
            if fd == keep and not self._accept_threads:
                continue
            try:
                _sys.shutdown(fd, lib.SHUT_RDWR)  # wakes accept threads blocked in accept4
            except OSError:
                pass
        me = threading.get_ident()
        for t in self._accept_threads:
            if t.tid == me:
                continue  # called by this accept thread (from EVENT_ERROR): it ends on return
            if not t.join(10.0):
                log.error("accept thread %s did not stop", t.name)
        self._accept_threads.clear()
        for inbox in list(self._inboxes.values()):
            inbox.drop()
        periodic, self._periodic = self._periodic, None
        if periodic is not None:
            periodic.cancel()
        with self._fd_lock:
            for eio in self._ios:
                eio.stop()
            self._ios.clear()
            fds, self.server_fds = self.server_fds, []
            for fd in fds:
                if fd == keep:
                    try:
                        fcntl.fcntl(fd, fcntl.F_SETFL, self._caller_flags)
                    except OSError:
                        pass
                    continue
                _sys.close(fd)
            if self._counted:
                self._counted = False
                self.stats[st.ACCEPTS_CURRENTLY_OPEN] -= 1
        net_stats.retire(self.stats)  # its counts stay in the totals
        if self.processor is not None:
            try:
                self.processor.accepts.remove(self)
            except ValueError:
                pass


class _AcceptInbox(Continuation):
    """The VCs the accept threads have for one net thread, started there (``start_vcs``) by
    one event: while that event is pending, later batches join it instead of scheduling
    (and waking the thread) again. One per listener and net thread, made once."""

    def __init__(self, na: NetAccept, thread: EThread) -> None:
        super().__init__(ProxyMutex(), self.start)
        self.na = na
        self.thread = thread
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
            self.na.start_vcs(get_net_handler(e.ethread), vcs)


class AcceptAction(Action):
    """What ``accept``/``main_accept`` return: ``cancel()`` stops accepting, joins the accept
    threads and closes the listen socket(s) before it returns."""

    def __init__(self, cont: Continuation, na: NetAccept) -> None:
        super().__init__(cont)
        self.na = na

    def cancel(self) -> None:
        # Mark cancelled under the continuation's mutex, then close outside it: the accept
        # pass takes the listener's fd lock before the mutex, so the reverse order here
        # would deadlock.
        super().cancel()
        self.na.close_listener()
