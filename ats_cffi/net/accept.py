"""NetAccept: a listen socket and the loop that turns its connections into VCs.

This module holds the per-thread accept mode (the listen socket in every net thread's epoll
with ``EPOLLEXCLUSIVE``, accepted inline by ``accept_fast_event``); the dedicated accept
threads mode and throttling build on it.
"""

from __future__ import annotations

import errno
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ats_cffi import sys as _sys
from ats_cffi._native import lib
from ats_cffi.eventsystem.continuation import Continuation, check_continuation
from ats_cffi.eventsystem.event import Action
from ats_cffi.eventsystem.processor import ET_NET, run_on_threads
from ats_cffi.net import stats as st
from ats_cffi.net.codes import EVENTIO_NETACCEPT, EVENTIO_READ
from ats_cffi.net.config import SOCK_OPT_NO_DELAY, net_config
from ats_cffi.net.eventio import EventIO
from ats_cffi.net.netvc import NetVCOptions, UnixNetVConnection

if TYPE_CHECKING:
    from ats_cffi.net.nethandler import NetHandler

log = logging.getLogger("ats.iocore_net_accept")

#: Most connections one native accept call takes (bounded by the helper's scratch array).
ACCEPT_BATCH = 64


@dataclass
class AcceptOptions:
    """Where and how to listen (ATS's NetProcessor::AcceptOptions)."""

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

    def validate(self, call: str) -> None:
        if type(self.port) is not int:
            raise TypeError(f"{call}: AcceptOptions.port must be an int")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"{call}: AcceptOptions.port must be in 0..65535, got {self.port}")
        if self.ip_family not in (lib.AF_INET, lib.AF_INET6):
            raise ValueError(f"{call}: AcceptOptions.ip_family must be AF_INET or AF_INET6")
        if self.local_address is not None and not isinstance(self.local_address, str):
            raise TypeError(f"{call}: AcceptOptions.local_address must be a str or None")
        for name in ("recv_bufsize", "send_bufsize", "sockopt_flags", "packet_mark",
                     "packet_tos"):  # fmt: skip
            v = getattr(self, name)
            if type(v) is not int or v < 0:
                raise ValueError(f"{call}: AcceptOptions.{name} must be an int >= 0")
        for name in ("accept_threads", "defer_accept", "backlog"):
            v = getattr(self, name)
            if v is not None and (type(v) is not int or v < 0):
                raise ValueError(f"{call}: AcceptOptions.{name} must be None or an int >= 0")

    def bind_address(self) -> tuple[str, int]:
        if self.local_address is not None:
            return (self.local_address, self.port)
        if self.localhost_only:
            return ("::1" if self.ip_family == lib.AF_INET6 else "127.0.0.1", self.port)
        return ("::" if self.ip_family == lib.AF_INET6 else "0.0.0.0", self.port)

    def vc_options(self) -> NetVCOptions:
        return NetVCOptions(
            sockopt_flags=self.sockopt_flags,
            recv_bufsize=self.recv_bufsize,
            send_bufsize=self.send_bufsize,
            packet_tos=self.packet_tos,
            packet_mark=self.packet_mark,
        )


def open_listen_socket(opt: AcceptOptions) -> int:
    """A bound, listening, non-blocking socket for ``opt``. Raises ``OSError`` naming the
    failing call (``bind`` for a port in use); closes the socket on failure."""
    family = opt.ip_family
    if opt.local_address is not None and ":" in opt.local_address:
        family = lib.AF_INET6
    fd = _sys.socket(family, lib.SOCK_STREAM)
    try:
        _sys.setsockopt_int(fd, lib.SOL_SOCKET, lib.SO_REUSEADDR, 1)
        if opt.reuseport:
            _sys.setsockopt_int(fd, lib.SOL_SOCKET, lib.SO_REUSEPORT, 1)
        if family == lib.AF_INET6:
            _sys.setsockopt_int(fd, lib.IPPROTO_IPV6, lib.IPV6_V6ONLY, 1)
        defer = opt.defer_accept if opt.defer_accept is not None else 0
        if defer:
            _sys.setsockopt_int(fd, lib.IPPROTO_TCP, lib.TCP_DEFER_ACCEPT, defer)
        if opt.recv_bufsize:
            _sys.setsockopt_int(fd, lib.SOL_SOCKET, lib.SO_RCVBUF, opt.recv_bufsize)
        _sys.bind(fd, opt.bind_address())
        backlog = opt.backlog if opt.backlog is not None else net_config.listen_backlog
        _sys.listen(fd, backlog if backlog > 0 else 4096)
    except BaseException:
        _sys.close(fd)
        raise
    return fd


class NetAccept(Continuation):
    """One listener: its socket, the accept continuation (``action``) and the accept loop.

    ``NET_EVENT_ACCEPT`` reaches the accept continuation on the net thread the new VC runs
    on, with that continuation's mutex held.
    """

    def __init__(self, cont: Continuation, opt: AcceptOptions) -> None:
        super().__init__()
        check_continuation("accept", cont)
        self.opt = opt
        self.action = AcceptAction(cont, self)
        self.server_fd = -1
        self.family = lib.AF_INET
        self.vc_options = opt.vc_options()
        self._fd_lock = threading.Lock()
        self._ios: list[EventIO] = []
        self.n_accepted = 0

    @property
    def local_addr(self) -> Any:
        return _sys.getsockname(self.server_fd) if self.server_fd >= 0 else None

    @property
    def port(self) -> int:
        addr = self.local_addr
        return addr[1] if addr else 0

    def do_listen(self, fd: int | None = None) -> None:
        """Use ``fd`` (already listening) or open the socket of ``opt``."""
        self.server_fd = fd if fd is not None else open_listen_socket(self.opt)
        self.family = _sys.getsockopt_int(self.server_fd, lib.SOL_SOCKET, lib.SO_DOMAIN)

    def init_accept_per_thread(self, threads: list[Any], get_nh: Any) -> None:
        """Register the listen socket in each net thread's epoll (``EPOLLEXCLUSIVE``: one
        thread is woken per connection); each accepts inline in ``accept_fast_event``."""

        def register(thread: Any) -> None:
            nh = get_nh(thread)
            eio = EventIO(EVENTIO_NETACCEPT, self)
            eio.start(nh.pd, self.server_fd, EVENTIO_READ, lib.EPOLLEXCLUSIVE)
            self._ios.append(eio)

        run_on_threads(threads, register, "accept")

    def accept_fast_event(self, nh: NetHandler) -> None:
        """Accept until EAGAIN (or ``additional_accepts + 1`` connections, then re-schedule
        this pass: the listen socket will not report the same edge again)."""
        if self.action.cancelled:
            return
        limit = net_config.additional_accepts
        budget = limit + 1 if limit >= 0 else -1
        with self._fd_lock:
            while budget != 0 and self.server_fd >= 0:
                count = ACCEPT_BATCH if budget < 0 else min(budget, ACCEPT_BATCH)
                fds, err = _sys.accept_batch(self.server_fd, count)
                for fd in fds:
                    self._new_vc(nh, fd)
                if budget > 0:
                    budget -= len(fds)
                if err == errno.EAGAIN:
                    return
                if err and err != errno.ECONNABORTED:
                    log.warning("accept4 on fd %d: %s", self.server_fd, errno.errorcode.get(err))
                    return
        if budget == 0 and not self.action.cancelled:
            nh.thread.schedule_imm(Continuation(handler=lambda ev, e: self.accept_fast_event(nh)))

    def _new_vc(self, nh: NetHandler, fd: int) -> None:
        nh.stats[st.TOTAL_ACCEPTS] += 1
        vc = UnixNetVConnection(self.vc_options)
        vc.fd = fd
        vc.family = self.family
        vc.action = self.action
        try:
            self.vc_options.apply(fd, self.family)
        except OSError:
            log.exception("setting socket options on accepted fd %d", fd)
        self.n_accepted += 1
        vc.accept_event(0, _OnThread(nh.thread))

    def close_listener(self) -> None:
        """Unregister and close the listen socket (any thread); idempotent."""
        with self._fd_lock:
            for eio in self._ios:
                eio.stop()
            self._ios.clear()
            fd, self.server_fd = self.server_fd, -1
        if fd >= 0:
            try:
                _sys.shutdown(fd, lib.SHUT_RDWR)
            except OSError:
                pass
            _sys.close(fd)


class _OnThread:
    """The ``Event``-like argument of an inline ``accept_event``: only its thread matters."""

    __slots__ = ("ethread",)

    def __init__(self, thread: Any) -> None:
        self.ethread = thread


class AcceptAction(Action):
    """What ``accept``/``main_accept`` return: ``cancel()`` stops accepting and closes the
    listen socket before it returns."""

    def __init__(self, cont: Continuation, na: NetAccept) -> None:
        super().__init__(cont)
        self.na = na

    def cancel(self) -> None:
        # Mark cancelled under the continuation's mutex, then close outside it: the accept
        # pass takes the listener's fd lock before the mutex, so the reverse order here
        # would deadlock.
        super().cancel()
        self.na.close_listener()
