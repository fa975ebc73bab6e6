"""DNS statistics ``proxy.process.dns.*``: one block per DNSHandler, summed on read.

Each handler alone writes its block (a plain list of ints) on its own thread, so counting
takes no lock; readers sum the live blocks plus what stopped handlers left behind.
"""

from __future__ import annotations

from ats_cffi.net.stats import StatRegistry

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


class DNSStats(StatRegistry):
    """The DNS layer's stats ``proxy.process.dns.*``; ``in_flight`` is a volatile gauge."""

    def __init__(self) -> None:
        super().__init__(STAT_NAMES, volatile=(IN_FLIGHT,))


dns_stats = DNSStats()
