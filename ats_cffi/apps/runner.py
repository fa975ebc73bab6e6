"""Running one process of the command: listeners up, wait for signals, graceful stop.

The main thread only waits (on a self-pipe that the signal handlers wake) while the net
threads do the work. SIGTERM/SIGINT stop it: listeners are cancelled, sessions told to
drain, and the process waits until ``proxy.process.net.connections_currently_open`` is 0 or
the drain timeout has passed (a second signal cuts the wait short); then it prints a one-line
summary, shuts the net processor down and returns 0. SIGHUP reloads the records file's
dynamic records.

Once listening, the process tunes CPython's cyclic collector for serving (``tune_gc``).
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ats_cffi.apps.config import ConfigError, reload_records
from ats_cffi.apps.echo import EchoService
from ats_cffi.apps.http import STATS_ROUTES, HttpService, http_config
from ats_cffi.apps.service import ListenSpec, Service, format_hostport
from ats_cffi.apps.stats import collect, summary_fields, summary_line
from ats_cffi.apps.tls import CommandTLS, make_tls
from ats_cffi.apps.tunnel import TunnelService, start_name_resolution
from ats_cffi.net import net_config, net_processor, net_stats
from ats_cffi.net.tls import ServerContext, TLSConfigError

log = logging.getLogger("ats.apps")

OPEN = "proxy.process.net.connections_currently_open"
SERVICES = ("echo", "tunnel", "http")
HANDLED_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


#: The command's name, at the start of its error lines.
PROG = "ats-cffi"


class CommandError(Exception):
    """An error the command reports as one line on stderr before it exits with
    ``exit_status`` (``report_error``)."""

    exit_status = 1


class UsageError(CommandError):
    """Bad options or configuration: one line on stderr, exit status 2."""

    exit_status = 2


class StartError(CommandError):
    """The service cannot start (a port in use, ...): one line on stderr, exit status 1."""

    exit_status = 1


def error_line(message: object) -> None:
    """Write the command's one line about an error on stderr."""
    sys.stderr.write(f"{PROG}: error: {message}\n")


def report_error(exc: CommandError) -> int:
    """Report ``exc`` (``error_line``) and return the exit status it stands for."""
    error_line(exc)
    return exc.exit_status


@dataclass(frozen=True)
class Settings:
    """What the command line asks for (records aside, which live in ``net_config``)."""

    service: str
    listen: tuple[str, int]
    upstream: tuple[str, int] | None = None
    stats: tuple[str, int] | None = None
    net_threads: int = 1
    inactivity_timeout: float = 0.0
    workers: int = 1
    drain_timeout: float = 10.0
    config: str | None = None
    log_level: str = "info"
    #: echo/tunnel: move bytes through VIOs and Python continuations, not the native splice.
    vio: bool = False
    #: Records set by command-line options (they win over the file, also on SIGHUP).
    cli_records: dict[str, Any] = field(default_factory=dict)
    #: ``--tls-cert``/``--tls-key`` (``--tls-config`` is a record: ``cli_records``).
    tls_cert: str | None = None
    tls_key: str | None = None
    #: tunnel: ``--upstream-tls``, ``--upstream-ca``.
    upstream_tls: bool = False
    upstream_ca: str | None = None

    def listeners(self) -> list[tuple[str, tuple[str, int]]]:
        """``(name, (host, port))`` of each listener: the service's, then the stats one."""
        out = [(self.service, self.listen)]
        if self.stats is not None:
            out.append(("stats", self.stats))
        return out

    def with_ports(self, ports: list[int]) -> Settings:
        """The same settings with the listeners' ports replaced (workers share them)."""
        listen = (self.listen[0], ports[0])
        stats = (self.stats[0], ports[1]) if self.stats is not None else None
        return replace(self, listen=listen, stats=stats)


class Signals:
    """SIGTERM/SIGINT/SIGHUP as counters the main thread reads after ``wait``.

    The handlers only count: the main thread does the work. ``signal.set_wakeup_fd`` writes
    to a pipe that ``wait`` selects on, so a signal ends a wait at once.
    """

    def __init__(self) -> None:
        self.stops = 0
        self.hups = 0
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old: dict[int, Any] = {}
        self._old_wakeup = -1

    def install(self) -> Signals:
        """Install the handlers (main thread only), then unblock the signals (a worker is
        forked with them blocked, so that none is lost before its handlers exist)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._on_stop)
        self._old[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hup)
        self._old_wakeup = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        return self

    def _on_stop(self, signum: int, frame: Any) -> None:
        self.stops += 1

    def _on_hup(self, signum: int, frame: Any) -> None:
        self.hups += 1

    @property
    def fd(self) -> int:
        """The fd that is readable once a signal came (for a caller's own select)."""
        return self._r

    def drain(self) -> None:
        try:
            while os.read(self._r, 512):
                pass
        except BlockingIOError:
            pass

    def wait(self, timeout: float) -> None:
        """Sleep up to ``timeout`` seconds or until a signal arrives."""
        r, _, _ = select.select([self._r], [], [], max(timeout, 0.0))
        if r:
            self.drain()

    def close(self) -> None:
        """Restore the previous handlers and close the pipe."""
        signal.set_wakeup_fd(self._old_wakeup)
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
        self.close_fds()

    def close_fds(self) -> None:
        """Close the pipe only (a forked worker drops its parent's copy this way)."""
        if self._r >= 0:
            os.close(self._r)
            os.close(self._w)
            self._r = self._w = -1


def command_tls(settings: Settings) -> CommandTLS:
    """The TLS contexts of ``settings`` (``apps/tls.py``), from the records in force;
    ``UsageError`` (one line, naming the file) for a certificate, key or CA file that
    does not load."""
    try:
        return make_tls(
            settings.service,
            settings.tls_cert,
            settings.tls_key,
            settings.upstream_tls,
            settings.upstream_ca,
        )
    except TLSConfigError as exc:
        raise UsageError(f"TLS: {' '.join(str(exc).split())}") from None


def build_services(
    settings: Settings, worker: int | None, tls: CommandTLS | None = None
) -> list[Service]:
    """The service of ``settings`` and, with ``--stats``, its stats listener. A tunnel
    connects to its upstream with ``tls.upstream`` (if any)."""
    timeout = settings.inactivity_timeout
    # 0: none given on the command line (the records' value then).
    http_timeout = timeout or http_config.keep_alive_no_activity_timeout_in
    http_timeouts = {
        "transaction_no_activity_timeout": http_config.transaction_no_activity_timeout_in,
        "transaction_active_timeout": http_config.transaction_active_timeout_in,
    }
    main: Service
    if settings.service == "echo":
        main = EchoService(timeout, worker, native=not settings.vio)
    elif settings.service == "tunnel":
        assert settings.upstream is not None
        upstream_tls = tls.upstream if tls is not None else None
        main = TunnelService(
            settings.upstream, timeout, worker, native=not settings.vio, upstream_tls=upstream_tls
        )
    else:
        main = HttpService(inactivity_timeout=http_timeout, worker=worker, **http_timeouts)
    services = [main]
    if settings.stats is not None:
        services.append(
            HttpService(
                STATS_ROUTES, http_timeout, worker, stats_source=main, name="stats", **http_timeouts
            )
        )
    return services


def listen_spec(
    host: str, port: int, reuseport: bool, backdoor: bool, tls: ServerContext | None = None
) -> ListenSpec:
    """A listener with the accept records in force (``accept_threads``, ``defer_accept``);
    a TLS one with ``tls``."""
    return ListenSpec(
        host=host,
        port=port,
        accept_threads=net_config.accept_threads,
        defer_accept=net_config.defer_accept,
        reuseport=reuseport,
        backdoor=backdoor,
        tls=tls,
    )


def listen_error(host: str, port: int, exc: OSError) -> StartError:
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    if exc.errno == errno.EADDRINUSE:
        reason = "address already in use"
    return StartError(f"cannot listen on {format_hostport(host, port)}: {reason}")


def listening_line(name: str, host: str, port: int) -> str:
    return f"ats-cffi {name} listening on {format_hostport(host, port)}"


def drain_services(services: list[Service], signals: Signals, timeout: float) -> bool:
    """Stop accepting, ask sessions to finish and wait for every connection to close (or
    ``timeout`` seconds, or another stop signal). True when all closed."""
    for s in services:
        s.stop_accepting()
    for s in services:
        s.drain()
    stops = signals.stops
    deadline = time.monotonic() + timeout
    while net_stats.get(OPEN) > 0:
        left = deadline - time.monotonic()
        if left <= 0 or signals.stops > stops:
            return False
        signals.wait(min(left, 0.02))
    return True


#: Allocations between two collections of the youngest generation while serving (CPython's
#: default is 700). A connection's objects are freed by reference counting when it closes,
#: but with the default a young collection ran every ~12 new connections and found most of
#: their objects still alive, scanned them, and promoted them until full collections
#: followed: 3.5 us of the 48 us of server CPU a new connection costs (ats-cffi http,
#: Connection: close, median of 5 interleaved runs), as much as disabling the collector saved.
GC_YOUNG_THRESHOLD = 7000


def tune_gc() -> None:
    """Set the cyclic collector up for serving: collect the start-up garbage, freeze what
    is left (modules, classes, services: long-lived, scanned by no later collection), and
    collect the young generation every ``GC_YOUNG_THRESHOLD`` allocations."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def serve(
    settings: Settings,
    worker: int | None = None,
    report: Callable[[dict[str, Any]], None] | None = None,
    tls: CommandTLS | None = None,
) -> int:
    """Run the service in this process until a stop signal; returns the exit status.

    ``report`` (workers) receives ``{"ready": [...]}`` once listening and ``{"summary": ...}``
    at the end instead of the lines on stdout. ``tls``: the TLS contexts made before (the
    parent's, for a worker); None: made here (``command_tls``). ``UsageError``/``StartError``
    for problems found while starting.
    """
    if tls is None:
        tls = command_tls(settings)
    signals = Signals().install()
    parent = os.getppid()
    net_processor.start(settings.net_threads)
    stop_resolution: Callable[[], None] | None = None
    try:
        if settings.upstream is not None:
            try:
                stop_resolution = start_name_resolution(settings.upstream[0])
            except ValueError as exc:
                raise UsageError(f"--upstream: {exc}") from None
        services = build_services(settings, worker, tls)
        reuseport = worker is not None
        bound = []
        for service, (name, (host, port)) in zip(services, settings.listeners()):
            stats = name == "stats"  # plain HTTP, exempt from the throttle
            spec = listen_spec(host, port, reuseport, stats, None if stats else tls.server)
            try:
                real_port = service.listen(spec)
            except OSError as exc:
                raise listen_error(host, port, exc) from None
            except ValueError as exc:  # an option (or record) out of what the socket takes
                raise UsageError(f"listening on {host}:{port}: {exc}") from None
            bound.append((name, host, real_port))
        tune_gc()
        if report is not None:
            report({"ready": bound})
        else:
            for name, host, port in bound:
                print(listening_line(name, host, port))
            sys.stdout.flush()
        while not signals.stops:
            signals.wait(0.5)
            if signals.hups:
                signals.hups = 0
                reload_config(settings, tls)
            if worker is not None and os.getppid() != parent:
                log.error("worker %d: the parent process is gone; stopping", worker)
                break
        drained = drain_services(services, signals, settings.drain_timeout)
        values = collect(services[0].stats)
        if report is not None:
            report({"summary": values, "drained": drained})
        else:
            fields = summary_fields(values, services[0].stat_names)
            fields.append(f"drain={'complete' if drained else 'timeout'}")
            print(summary_line(settings.service, fields))
            sys.stdout.flush()
    finally:
        if stop_resolution is not None:
            stop_resolution()
        net_processor.shutdown()
        signals.close()
    return 0


def reload_config(settings: Settings, tls: CommandTLS | None = None) -> None:
    """SIGHUP: re-read the records file (if any) and apply its dynamic records, then the
    ticket key file of ``tls``'s server context (``proxy.config.ssl.server.ticket_key
    .filename``, which the records file may just have changed)."""
    if settings.config is None:
        log.info("SIGHUP: no --config file to reload")
    else:
        try:
            changed = reload_records(settings.config, frozenset(settings.cli_records))
        except ConfigError as exc:
            log.error("SIGHUP: %s; keeping the records in force", exc)
        else:
            log.info("SIGHUP: reloaded %s (%s)", settings.config, ", ".join(changed) or "no change")
    if tls is not None:
        tls.reload_ticket_keys()
