"""The stats page: net and service counters as JSON (``/_stats``) or Prometheus text
(``/metrics``), the one-line summary printed at exit, and the counters of the services.

The JSON follows ATS's stats_over_http plugin: ``{"global": {"proxy.process...": n}}``, plus
which service, process and worker answered (with ``--workers`` each worker counts its own).

The Prometheus page follows Prometheus' naming conventions, so that its queries and
dashboards read it as any exporter's: the ATS name with ``_`` for ``.``; a counter's samples
end in ``_total`` (an ATS name's own ``total_`` prefix is dropped, not said twice:
``proxy.process.tcp.total_accepts`` is ``proxy_process_tcp_accepts_total``); a gauge keeps
its name; units are in the ATS names already (``read_bytes``). Whether a stat is a gauge is
decided by one rule, ``is_gauge``. Each metric has a ``# HELP`` line with its ATS name, the
key of the same value in ``/_stats``. The page is in the text format 0.0.4 that every
scraper reads, or in OpenMetrics 1.0 for one that asks for it (``http_responses.negotiate``):
its ``# TYPE`` names the family (without ``_total``), a byte count says ``# UNIT ... bytes``,
and ``# EOF`` ends it.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping

from ats_cffi.net import net_stats
from ats_cffi.net.stats import StatRegistry, tls_stats

#: Stats that go up and down (a Prometheus gauge): ATS names them for what is open or in
#: progress now. Every other stat only grows (a counter).
_GAUGE_MARKERS = ("currently_open", ".current_", ".in_flight")


class _ThreadCounts(threading.local):
    """The calling thread's block of an AppStats (created on its first access there)."""

    def __init__(self, stats: AppStats) -> None:
        self.counts = stats.new_block()


class AppStats(StatRegistry):
    """Counters of one service (``proxy.process.<area>.*``), written from any thread.

    A ``StatRegistry`` (the net stats' kind: readers sum every block under the registry
    lock, which only guards the list of blocks) whose blocks are per thread: each thread
    that counts gets its own, which it alone writes. A block outlives its thread (its counts
    stay in the totals), so gauges such as ``current_*`` may go up in one thread's block and
    down in another's: only the sum is meaningful.

    Hot paths take ``per_thread.counts`` once and add to it by index (``index(name)``).
    """

    def __init__(self, names: Iterable[str]) -> None:
        super().__init__(tuple(names))
        #: ``per_thread.counts``: the calling thread's block.
        self.per_thread = _ThreadCounts(self)

    def index(self, name: str) -> int:
        """Position of ``name`` in the blocks. ``KeyError`` for a name not counted here."""
        return self._index[name]

    def incr(self, name: str, n: int = 1) -> None:
        """Add ``n`` to ``name``. ``KeyError`` for a name this service does not count."""
        self.per_thread.counts[self._index[name]] += n


def is_gauge(name: str) -> bool:
    """True for stats that can go down (connections open now, questions in flight), False
    for counters. The one place that tells them apart (``_GAUGE_MARKERS``)."""
    return any(m in name for m in _GAUGE_MARKERS)


def collect(app: AppStats | None = None) -> dict[str, int]:
    """The net stats (``proxy.process.net.*``, ``proxy.process.tcp.*``), the TLS stats
    (``proxy.process.ssl.*``, zero without TLS, as in ATS) and ``app``'s."""
    values = net_stats.snapshot()
    values.update(tls_stats.snapshot())
    if app is not None:
        values.update(app.snapshot())
    return values


def render_json(values: Mapping[str, int], service: str, worker: int | None = None) -> bytes:
    """``values`` as the ``/_stats`` JSON document (UTF-8, newline-terminated)."""
    doc = {
        "service": service,
        "pid": os.getpid(),
        "worker": worker,
        "global": dict(values),
    }
    return (json.dumps(doc, indent=1, sort_keys=False) + "\n").encode()


def metric_family(name: str) -> str:
    """The Prometheus metric family of stat ``name`` (the module doc):
    ``proxy.process.net.read_bytes`` → ``proxy_process_net_read_bytes``,
    ``proxy.process.tcp.total_accepts`` → ``proxy_process_tcp_accepts``."""
    area, _, last = name.rpartition(".")
    if last.startswith("total_") and not is_gauge(name):
        name = f"{area}.{last[len('total_') :]}"
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


def prometheus_name(name: str) -> str:
    """The name of stat ``name``'s sample: its family, ``_total`` after a counter's."""
    family = metric_family(name)
    return family if is_gauge(name) else family + "_total"


def render_prometheus(values: Mapping[str, int], openmetrics: bool = False) -> bytes:
    """``values`` in the Prometheus text exposition format (version 0.0.4), or in
    OpenMetrics 1.0 text (the module doc)."""
    lines = []
    for name, value in values.items():
        family = metric_family(name)
        kind = "gauge" if is_gauge(name) else "counter"
        sample = prometheus_name(name)
        if openmetrics:
            lines.append(f"# TYPE {family} {kind}")
            if family.endswith("_bytes"):
                lines.append(f"# UNIT {family} bytes")
            lines.append(f"# HELP {family} {name}")
        else:
            lines.append(f"# HELP {sample} {name}")
            lines.append(f"# TYPE {sample} {kind}")
        lines.append(f"{sample} {value}")
    if openmetrics:
        lines.append("# EOF")
    return ("\n".join(lines) + "\n").encode()


#: The stats the exit summary shows, by their last name component, in this order.
SUMMARY_NET_STATS = (
    "proxy.process.tcp.total_accepts",
    "proxy.process.net.connections_currently_open",
    "proxy.process.net.read_bytes",
    "proxy.process.net.write_bytes",
    "proxy.process.net.connections_throttled_in",
    "proxy.process.net.inactivity_timeouts",
    "proxy.process.net.connect_failures",
)


def summary_fields(values: Mapping[str, int], app_names: Iterable[str] = ()) -> list[str]:
    """``short_name=value`` for the summary's net stats and then the service's stats."""
    names = [n for n in SUMMARY_NET_STATS if n in values]
    names += [n for n in app_names if n in values and n not in names]
    return [f"{n.rsplit('.', 1)[-1]}={values[n]}" for n in names]


def summary_line(service: str, fields: Iterable[str]) -> str:
    """The line printed when the command stops: ``ats-cffi SERVICE stopped: k=v ...``."""
    return f"ats-cffi {service} stopped: " + " ".join(fields)
