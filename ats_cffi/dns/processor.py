"""DNSProcessor (the ``dns_processor`` singleton): starts a DNSHandler on every net thread,
resolves names for continuations, and resolves host names for ``connect_re``/``connect_s``."""

from __future__ import annotations

import errno
import itertools
import logging
import re
import socket
import threading
import time

from ats_cffi.dns.cache import Clock, HostCache
from ats_cffi.dns.codes import DNSConnMode, DNSError, describe_failure
from ats_cffi.dns.config import DNSConfig, NameServer, dns_config
from ats_cffi.dns.entry import DNSLookup
from ats_cffi.dns.handler import DNSHandler
from ats_cffi.dns.hostent import HostEnt
from ats_cffi.dns.resolv import HostsFile, read_resolv_conf
from ats_cffi.eventsystem.continuation import Continuation, check_continuation
from ats_cffi.eventsystem.ethread import EThread, this_ethread
from ats_cffi.eventsystem.event import Action
from ats_cffi.eventsystem.processor import check_join_timeout, run_on_threads
from ats_cffi.net.codes import NET_EVENT_OPEN_FAILED, OpenError
from ats_cffi.net.nethandler import get_net_handler
from ats_cffi.net.netvc import NetVCOptions
from ats_cffi.net.processor import (
    UnixNetProcessor,
    check_connect_options,
    check_host_and_port,
    net_processor,
)

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
    ``shutdown`` (``stop`` closes the DNS sockets, which live in the net threads' epolls).

    ``clock`` is the cache's; None (the default) means the clock of the net threads it
    starts on (their EventProcessor's), so that the lookups' timeouts and the answers'
    TTLs read one clock (a test's fake one included)."""

    def __init__(self, config: DNSConfig = dns_config, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock
        self.handlers: dict[EThread, DNSHandler] = {}
        self._handler_list: list[DNSHandler] = []
        self._next = itertools.count()
        self._lock = threading.Lock()
        self.servers: tuple[NameServer, ...] = ()
        self.conn_mode = DNSConnMode.TCP_RETRY
        self.hosts = HostsFile()
        self.cache = HostCache(0, 0.0, clock if clock is not None else time.monotonic)
        self.net_processor: UnixNetProcessor | None = None

    @property
    def started(self) -> bool:
        return bool(self.handlers)

    def start(self, processor: UnixNetProcessor | None = None) -> None:
        """Read the config (name servers, else those of ``resolv_conf``; the hosts file),
        open a DNSHandler with its connections on every net thread of ``processor``
        (default ``net_processor``) and become its ``host_resolver``.

        ``TypeError`` if ``processor`` is not a ``UnixNetProcessor``; ``RuntimeError`` if
        already started, if the net processor is not, or on a net thread; ``OSError`` if a
        handler cannot be set up.
        """
        if processor is not None and not isinstance(processor, UnixNetProcessor):
            raise TypeError(f"dns_processor.start: processor must be a UnixNetProcessor, "
                            f"not {type(processor).__name__}")  # fmt: skip
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
            clock = self.clock if self.clock is not None else np.event_processor.clock
            self.cache = HostCache(cfg.cache_size, cfg.cache_ttl_max, clock)
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

    def stop(self, timeout: float | None = 5.0) -> None:
        """Close every handler: pending lookups get ``DNS_EVENT_LOOKUP`` with
        ``DNSError.SHUTDOWN``, every DNS socket is closed, ``connect_re`` stops taking host
        names. A second call does nothing. ``RuntimeError`` on a net thread, or when a net
        thread does not answer within ``timeout`` seconds (> 0, or None, -1 or inf for no
        limit, as ``EventProcessor.shutdown``'s; else ``TypeError``/``ValueError``, before
        anything is stopped). Not 0: the handlers must be closed on their own threads."""
        timeout = check_join_timeout("dns_processor.stop", timeout, positive=True)
        with self._lock:
            handlers, self.handlers = self.handlers, {}
            self._handler_list = []
            np, self.net_processor = self.net_processor, None
            if np is not None and np.host_resolver is self:
                np.host_resolver = None
            self._close_handlers(handlers, timeout)

    @staticmethod
    def _close_handlers(handlers: dict[EThread, DNSHandler], timeout: float | None = 5.0) -> None:
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

        ``name`` is checked here, by :func:`check_host_name`: an IP literal, or a host name
        of ASCII letters, digits, ``-`` and ``_`` in dot-separated labels of 1..63
        characters, at most 253 characters, with an optional trailing dot; compared without
        regard to case. A non-ASCII (internationalized) name is refused: pass its IDNA
        A-label form (``xn--...``), encoded with the IDNA version you mean (2003 and 2008
        differ, e.g. on ``ß``). Nothing else (NUL, space, control characters, backslash
        escapes, ...) is ever sent to a name server.

        ``TypeError``/``ValueError`` naming the argument for a bad one, ``RuntimeError``
        when not started.
        """
        check_continuation("gethostbyname", cont)
        if not isinstance(name, str):
            raise TypeError(f"gethostbyname: name must be a str, not {type(name).__name__}")
        # bool is an int (False == AF_UNSPEC): refused, like any other non-int.
        ok = isinstance(family, int) and not isinstance(family, bool)
        families = _FAMILIES.get(family) if ok else None
        if families is None:
            raise ValueError(f"gethostbyname: family must be AF_INET, AF_INET6 or AF_UNSPEC, "
                             f"got {family!r}")  # fmt: skip
        key = check_host_name("gethostbyname", "name", name)
        return self._lookup(cont, key, families)

    def _lookup(self, cont: Continuation, key: str, families: tuple[int, ...]) -> DNSLookup:
        """``gethostbyname`` for a checked, normalized name."""
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
        address, server failure), as an ``OpenError`` whose ``reason`` names the DNS result
        and the name (``net_strerror`` gives it). The returned action cancels either step.

        ``host`` is checked here as ``gethostbyname`` checks its name: ``ValueError``
        naming ``connect_re`` and the address for one that is not a host name.
        """
        check_continuation("connect_re", cont)
        check_host_and_port("connect_re", host, port)
        key = check_host_name("connect_re", f"addr ({host!r}, {port})", host)
        check_connect_options("connect_re", options)
        action = ConnectByNameAction(cont)

        def resolved(event: int, ent: HostEnt) -> None:
            # Runs with cont's mutex held (the lookup's continuation shares it).
            action.lookup = None
            if action.cancelled:
                return
            if not ent.good:
                err = errno.ETIMEDOUT if ent.error is DNSError.TIMEOUT else errno.EHOSTUNREACH
                reason = describe_failure(host, ent.error or DNSError.BAD_ANSWER)
                log.debug("connect_re: %s", reason)
                cont.handle_event(NET_EVENT_OPEN_FAILED, OpenError(-err, reason))
                return
            try:
                action.connect = processor.connect_re(cont, (ent.addrs[0], port), options)
            except (RuntimeError, OSError, ValueError) as exc:
                log.info("connect_re to %s (%s) failed: %s", host, ent.addrs[0], exc)
                cont.handle_event(NET_EVENT_OPEN_FAILED, -_errno_of(exc))

        lookup_cont = Continuation(cont.mutex, resolved)
        action.lookup = self._lookup(lookup_cont, key, _FAMILIES[socket.AF_UNSPEC])
        return action


def _errno_of(exc: BaseException) -> int:
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.ENETDOWN if isinstance(exc, RuntimeError) else errno.EINVAL


#: A host name without its final dot: ASCII letters, digits, "-" and "_" in labels of 1..63.
_HOST_NAME = re.compile(r"(?:[A-Za-z0-9_-]{1,63}\.)*[A-Za-z0-9_-]{1,63}")
_NOT_HOST_CHAR = re.compile(r"[^A-Za-z0-9_.-]")


def check_host_name(call: str, arg: str, name: str) -> str:
    """The normalized form (lower case, no trailing dot) of host name ``name``, which must
    be an IP literal or a host name as ``gethostbyname`` says; else ``ValueError`` naming
    ``call`` and ``arg``. One pass of a compiled regex over the name."""
    if name.endswith("."):
        key = name[:-1]
        if key.endswith("."):
            raise ValueError(f"{call}: {arg}: not a valid host name: {name!r} (empty label)")
    else:
        key = name
    if not key:
        raise ValueError(f"{call}: {arg}: empty host name")
    if ":" in key:  # only an IPv6 literal has one
        try:
            socket.inet_pton(socket.AF_INET6, key)
        except (OSError, ValueError):
            raise ValueError(f"{call}: {arg}: not a host name or IP address: {name!r}") from None
        return key.lower()
    if len(key) > 253:
        raise ValueError(f"{call}: {arg}: host name longer than 253 characters")
    if _HOST_NAME.fullmatch(key) is None:
        raise ValueError(f"{call}: {arg}: not a valid host name: {name!r} ({_why(key)})")
    return key.lower()


def _why(name: str) -> str:
    """What is wrong with ``name``, which ``_HOST_NAME`` refused (for the message only)."""
    if not name.isascii():
        return "non-ASCII: pass its IDNA form, xn--..."
    bad = _NOT_HOST_CHAR.search(name)
    if bad is not None:
        return f"character {bad.group()!r} is not allowed"
    if any(len(label) > 63 for label in name.split(".")):
        return "a label is longer than 63 characters"
    return "empty label"


#: The process-wide DNS processor (ATS's ``dnsProcessor``).
dns_processor = DNSProcessor()
