"""The report of compare_peers.py: one row per case and ats_cffi server, the medians over
the rounds beside the same peers' ones, and the Markdown table.

A row's ``ats`` entry holds its subject's figures: ``ats`` (the VIO echo, ``ats-cffi
http``), ``ats_splice``, ``ats_asyncio`` (the same asyncio code on ``ats_cffi.asyncio``'s
loop) or ``ats_plain``, each marked in the row's label (``SUBJECT_LABEL``).
"""

from __future__ import annotations

import statistics

from _common import SATURATED, fmt_ratio

#: The table's columns: the subject, then the peers it is compared with (``REFS``).
SERVERS = ("ats", "asyncio", "uvloop", "uvloop_min")
REFS = ("asyncio", "uvloop", "uvloop_min")
LABELS = {"ats": "ats_cffi", "uvloop_min": "uvloop+httptools, minimal"}
#: How long after the idle client closed everything the server's RSS is read again, in s.
CLOSED_SETTLE = 2.0
#: The servers that are a row's subject, and the mark of their rows.
SUBJECT_LABEL = {"ats": "", "ats_splice": ", splice", "ats_asyncio": ", asyncio loop"}
SUBJECT_LABEL["ats_plain"] = ", plaintext ats-cffi http (the bound)"


def summarize(runs: list[dict], cases: list[tuple]) -> list[dict]:
    """One row per case and ats server (``SUBJECT_LABEL``: ``ats``, and ``ats_splice``,
    ``ats_asyncio`` where it ran): the row's ``ats`` entry is that server's figures, beside
    the same peers' ones. ``cases``: compare_peers' plan, (case, unit, _, _, servers)."""
    rows = []
    for case, unit, _, _, servers in cases:
        for subject in (s for s in servers if s in SUBJECT_LABEL):
            rows.append(_row(runs, case + SUBJECT_LABEL[subject], case, unit, subject))
    return rows


def _row(runs: list[dict], label: str, case: str, unit: str, subject: str) -> dict:
    row: dict = {"case": label, "unit": unit, "idle": unit == "KiB/conn", "subject": subject}
    for s in SERVERS:
        s_run = subject if s == "ats" else s
        rs = [r for r in runs if r["case"] == case and r["server"] == s_run and "error" not in r]
        failed = sum(1 for r in runs if r["case"] == case and r["server"] == s_run and "error" in r)
        if not rs:
            row[s] = None if not failed else {"failed": failed}
            continue
        row[s] = {
            "n": len(rs),
            "value": statistics.median(r["value"] for r in rs),
            "value_min": min(r["value"] for r in rs),
            "value_max": max(r["value"] for r in rs),
            "cpu": statistics.median(r["cpu"] for r in rs),
            "client_cpu_frac": statistics.median(r["client_cpu_frac"] for r in rs),
            "errors": sum(r["errors"] for r in rs),
            "failed": failed,
        }
        kept = [
            (r["rss_closed_kib"] - r["rss_before_kib"]) / 1024 for r in rs if "rss_closed_kib" in r
        ]
        row[s]["kept_mib"] = statistics.median(kept) if kept else None
    ats = row["ats"]
    for ref in REFS:
        other = row[ref]
        ok = ats and other and "value" in ats and "value" in other
        row[f"value_vs_{ref}"] = ats["value"] / other["value"] if ok else None
        row[f"cpu_vs_{ref}"] = ats["cpu"] / other["cpu"] if ok and other["cpu"] else None
    row["cpu_rounds_vs_uvloop"] = _round_ratios(runs, case, subject, "uvloop")
    return row


def _round_ratios(runs: list[dict], case: str, subject: str, ref: str) -> list[float]:
    """``subject``'s CPU/op over ``ref``'s in each round where both ran (in round order)."""
    cpu: dict[tuple[str, int], float] = {
        (r["server"], r["round"]): r["cpu"]
        for r in runs
        if r["case"] == case and "error" not in r and "cpu" in r and "round" in r
    }
    rounds = sorted({k[1] for k in cpu})
    return [
        cpu[(subject, n)] / cpu[(ref, n)]
        for n in rounds
        if (subject, n) in cpu and (ref, n) in cpu and cpu[(ref, n)]
    ]


def rounds_table(rows: list[dict]) -> str:
    """The rounds' own ratios to uvloop's CPU/op (rows of two rounds or more, not idle):
    each pairs two runs of the same round, which shared the machine's state of that time,
    where the main table's ratio divides medians taken over different rounds."""
    lines = [
        "| case | ats_cffi/uvloop CPU/op, median of the rounds' ratios | each round's |",
        "|---|---:|---|",
    ]
    for row in rows:
        ratios = row.get("cpu_rounds_vs_uvloop") or []
        if row["idle"] or len(ratios) < 2:
            continue
        each = " / ".join(f"{x:.2f}" for x in ratios)
        lines.append(f"| {row['case']} | {statistics.median(ratios):.2f} | {each} |")
    if len(lines) == 2:
        return ""
    return "\n".join(
        [
            "The rounds' own ratios (each round ran every server once, in the reverse order "
            "of the round before):",
            "",
            *lines,
        ]
    )


def _cell_value(v: dict | None, unit: str) -> str:
    if v is None:
        return "-"
    if "value" not in v:
        return f"failed x{v['failed']}"
    text = f"{v['value']:.1f}" if unit == "KiB/conn" else f"{v['value']:,.0f}"
    return text + (f" ({v['errors']} err)" if v["errors"] else "")


def _cell_cpu(v: dict | None, idle: bool) -> str:
    if not v or "cpu" not in v:
        return "-"
    return f"{v['cpu']:.2%}" if idle else f"{v['cpu']:.1f} µs"


def _cell_client(row: dict) -> tuple[str, bool]:
    parts, sat = [], False
    for s in SERVERS:
        v = row[s]
        c = v.get("client_cpu_frac", float("nan")) if v else float("nan")
        if c != c:
            parts.append("-")
        else:
            parts.append(f"{c:.0%}" + ("*" if c >= SATURATED else ""))
            sat |= c >= SATURATED
    return " / ".join(parts), sat


def table(rows: list[dict]) -> str:
    names = [LABELS.get(s, s) for s in SERVERS]
    ratios = [f"ats/{LABELS.get(r, r)}" for r in REFS]
    cpus = [f"{n} CPU/op" for n in names]
    head = ["case (unit)", *names, *ratios, *cpus, *ratios, "client CPU " + " / ".join(SERVERS)]
    lines = [
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * (2 * len(SERVERS) + 2 * len(REFS)) + "---|",
    ]
    saturated = []
    for row in rows:
        client, sat = _cell_client(row)
        if sat:
            saturated.append(row["case"])
        cells = [f"{row['case']} ({row['unit']})"]
        cells += [_cell_value(row[s], row["unit"]) for s in SERVERS]
        cells += [fmt_ratio(row[f"value_vs_{r}"] or float("nan")) for r in REFS]
        cells += [_cell_cpu(row[s], row["idle"]) for s in SERVERS]
        cells += [fmt_ratio(row[f"cpu_vs_{r}"] or float("nan")) for r in REFS]
        cells.append(client if not row["idle"] else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Throughput: median over the rounds (rt/s: echo round trips; req/s: wrk requests; "
        "acc/s: the server's own accept count; conn/s: connections whose byte came back). "
        "CPU/op: the server process's user+system CPU over the client's measured window / "
        "operations. ats/peer: ats_cffi's value divided by the peer's: > 1 is better for "
        "throughput, < 1 is better for CPU/op (`-`: the peer does not run that case). Idle "
        "rows: KiB/conn is the server's VmRSS growth per idle connection, each of which "
        "carried one message first, and CPU/op is the server's CPU while they sit idle, as "
        "a share of one core; < 1 is better for both (a ratio is `-` when the peer's value "
        "is 0: asyncio and uvloop run no timer then).",
    ]
    closed = [
        f"{row['case']}: "
        + ", ".join(
            f"{LABELS.get(s, s)} {row[s]['kept_mib']:.1f}" for s in SERVERS if _kept(row[s])
        )
        for row in rows
        if row["idle"]
    ]
    if closed:
        lines.append(
            f"RSS still above its start {CLOSED_SETTLE:g} s after the idle connections "
            "closed (MiB, median): " + "; ".join(closed) + "."
        )
    if saturated:
        lines.append(
            "`*`: the client's core was >= 95% busy (the client core was the limit), so "
            "throughput there is bounded by the load generator too; compare CPU/op for: "
            + "; ".join(saturated)
            + "."
        )
    return "\n".join(lines)


def _kept(v: dict | None) -> bool:
    return bool(v) and v.get("kept_mib") is not None  # type: ignore[union-attr]
