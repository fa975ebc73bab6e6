"""Accept macro benchmark: ats_cffi accept modes vs asyncio vs uvloop, connect+close load.

    python perf/accept_bench.py [--duration 5] [--rounds 5] [--quick] [-o results.json]
    python perf/accept_bench.py serve {ats,asyncio,uvloop} [--net-threads N]
        [--accept-threads N] [--reuseport]            # one server alone

Builds perf/acceptgen.c with ``cc -O2`` into perf/out/, then runs the servers of
``CONFIGS`` interleaved (A B C D E A B C D E ...), each against a fresh acceptgen run that
keeps ``--concurrency`` connects in flight. Every server does the minimum per connection:
accept it, count it, close it (ats: the accept continuation gets ``NET_EVENT_ACCEPT`` and
calls ``vc.do_io_close()``; asyncio/uvloop: a Protocol whose ``connection_made`` calls
``transport.close()``). The figure of merit is the server's own count: the driver sends the
server SIGUSR1 at both edges of the client's measured window, and the server prints its
count; accepts/s = count delta / window. The server's CPU (utime+stime of all its threads,
/proc/PID/stat) over the same window gives CPU µs per accept. With 2+ CPUs the server is
pinned to one CPU and the client (and this driver) to another.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import (
    BACKLOG,
    HERE,
    HOST,
    OUT,
    build_c,
    client_cell,
    fmt_ratio,
    parse_servers,
    pin,
    pin_cpus,
    print_run,
    proc_cpu_times,
    run_client,
    saturated_note,
    session_line,
    session_meta,
    write_json,
)

GEN_SRC = HERE / "acceptgen.c"
GEN = OUT / "acceptgen"

#: name -> serve arguments. ats_thr1: 1 dedicated accept thread + 1 net thread; ats_pt1:
#: accept on the (one) net thread; ats_pt2_rp: 2 net threads, one SO_REUSEPORT socket each.
CONFIGS = {
    "ats_thr1": ["ats", "--net-threads", "1", "--accept-threads", "1"],
    "ats_pt1": ["ats", "--net-threads", "1", "--accept-threads", "0"],
    "ats_pt2_rp": ["ats", "--net-threads", "2", "--accept-threads", "0", "--reuseport"],
    "asyncio": ["asyncio"],
    "uvloop": ["uvloop"],
}
REFS = ("asyncio", "uvloop")


# -- the servers (run in a child process: ``accept_bench.py serve ...``) ------------------


def report(counts: dict) -> None:
    print("COUNT " + json.dumps(counts), flush=True)


def serve_ats(net_threads: int, accept_threads: int, reuseport: bool) -> None:
    from ats_cffi.eventsystem import Continuation, ProxyMutex
    from ats_cffi.net import AcceptOptions, net_processor, net_stats
    from ats_cffi.net.codes import NET_EVENT_ACCEPT

    class Acceptor(Continuation):
        """Counts and closes every connection (its mutex is held around each event)."""

        def __init__(self) -> None:
            super().__init__(ProxyMutex())
            self.n = 0
            self.set_handler(self.on_event)

        def on_event(self, event: int, vc) -> None:
            if event == NET_EVENT_ACCEPT:
                self.n += 1
                vc.do_io_close()

    # Blocked here, before the net threads exist, so that they inherit the mask and only
    # this thread's sigwait takes the signals.
    sigs = {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1}
    signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    net_processor.start(net_threads)
    acceptor = Acceptor()
    opt = AcceptOptions(
        local_address=HOST,
        accept_threads=accept_threads,
        reuseport=reuseport,
        backlog=BACKLOG,
    )
    action = net_processor.accept(acceptor, opt)
    print(f"READY {action.na.port}", flush=True)
    try:
        while True:
            sig = signal.sigwait(sigs)
            report(
                {
                    "accepts": acceptor.n,
                    "total_accepts": net_stats.get("proxy.process.tcp.total_accepts"),
                    "throttled": net_stats.get("proxy.process.net.connections_throttled_in"),
                }
            )
            if sig != signal.SIGUSR1:
                break
    finally:
        action.cancel()
        net_processor.shutdown()


async def serve_asyncio() -> None:
    n = 0

    class CloseProtocol(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            nonlocal n
            n += 1
            transport.close()

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, lambda: report({"accepts": n}))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(CloseProtocol, HOST, 0, backlog=BACKLOG)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    report({"accepts": n})
    server.close()
    await server.wait_closed()


def serve_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="accept_bench.py serve")
    p.add_argument("server", choices=["ats", "asyncio", "uvloop"])
    p.add_argument("--net-threads", type=int, default=1)
    p.add_argument("--accept-threads", type=int, default=1)
    p.add_argument("--reuseport", action="store_true")
    a = p.parse_args(argv)
    if a.server == "ats":
        serve_ats(a.net_threads, a.accept_threads, a.reuseport)
    elif a.server == "asyncio":
        asyncio.run(serve_asyncio())
    else:
        import uvloop

        uvloop.run(serve_asyncio())
    return 0


# -- the driver ---------------------------------------------------------------------------


def build_gen() -> Path:
    return build_c(GEN_SRC, GEN)


def listen_drops() -> int:
    """TcpExt ListenDrops of this network namespace: SYNs/ACKs dropped at a full queue."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for head, vals in zip(lines[::2], lines[1::2]):
        if head.startswith("TcpExt:"):
            return int(dict(zip(head.split()[1:], vals.split()[1:])).get("ListenDrops", 0))
    return 0


def time_wait_count() -> int:
    """Sockets in TIME_WAIT on 127.0.0.1 (state 06 in /proc/net/tcp)."""
    with open("/proc/net/tcp") as f:
        return sum(1 for line in f if line.split()[3:4] == ["06"])


class Server:
    """A ``serve`` child; its stdout lines go to a queue read with a timeout."""

    def __init__(self, name: str, cpu: int | None) -> None:
        self.name = name
        self.p = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "serve", *CONFIGS[name]],
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=pin(cpu),
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        line = self._line(20)
        if not line.startswith("READY "):
            self.kill()
            raise RuntimeError(f"server {name} did not start (got {line!r})")
        self.port = int(line.split()[1])

    def _pump(self) -> None:
        for line in self.p.stdout:  # type: ignore[union-attr]
            self.lines.put(line)
        self.lines.put("")

    def _line(self, timeout: float) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return ""

    def sample(self, sig: int = signal.SIGUSR1) -> tuple[dict, tuple[float, float]]:
        """The server's counts (asked for with ``sig``) and its (user, system) CPU so far."""
        cpu = proc_cpu_times(self.p.pid)
        self.p.send_signal(sig)
        line = self._line(10)
        if not line.startswith("COUNT "):
            raise RuntimeError(f"server {self.name} gave no count (got {line!r})")
        return json.loads(line[6:]), cpu

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            print(f"  {self.name} did not exit on SIGTERM; killed", file=sys.stderr)
            self.kill()

    def kill(self) -> None:
        self.p.kill()
        self.p.wait()


def run_one(name: str, args: argparse.Namespace, cpus: tuple) -> dict:
    server = Server(name, cpus[0])
    drops0 = listen_drops()
    try:
        cmd = [str(GEN), HOST, str(server.port), str(args.concurrency)]
        cmd += [str(args.duration), str(args.warmup), args.mode]
        timeout = args.duration + args.warmup + 30
        out, rc, s0, s1, other_err = run_client(cmd, cpus[1], server.sample, timeout)
        tw = time_wait_count()
    finally:
        server.stop()
    drops = listen_drops() - drops0
    res = json.loads(out) if out.strip() else {"connects": 0, "seconds": 0, "errors": -1}
    secs = res["seconds"] or float("nan")
    nan = float("nan")
    if s0 is None or s1 is None:
        accepts, usr, sys_, extra = 0, nan, nan, {}
    else:
        accepts = s1[0]["accepts"] - s0[0]["accepts"]
        usr, sys_ = s1[1][0] - s0[1][0], s1[1][1] - s0[1][1]
        extra = {k: s1[0][k] - s0[0][k] for k in s1[0] if k != "accepts"}
    return {
        "server": name,
        "accepts": accepts,
        "seconds": res["seconds"],
        "accepts_per_s": accepts / secs,
        "client_connects": res["connects"],
        "client_confirmed": res.get("confirmed", 0),
        "client_connects_per_s": res["connects"] / secs,
        "errors": res["errors"],
        "first_error": res.get("first_error", ""),
        "client_rc": rc,
        "client_stderr": other_err,
        "server_cpu_s": usr + sys_,
        "server_cpu_us_per_accept": (usr + sys_) / accepts * 1e6 if accepts else nan,
        "server_user_us_per_accept": usr / accepts * 1e6 if accepts else nan,
        "server_sys_us_per_accept": sys_ / accepts * 1e6 if accepts else nan,
        "server_cpu_frac": (usr + sys_) / secs,
        "client_cpu_frac": res.get("cpu_seconds", nan) / secs,
        "listen_drops": drops,
        "time_wait_after": tw,
        "server_stats": extra,
    }


def summarize(runs: list[dict], names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        rs = [r for r in runs if r["server"] == name]
        if not rs:
            continue

        def med(key: str) -> float:
            return statistics.median(r[key] for r in rs)  # noqa: B023

        rows.append(
            {
                "server": name,
                "n": len(rs),
                "accepts_per_s": med("accepts_per_s"),
                "accepts_per_s_min": min(r["accepts_per_s"] for r in rs),
                "accepts_per_s_max": max(r["accepts_per_s"] for r in rs),
                "client_connects_per_s": med("client_connects_per_s"),
                "server_cpu_us_per_accept": med("server_cpu_us_per_accept"),
                "server_user_us_per_accept": med("server_user_us_per_accept"),
                "server_sys_us_per_accept": med("server_sys_us_per_accept"),
                "server_cpu_frac": med("server_cpu_frac"),
                "client_cpu_frac": med("client_cpu_frac"),
                "listen_drops": sum(r["listen_drops"] for r in rs),
                "errors": sum(max(r["errors"], 0) for r in rs)
                + sum(1 for r in rs if r["client_rc"] not in (0, None) and r["errors"] == 0),
            }
        )
    return rows


def table(rows: list[dict], args: argparse.Namespace) -> str:
    by = {r["server"]: r for r in rows}
    refs = [n for n in REFS if n in by]
    head = "| server | accepts/s (min-max) | client connects/s | server µs CPU/accept (user+sys) "
    head += "| server CPU | client CPU "
    head += "".join(f"| acc/s vs {n} " for n in refs)
    head += "".join(f"| CPU/acc vs {n} " for n in refs) + "|"
    lines = [head, "|---|---:|---:|---:|---:|---:" + "|---:" * (2 * len(refs)) + "|"]
    saturated = False
    for r in rows:
        ratios = []
        if r["server"].startswith("ats"):
            ratios += [fmt_ratio(r["accepts_per_s"] / by[n]["accepts_per_s"]) for n in refs]
            ratios += [
                fmt_ratio(r["server_cpu_us_per_accept"] / by[n]["server_cpu_us_per_accept"])
                for n in refs
            ]
        else:
            ratios = [""] * (2 * len(refs))
        client, sat = client_cell(r["client_cpu_frac"])
        saturated |= sat
        err = f" ({r['errors']} errors)" if r["errors"] else ""
        lines.append(
            f"| {r['server']}{err} | {r['accepts_per_s']:,.0f} "
            f"({r['accepts_per_s_min']:,.0f}-{r['accepts_per_s_max']:,.0f}) "
            f"| {r['client_connects_per_s']:,.0f} | {r['server_cpu_us_per_accept']:.1f} "
            f"({r['server_user_us_per_accept']:.1f}+{r['server_sys_us_per_accept']:.1f}) "
            f"| {r['server_cpu_frac']:.0%} | {client} | " + " | ".join(ratios) + " |"
        )
    lines.append("")
    lines.append(
        f"acceptgen {args.mode} mode, {args.concurrency} connects in flight, "
        f"{args.rounds} x {args.duration:g} s per server. accepts/s: median over the rounds "
        "of the server's own count over the client's measured window; server µs CPU/accept: "
        "the server process's user+system CPU over that window / its accepts (lower is "
        "better). Ratios > 1 for accepts/s and < 1 for CPU/accept favour ats_cffi. "
        "ats_thr1: 1 accept thread + 1 net thread; ats_pt1: accept on the net thread "
        "(EPOLLEXCLUSIVE); ats_pt2_rp: 2 net threads with a SO_REUSEPORT socket each, both on "
        "the server's one CPU."
    )
    if saturated:
        lines.append(saturated_note("accepts/s", "CPU/accept"))
    drops = sum(r["listen_drops"] for r in rows)
    if drops:
        lines.append(f"Listen queue drops during the runs (TcpExt ListenDrops): {drops}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        return serve_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per run")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--concurrency", type=int, default=100, help="connects in flight")
    p.add_argument(
        "--mode",
        choices=["wait", "close"],
        default="wait",
        help="acceptgen mode: close after the server did (wait) or right after connect",
    )
    p.add_argument("--quick", action="store_true", help="3 rounds of 3 s runs (~1 min)")
    p.add_argument("--servers", default=",".join(CONFIGS), help="comma-separated subset")
    p.add_argument("-o", "--output", help="write all runs and the summary as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.rounds = 3.0, 0.5, 3
    names = parse_servers(p, args.servers, list(CONFIGS))

    build_gen()
    avail, cpus = pin_cpus()

    runs = []
    load0 = os.getloadavg()
    t0 = time.monotonic()
    for rnd in range(args.rounds):
        for name in names:
            r = run_one(name, args, cpus)
            runs.append(r)
            line = (
                f"  round {rnd + 1}  {name:<10} {r['accepts_per_s']:>9,.0f} acc/s "
                f"(client {r['client_connects_per_s']:>9,.0f})  "
                f"{r['server_cpu_us_per_accept']:6.1f} µs/acc  "
                f"server CPU {r['server_cpu_frac']:.0%}  client CPU {r['client_cpu_frac']:.0%}"
                + (f"  drops {r['listen_drops']}" if r["listen_drops"] else "")
            )
            print_run(line, r, "acceptgen", f" ({r['first_error']})")
    rows = summarize(runs, names)
    loads = (load0, os.getloadavg())
    print(session_line(len(runs), t0, avail, loads))
    print(table(rows, args))
    if args.output:
        extra = {"concurrency": args.concurrency, "mode": args.mode, "backlog": BACKLOG}
        meta = session_meta(avail, cpus, args, loads, **extra)
        write_json(args.output, {"meta": meta, "summary": rows, "runs": runs})
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
