"""Echo macro benchmark: ats_cffi vs asyncio vs uvloop against one C load generator.

    python perf/echo_bench.py [--duration 5] [--rounds 3] [--quick] [-o results.json]

Builds perf/loadgen.c with ``cc -O2`` into perf/out/, then for each case (1 KiB and
100 KiB messages x 10 and 100 connections) runs the three servers of perf/servers.py
interleaved (A B C A B C ...), each against a fresh loadgen run: closed loop, one message
in flight per connection. With 2+ CPUs the server is pinned to one CPU and the client
(and this driver) to another. Per run it measures round trips/s (from the client) and the
server's CPU time (utime+stime of all its threads, /proc/PID/stat) over the client's
measured window, divided by round trips. The table shows medians over the rounds.

``run_one(..., tls=(cert, key))`` runs the same echo over TLS (servers.py ``--tls-cert``)
against perf/tlsloadgen.c, loadgen.c's TLS sibling (``build_tlsloadgen``): compare_peers.py's
TLS echo cases (perf/tls_cases.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import (
    HERE,
    HOST,
    OUT,
    build_c,
    client_cell,
    fmt_ratio,
    parse_servers,
    pin_cpus,
    print_run,
    proc_cpu_seconds,
    run_client,
    saturated_note,
    session_line,
    session_meta,
    start_ready,
    stop_process,
    write_json,
)
from servers import ATS_WATER_MARK

LOADGEN_SRC = HERE / "loadgen.c"
LOADGEN = OUT / "loadgen"
TLS_LOADGEN_SRC = HERE / "tlsloadgen.c"
TLS_LOADGEN = OUT / "tlsloadgen"
SERVERS_PY = HERE / "servers.py"
SERVERS = ("ats", "ats_splice", "ats_asyncio", "asyncio", "uvloop")
CASES = [(1024, 10), (1024, 100), (102400, 10), (102400, 100)]


def build_loadgen() -> Path:
    return build_c(LOADGEN_SRC, LOADGEN)


def build_tlsloadgen() -> Path:
    return build_c(TLS_LOADGEN_SRC, TLS_LOADGEN, ["-lssl", "-lcrypto"])


def ready_port(line: str) -> int | None:
    """The port of servers.py's ``READY <port>`` line."""
    return int(line.split()[1]) if line.startswith("READY ") else None


def start_server(
    name: str, cpu: int | None, wm: int = ATS_WATER_MARK, tls: tuple[str, str] | None = None,
    streams: bool = False,
) -> tuple[subprocess.Popen, int]:  # fmt: skip
    """``tls``: (certificate, key) files: the echo over TLS. ``streams``: the asyncio
    servers' streams echo (``servers.py --streams``) instead of their Protocol."""
    cmd = [sys.executable, str(SERVERS_PY), name, "--port", "0", "--water-mark", str(wm)]
    if tls:
        cmd += ["--tls-cert", tls[0], "--tls-key", tls[1]]
    if streams:
        cmd.append("--streams")
    return start_ready(cmd, cpu, ready_port)


def stop_server(p: subprocess.Popen) -> None:
    stop_process(p)


def run_one(
    name: str,
    msg: int,
    conns: int,
    duration: float,
    warmup: float,
    cpus: tuple,
    wm: int = ATS_WATER_MARK,
    tls: tuple[str, str] | None = None,
    streams: bool = False,
) -> dict:
    """One server against a fresh load generator run. ``tls``: (certificate, key) files,
    for the echo over TLS against tlsloadgen (its handshakes come before the warm-up).
    ``streams``: the asyncio servers' streams echo (``start_server``)."""
    server, port = start_server(name, cpus[0], wm, tls, streams)
    gen = TLS_LOADGEN if tls else LOADGEN
    try:
        cmd = [str(gen), HOST, str(port), str(conns), str(msg), str(duration), str(warmup)]
        out, rc, cpu0, cpu1, other_err = run_client(
            cmd, cpus[1], lambda: proc_cpu_seconds(server.pid), duration + warmup + 30
        )
    finally:
        stop_server(server)
    res = json.loads(out) if out.strip() else {"round_trips": 0, "seconds": 0, "errors": -1}
    rts = res["round_trips"]
    secs = res["seconds"] or float("nan")
    srv_cpu = (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else float("nan")
    return {
        "server": name,
        "msg_size": msg,
        "conns": conns,
        "round_trips": rts,
        "seconds": res["seconds"],
        "errors": res["errors"],
        "client_rc": rc,
        "client_stderr": other_err,
        "rt_per_s": rts / secs,
        "server_cpu_s": srv_cpu,
        "server_cpu_us_per_rt": srv_cpu / rts * 1e6 if rts else float("nan"),
        "server_cpu_frac": srv_cpu / secs,
        "client_cpu_frac": res.get("cpu_seconds", float("nan")) / secs,
        **({"tls_cipher": res.get("cipher")} if tls else {}),
    }


def summarize(runs: list[dict]) -> list[dict]:
    rows = []
    for msg, conns in CASES:
        for name in SERVERS:
            rs = [
                r
                for r in runs
                if r["server"] == name and (r["msg_size"], r["conns"]) == (msg, conns)
            ]
            if not rs:
                continue
            rows.append(
                {
                    "msg_size": msg,
                    "conns": conns,
                    "server": name,
                    "n": len(rs),
                    "rt_per_s": statistics.median(r["rt_per_s"] for r in rs),
                    "server_cpu_us_per_rt": statistics.median(
                        r["server_cpu_us_per_rt"] for r in rs
                    ),
                    "server_cpu_frac": statistics.median(r["server_cpu_frac"] for r in rs),
                    "client_cpu_frac": statistics.median(r["client_cpu_frac"] for r in rs),
                    "errors": sum(max(r["errors"], 0) for r in rs)
                    + sum(1 for r in rs if r["client_rc"] != 0),
                }
            )
    return rows


def table(rows: list[dict]) -> str:
    by = {(r["msg_size"], r["conns"], r["server"]): r for r in rows}
    lines = [
        "| case | server | rt/s | server µs CPU/rt | server CPU | client CPU "
        "| rt/s vs asyncio | rt/s vs uvloop | CPU/rt vs asyncio | CPU/rt vs uvloop |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    saturated = False
    for r in rows:
        case = f"{r['msg_size'] // 1024} KiB x {r['conns']}"
        ratios = ["", "", "", ""]
        if r["server"] == "ats":
            a = by.get((r["msg_size"], r["conns"], "asyncio"))
            u = by.get((r["msg_size"], r["conns"], "uvloop"))
            nan = float("nan")
            ratios = [
                fmt_ratio(r["rt_per_s"] / a["rt_per_s"] if a else nan),
                fmt_ratio(r["rt_per_s"] / u["rt_per_s"] if u else nan),
                fmt_ratio(r["server_cpu_us_per_rt"] / a["server_cpu_us_per_rt"] if a else nan),
                fmt_ratio(r["server_cpu_us_per_rt"] / u["server_cpu_us_per_rt"] if u else nan),
            ]
        client, sat = client_cell(r["client_cpu_frac"])
        saturated |= sat
        err = f" ({r['errors']} errors)" if r["errors"] else ""
        lines.append(
            f"| {case} | {r['server']}{err} | {r['rt_per_s']:,.0f} "
            f"| {r['server_cpu_us_per_rt']:.1f} | {r['server_cpu_frac']:.0%} | {client} | "
            + " | ".join(ratios)
            + " |"
        )
    lines.append("")
    lines.append(
        "rt/s: median round trips per second over the rounds; server µs CPU/rt: the server "
        "process's user+system CPU over the measured window / round trips (lower is better). "
        "CPU ratios < 1 mean ats_cffi spends less CPU per round trip."
    )
    if saturated:
        lines.append(saturated_note("rt/s", "CPU/rt"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per run")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per case")
    p.add_argument("--quick", action="store_true", help="1 round of 1.5 s runs (smoke test)")
    p.add_argument(
        "--ats-water-mark",
        type=int,
        default=ATS_WATER_MARK,
        help="MIOBuffer water mark of the ats echo (default: servers.py ATS_WATER_MARK)",
    )
    p.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset")
    p.add_argument("-o", "--output", help="write all runs and the summary as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.rounds = 1.5, 0.5, 1
    servers = parse_servers(p, args.servers, SERVERS)

    build_loadgen()
    avail, cpus = pin_cpus()

    runs = []
    load0 = os.getloadavg()
    t0 = time.monotonic()
    for msg, conns in CASES:
        for rnd in range(args.rounds):
            for name in servers:
                r = run_one(name, msg, conns, args.duration, args.warmup, cpus, args.ats_water_mark)
                runs.append(r)
                line = (
                    f"  {msg:>6} B x {conns:>3}  round {rnd + 1}  {name:<7} "
                    f"{r['rt_per_s']:>10,.0f} rt/s  {r['server_cpu_us_per_rt']:6.1f} µs/rt  "
                    f"client CPU {r['client_cpu_frac']:.0%}"
                )
                print_run(line, r, "loadgen")
    rows = summarize(runs)
    loads = (load0, os.getloadavg())
    print(session_line(len(runs), t0, avail, loads))
    print(table(rows))
    if args.output:
        meta = session_meta(avail, cpus, args, loads, ats_water_mark=args.ats_water_mark)
        write_json(args.output, {"meta": meta, "summary": rows, "runs": runs})
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
