"""Where an HTTP keep-alive request's server CPU goes: six servers side by side.

    python perf/http_breakdown.py [--rounds 3] [--duration 4] [--md FILE] [-o FILE]

The keep-alive hello case of compare_peers.py (``wrk -c 100 -t 1``, ``GET /``, after a 1 s
unmeasured run), interleaved over the rounds, server on one CPU and wrk on the other, on:

- ``uvloop``, ``asyncio``: the peers of ``http_peers.py``;
- ``ats``: ``python -m ats_cffi http``;
- ``uvloop_session``: ``http_floor.py uvloop``, the same ``HttpSession`` under uvloop (its C
  loop moves the bytes; the session's buffers are filled and drained by copies);
- ``session``: ``http_floor.py session``, the same ``HttpSession`` over the least Python loop
  that moves its bytes and gives it its two signals per request (no NetHandler, no timeouts);
- ``bare``: ``http_floor.py bare``, the same native calls and parser with no machinery.

For each: user and system CPU of the server per request (/proc/PID/stat, clock ticks) and
requests/s, medians over the rounds, then three differences: what ATS's net core costs over
uvloop's with the same session (``ats - uvloop_session``), what the session costs over the
peers' Protocol on the same uvloop (``uvloop_session - uvloop``), and what the net core costs
over the least Python loop (``ats - session``). ``bench_http.py`` times the session's own
code per request without sockets. Takes about
``rounds x 6 x (duration + 2)`` s. Exits 1 if a run failed or wrk counted errors.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from _common import (
    HERE,
    ensure_wrk,
    measure_wrk,
    pin_cpus,
    port_after,
    print_report,
    python_impl,
    start_ready,
    write_json,
    wrk_errors,
)
from compare_peers import start_http

HTTP_FLOOR = HERE / "http_floor.py"
SERVERS = ("uvloop", "asyncio", "ats", "uvloop_session", "session", "bare")
FLOOR_KIND = {"uvloop_session": "uvloop", "session": "session", "bare": "bare"}
LABELS = {
    "uvloop": "uvloop (`http_peers.py uvloop`)",
    "asyncio": "asyncio (`http_peers.py asyncio`)",
    "ats": "`ats-cffi http`",
    "uvloop_session": "`HttpSession` under uvloop (`http_floor.py uvloop`)",
    "session": "`HttpSession` over a minimal loop (`http_floor.py session`)",
    "bare": "bare loop (`http_floor.py bare`)",
}
WARMUP = 1


def run(name: str, wrk: str, seconds: int, cpus) -> dict:
    """One measured wrk run against a fresh server ``name``."""
    with tempfile.TemporaryFile() as log:
        if name in FLOOR_KIND:
            cmd = [sys.executable, str(HTTP_FLOOR), FLOOR_KIND[name]]
            server, port = start_ready(cmd, cpus[0], port_after("READY "), stderr=log)
        else:
            server, port = start_http(name, cpus[0], log)
        rep, client_cpu, wall, usr, sys_ = measure_wrk(
            server, port, log, wrk, WARMUP, seconds, cpus[1]
        )
    n = rep["requests"]
    return {
        "server": name,
        "requests": n,
        "req_per_s": n / (rep["duration_us"] / 1e6),
        "user_us": usr / n * 1e6,
        "sys_us": sys_ / n * 1e6,
        "client_cpu_frac": client_cpu / wall,
        "errors": wrk_errors(rep),
    }


def median_of(runs: list[dict], name: str) -> dict | None:
    """The run of ``name`` with the median total CPU per request."""
    ok = sorted(
        (r for r in runs if r["server"] == name and "error" not in r),
        key=lambda r: r["user_us"] + r["sys_us"],
    )
    return ok[(len(ok) - 1) // 2] if ok else None


def table(runs: list[dict]) -> str:
    med = {s: median_of(runs, s) for s in SERVERS}
    uv = med["uvloop"]
    lines = [
        "| server | user µs/req | sys µs/req | total µs/req | total / uvloop | req/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in SERVERS:
        m = med[s]
        if m is None:
            lines.append(f"| {LABELS[s]} | failed | | | | |")
            continue
        tot = m["user_us"] + m["sys_us"]
        ratio = f"{tot / (uv['user_us'] + uv['sys_us']):.2f}x" if uv else "-"
        lines.append(
            f"| {LABELS[s]} | {m['user_us']:.2f} | {m['sys_us']:.2f} | {tot:.2f} | {ratio} | "
            f"{m['req_per_s']:,.0f} |"
        )
    lines.append("")
    for a, b, what in (
        ("ats", "uvloop_session", "ATS's net core over uvloop's, the same session"),
        ("uvloop_session", "uvloop", "HttpSession over the peers' Protocol, both on uvloop"),
        ("ats", "session", "ATS's net core over the least Python loop, the same session"),
    ):
        if med[a] and med[b]:
            du = med[a]["user_us"] - med[b]["user_us"]
            dt = du + med[a]["sys_us"] - med[b]["sys_us"]
            lines.append(f"- `{a} - {b}` ({what}): {du:+.2f} µs user, {dt:+.2f} µs in all")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--duration", type=int, default=4, help="seconds of each measured run")
    p.add_argument("--md", help="also write the Markdown report here")
    p.add_argument("-o", "--output", help="write every run as JSON")
    a = p.parse_args(argv)
    if a.rounds < 1 or a.duration < 1:
        p.error("--rounds and --duration must be >= 1")
    wrk = ensure_wrk()
    avail, cpus = pin_cpus()
    runs: list[dict] = []
    t0 = time.monotonic()
    for rnd in range(1, a.rounds + 1):
        for s in SERVERS:
            try:
                r = run(s, wrk, a.duration, cpus)
            except Exception as e:  # one failed run must not lose the session
                r = {"server": s, "error": str(e)}
            r["round"] = rnd
            runs.append(r)
            if "error" in r:
                msg = f"FAILED: {r['error']}"
            else:
                msg = (
                    f"user {r['user_us']:5.2f} sys {r['sys_us']:5.2f} µs/req  "
                    f"{r['req_per_s']:>9,.0f} req/s  client CPU {r['client_cpu_frac']:.0%}"
                    + (f"  ERRORS {r['errors']}" if r["errors"] else "")
                )
            print(f"  [{time.monotonic() - t0:4.0f} s] round {rnd}  {s:<8} {msg}", file=sys.stderr)
    head = (
        f"`python perf/http_breakdown.py --rounds {a.rounds} --duration {a.duration}`: "
        f"{python_impl()}, server on CPU {cpus[0]}, wrk on CPU {cpus[1]}, medians of {a.rounds} "
        f"interleaved round(s), {time.monotonic() - t0:.0f} s."
    )
    print_report(head, table(runs), a.md)
    if a.output:
        meta = {"python": sys.version, "cpus": len(avail), "rounds": a.rounds}
        write_json(a.output, {"meta": meta, "runs": runs})
    bad = any("error" in r or r["errors"] for r in runs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
