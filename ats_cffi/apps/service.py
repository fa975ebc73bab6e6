"""Service: the accept continuation every app service derives from, and its listener.

A service receives ``NET_EVENT_ACCEPT`` from ``net_processor.accept`` (on the net thread the
new VC runs on, with the service's mutex held) and starts one session per connection.
Sessions register themselves so that a graceful stop can visit them (``drain``).

Lock order: a session's mutex before the service's registry lock, never the reverse.
"""

from __future__ import annotations

import logging
import sys
import threading
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from mypy_extensions import mypyc_attr

from ats_cffi.apps.stats import AppStats
from ats_cffi.eventsystem import Action, Continuation, ProxyMutex
from ats_cffi.eventsystem.iobuffer import DEFAULT_BLOCK_SIZE
from ats_cffi.net import AcceptOptions, UnixNetVConnection, net_config, net_processor
from ats_cffi.net.codes import NET_EVENT_ACCEPT, net_strerror

log: Final = logging.getLogger("ats.apps")

#: Block size of the sessions' MIOBuffers: the IOBuffers' default.
BLOCK_SIZE: Final = DEFAULT_BLOCK_SIZE
#: Bytes a session lets wait in one direction before it stops reading from the source (the
#: MIOBuffer water mark): memory per direction stays under about this plus two blocks.
WATER_MARK: Final = 64 * 1024

_FLOAT_MAX: Final = sys.float_info.max


@dataclass(frozen=True)
class ListenSpec:
    """Where one listener listens and how it accepts (``tls``: a ``ServerContext`` for a
    TLS listener, None for a plain one)."""

    host: str
    port: int
    accept_threads: int
    defer_accept: int
    reuseport: bool = False
    backdoor: bool = False
    tls: Any = None

    def accept_options(self) -> AcceptOptions:
        """The AcceptOptions of this listener; socket options from the ``*_in`` records, as
        ATS's proxy ports take them."""
        return AcceptOptions(
            port=self.port,
            local_address=self.host,
            accept_threads=self.accept_threads,
            defer_accept=self.defer_accept,
            reuseport=self.reuseport,
            backdoor=self.backdoor,
            sockopt_flags=net_config.sock_option_flag_in,
            recv_bufsize=net_config.sock_recv_buffer_size_in,
            send_bufsize=net_config.sock_send_buffer_size_in,
            tls=self.tls,
        )


def format_hostport(host: str, port: int) -> str:
    """``127.0.0.1:80`` or ``[::1]:80``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_flag(call: str, name: str, value: Any) -> bool:
    """``value`` if it is a bool, else ``TypeError`` naming ``call`` and ``name``."""
    if not isinstance(value, bool):
        raise TypeError(f"{call}: {name} must be a bool, not {type(value).__name__}")
    return value


def _closed_handler(event: int, data: Any) -> None:
    """A closed session's handler: events that still come (none should) are ignored."""


#: Bound once: compiled, a module's function used as a value is looked up by name.
_CLOSED_HANDLER: Final = _closed_handler


@mypyc_attr(allow_interpreted_subclasses=True)
class Session(Continuation):
    """One connection's state machine. Subclasses drive VIOs in ``handle_event``."""

    #: The service's counter of sessions and its gauge of open ones, raised by ``opened``
    #: and the gauge lowered by ``close`` ("" for none).
    total_stat: ClassVar[str] = ""
    current_stat: ClassVar[str] = ""

    def __init__(self, service: Service) -> None:
        super().__init__(ProxyMutex())
        self.service = service
        self.vc: Any = None
        self.closed = False

    def opened(self) -> None:
        """Count the new session (``total_stat``, ``current_stat``) and register it with the
        service, whose ``drain`` then visits it."""
        stats = self.service.stats
        if self.total_stat:
            stats.incr(self.total_stat)
        if self.current_stat:
            stats.incr(self.current_stat)
        self.service.add_session(self)

    def on_drain(self) -> None:
        """The process is stopping (called with this session's mutex held): finish soon."""

    def close(self) -> None:
        """Close the connection once, lower the gauge and forget the session."""
        if not self.closed:
            self.closed = True
            self.vc.do_io_close()
            if self.current_stat:
                self.service.stats.incr(self.current_stat, -1)
            self.service.remove_session(self)
            self.release()

    def release(self) -> None:
        """After the close: drop what ties the session to itself (its handler, which may be
        a bound method of it; subclasses: the buffers and their readers), so that reference
        counting frees it and its buffers at once, not the cyclic collector some time later
        (ATS frees a session's buffers when it closes). Nothing of the session is used after
        this."""
        self.handler = _CLOSED_HANDLER


@mypyc_attr(allow_interpreted_subclasses=True)
class Service(Continuation):
    """An accept continuation: one session per accepted connection.

    ``name`` is the service's name on the command line (``service_name`` unless given one
    when made); ``stats`` its counters;
    ``inactivity_timeout`` (s, 0 for none) is what sessions set on their VCs.
    """

    service_name: ClassVar[str] = "service"
    #: Outbound connections each session opens (a tunnel's upstream): the accept throttle
    #: counts them (``AcceptOptions.connects_per_accept``).
    connects_per_accept: ClassVar[int] = 0
    #: Names of the service's own counters (``proxy.process.*``).
    stat_names: ClassVar[tuple[str, ...]] = ()

    def check_seconds(self, name: str, value: Any) -> None:
        """``TypeError``/``ValueError`` naming the service and ``name`` unless ``value`` is a
        finite number of seconds >= 0 (0: none), as the VC timeouts take."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(
                f"{type(self).__name__}: {name} must be a number of seconds, "
                f"not {type(value).__name__}"
            )
        if not 0 <= value <= _FLOAT_MAX:  # (else every session would fail to start)
            shown = "an int too large" if isinstance(value, int) else value
            raise ValueError(f"{type(self).__name__}: {name} must be finite and >= 0, got {shown}")

    def __init__(self, inactivity_timeout: Any = 0.0, worker: Any = None) -> None:
        super().__init__(ProxyMutex())
        self.check_seconds("inactivity_timeout", inactivity_timeout)
        if worker is not None and (type(worker) is not int or worker < 0):
            raise (TypeError if type(worker) is not int else ValueError)(
                f"{type(self).__name__}: worker must be None or an int >= 0, got {worker!r}"
            )
        self.inactivity_timeout = inactivity_timeout
        self.worker = worker
        self.name: str = self.service_name
        self.stats = AppStats(self.stat_names)
        self.draining = False
        self.action: Action | None = None
        self._sessions: set[Session] = set()
        self._sessions_lock = threading.Lock()
        self.set_handler(self.accept_event)

    # ------------------------------------------------------------------ accept

    def listen(self, spec: ListenSpec) -> int:
        """Start accepting as ``spec`` says; returns the port (the real one for port 0).
        ``OSError`` naming ``bind`` when the port is in use."""
        options = spec.accept_options()
        options.connects_per_accept = self.connects_per_accept
        self.action = net_processor.accept(self, options)
        return self.action.na.port  # type: ignore[attr-defined]

    def stop_accepting(self) -> None:
        """Close the listener: no ``NET_EVENT_ACCEPT`` after this returns."""
        if self.action is not None:
            self.action.cancel()

    def accept_event(self, event: int, data: Any) -> None:
        if event != NET_EVENT_ACCEPT:
            why = net_strerror(data) if isinstance(data, int) else repr(data)
            log.error("%s: accept failed (event %d): %s", self.name, event, why)
            return
        vc: UnixNetVConnection = data
        if self.draining:
            vc.do_io_close()
            return
        try:
            self.start_session(vc)
        except Exception:
            log.exception("%s: could not start a session", self.name)
            vc.do_io_close()

    def start_session(self, vc: Any) -> None:
        """Run one session on ``vc`` (on its net thread)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ sessions

    def add_session(self, session: Session) -> None:
        with self._sessions_lock:
            self._sessions.add(session)

    def remove_session(self, session: Session) -> None:
        with self._sessions_lock:
            self._sessions.discard(session)

    def sessions(self) -> list[Session]:
        with self._sessions_lock:
            return list(self._sessions)

    def drain(self) -> None:
        """Graceful stop (any thread, after ``stop_accepting``): tell every session."""
        self.draining = True
        for session in self.sessions():
            with session.mutex:  # type: ignore[union-attr]
                session.on_drain()
