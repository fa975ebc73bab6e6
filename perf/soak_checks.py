"""The soak's checks (perf/soak.py): what one service's soak measured, turned into rows of
PASS/FAIL with their figures, and the Markdown table of them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from soak_proc import parse_summary

RSS_SLACK_KIB = 20 * 1024


@dataclass(frozen=True)
class Reading:
    """fds held (``/proc/PID/fd``) and VmRSS in KiB."""

    fds: int
    rss: int


@dataclass
class Load:
    """What the load phase's clients counted, per group (``clients``, ``half-closes``,
    ``resets``, ``slow readers``, ``garbage``, ``overload``)."""

    groups: dict[str, Counter[str]]
    errors: list[str]
    stuck: int
    hups: int
    peak: Reading
    plan_idle: int
    plan_burst: int

    def group(self, name: str) -> Counter[str]:
        return self.groups.get(name, Counter())


@dataclass
class Drain:
    """What the clients that met the SIGTERM counted."""

    counts: Counter[str]
    errors: list[str]
    clients: int
    stuck: int
    #: When the SIGTERM was sent (monotonic).
    sigterm_at: float


@dataclass
class Result:
    service: str
    http: bool
    start: Reading
    after: Reading
    settle_seconds: float
    load: Load
    throttled_in: int
    hups_logged: int
    drain: Drain
    status: int | None
    summary: str | None
    #: From the SIGTERM to the exit.
    exit_seconds: float
    #: (name, exit status, summary line) of the helper processes (the tunnel's upstream).
    others: list[tuple[str, int | None, str | None]] = field(default_factory=list)
    tracebacks: list[str] = field(default_factory=list)
    nofile: int = 0


@dataclass(frozen=True)
class Row:
    service: str
    check: str
    ok: bool
    figures: str


def mib(n: float) -> str:
    """A byte count, in MiB (or KiB, or B, when smaller)."""
    if n >= 1048576:
        return f"{n / 1048576:,.1f} MiB"
    return f"{n / 1024:,.1f} KiB" if n >= 1024 else f"{n:,.0f} B"


def well_behaved(r: Result) -> tuple[bool, str]:
    c = r.load.group("clients")
    if r.http:
        ok = c["sent"] > 0 and c["answered"] == c["sent"] and not c["corrupt"]
        text = f"{c['sent']:,} requests sent, {c['answered']:,} answered"
    else:
        ok = c["sent"] > 0 and c["verified"] == c["sent"] and not c["corrupt"]
        text = f"{mib(c['sent'])} sent, {mib(c['verified'])} verified byte-exact"
    text += f" ({c['messages']:,} exchanges on {c['connections']:,} connections"
    return ok, text + f"; {c['refused']:,} refused at the throttle)"


def integrity(r: Result) -> tuple[bool, str]:
    groups = dict(r.load.groups, drain=r.drain.counts)
    bad = {g: (c["corrupt"], c["lost"]) for g, c in groups.items()}
    corrupt = sum(b[0] for b in bad.values())
    lost = sum(b[1] for b in bad.values())
    unit = "responses" if r.http else "bytes"
    text = f"corrupted {unit} {corrupt:,}, lost {'requests' if r.http else 'bytes'} {lost:,}"
    worst = [f"{g}: {a:,}/{b:,}" for g, (a, b) in bad.items() if a or b]
    return corrupt == 0 and lost == 0, text + (f" ({', '.join(worst)})" if worst else "")


def half_closes(r: Result) -> tuple[bool, str]:
    c = r.load.group("half-closes")
    n = c["eof"] + c["no_eof"]
    moved = f"{c['answered']:,} responses" if r.http else mib(c["verified"])
    ok = c["eof"] > 0 and not c["no_eof"] and not c["lost"] and not c["corrupt"]
    return ok, f"{n:,} half-closes, {c['eof']:,} got every answer ({moved}) then EOF"


def resets(r: Result) -> tuple[bool, str]:
    c = r.load.group("resets")
    ok = c["resets"] > 0 and not c["corrupt"]
    return ok, f"{c['resets']:,} resets with data in flight ({mib(c['bytes_before_reset'])} sent)"


def slow_readers(r: Result) -> tuple[bool, str]:
    c = r.load.group("slow readers")
    if r.http:
        ok = c["answered"] > 0 and c["answered"] == c["sent"]
        return ok, f"{c['sent']:,} pipelined requests, {c['answered']:,} responses read slowly"
    ok = c["verified"] > 0 and c["verified"] == c["sent"]
    return ok, f"{c['messages']:,} transfers, {mib(c['verified'])} of {mib(c['sent'])} read slowly"


def garbage(r: Result) -> tuple[bool, str]:
    c = r.load.group("garbage")
    ok = c["garbage"] > 0 and c["answered_400"] == c["garbage"]
    return ok, f"{c['garbage']:,} garbage requests, {c['answered_400']:,} got 400 then EOF"


def idle_flood(r: Result) -> tuple[bool, str]:
    c = r.load.group("overload")
    probed = c["idle_served"] + c["idle_refused"] + c["idle_bad"] + c["idle_unresolved"]
    ok = c["idle_opened"] >= r.load.plan_idle and probed > 0 and c["idle_served"] == probed
    text = f"{c['idle_opened']:,} idle connections in floods of {r.load.plan_idle}"
    return ok, text + f"; {c['idle_served']:,}/{probed:,} carried a message first"


def burst(r: Result) -> tuple[bool, str]:
    c = r.load.group("overload")
    ok = c["burst_refused"] > 0 and c["burst_served"] > 0 and c["burst_progress"] > 0
    ok = ok and not c["burst_bad"] and not c["burst_unresolved"]
    text = (
        f"{c['cycles']} bursts of {r.load.plan_burst} (ulimit -n {r.nofile}): "
        f"{c['burst_served']:,} served, {c['burst_refused']:,} refused, "
        f"{c['burst_bad']} bad, {c['burst_unresolved']} unanswered; "
        f"{c['burst_progress']:,} well-behaved exchanges during them"
    )
    return ok, text


def throttle_accounting(r: Result) -> tuple[bool, str]:
    seen = sum(c["refused"] + c["burst_refused"] for c in r.load.groups.values())
    ok = 0 < seen <= r.throttled_in
    return ok, f"clients saw {seen:,} refusals; connections_throttled_in {r.throttled_in:,}"


def sighups(r: Result) -> tuple[bool, str]:
    ok = r.load.hups > 0 and r.hups_logged == r.load.hups
    return ok, f"{r.load.hups} SIGHUPs sent, {r.hups_logged} reloads logged"


def client_errors(r: Result) -> tuple[bool, str]:
    errors = r.load.errors + r.drain.errors
    stuck = r.load.stuck + r.drain.stuck
    text = f"{len(errors)} errors, {stuck} clients still running at their deadline"
    return not errors and not stuck, text + "".join(f"; {e}" for e in errors[:3])


def fds(r: Result) -> tuple[bool, str]:
    text = f"start {r.start.fds}, peak {r.load.peak.fds}, after {r.after.fds}"
    return r.after.fds <= r.start.fds, text + f" (waited {r.settle_seconds:.1f} s)"


def rss(r: Result) -> tuple[bool, str]:
    grew = r.after.rss - r.start.rss
    text = f"start {mib(r.start.rss * 1024)}, peak {mib(r.load.peak.rss * 1024)}, "
    text += f"after {mib(r.after.rss * 1024)} ({grew / 1024:+.1f} MiB)"
    return grew <= RSS_SLACK_KIB, text


def drain(r: Result) -> tuple[bool, str]:
    c, d = r.drain.counts, r.drain
    ok = not d.errors and not d.stuck and not c["lost"] and not c["corrupt"]
    if r.http:
        ended = c["said_close"] + c["closed_idle"]
        ok = ok and c["sent"] > 0 and c["answered"] == c["sent"] and ended == d.clients
        return ok, (
            f"{d.clients} clients: {c['sent']:,} requests sent, {c['answered']:,} answered, "
            f"{c['lost']} lost; {c['said_close']} got Connection: close, "
            f"{c['closed_idle']} closed idle"
        )
    ok = ok and c["sent"] > 0 and c["verified"] == c["sent"] and c["after_sigterm"] == d.clients
    return ok, (
        f"{d.clients} clients: {mib(c['sent'])} sent, {mib(c['verified'])} came back, "
        f"{c['lost']:,} B lost; {c['after_sigterm']} sent again after the SIGTERM"
    )


def exit_status(r: Result) -> tuple[bool, str]:
    fields = parse_summary(r.summary or "")
    how = fields.get("drain")
    ok = r.status == 0 and how in ("complete", "timeout")
    text = f"exit {r.status} {r.exit_seconds:.2f} s after SIGTERM, summary drain={how}"
    for name, status, summary in r.others:
        ok = ok and status == 0 and summary is not None
        text += f"; {name} exit {status}"
    return ok, text


def tracebacks(r: Result) -> tuple[bool, str]:
    if r.tracebacks:
        return False, "Traceback in the stderr of " + ", ".join(r.tracebacks)
    return True, "no Traceback in stderr"


CHECKS: list[tuple[str, Callable[[Result], tuple[bool, str]], bool | None]] = [
    ("well-behaved clients", well_behaved, None),
    ("corrupted / lost", integrity, None),
    ("half-closes", half_closes, None),
    ("resets mid-transfer", resets, None),
    ("slow readers", slow_readers, None),
    ("garbage: 400 + close", garbage, True),
    ("idle floods", idle_flood, None),
    ("burst past the fd limit", burst, None),
    ("refusals are the throttle's", throttle_accounting, None),
    ("SIGHUP reloads", sighups, None),
    ("client errors", client_errors, None),
    ("fds back to start", fds, None),
    ("RSS back near start", rss, None),
    ("drain under SIGTERM", drain, None),
    ("exit", exit_status, None),
    ("stderr", tracebacks, None),
]


def check_rows(r: Result) -> list[Row]:
    """The rows of ``r``'s checks (``garbage`` for http only)."""
    rows = []
    for name, check, http_only in CHECKS:
        if http_only and not r.http:
            continue
        ok, figures = check(r)
        rows.append(Row(r.service, name, ok, figures))
    return rows


def markdown(rows: list[Row]) -> str:
    lines = ["| service | check | result | figures |", "|---|---|---|---|"]
    for r in rows:
        figures = r.figures.replace("|", "\\|")
        lines.append(f"| {r.service} | {r.check} | {'PASS' if r.ok else 'FAIL'} | {figures} |")
    return "\n".join(lines)
