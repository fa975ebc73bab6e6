"""DNSProcessor (the ``dns_processor`` singleton): starts a DNSHandler on every net thread,
resolves names for continuations, and resolves host names for ``connect_re``/``connect_s``."""

from __future__ import annotations

import errno
import itertools
import logging
import socket
import threading
import time

import dns.exception
import dns.name

from ats_cffi.dns.cache import Clock, HostCache
from ats_cffi.dns.codes import DNSConnMode, DNSError
from ats_cffi.dns.config import DNSConfig, NameServer, dns_config
from ats_cffi.dns.entry import DNSLookup
from ats_cffi.dns.handler import DNSHandler
from ats_cffi.dns.hostent import HostEnt
from ats_cffi.dns.resolv import HostsFile, normalize_name, read_resolv_conf
from ats_cffi.eventsystem.continuation import Continuation, check_continuation
from ats_cffi.eventsystem.ethread import EThread, this_ethread
from ats_cffi.eventsystem.event import Action
from ats_cffi.eventsystem.processor import run_on_threads
from ats_cffi.net.codes import NET_EVENT_OPEN_FAILED
from ats_cffi.net.nethandler import get_net_handler
from ats_cffi.net.netvc import NetVCOptions
from ats_cffi.net.processor import UnixNetProcessor, net_processor

log = logging.getLogger("ats.dns")

_FAMILIES = {
    socket.AF_INET: (socket.AF_INET,),
    socket.AF_INET6: (socket.AF_INET6,),
    socket.AF_UNSPEC: (socket.AF_INET, socket.AF_INET6),
}


class ConnectByNameAction(Action):
    """What ``connect_re`` returns for a host name: ``cancel()`` stops the lookup, or the
    connect it started, and no event reaches the continuation afterwards."""

    def __init__(self, cont: Continuation) -> None:
        super().__init__(cont)
        self.lookup: Action | None = None
        self.connect: Action | None = None

    def _cancelled_locked(self) -> None:
        # Under the continuation's mutex, which the lookup's delivery also holds: either
        # the lookup has not answered (cancel it) or it has and started the connect.
        for a in (self.lookup, self.connect):
            if a is not None:
                a.cancel()


class DNSProcessor:
    """ATS's dnsProcessor. ``start`` after ``net_processor.start``; ``stop`` before its
    ``shutdown`` (``stop`` closes the DNS sockets, which live in the net threads' epolls)."""

    def __init__(self, config: DNSConfig = dns_config, clock: Clock = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.handlers: dict[EThread, DNSHandler] = {}
        self._handler_list: list[DNSHandler] = []
        self._next = itertools.count()
        self._lock = threading.Lock()
        self.servers: tuple[NameServer, ...] = ()
        self.conn_mode = DNSConnMode.TCP_RETRY
        self.hosts = HostsFile()
        self.cache = HostCache(0, 0.0, clock)
        self.net_processor: UnixNetProcessor | None = None

    @property
    def started(self) -> bool:
        return bool(self.handlers)

    def start(self, processor: UnixNetProcessor | None = None) -> None:
        """Read the config (name servers, else those of ``resolv_conf``; the hosts file),
        open a DNSHandler with its connections on every net thread of ``processor``
        (default ``net_processor``) and become its ``host_resolver``.

        ``RuntimeError`` if already started, if the net processor is not, or on a net
        thread; ``OSError`` if a handler cannot be set up.
        """
        np = processor if processor is not None else net_processor
        with self._lock:
            if self.handlers:
                raise RuntimeError("dns_processor.start: already started")
            threads = list(np.netthreads)
            if not threads:
                raise RuntimeError("dns_processor.start: start net_processor first")
            cfg = self.config
            self.servers = cfg.nameservers or read_resolv_conf(cfg.resolv_conf)
            if not self.servers:
                log.warning("no DNS name server configured: lookups not in %s will fail",
                            cfg.host_file_path or "the hosts file")  # fmt: skip
            self.conn_mode = DNSConnMode(cfg.connection_mode)
            self.hosts = HostsFile.read(cfg.host_file_path)
            self.cache = HostCache(cfg.cache_size, cfg.cache_ttl_max, self.clock)
            made: dict[EThread, DNSHandler] = {}
            made_lock = threading.Lock()

            def init(t: EThread) -> None:
                h = DNSHandler(self, t, get_net_handler(t))
                with made_lock:
                    made[t] = h
                with h.mutex:
                    h.open_cons()

            try:
                run_on_threads(threads, init, "dns_processor.start")
            except BaseException:
                self._close_handlers(made)
                raise
            self.handlers = made
            self._handler_list = [made[t] for t in threads]
            self.net_processor = np
            np.host_resolver = self
            log.debug("started on %d threads, name servers %s", len(threads), self.servers)

    def stop(self, timeout: float = 5.0) -> None:
        """Close every handler: pending lookups get ``DNS_EVENT_LOOKUP`` with
        ``DNSError.SHUTDOWN``, every DNS socket is closed, ``connect_re`` stops taking host
        names. A second call does nothing. ``RuntimeError`` on a net thread."""
        with self._lock:
            handlers, self.handlers = self.handlers, {}
            self._handler_list = []
            np, self.net_processor = self.net_processor, None
            if np is not None and np.host_resolver is self:
                np.host_resolver = None
            self._close_handlers(handlers, timeout)

    @staticmethod
    def _close_handlers(handlers: dict[EThread, DNSHandler], timeout: float = 5.0) -> None:
        alive = [t for t in handlers if t.is_alive]
        try:
            if alive:
                run_on_threads(alive, lambda t: handlers[t].close(), "dns_processor.stop", timeout)
        finally:
            for h in handlers.values():
                if not h.closed:
                    h.close(post=False)  # its thread has ended: nothing runs it any more

    # ------------------------------------------------------------------ lookups

    def gethostbyname(
        self, cont: Continuation, name: str, family: int = socket.AF_INET
    ) -> DNSLookup:
        """Resolve ``name`` for ``cont``: the hosts file first, then the cache, then DNS.

        ``cont`` receives ``DNS_EVENT_LOOKUP`` with a :class:`HostEnt`, always on a net
        thread (the caller's own, if it is one) and never inside this call: its ``addrs``
        when ``good``, else its ``error`` (``DNSError.NXDOMAIN``, ``NODATA``, ``TIMEOUT``,
        ``SERVFAIL``, ...). ``family`` is ``AF_INET`` (A), ``AF_INET6`` (AAAA) or
        ``AF_UNSPEC`` (A, then AAAA if the name has no A). An IP address is answered as
        itself. The returned action's ``cancel()`` stops the event.

        ``TypeError``/``ValueError`` for a bad argument, ``RuntimeError`` when not started.
        """
        check_continuation("gethostbyname", cont)
        if not isinstance(name, str):
            raise TypeError(f"gethostbyname: name must be a str, not {type(name).__name__}")
        families = _FAMILIES.get(family) if isinstance(family, int) else None
        if families is None:
            raise ValueError(f"gethostbyname: family must be AF_INET, AF_INET6 or AF_UNSPEC, "
                             f"got {family!r}")  # fmt: skip
        key = normalize_name(name)
        _check_name("gethostbyname", key)
        h = self.handler_for(this_ethread())
        lookup = DNSLookup(cont, key, families)
        h.thread.schedule_imm(h, cookie=lookup)
        return lookup

    def handler_for(self, thread: EThread | None) -> DNSHandler:
        """``thread``'s handler if it is a net thread, else the next one round-robin.
        ``RuntimeError`` when not started."""
        handlers = self.handlers
        h = handlers.get(thread) if thread is not None else None
        if h is not None:
            return h
        hl = self._handler_list
        if not hl:
            raise RuntimeError("dns_processor is not started")
        return hl[next(self._next) % len(hl)]

    def connect_by_name(
        self,
        processor: UnixNetProcessor,
        cont: Continuation,
        host: str,
        port: int,
        options: NetVCOptions | None,
    ) -> Action:
        """``connect_re`` for a host name: resolve ``host`` (``AF_UNSPEC``: IPv4 first), then
        ``processor.connect_re(cont, (address, port), options)`` to its first address.

        ``cont`` receives what ``connect_re`` sends (``NET_EVENT_OPEN`` with the VC or
        ``NET_EVENT_OPEN_FAILED``); a failed lookup is ``NET_EVENT_OPEN_FAILED`` with
        ``-ETIMEDOUT`` (no name server answered) or ``-EHOSTUNREACH`` (no such host, no
        address, server failure). The returned action cancels either step.
        """
        check_continuation("connect_re", cont)
        if options is not None:
            if not isinstance(options, NetVCOptions):
                raise TypeError("connect_re: options must be NetVCOptions")
            options.validate("connect_re")
        action = ConnectByNameAction(cont)

        def resolved(event: int, ent: HostEnt) -> None:
            # Runs with cont's mutex held (the lookup's continuation shares it).
            action.lookup = None
            if action.cancelled:
                return
            if not ent.good:
                err = errno.ETIMEDOUT if ent.error is DNSError.TIMEOUT else errno.EHOSTUNREACH
                log.debug("connect_re: cannot resolve %s: %s", host, ent.error)
                cont.handle_event(NET_EVENT_OPEN_FAILED, -err)
                return
            try:
                action.connect = processor.connect_re(cont, (ent.addrs[0], port), options)
            except (RuntimeError, OSError, ValueError) as exc:
                log.info("connect_re to %s (%s) failed: %s", host, ent.addrs[0], exc)
                cont.handle_event(NET_EVENT_OPEN_FAILED, -_errno_of(exc))

        lookup_cont = Continuation(cont.mutex, resolved)
        action.lookup = self.gethostbyname(lookup_cont, host, socket.AF_UNSPEC)
        return action


def _errno_of(exc: BaseException) -> int:
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.ENETDOWN if isinstance(exc, RuntimeError) else errno.EINVAL


def _check_name(call: str, name: str) -> None:
    """``ValueError`` unless ``name`` (normalized) can be asked: non-empty, at most 253
    characters, labels of 1..63 characters (an IP literal always passes)."""
    if not name:
        raise ValueError(f"{call}: empty host name")
    if ":" in name:
        try:
            socket.inet_pton(socket.AF_INET6, name)
            return
        except OSError:
            raise ValueError(f"{call}: not a host name or IP address: {name!r}") from None
    try:
        dns.name.from_text(name + ".")
    except dns.exception.DNSException as exc:
        raise ValueError(f"{call}: not a valid host name: {name!r} ({exc})") from None
    if len(name) > 253:
        raise ValueError(f"{call}: host name longer than 253 characters")


#: The process-wide DNS processor (ATS's ``dnsProcessor``).
dns_processor = DNSProcessor()
