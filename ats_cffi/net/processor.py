"""UnixNetProcessor (the ``net_processor`` singleton): starts the net threads, opens
outgoing connections (``connect_re``/``connect_s``) and listeners (``accept``)."""

from __future__ import annotations

import dataclasses
import errno
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from ats_cffi import sys as _sys
from ats_cffi._native import lib
from ats_cffi.eventsystem.continuation import Continuation, check_continuation
from ats_cffi.eventsystem.ethread import EThread, on_event_thread, this_ethread
from ats_cffi.eventsystem.event import Action
from ats_cffi.eventsystem.mutex import ProxyMutex
from ats_cffi.eventsystem.processor import (
    ET_NET,
    EventProcessor,
    check_join_timeout,
    event_processor,
)
from ats_cffi.net import nethandler as _nh_mod
from ats_cffi.net.accept import AcceptOptions, NetAccept, check_listen_fd
from ats_cffi.net.codes import EVENTIO_READ, NET_EVENT_OPEN, net_strerror
from ats_cffi.net.config import net_config
from ats_cffi.net.connect import ConnectAction
from ats_cffi.net.nethandler import InactivityCop, NetHandler, get_net_handler
from ats_cffi.net.netvc import NetVCOptions, UnixNetVConnection
from ats_cffi.net.throttle import change_net_connections_throttle
from ats_cffi.net.tls.sslvc import SSLNetVConnection

log = logging.getLogger("ats.iocore_net")

#: The most net threads ``start`` takes (ATS's MAX_THREADS_IN_EACH_TYPE).
MAX_NET_THREADS = 3072
#: The longest a blocking call (``connect_s``, ``shutdown``) may be asked to wait, in s
#: (below ``threading.TIMEOUT_MAX``, with room for connect_s's margin).
MAX_WAIT = threading.TIMEOUT_MAX - 3600.0


def _shown(x: float) -> str:
    """``x`` for a message: not the 400 digits of a huge int."""
    return "an int too large" if isinstance(x, int) and x.bit_length() > 64 else repr(x)


def _check_connect_wait(call: str, timeout: Any) -> None:
    """``TypeError``/``ValueError`` naming ``call`` unless ``timeout`` is a finite number of
    seconds in (0, ``MAX_WAIT``]: a connect always ends (it becomes the connect timeout)."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{call}: timeout must be a number, not {type(timeout).__name__}")
    if not 0 < timeout <= MAX_WAIT:  # False for NaN and inf too
        raise ValueError(
            f"{call}: timeout must be a finite number in (0, {MAX_WAIT:.0f}] s, "
            f"got {_shown(timeout)}"
        )


#: Slot of each net thread's PollCont (the NetHandler's is nethandler.NET_HANDLER_SLOT).
POLL_CONT_SLOT: int | None = None


def initialize_thread_for_net(thread: EThread) -> None:
    """Make ``thread`` one of the processor's net threads (runs on it): ``attach_net_handler``
    and the thread's NetHandler and PollCont in its slots."""
    nh = attach_net_handler(thread)
    thread.slots[_nh_mod.NET_HANDLER_SLOT] = nh  # type: ignore[index]
    thread.slots[POLL_CONT_SLOT] = nh.poll_cont  # type: ignore[index]


def attach_net_handler(thread: EThread) -> NetHandler:
    """Give ``thread`` (a REGULAR EThread) a NetHandler + PollCont: the NetHandler as the
    poll step, the thread's eventfd as an ``EVENTIO_ASYNC_SIGNAL`` EventIO, and the
    InactivityCop every ``inactivity_check_frequency`` seconds. The net threads of ``start``
    get theirs so; the asyncio loop's thread too (it is none of the processor's)."""
    nh = NetHandler(thread)
    thread.retry_delay = net_config.retry_delay / 1000.0
    old, thread.tail_cb = thread.tail_cb, nh
    if old is not None:
        old.close()
    assert thread.evfd is not None
    nh.signal_io.start(nh.pd, thread.evfd.fd, EVENTIO_READ)
    thread.schedule_imm(nh)
    nh.cop = InactivityCop(nh)
    thread.schedule_every(nh.cop, net_config.inactivity_check_frequency)
    return nh


def _parse_address(call: str, addr: Any) -> tuple[int, tuple]:
    """``(family, addr)`` for a numeric address; family 0 for a host name."""
    if not isinstance(addr, tuple) or len(addr) not in (2, 4):
        raise TypeError(f"{call}: addr must be a (host, port) tuple, not {addr!r}")
    host, port = addr[0], addr[1]
    check_host_and_port(call, host, port)
    if len(addr) == 4:
        for name, v in (("flowinfo", addr[2]), ("scope_id", addr[3])):
            if type(v) is not int:
                raise TypeError(f"{call}: addr {name} must be an int, not {type(v).__name__}")
            if not 0 <= v <= 0xFFFFFFFF:
                raise ValueError(f"{call}: addr {name} must be in 0..2**32-1, got {v}")
    family = _sys.ip_family(host)
    if family:
        if len(addr) == 4 and family != lib.AF_INET6:
            raise ValueError(f"{call}: a 4-tuple addr must be an IPv6 address, not {host!r}")
        return family, addr
    if not host or len(host) > 253:
        raise ValueError(f"{call}: not an IP address or host name: {host!r}")
    return 0, addr


def check_host_and_port(call: str, host: Any, port: Any) -> None:
    """``TypeError``/``ValueError`` naming ``call`` unless ``host`` is a str and ``port``
    an int in 1..``PORT_MAX``: the part of ``connect_re``'s address checked everywhere it goes."""
    if not isinstance(host, str):
        raise TypeError(f"{call}: host must be a str, not {type(host).__name__}")
    if type(port) is not int or not 0 < port <= _sys.PORT_MAX:
        raise ValueError(f"{call}: port must be in 1..{_sys.PORT_MAX}, got {port!r}")


def check_connect_options(call: str, options: Any, family: int | None = None) -> None:
    """``TypeError``/``ValueError`` naming ``call`` unless ``options`` is None or
    NetVCOptions valid for a connection to an address of ``family`` (None: any)."""
    if options is None:
        return
    if not isinstance(options, NetVCOptions):
        raise TypeError(
            f"{call}: options must be NetVCOptions or None, not {type(options).__name__}"
        )
    options.validate(call, family)


#: ``connect_re`` for a host name, ``(processor, cont, host, port, options)``: what a
#: HostResolver does (``DNSProcessor.connect_by_name``), with the events ``connect_re``
#: sends and the Action it returns.
ConnectByName = Callable[
    ["UnixNetProcessor", Continuation, str, int, "NetVCOptions | None"], Action
]


class HostResolver(Protocol):
    """What ``connect_re`` needs to accept host names (the DNS layer provides it)."""

    @property
    def connect_by_name(self) -> ConnectByName: ...


class UnixNetProcessor:
    """ATS's UnixNetProcessor. ``start`` must run before any other call."""

    def __init__(self) -> None:
        self.event_processor: EventProcessor = event_processor
        self.netthreads: list[EThread] = []
        self.n_netthreads = 0
        self._lock = threading.Lock()
        self.accepts: list[NetAccept] = []
        #: Resolves host names for connect_re (set by the DNS layer when it starts).
        self.host_resolver: HostResolver | None = None

    @property
    def started(self) -> bool:
        return bool(self.netthreads) and all(t.is_alive for t in self.netthreads)

    def start(self, n_net_threads: int = 1, processor: EventProcessor | None = None) -> None:
        """Start ``n_net_threads`` net threads (the seed's order: slots, threads, per-thread
        init, connections throttle). ``RuntimeError`` if the event processor already runs.

        The net threads are the ``ET_NET`` threads of ``processor`` (default: the
        process-wide ``event_processor``), and run on its clock: the timers, the
        InactivityCop, the VCs' timeouts and the connect timeout all read it. So
        ``start(n, processor=EventProcessor(clock))`` runs the net layer on another clock
        (the tests' fake one: ``tests/conftest.py``), and ``shutdown`` stops that processor.

        The arguments are checked before anything is registered (``TypeError``/``ValueError``
        naming ``n_net_threads`` or ``processor``: an int in 1..``MAX_NET_THREADS``); if the
        threads cannot all start (out of fds, say), those that did are stopped and the event
        processor is left as it was found."""
        global POLL_CONT_SLOT
        if processor is not None and not isinstance(processor, EventProcessor):
            raise TypeError(
                "start: processor must be an EventProcessor or None, "
                f"not {type(processor).__name__}"
            )
        if type(n_net_threads) is not int:
            raise TypeError(
                f"start: n_net_threads must be an int, not {type(n_net_threads).__name__}"
            )
        if not 1 <= n_net_threads <= MAX_NET_THREADS:
            raise ValueError(
                f"start: n_net_threads must be in 1..{MAX_NET_THREADS}, got {n_net_threads}"
            )
        ep = processor if processor is not None else event_processor
        if ep.n_threads_for_type(ET_NET):
            raise RuntimeError("start: the event processor is already running; start the net "
                               "processor first (it starts the event threads)")  # fmt: skip
        old_slots = (_nh_mod.NET_HANDLER_SLOT, POLL_CONT_SLOT)
        n_slots = len(ep._slot_factories)
        self.event_processor = ep
        try:
            _nh_mod.NET_HANDLER_SLOT = ep.allocate(None)
            POLL_CONT_SLOT = ep.allocate(None)
            ep.schedule_spawn(initialize_thread_for_net, ET_NET)
            ep.start(n_net_threads)
        except BaseException:
            # Undo: stop the threads that did start (shutdown returns the processor to its
            # fresh state), else take back the hook and the slots registered above.
            if ep.started or ep.n_threads_for_type(ET_NET):
                try:
                    ep.shutdown()
                except Exception:
                    log.exception("start: stopping the threads already started failed")
            else:
                hooks = ep.groups[ET_NET].spawn_hooks  # read now: it may be a new list
                while initialize_thread_for_net in hooks:
                    hooks.remove(initialize_thread_for_net)
                del ep._slot_factories[n_slots:]
            _nh_mod.NET_HANDLER_SLOT, POLL_CONT_SLOT = old_slots
            self.netthreads = []
            self.n_netthreads = 0
            raise
        self.netthreads = ep.threads(ET_NET)
        self.n_netthreads = len(self.netthreads)
        for t in self.netthreads:  # the *_in limits are shared (net/queues.py)
            get_net_handler(t).queues.threads = self.n_netthreads
        change_net_connections_throttle()

    def shutdown(self, timeout: float | None = 5.0) -> None:
        """Cancel every listener, stop the event processor (closing every VC, epoll fd and
        eventfd) and forget the threads. ``timeout`` bounds the wait for each thread, as
        ``EventProcessor.shutdown``'s (seconds >= 0; None, -1 or inf: no limit); it is
        checked before anything stops."""
        timeout = check_join_timeout("shutdown", timeout)
        for na in list(self.accepts):
            na.action.cancel()
        self.accepts.clear()
        try:
            self.event_processor.shutdown(timeout)
        finally:
            self.netthreads = []
            self.n_netthreads = 0

    # ------------------------------------------------------------------ connect

    def connect_re(
        self, cont: Continuation, addr: tuple, options: NetVCOptions | None = None
    ) -> Action:
        """Open a connection to ``addr`` for ``cont``, on a net thread.

        ``cont`` receives ``NET_EVENT_OPEN`` with the VC once the connect completed, or
        ``NET_EVENT_OPEN_FAILED`` with ``-errno`` (``-ECONNREFUSED``, ``-ETIMEDOUT`` after
        the connect timeout, ...). The events always come from a net thread, never from
        inside this call. ``Action.cancel()`` stops them. A host name is resolved through
        ``host_resolver`` (the DNS processor, once started).
        """
        check_continuation("connect_re", cont)
        family, address = _parse_address("connect_re", addr)
        check_connect_options("connect_re", options, family or None)
        if family == 0:
            resolver = self.host_resolver
            if resolver is None:
                raise ValueError(
                    f"connect_re: {address[0]!r} is a host name; start dns_processor to resolve it"
                )
            if options is not None and options.tls is not None and not options.sni_servername:
                options = dataclasses.replace(
                    options, sni_servername=address[0]
                )  # the name asked for
            return resolver.connect_by_name(self, cont, address[0], address[1], options)
        opts = options if options is not None else NetVCOptions(
            sockopt_flags=net_config.sock_option_flag_out,
            recv_bufsize=net_config.sock_recv_buffer_size_out,
            send_bufsize=net_config.sock_send_buffer_size_out,
        )  # fmt: skip
        if not self.netthreads:
            raise RuntimeError("connect_re: net_processor is not started")
        if opts.tls is None:
            vc = UnixNetVConnection(opts)
        else:
            host = opts.sni_servername or address[0]
            vc = SSLNetVConnection(opts, opts.tls, False, host, (host, address[1]))
        vc.family = family
        vc.mutex = cont.mutex
        action = ConnectAction(cont, vc)
        vc.action = action
        # On a net thread, stay there (as ATS): a proxy's two sides then share one thread
        # and talk without cross-thread wake-ups.
        thread = this_ethread()
        if thread is None or thread not in self.netthreads:
            thread = self.event_processor.assign_thread(ET_NET)
        else:  # counted open at once: the accepts and connects after it in this pass see it
            get_net_handler(thread).count_connect(vc)

        def start(event: int, e: Any) -> None:
            nh = get_net_handler(e.ethread)
            if action.cancelled:
                nh.free_unstarted(vc)
                return
            action.connect_up(nh, address)

        thread.schedule_imm_signal(Continuation(cont.mutex, start))
        return action

    def connect_s(
        self, addr: tuple, timeout: float = 30.0, options: NetVCOptions | None = None
    ) -> UnixNetVConnection:
        """Connect and wait (blocking the calling thread, never an event thread).

        Returns the open VC; raises ``OSError`` with the connect's errno, ``TimeoutError``
        after ``timeout`` seconds (a finite number > 0), ``RuntimeError`` on an event thread.
        ``options`` is not changed (a copy gets the connect timeout). Whatever ends the wait
        (an exception included), a connection that opens after it is closed, never leaked.
        """
        if on_event_thread():
            raise RuntimeError("connect_s: would block an event thread; use connect_re there")
        if options is not None and not isinstance(options, NetVCOptions):
            raise TypeError(
                f"connect_s: options must be NetVCOptions or None, not {type(options).__name__}"
            )
        _check_connect_wait("connect_s", timeout)
        timeout = float(timeout)
        opts = dataclasses.replace(options) if options is not None else NetVCOptions()
        opts.connect_timeout = timeout
        done = threading.Event()
        result: list[tuple[int, Any]] = []

        def handler(event: int, data: Any) -> None:
            result.append((event, data))
            done.set()

        cont = Continuation(ProxyMutex(), handler)
        action = self.connect_re(cont, addr, opts)
        answered = False
        try:
            answered = done.wait(timeout + 5.0)
        finally:
            if not answered:
                # Given up (timed out, or interrupted): no callback starts after cancel();
                # a VC that opened meanwhile is closed here (none is handed back).
                action.cancel()
                for event, data in result:
                    if event == NET_EVENT_OPEN:
                        data.do_io_close()
        if not answered:
            raise TimeoutError(f"connect_s: no answer from {addr!r} within {timeout} s")
        event, data = result[0]
        if event == NET_EVENT_OPEN:
            return data  # type: ignore[no-any-return]
        err = -data if isinstance(data, int) and data < 0 else errno.EIO
        text = net_strerror(data if isinstance(data, int) else err)
        if err == errno.ETIMEDOUT:
            raise TimeoutError(err, f"connect_s: {text}")
        raise OSError(err, f"connect_s: {text}")

    # ------------------------------------------------------------------ accept

    def accept(self, cont: Continuation, opt: AcceptOptions | None = None) -> Action:
        """Listen as ``opt`` says and hand each connection to ``cont`` (``NET_EVENT_ACCEPT``
        with the VC, on its net thread). ``OSError`` naming ``bind`` for a port in use."""
        return self.main_accept(cont, None, opt)

    def main_accept(
        self, cont: Continuation, fd: int | None, opt: AcceptOptions | None = None
    ) -> Action:
        """As ``accept``, on an already listening socket ``fd`` when given.

        The mode follows ``opt``: accept on every net thread (``accept_threads == 0``, the
        ``proxy.config.accept_threads`` record's default here; one socket per thread with
        ``reuseport``), dedicated accept threads (``accept_threads > 0``, ATS's default), or
        a periodic accept on one net thread (``frequent_accept=False``).
        """
        check_continuation("main_accept", cont)
        opt = opt if opt is not None else AcceptOptions()
        if not isinstance(opt, AcceptOptions):
            raise TypeError("main_accept: opt must be AcceptOptions")
        opt.validate("main_accept")
        if not self.netthreads:
            raise RuntimeError("main_accept: net_processor is not started")
        try:
            threads = self.event_processor.threads(opt.etype)
        except ValueError:
            raise ValueError(
                f"main_accept: AcceptOptions.etype: unknown event type {opt.etype}"
            ) from None
        if not threads:
            raise ValueError(f"main_accept: AcceptOptions.etype {opt.etype} has no threads")
        if fd is not None:
            check_listen_fd("main_accept", fd)
        na = NetAccept(cont, opt, self)
        try:
            na.do_listen(fd)
            n_accept_threads = opt.n_accept_threads()
            if not opt.frequent_accept:
                na.init_accept(threads[0])
            elif n_accept_threads > 0:
                na.init_accept_loop(self.event_processor, n_accept_threads)
            else:
                na.init_accept_per_thread(threads, get_net_handler)
        except BaseException:
            na.close_listener(refused=True)  # the caller's fd is handed back open
            raise
        na.caller_fd = None  # the listener's now: closed when it is cancelled
        self.accepts.append(na)
        return na.action


#: The process-wide net processor (ATS's ``netProcessor``).
net_processor = UnixNetProcessor()
