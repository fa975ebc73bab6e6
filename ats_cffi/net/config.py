"""Config records of the net layer: ``proxy.config.net.*`` with ATS's defaults.

Read a record with ``net_config.get(key)`` or as an attribute (``net_config.poll_timeout``);
change it with ``net_config.set(key, value)``. Every tunable of the net layer lives here.
Records marked dynamic take effect on the next use; the others when a listener or
thread starts.
"""

from __future__ import annotations

import math
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ats_cffi._native import lib

#: The largest value of an integer record (each ends up in a C ``int``: a socket option,
#: a backlog, a timeout in ms).
INT_RECORD_MAX: int = lib.INT_MAX
#: The most dedicated accept threads a listener may have.
MAX_ACCEPT_THREADS = 1024
#: Most connections one native accept call takes, on a net thread or an accept thread (at
#: most ``ats_cffi.sys.ACCEPT_BATCH_MAX``): the unit of the throttle check and of the hand-off
#: to the net threads.
ACCEPT_BATCH = 64
_FLOAT_MAX = sys.float_info.max


@dataclass(frozen=True)
class Record:
    key: str
    attr: str
    default: float
    kind: type
    minimum: float
    doc: str
    #: Read on each use, so a change takes effect at once; else when threads or
    #: listeners start.
    dynamic: bool = False
    #: The largest value (None: ``INT_RECORD_MAX`` for an int record, no bound for a float).
    maximum: float | None = None


RECORDS: tuple[Record, ...] = (
    Record("proxy.config.net.poll_timeout", "poll_timeout", 10, int, 0,
           "ms; longest epoll_wait when no timer is due sooner", dynamic=True),
    Record("proxy.config.net.inactivity_check_frequency", "inactivity_check_frequency", 1, float,
           0.001, "s; period of each thread's InactivityCop", maximum=3600),
    Record("proxy.config.net.default_inactivity_timeout", "default_inactivity_timeout", 86400,
           float, 0, "s; applied by the cop to VCs with pending I/O and no timeout (0: none)",
           dynamic=True),
    Record("proxy.config.net.retry_delay", "retry_delay", 10, int, 0,
           "ms; delay before retrying an event whose mutex was busy (read at thread start)"),
    Record("proxy.config.net.connections_throttle", "connections_throttle", 30000, int, 0,
           "open connections above which accepts are throttled (0: off)", dynamic=True),
    Record("proxy.config.net.max_connections_in", "max_connections_in", 30000, int, 0,
           "inbound sessions (active + keep-alive) over which the oldest idle ones close "
           "(shared by the net threads; 0: none)", dynamic=True),
    Record("proxy.config.net.max_requests_in", "max_requests_in", 0, int, 0,
           "requests served at once, over which a new one's connection closes "
           "(shared by the net threads; 0: no limit)", dynamic=True),
    Record("proxy.config.net.throttle_delay", "throttle_delay", 50, int, 0,
           "ms; back-off after a resource error on accept", dynamic=True),
    Record("proxy.config.net.additional_accepts", "additional_accepts", -1, int, -1,
           "accepts per pass after the first (-1: until EAGAIN)", dynamic=True),
    # ATS defaults to 1 s for its HTTP ports, whose clients speak first. A library listener
    # may serve protocols where the server speaks first, which TCP_DEFER_ACCEPT would
    # delay, so it is off unless asked for (AcceptOptions.defer_accept or this record).
    Record("proxy.config.net.defer_accept", "defer_accept", 0, int, 0,
           "s; TCP_DEFER_ACCEPT on listen sockets (0: off)"),
    Record("proxy.config.net.listen_backlog", "listen_backlog", -1, int, -1,
           "listen() backlog (-1: the kernel's somaxconn)"),
    Record("proxy.config.net.sock_recv_buffer_size_in", "sock_recv_buffer_size_in", 0, int, 0,
           "SO_RCVBUF of accepted sockets (0: kernel default)"),
    Record("proxy.config.net.sock_send_buffer_size_in", "sock_send_buffer_size_in", 0, int, 0,
           "SO_SNDBUF of accepted sockets (0: kernel default)"),
    Record("proxy.config.net.sock_option_flag_in", "sock_option_flag_in", 1, int, 0,
           "socket option bits of accepted sockets (1: TCP_NODELAY, 2: SO_KEEPALIVE, 4: linger)"),
    Record("proxy.config.net.sock_recv_buffer_size_out", "sock_recv_buffer_size_out", 0, int, 0,
           "SO_RCVBUF of outgoing sockets", dynamic=True),
    Record("proxy.config.net.sock_send_buffer_size_out", "sock_send_buffer_size_out", 0, int, 0,
           "SO_SNDBUF of outgoing sockets", dynamic=True),
    Record("proxy.config.net.sock_option_flag_out", "sock_option_flag_out", 1, int, 0,
           "socket option bits of outgoing sockets", dynamic=True),
    Record("proxy.config.net.connect_timeout", "connect_timeout", 30, float, 0,
           "s; default connect timeout of connect_re (0: none)", dynamic=True),
    # 0 where ATS has 1: under the GIL a dedicated accept thread runs nothing in parallel
    # with the net thread, and each connection it hands over is a switch of the GIL between
    # the two (futex calls: ~4.4 per connection). Accept + 1-byte echo + close, VIO echo on
    # one core: 19.7 us of server CPU per connection with one accept thread, 17.3 accepting
    # on the net thread, uvloop 18.4 (asyncio and uvloop accept on their loop too).
    Record("proxy.config.accept_threads", "accept_threads", 0, int, 0,
           "dedicated accept threads per listener (0: accept on the net threads)",
           maximum=MAX_ACCEPT_THREADS),
    Record("proxy.config.net.max_read_per_pass", "max_read_per_pass", 262144, int, 1,
           "bytes a VC may read in one NetHandler pass before yielding to the others"),
)  # fmt: skip


class RecordStore:
    """The live values of a table of records (``records``, each with ``key``, ``attr`` and a
    ``default``): read with ``get(key)`` or as attributes, change with ``set(key or attr,
    value)``. Subclasses say how a value is checked (``_coerce``). Thread-safe to read."""

    records: tuple[Any, ...] = ()
    _by_key: dict[str, Any] = {}
    _by_attr: dict[str, Any] = {}

    if TYPE_CHECKING:
        # The records are attributes set at run time (``reset``): any name reads as Any.
        def __getattr__(self, name: str) -> Any: ...

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        cls._by_key = {r.key: r for r in cls.records}
        cls._by_attr = {r.attr: r for r in cls.records}

    def __init__(self) -> None:
        object.__setattr__(self, "_lock", threading.Lock())
        self.reset()

    def _default(self, r: Any) -> Any:
        return r.default

    def _coerce(self, r: Any, value: Any) -> Any:
        """The value to store for record ``r``; ``TypeError``/``ValueError`` naming ``r.key``."""
        raise NotImplementedError

    def reset(self) -> None:
        """Back to the defaults."""
        for r in self.records:
            object.__setattr__(self, r.attr, self._default(r))

    def get(self, key: str) -> Any:
        r = self._by_key.get(key)
        if r is None:
            raise KeyError(f"unknown record {key!r}")
        return getattr(self, r.attr)

    def set(self, key: str, value: Any) -> None:
        """Set a record: ``KeyError`` for an unknown key, ``TypeError``/``ValueError`` for a bad
        value (each naming the key)."""
        r = self._by_key.get(key) or self._by_attr.get(key)
        if r is None:
            raise KeyError(f"unknown record {key!r}")
        value = self._coerce(r, value)
        with self._lock:  # type: ignore[attr-defined]
            object.__setattr__(self, r.attr, value)

    def items(self) -> list[tuple[str, Any]]:
        return [(r.key, getattr(self, r.attr)) for r in self.records]

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._by_attr:
            self.set(name, value)
        elif name.startswith("_"):
            object.__setattr__(self, name, value)
        else:  # a typo would silently make a record nobody reads
            raise AttributeError(f"{type(self).__name__}: no record named {name!r}")


@dataclass(frozen=True)
class TypedRecord:
    """A record of the layers whose values are not all numbers (DNS, TLS): ``kind`` is
    "int", "float", "str" (or a kind of the layer's own), in ``minimum..maximum``."""

    key: str
    attr: str
    default: Any
    kind: str
    minimum: float
    maximum: float
    doc: str


def _show(x: float) -> str:
    """``x`` for a message: never a 400-digit int (nor str()'s ValueError past 4300 digits)."""
    if isinstance(x, int) and x.bit_length() > 64:
        return f"an integer of {x.bit_length()} bits"
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x)


def coerce_typed(r: TypedRecord, value: Any) -> Any:
    """``value`` checked for record ``r`` of kind "int", "float" or "str": ``TypeError`` /
    ``ValueError`` naming ``r.key``. A str may not hold NUL (the str records are paths and
    names handed to C)."""
    if r.kind == "str":
        if not isinstance(value, str):
            raise TypeError(f"{r.key}: expected a str, got {type(value).__name__}")
        if "\0" in value:  # a path: open() would fail later, naming neither key nor file
            raise ValueError(f"{r.key}: contains a NUL character: {value!r}")
        return str(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{r.key}: expected a number, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{r.key}: expected a finite number, got {value}")
    # The range first (exact for any int, however large), then the conversions, which
    # can then neither overflow nor round.
    if not r.minimum <= value <= r.maximum:
        lo, hi = _show(r.minimum), _show(r.maximum)
        raise ValueError(f"{r.key}: must be in {lo}..{hi}, got {_show(value)}")
    if r.kind == "int" and value != int(value):
        raise ValueError(f"{r.key}: expected an integer, got {value}")
    return int(value) if r.kind == "int" else float(value)


class NetConfig(RecordStore):
    """The live values of the net records (ATS's defaults)."""

    records = RECORDS

    def _default(self, r: Record) -> Any:
        return r.kind(r.default)

    def _coerce(self, r: Record, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{r.key}: expected a number, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{r.key}: expected a finite number, got {value}")
        if r.kind is float and not -_FLOAT_MAX <= value <= _FLOAT_MAX:  # an int beyond a float
            raise ValueError(f"{r.key}: expected a finite number, got an int too large")
        if r.kind is int and value != int(value):
            raise ValueError(f"{r.key}: expected an integer, got {value}")
        if value < r.minimum:
            raise ValueError(f"{r.key}: must be >= {r.minimum}, got {value}")
        hi = r.maximum if r.maximum is not None else INT_RECORD_MAX if r.kind is int else None
        if hi is not None and value > hi:
            raise ValueError(f"{r.key}: must be <= {hi}, got {value}")
        return r.kind(value)

    @staticmethod
    def dynamic_keys() -> frozenset[str]:
        """The records that take effect on their next use (safe to reload live)."""
        return frozenset(r.key for r in RECORDS if r.dynamic)


net_config = NetConfig()

# Socket option bits of sock_option_flag_in/out and NetVCOptions.sockopt_flags (ATS's values).
SOCK_OPT_NO_DELAY = 1
SOCK_OPT_KEEP_ALIVE = 2
SOCK_OPT_LINGER_ON = 4
