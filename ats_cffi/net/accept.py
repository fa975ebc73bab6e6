"""NetAccept: a listen socket, and what every accept loop does with its connections.

Three ways to accept (chosen by ``AcceptOptions``):

- ``accept_threads > 0`` — ``init_accept_loop``: that many dedicated threads accept
  (``do_blocking_accept``: the whole backlog per native call, blocking in ``poll`` while it
  is empty) and hand each new VC round-robin to a net thread (``accept_threads.py``).
- ``accept_threads == 0`` — ``init_accept_per_thread``: the listen socket is in every net
  thread's epoll with ``EPOLLEXCLUSIVE`` (the kernel wakes one thread per connection) and is
  accepted on inline by ``accept_fast_event``; with ``reuseport``, each net thread gets a
  listen socket of its own (``SO_REUSEPORT``), and the kernel spreads connections.
- ``frequent_accept=False`` — ``init_accept``: one net thread polls the listen socket on
  every loop pass.

The last two run ``accept_fast.py``'s pass, which takes at most ``additional_accepts + 1``
connections and then re-schedules itself (that module says why).

Errors (``accept_errors.py``): ECONNABORTED is ignored; EAGAIN/ECONNRESET/EPIPE/EINTR
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

import fcntl
import logging
import os
import threading
from typing import TYPE_CHECKING, Any, Final

from ats_cffi import _fastio
from ats_cffi import sys as _sys
from ats_cffi._native import lib
from ats_cffi.eventsystem.codes import EVENT_ERROR
from ats_cffi.eventsystem.continuation import Continuation, check_continuation
from ats_cffi.eventsystem.event import Action
from ats_cffi.eventsystem.processor import EventProcessor
from ats_cffi.net import stats as st
from ats_cffi.net.accept_errors import FATAL, RESOURCE, accept_error_seriousness
from ats_cffi.net.accept_fast import FastAccept
from ats_cffi.net.accept_threads import AcceptThreads
from ats_cffi.net.codes import NET_EVENT_ACCEPT
from ats_cffi.net.config import ACCEPT_BATCH, SOCK_OPT_NO_DELAY, net_config
from ats_cffi.net.netvc import UnixNetVConnection
from ats_cffi.net.options import AcceptOptions, NetVCOptions
from ats_cffi.net.ratelog import RateLimitedLog
from ats_cffi.net.stats import StatBlock, net_stats
from ats_cffi.net.throttle import (
    ThrottleType,
    batch_may_throttle,
    check_emergency_throttle,
    check_net_throttle,
    throttle_warning,
)
from ats_cffi.net.tls.sslvc import SSLNetVConnection

if TYPE_CHECKING:
    from ats_cffi.eventsystem.ethread import EThread
    from ats_cffi.net.nethandler import NetHandler

log = logging.getLogger("ats.iocore_net_accept")

_TOTAL_ACCEPTS: Final = st.TOTAL_ACCEPTS
_CONNECTIONS_CURRENTLY_OPEN: Final = st.CONNECTIONS_CURRENTLY_OPEN
# Names of interpreted modules, bound once: compiled, a plain imported name is looked up in
# this module's dict on every use.
_SOCK_OPT_NO_DELAY: Final = SOCK_OPT_NO_DELAY
_NET_EVENT_ACCEPT: Final = NET_EVENT_ACCEPT
_batch_may_throttle: Final = batch_may_throttle
_accept_batch: Final = _fastio.accept_batch
_ACCEPT_FLAGS: Final[int] = _sys.ACCEPT_FLAGS


def _nodelay_only(options: NetVCOptions) -> bool:
    """Whether ``TCP_NODELAY`` is the one socket option ``options`` set on a socket."""
    return (
        options.sockopt_flags == _SOCK_OPT_NO_DELAY
        and not options.recv_bufsize
        and not options.send_bufsize
        and not options.packet_tos
        and not options.packet_mark
    )


__all__ = [
    "ACCEPT_BATCH",
    "AcceptAction",
    "AcceptOptions",
    "NetAccept",
    "accept_error_seriousness",
    "check_listen_fd",
    "open_listen_socket",
]


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
        listening = _sys.getsockopt_int(fd, lib.SOL_SOCKET, lib.SO_ACCEPTCONN)
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
        #: The VCs' one socket option is ``TCP_NODELAY`` (the default NetVCOptions'):
        #: ``accept_batch`` sets it in its native call, and ``make_vcs`` sets none.
        self.nodelay_at_accept = _nodelay_only(self.vc_options)
        self.defer = opt.defer_seconds() > 0
        #: Held around each accept batch and while the listen sockets close: no batch runs
        #: on a closed (and maybe reused) fd.
        self.fd_lock = threading.Lock()
        #: The two kinds of loop (either may stay unused): on the net threads, and on
        #: dedicated accept threads.
        self.fast = FastAccept(self)
        self.accept_threads = AcceptThreads(self)
        #: Resource errors (EMFILE, ...) logged once a minute at most, with a count.
        self._resource_log = RateLimitedLog(log)
        #: Counts of this listener (retired, folded into the totals, when it closes); it is
        #: in ``accepts_currently_open`` from its first listen socket until it closes.
        self._stats_owned = net_stats.new_owned_block()  # as registered, for retire
        self.stats: StatBlock = self._stats_owned
        self._counted = False
        #: The fd given to ``main_accept`` (the caller's until the call succeeded) and its
        #: file status flags before ``do_listen`` made it non-blocking.
        self.caller_fd: int | None = None
        self._caller_flags = 0
        #: Listen sockets that another owner closes (``adopt_listen_fd``): never shut down
        #: or closed here.
        self.borrowed_fds: set[int] = set()
        self.n_accepted = 0

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
        return addr[1] if isinstance(addr, tuple) else 0  # an AF_UNIX path has none

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

    def adopt_listen_fd(self, fd: int, family: int) -> None:
        """Accept on ``fd``, a non-blocking listening stream socket of ``family`` (``AF_UNIX``
        too) that its owner keeps and closes (an asyncio server's): ``close_listener`` stops
        accepting on it and leaves it open."""
        self.family = family
        self.borrowed_fds.add(fd)
        self.server_fds.append(fd)
        if not self._counted:
            self._counted = True
            self.stats[st.ACCEPTS_CURRENTLY_OPEN] += 1

    def open_reuseport_sockets(self, n: int) -> None:
        """``n`` more listen sockets on the same port (``reuseport``: one per net thread)."""
        port = self.port
        for _ in range(n):
            self.server_fds.append(open_listen_socket(self.opt, port))

    # ------------------------------------------------------------------ the three modes

    def init_accept_loop(
        self, ep: EventProcessor | None, n_threads: int, target: NetHandler | None = None
    ) -> None:
        """Start ``n_threads`` dedicated accept threads on the listen socket (which stays
        non-blocking: they block in ``poll`` while the backlog is empty): ``ep``'s, or, with
        ``target`` (an asyncio loop's NetHandler), threads that hand every VC to it."""
        self.accept_threads.start(ep, n_threads, target)

    def init_accept_per_thread(self, threads: list[EThread], get_nh: Any) -> None:
        """Register the listen socket in each net thread's epoll; with ``reuseport``, give
        each thread a socket of its own on the same port first."""
        self.fast.register(threads, get_nh)

    def init_accept_on(self, nh: NetHandler) -> None:
        """Register the listen socket in ``nh``'s epoll only (the calling thread is ``nh``'s:
        an asyncio loop's listener, accepted on by the loop's own NetHandler)."""
        self.fast.register_on(nh, self.server_fd)

    def init_accept(self, thread: EThread) -> None:
        """Poll the listen socket on every loop pass of ``thread`` (``frequent_accept=False``)."""
        self.fast.poll_every_pass(thread)

    def accept_fast_event(self, nh: NetHandler, fd: int | None = None) -> None:
        """The accept pass on a net thread (``accept_fast.py``): accept on ``fd`` (default:
        the first listen socket) until EAGAIN, or take ``additional_accepts + 1``
        connections and re-schedule the pass."""
        self.fast.accept_pass(nh, fd)

    def accept_loop_event(self, event: int, e: Any) -> None:
        """Body of a dedicated accept thread (``accept_threads.py``)."""
        self.accept_threads.run()

    def do_blocking_accept(self, thread: EThread, stats: StatBlock) -> None:
        """An accept thread's loop until cancelled (``accept_threads.py``)."""
        self.accept_threads.do_blocking_accept(stats)

    # ------------------------------------------------------------------ every loop

    def start_vcs(self, nh: NetHandler, vcs: list[UnixNetVConnection]) -> None:
        """Start the new ``vcs`` on ``nh``'s thread (the calling one) and hand each to the
        accept continuation (``NET_EVENT_ACCEPT``, its mutex held), as ATS's acceptEvent.

        The epoll registration of each is deferred to the thread's next ``epoll_wait``
        (``NetHandler.start_io(defer=True)``): a VC the continuation closes at once (or before
        that wait) never costs an ``epoll_ctl``, and one that lives is registered before any
        wait could miss its edges (the ADD reports readiness already pending)."""
        action = self.action
        for vc in vcs:
            try:
                nh.start_io(vc, True)  # called by name: compiled, a direct call
            except OSError:
                log.exception("accept: start_io failed")
                vc.closed = 1
                nh.free_netevent(vc)
                continue
            # start_io put it on the open list: under the InactivityCop from now on.
            m = action.mutex
            m.lock()  # type: ignore[union-attr]
            try:
                if action.cancelled:
                    vc.do_io_close()
                else:
                    vc.signal_action(action.continuation, _NET_EVENT_ACCEPT)  # type: ignore[arg-type]
            finally:
                m.unlock()  # type: ignore[union-attr]
            if vc.closed and vc.recursion == 0 and vc.nh is not None:
                nh.free_netevent(vc)

    def _throttled(self, fd: int, stats: StatBlock, pending: int) -> bool:
        """Refuse ``fd`` when the process is throttled, ``pending`` connections about to
        open counted; True if it was closed."""
        emergency = check_emergency_throttle(fd)
        if not emergency and (
            self.opt.backdoor or not check_net_throttle(ThrottleType.ACCEPT, pending)
        ):
            return False
        msg = self.opt.throttle_message
        if msg:
            try:
                _sys.write(fd, msg)
            except OSError:
                pass  # best effort: the peer may be gone already
        _sys.close(fd)
        stats[st.CONNECTIONS_THROTTLED_IN] += 1
        throttle_warning(ThrottleType.ACCEPT, fd if emergency else -1)
        return True

    def accept_batch(self, fd: int, count: int) -> tuple[list[int], int]:
        """Up to ``count`` connections on ``fd`` (any thread), as ``sys.accept_batch`` takes
        them, in one call of ``_fastio`` (which the sys call's cffi wrapping cost more than,
        at the few connections of a pass): with ``TCP_NODELAY`` set in the same native call
        when that is the VCs' one option. A socket it could not be set on is logged and
        served. Returns ``(fds, errno that ended the batch)``."""
        fds: list[int] = []
        if not self.nodelay_at_accept:
            return fds, _accept_batch(fd, _ACCEPT_FLAGS, False, count, fds, None)
        failed: list[tuple[int, int]] = []
        err: int = _accept_batch(fd, _ACCEPT_FLAGS, True, count, fds, failed)
        for afd, opt_err in failed:
            log.error("setsockopt(TCP_NODELAY) on accepted fd %d: %s", afd, os.strerror(opt_err))
        return fds, err

    def make_vcs(self, fds: list[int], stats: StatBlock) -> list[UnixNetVConnection]:
        """VCs for the accepted ``fds`` (any thread), after the throttle: a refused fd is
        closed and counted in ``connections_throttled_in``."""
        # Counted open here, where the fd is born, so that the throttle sees connections
        # still on their way to a net thread.
        onward = self.opt.connects_per_accept
        top = -1
        for fd in fds:
            if fd > top:
                top = fd
        if _batch_may_throttle(top, len(fds), self.opt.backdoor, 1 + onward):
            kept: list[int] = []
            for fd in fds:  # one by one: each one taken counts against the next, and the
                # connects it and those before it will open (counted once they start)
                if not self._throttled(fd, stats, onward * (len(kept) + 1)):
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
        set_at_accept = self.nodelay_at_accept
        vcs = []
        tls = self.opt.tls
        vc_class = self.opt.vc_class
        for fd in fds:
            if tls is not None:
                vc: UnixNetVConnection = SSLNetVConnection(options, tls, True)
            elif vc_class is None:
                vc = UnixNetVConnection(options)
            else:
                vc = vc_class(options)
            vc.counted_open = True
            vc.fd = fd
            vc.family = family
            vc.action = action
            if defer:
                # TCP_DEFER_ACCEPT: the data arrived before the socket could report an edge.
                vc.read.triggered = True
            if not set_at_accept:
                try:
                    options.apply(fd, family)
                except OSError:
                    log.exception("setting socket options on accepted fd %d", fd)
            vcs.append(vc)
        return vcs

    def accept_error(self, err: int, stats: StatBlock) -> int:
        """Act on the accept error ``err`` and return its class (``accept_errors.py``): a
        resource error is counted and logged (once a minute), a fatal one reported to the
        accept continuation (``EVENT_ERROR``, ``-errno``). The caller retries at once
        (ignore, transient), backs off (``RESOURCE``) or stops (``FATAL``)."""
        seriousness = accept_error_seriousness(err)
        if seriousness == RESOURCE:
            self._resource_error(err, stats)
        elif seriousness == FATAL:
            self._fatal(err)
        return seriousness

    def _resource_error(self, err: int, stats: StatBlock) -> None:
        stats[st.ACCEPTS_THROTTLE_BACKOFF] += 1
        self._resource_log(
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
        is handed back open, with its old flags. Neither it nor a borrowed socket (its
        owner's to close) is shut down, unless accept threads blocked on it must be woken."""
        keep = self.caller_fd if refused else None
        borrowed = self.borrowed_fds
        with self.fd_lock:
            fds = list(self.server_fds)
        woken = bool(self.accept_threads.threads)
        for fd in fds:
            if (fd == keep or fd in borrowed) and not woken:
                continue
            try:
                _sys.shutdown(fd, lib.SHUT_RDWR)  # wakes accept threads blocked in accept4
            except OSError:
                pass
        self.accept_threads.stop()
        self.fast.cancel_periodic()
        with self.fd_lock:
            self.fast.stop_ios()
            fds, self.server_fds = self.server_fds, []
            for fd in fds:
                if fd in borrowed:
                    continue
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
        net_stats.retire(self._stats_owned)  # its counts stay in the totals
        if self.processor is not None:
            try:
                self.processor.accepts.remove(self)
            except ValueError:
                pass


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
