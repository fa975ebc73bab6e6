"""DNS statistics ``proxy.process.dns.*``: one block per DNSHandler, summed on read.

Each handler alone writes its block (a plain list of ints) on its own thread, so counting
takes no lock; readers sum the live blocks plus what stopped handlers left behind.
"""

from __future__ import annotations

import threading

STAT_NAMES: tuple[str, ...] = (
    # Questions sent to name servers (one per question, whatever its tries).
    "proxy.process.dns.total_dns_lookups",
    "proxy.process.dns.lookup_successes",
    "proxy.process.dns.lookup_failures",
    # Questions on the wire now (a gauge).
    "proxy.process.dns.in_flight",
    # Tries after the first (timeouts, server failures, send errors).
    "proxy.process.dns.retries",
    "proxy.process.dns.max_retries_exceeded",
    # Questions asked again over TCP because their UDP answer was truncated.
    "proxy.process.dns.tcp_retries",
    "proxy.process.dns.tcp_reset",
    # Answers read from a name server connection, good or bad.
    "proxy.process.dns.answers_received",
    # Every answer dropped, and why: no pending question has its id (or it came on another
    # server's connection); its question is not the one asked; it does not parse; its
    # question was cancelled by every asker.
    "proxy.process.dns.bad_answers_dropped",
    "proxy.process.dns.unknown_id_answers",
    "proxy.process.dns.wrong_question_answers",
    "proxy.process.dns.malformed_answers",
    "proxy.process.dns.cancelled_answers",
    # Lookups answered without the network.
    "proxy.process.dns.hosts_file_hits",
    "proxy.process.dns.cache_hits",
    "proxy.process.dns.cache_misses",
)

(
    TOTAL_DNS_LOOKUPS,
    LOOKUP_SUCCESSES,
    LOOKUP_FAILURES,
    IN_FLIGHT,
    RETRIES,
    MAX_RETRIES_EXCEEDED,
    TCP_RETRIES,
    TCP_RESET,
    ANSWERS_RECEIVED,
    BAD_ANSWERS_DROPPED,
    UNKNOWN_ID_ANSWERS,
    WRONG_QUESTION_ANSWERS,
    MALFORMED_ANSWERS,
    CANCELLED_ANSWERS,
    HOSTS_FILE_HITS,
    CACHE_HITS,
    CACHE_MISSES,
) = range(len(STAT_NAMES))

_INDEX = {name: i for i, name in enumerate(STAT_NAMES)}

StatBlock = list  # len(STAT_NAMES) ints, written by one thread only


class DNSStats:
    """The registry of the handlers' stat blocks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._blocks: list[StatBlock] = []
        self._retired = [0] * len(STAT_NAMES)

    def new_block(self) -> StatBlock:
        block = [0] * len(STAT_NAMES)
        with self._lock:
            self._blocks.append(block)
        return block

    def retire(self, block: StatBlock) -> None:
        """Stop tracking ``block``, keeping its counts (gauges excepted) in the totals."""
        with self._lock:
            for i, b in enumerate(self._blocks):
                if b is block:
                    del self._blocks[i]
                    break
            else:
                return
            for i, v in enumerate(block):
                if i != IN_FLIGHT:
                    self._retired[i] += v

    def get(self, name: str) -> int:
        """The sum of a stat over every handler. ``KeyError`` for an unknown name."""
        i = _INDEX.get(name)
        if i is None:
            raise KeyError(f"unknown stat {name!r}")
        with self._lock:
            return self._retired[i] + sum(b[i] for b in self._blocks)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            totals = list(self._retired)
            for b in self._blocks:
                for i, v in enumerate(b):
                    totals[i] += v
        return dict(zip(STAT_NAMES, totals))

    def reset(self) -> None:
        """Zero every counter (tests and benchmarks); the in-flight gauge keeps its value."""
        with self._lock:
            self._retired = [0] * len(STAT_NAMES)
            for b in self._blocks:
                for i in range(len(b)):
                    if i != IN_FLIGHT:
                        b[i] = 0


dns_stats = DNSStats()
