"""Net statistics ``proxy.process.net.*``: per-thread counters without locks, summed on read.

Each NetHandler (and each accept thread) owns a :data:`StatBlock` of ints that it alone
writes; readers sum the live blocks plus what retired blocks left behind.
"""

from __future__ import annotations

import threading
from typing import Any, cast

from librt.vecs import vec
from mypy_extensions import i64

STAT_NAMES: tuple[str, ...] = (
    "proxy.process.net.connections_currently_open",
    "proxy.process.net.accepts_currently_open",
    "proxy.process.net.calls_to_read",
    "proxy.process.net.calls_to_read_nodata",
    "proxy.process.net.calls_to_write",
    "proxy.process.net.calls_to_write_nodata",
    "proxy.process.net.read_bytes",
    "proxy.process.net.write_bytes",
    "proxy.process.net.net_handler_run",
    "proxy.process.net.inactivity_cop_lock_acquire_failure",
    "proxy.process.net.default_inactivity_timeout_applied",
    "proxy.process.net.connections_throttled_in",
    "proxy.process.net.connections_throttled_out",
    "proxy.process.tcp.total_accepts",
    "proxy.process.net.accepts_throttle_backoff",
    "proxy.process.net.connect_failures",
    "proxy.process.net.inactivity_timeouts",
    "proxy.process.net.active_timeouts",
    "proxy.process.net.keep_alive_queue_timeout_count",
    "proxy.process.net.keep_alive_queue_timeout_seconds",
    "proxy.process.net.max.requests_throttled_in",
)

(
    CONNECTIONS_CURRENTLY_OPEN,
    ACCEPTS_CURRENTLY_OPEN,
    CALLS_TO_READ,
    CALLS_TO_READ_NODATA,
    CALLS_TO_WRITE,
    CALLS_TO_WRITE_NODATA,
    READ_BYTES,
    WRITE_BYTES,
    NET_HANDLER_RUN,
    INACTIVITY_COP_LOCK_ACQUIRE_FAILURE,
    DEFAULT_INACTIVITY_TIMEOUT_APPLIED,
    CONNECTIONS_THROTTLED_IN,
    CONNECTIONS_THROTTLED_OUT,
    TOTAL_ACCEPTS,
    ACCEPTS_THROTTLE_BACKOFF,
    CONNECT_FAILURES,
    INACTIVITY_TIMEOUTS,
    ACTIVE_TIMEOUTS,
    KEEP_ALIVE_QUEUE_TIMEOUT_COUNT,
    KEEP_ALIVE_QUEUE_TIMEOUT_SECONDS,
    REQUESTS_THROTTLED_IN,
) = range(len(STAT_NAMES))

#: One thread's counters (indexed like the registry's names), written by that thread only: a
#: ``vec[i64]`` of mypyc's runtime library (librt), a fixed array of 64-bit ints. The compiled
#: hot paths add to it in place; a list of ints would allocate a new int object for nearly
#: every addition (any value over 256).
StatBlock = vec[i64]


def new_counters(n: int) -> StatBlock:
    """``n`` zeroed counters: a ``StatBlock``, or a list while the compiled modules run
    interpreted (``ATS_CFFI_PURE``): interpreted code indexes a list faster than a vec."""
    from ats_cffi._pure import compiled

    return StatBlock([0] * n) if compiled() else cast(StatBlock, [0] * n)


class StatRegistry:
    """The registry of one layer's stat blocks (``names``: the stat keys, in index order).

    Stats in ``volatile`` are gauges of a block's own work (e.g. questions in flight): a
    retired block's value is dropped and ``reset`` keeps them.
    """

    def __init__(self, names: tuple[str, ...], volatile: tuple[int, ...] = ()) -> None:
        self.names = names
        self._index = {name: i for i, name in enumerate(names)}
        self._volatile = frozenset(volatile)
        self._lock = threading.Lock()
        self._blocks: list[StatBlock] = []
        self._retired = [0] * len(names)

    def new_block(self) -> StatBlock:
        block = new_counters(len(self.names))
        with self._lock:
            self._blocks.append(block)
        return block

    def new_owned_block(self) -> Any:
        """``new_block()`` for an owner that is compiled: it keeps this object for
        ``retire`` and assigns it to its ``StatBlock`` field for the counting. Compiled, a
        ``StatBlock`` field holds the counters by value: each read of it makes a new object,
        which ``retire`` (that finds a block by identity) would not find."""
        return self.new_block()

    def retire(self, block: StatBlock) -> None:
        """Stop tracking ``block``, keeping its counts (volatile gauges excepted)."""
        with self._lock:
            for i, b in enumerate(self._blocks):
                if b is block:
                    del self._blocks[i]
                    break
            else:
                return
            for i, v in enumerate(block):
                if i not in self._volatile:
                    self._retired[i] += v

    def get(self, name: str) -> int:
        """The sum of a stat over every block. ``KeyError`` for an unknown name."""
        i = self._index.get(name)
        if i is None:
            raise KeyError(f"unknown stat {name!r}")
        with self._lock:
            return self._retired[i] + sum(b[i] for b in self._blocks)

    def sum_unlocked(self, index: int) -> int:
        """The sum of stat ``index`` without taking the registry lock (hot paths: the
        throttle check per accept). Blocks may come and go meanwhile; the value is as
        fresh as any per-thread counter read."""
        total = self._retired[index]
        for b in tuple(self._blocks):
            total += b[index]
        return total

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            totals = list(self._retired)
            for b in self._blocks:
                for i, v in enumerate(b):
                    totals[i] += v
        return dict(zip(self.names, totals))

    def reset(self) -> None:
        """Zero every counter (tests and benchmarks); volatile gauges keep their values."""
        with self._lock:
            self._retired = [0] * len(self.names)
            for b in self._blocks:
                for i in range(len(b)):
                    if i not in self._volatile:
                        b[i] = 0


class NetStats(StatRegistry):
    """The net layer's stats ``proxy.process.net.*``."""

    def __init__(self) -> None:
        super().__init__(STAT_NAMES)


net_stats = NetStats()

#: The TLS stats ``proxy.process.ssl.*`` (ATS's names; the two byte counts, of plaintext,
#: are ats_cffi's own), counted by SSLNetVConnection (net/tls/) in its thread's block
#: (``NetHandler.tls_stats``).
SSL_STAT_NAMES: tuple[str, ...] = (
    "proxy.process.ssl.total_attempts_handshake_count_in",
    "proxy.process.ssl.total_success_handshake_count_in",
    "proxy.process.ssl.total_attempts_handshake_count_out",
    "proxy.process.ssl.total_success_handshake_count_out",
    "proxy.process.ssl.user_agent_session_hit",
    "proxy.process.ssl.origin_session_reused",
    "proxy.process.ssl.ssl_error_ssl",
    "proxy.process.ssl.ssl_error_syscall",
    "proxy.process.ssl.ssl_handshake_timeouts",
    "proxy.process.ssl.read_bytes",
    "proxy.process.ssl.write_bytes",
)

(
    SSL_ATTEMPTS_IN,
    SSL_SUCCESS_IN,
    SSL_ATTEMPTS_OUT,
    SSL_SUCCESS_OUT,
    SSL_SESSION_HIT_IN,
    SSL_SESSION_REUSED_OUT,
    SSL_ERROR_SSL,
    SSL_ERROR_SYSCALL,
    SSL_HANDSHAKE_TIMEOUTS,
    SSL_READ_BYTES,
    SSL_WRITE_BYTES,
) = range(len(SSL_STAT_NAMES))

tls_stats = StatRegistry(SSL_STAT_NAMES)
