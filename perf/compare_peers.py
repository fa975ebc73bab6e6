"""ats_cffi vs asyncio vs uvloop, side by side: echo, HTTP hello, asyncio apps, accept, idle.

    python perf/compare_peers.py [--quick] [-o out.json] [--md out.md] [--rounds N]
                                 [--cases echo,http,uvicorn,tls,accept,idle,streams]

One interleaved session (ats uvloop asyncio, asyncio uvloop ats, ...: every case of a round,
each case's servers in the reverse order of the round before, then the next round), with the
server pinned to the first CPU and the clients (and this driver) to the second. It builds
what it needs: the C load generators of perf/ (``cc -O2``) and ``wrk`` (``apt-get install -y
wrk`` when it is missing). Cases:

- echo (perf/servers.py vs perf/loadgen.c, as echo_bench.py): 1, 10 and 100 KiB messages x
  10 and 100 connections, one message in flight per connection. Throughput: round trips/s.
  ats_cffi runs twice, each with a row of its own: ``ats``, a Python continuation moving
  the bytes through VIOs and an MIOBuffer (the API every ats_cffi app codes against), and
  ``ats_splice`` (rows marked ``, splice``), the connection spliced to itself
  (``ats_cffi.net.splice``: the bytes are pumped natively inside the NetHandler's pass, as
  ``ats-cffi echo`` and ``tunnel`` do by default).
- http: ``python -m ats_cffi http`` vs the same server logic on asyncio and on uvloop
  (perf/http_peers.py), all parsing with httptools, and beside them a minimal uvloop +
  httptools hello server (``uvloop_min``: what uvloop's own benchmarks run; it bounds what
  the same-logic peers could save), and the same-logic server on ats_cffi's asyncio loop
  (``ats_asyncio``, rows marked ``, asyncio loop``); ``wrk -c 100 -t 1 -d N`` on ``GET /``
  (keep-alive, ``Hello, World!``) after a 1 s unmeasured wrk run. Throughput: requests/s.
  Then the same with a new connection per request: ``wrk -c 50 -H 'Connection: close'``
  (accept, session set-up, one request, the server's close: what a client that does not
  keep connections alive costs).
- uvicorn (perf/asyncio_cases.py): a minimal ASGI hello app under uvicorn + httptools, the
  loop set by uvicorn's ``loop=`` (``ats_cffi.asyncio:new_event_loop``, ``asyncio``,
  ``uvloop``), ``wrk -c 100`` keep-alive as http; rows marked ``, asyncio loop``.
- streams (perf/asyncio_cases.py; not in the default run): the echo written with asyncio
  streams (``start_server``, read/write/drain) on the three loops, 1 and 100 KiB x 10 and
  100 connections, loaded as the echo case; rows marked ``, asyncio loop``.
- tls (perf/tls_cases.py): the http hello over TLS 1.3 (ECDSA P-256, made for the session):
  ``ats-cffi http --tls-cert --tls-key`` against asyncio's and uvloop's ``ssl=`` servers of
  the same logic, with the plaintext ``ats-cffi http`` as the bound (rows marked ``,
  plaintext``); keep-alive, then a new connection (a full handshake) per request. Then the
  echo over TLS (perf/servers.py ``--tls-cert`` vs perf/tlsloadgen.c, handshakes before the
  warm-up): 100 KiB x 10 and 100 connections and 1 KiB x 100, ats (VIOs), ats_asyncio,
  asyncio, uvloop; no splice (it cannot do TLS). Throughput: round trips/s.
- accept: connect+close, as accept_bench.py (acceptgen ``wait`` mode, 100 connects in flight;
  ats = ``--accept-ats``, default ``ats_pt1``: accept on the one net thread, as the
  ``ats-cffi`` command does by default).
  Throughput: the server's own accepts/s. Then accept + a 1-byte echo + close on the echo
  servers (acceptgen ``echo`` mode: each connection sends one byte, waits for it to come
  back, then closes with a reset): what a short-lived connection costs. Throughput: the
  connections whose byte came back, per second.
- idle (echo servers, both ats echos, and http servers, the minimal one too): 10,000 client
  connections opened from the client CPU, each carrying one message (1 byte echoed; one
  ``GET /`` answered), then left idle: a connection that carried traffic, as a keep-alive
  client's is. Reported: the server's VmRSS growth / 10,000 (KiB per connection; VmRSS is
  read before the connections and after the idle window), the server's CPU over the idle
  window (5 s, summed from /proc/PID/task/*/schedstat) as % of a core, and (below the
  table) how much of the growth RSS still holds 2 s after the client closed them all. ats
  runs with its default InactivityCop (every ``inactivity_check_frequency`` = 1 s, default
  inactivity timeout 1 day).

Per case and server: the median over the rounds of throughput and of the server's CPU per
operation (its utime+stime over the client's measured window / operations), and the ratios of
ats_cffi to asyncio and to uvloop. A client core >= 95% busy is flagged ``(sat.)``: that
case's throughput is bounded by the load generator too. Markdown table on stdout (and
``--md``), everything in ``-o`` JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import accept_bench
import asyncio_cases
import echo_bench
import tls_cases
from _common import (
    BACKLOG,
    HERE,
    HOST,
    LINGER0,
    WRK_CLOSE_CONNS,
    WRK_CONNS,
    ensure_wrk,
    host_meta,
    log_tail,
    measure_wrk,
    pin,
    pin_cpus,
    port_after,
    print_report,
    proc_cpu_seconds,
    proc_fd_count,
    proc_rss_kib,
    proc_runtime_ns,
    python_impl,
    raise_nofile,
    run_client,
    start_ready,
    stop_process,
    write_json,
    wrk_errors,
)
from peers_report import CLOSED_SETTLE, SERVERS, rounds_table, summarize, table

#: The echo cases also run the spliced ats echo (``servers.py ats_splice``) and the asyncio
#: Protocol echo on ats_cffi's asyncio loop (``ats_asyncio``): rows of their own. In run
#: order: each ats_cffi server that issue 20 compares with uvloop (the VIO echo, the
#: spliced one; the http server with the minimal uvloop one) runs next to it, so that a
#: round's own ratio divides two runs a few seconds apart, not four runs apart.
ECHO_SERVERS = ("ats", "uvloop", "ats_splice", "asyncio", "ats_asyncio")
HTTP_SERVERS = ("ats", "uvloop_min", "uvloop", "asyncio", "ats_asyncio")
ACCEPT_SERVERS = ("ats", "uvloop", "asyncio")
#: What each idle connection carries before it is left idle, and what ends its answer.
IDLE_MESSAGES = {"echo": b"x", "http": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"}
KIB = 1024
ECHO_CASES = [(m * KIB, c) for m in (1, 10, 100) for c in (10, 100)]
HTTP_PEERS = HERE / "http_peers.py"
IDLE_CONNS = 10_000
#: The cases of a run without ``--cases`` (KNOWN_CASES: every one).
DEFAULT_CASES = "echo,http,uvicorn,tls,accept,idle"
KNOWN_CASES = DEFAULT_CASES + ",streams"


# -- the idle client (a child process: ``compare_peers.py idle-client PORT N``) -----------


def read_answer(s: socket.socket, app: str) -> None:
    """Read the whole answer to ``IDLE_MESSAGES[app]``: the byte back, or one HTTP response
    (its head, then Content-Length bytes)."""
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed before answering")
        data += chunk
        if app == "echo":
            return
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            if len(body) >= length:
                return


def idle_client_main(argv: list[str]) -> int:
    """Open N connections to 127.0.0.1:PORT (blocking connects, one at a time), each carrying
    one message of APP (``IDLE_MESSAGES``) and reading its answer, print ``CONNECTED N``, hold
    them until stdin closes, then exit (SO_LINGER 0: each close sends a reset and leaves no
    TIME_WAIT)."""
    port, n, app = int(argv[0]), int(argv[1]), argv[2]
    raise_nofile(n + 64)
    socks = []
    deadline = time.monotonic() + 60
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
            s.settimeout(10)
            s.connect((HOST, port))
            s.sendall(IDLE_MESSAGES[app])
            read_answer(s, app)
            if time.monotonic() > deadline:
                raise TimeoutError("60 s")
    except OSError as e:
        print(f"FAILED after {len(socks) - 1} connections: {e!r}", flush=True)
        return 1
    print(f"CONNECTED {len(socks)}", flush=True)
    sys.stdin.read()
    return 0


# -- servers ------------------------------------------------------------------------------


def start_http(name: str, cpu: int | None, log) -> tuple[subprocess.Popen, int]:
    if name == "ats":  # (uvloop_min: http_peers.py's minimal server)
        cmd = [sys.executable, "-m", "ats_cffi", "http", "--listen", f"{HOST}:0"]
        cmd += ["--drain-timeout", "1"]
        return start_ready(cmd, cpu, port_after("ats-cffi http listening on "), stderr=log)
    cmd = [sys.executable, str(HTTP_PEERS), name, "--backlog", str(BACKLOG)]
    return start_ready(cmd, cpu, port_after("READY "), stderr=log)


def start_echo(name: str, cpu: int | None, log) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, str(echo_bench.SERVERS_PY), name, "--port", "0"]
    cmd += ["--backlog", str(BACKLOG)]
    return start_ready(cmd, cpu, echo_bench.ready_port, stderr=log)


# -- one run of each kind: every one returns a record with the same keys ------------------


def record(case: str, server: str, value: float, cpu: float, client: float, **extra) -> dict:
    return {
        "case": case,
        "server": server,
        "value": value,
        "cpu": cpu,
        "client_cpu_frac": client,
        "errors": 0,
        **extra,
    }


def run_echo(
    case: str, name: str, a: argparse.Namespace, cpus, msg: int, conns: int, tls: bool = False,
    streams: bool = False,
) -> dict:  # fmt: skip
    """``tls``: --cases tls (perf/tls_cases.py); ``streams``: --cases streams (the asyncio
    streams echo, perf/asyncio_cases.py)."""
    tls_files = a.cert if tls else None
    r = echo_bench.run_one(
        name, msg, conns, a.echo_duration, a.echo_warmup, cpus, tls=tls_files, streams=streams
    )
    errors = max(r["errors"], 0) + (r["client_rc"] != 0)
    rec = record(case, name, r["rt_per_s"], r["server_cpu_us_per_rt"], r["client_cpu_frac"], raw=r)
    rec["errors"] = errors
    rec["server_cpu_frac"] = r["server_cpu_frac"]
    return rec


def run_http(
    case: str, name: str, a: argparse.Namespace, cpus, close: bool = False, tls: bool = False,
    uvicorn: bool = False,
) -> dict:  # fmt: skip
    """``tls``: --cases tls (perf/tls_cases.py); ``uvicorn``: --cases uvicorn (the ASGI
    hello under uvicorn, perf/asyncio_cases.py)."""
    with tempfile.TemporaryFile() as log:
        if tls:
            server, port = tls_cases.start_https(name, cpus[0], log, a.cert)
        elif uvicorn:
            server, port = asyncio_cases.start_uvicorn(name, cpus[0], log)
        else:
            server, port = start_http(name, cpus[0], log)
        rep, client_cpu, wall, usr, sys_ = measure_wrk(
            server, port, log, a.wrk, a.http_warmup, a.http_duration, cpus[1], close,
            tls_cases.scheme(name) if tls else "http",
        )  # fmt: skip
    n = rep["requests"]
    secs = rep["duration_us"] / 1e6
    cpu = usr + sys_
    rec = record(
        case, name, n / secs, cpu / n * 1e6 if n else float("nan"), client_cpu / wall, raw=rep
    )
    rec["errors"] = wrk_errors(rep)
    rec["server_cpu_frac"] = cpu / wall
    return rec


def run_accept(case: str, name: str, a: argparse.Namespace, cpus) -> dict:
    config = a.accept_ats if name == "ats" else name
    ns = argparse.Namespace(
        concurrency=100, duration=a.accept_duration, warmup=a.accept_warmup, mode="wait"
    )
    r = accept_bench.run_one(config, ns, cpus)
    rec = record(
        case,
        name,
        r["accepts_per_s"],
        r["server_cpu_us_per_accept"],
        r["client_cpu_frac"],
        config=config,
        raw=r,
    )
    rec["errors"] = max(r["errors"], 0) + (r["client_rc"] not in (0, None) and r["errors"] == 0)
    rec["server_cpu_frac"] = r["server_cpu_frac"]
    return rec


def run_accept_echo(case: str, name: str, a: argparse.Namespace, cpus) -> dict:
    """acceptgen ``echo`` against an echo server: accept, a 1-byte round trip, the close."""
    with tempfile.TemporaryFile() as log:
        server, port = start_echo(name, cpus[0], log)
        try:
            cmd = [str(accept_bench.GEN), HOST, str(port), "100"]
            cmd += [str(a.accept_duration), str(a.accept_warmup), "echo"]
            out, rc, cpu0, cpu1, _ = run_client(
                cmd, cpus[1], lambda: proc_cpu_seconds(server.pid), a.accept_duration + 60
            )
        finally:
            stop_process(server)
    res = json.loads(out) if out.strip() else {"confirmed": 0, "seconds": 0, "errors": -1}
    n = res["confirmed"]
    secs = res["seconds"] or float("nan")
    cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else float("nan")
    rec = record(
        case, name, n / secs, cpu / n * 1e6 if n else float("nan"), res["cpu_seconds"] / secs
    )
    rec["errors"] = max(res["errors"], 0) + (rc != 0 and res["errors"] == 0)
    rec["server_cpu_frac"] = cpu / secs
    rec["raw"] = res
    return rec


def run_idle(case: str, name: str, a: argparse.Namespace, cpus, app: str) -> dict:
    n = a.idle_conns
    start = start_http if app == "http" else start_echo
    with tempfile.TemporaryFile() as log:
        server, port = start(name, cpus[0], log)
        client = None
        try:
            time.sleep(0.5)
            rss0, fd0 = proc_rss_kib(server.pid), proc_fd_count(server.pid)
            client = subprocess.Popen(
                [sys.executable, __file__, "idle-client", str(port), str(n), app],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                preexec_fn=pin(cpus[1]),
            )
            line = client.stdout.readline()  # type: ignore[union-attr]
            if not line.startswith("CONNECTED "):
                raise RuntimeError(f"idle client: {line.strip() or 'exited'}")
            wait_fds(server.pid, lambda fds: fds >= fd0 + n, f"{n} connections", 60)
            time.sleep(1.0)  # let the server finish setting up the last sessions
            rss1 = proc_rss_kib(server.pid)
            ns0, t0 = proc_runtime_ns(server.pid), time.monotonic()
            time.sleep(a.idle_window)
            ns1, t1 = proc_runtime_ns(server.pid), time.monotonic()
            rss2 = proc_rss_kib(server.pid)
            fds_end = proc_fd_count(server.pid) - fd0
            client.stdin.close()  # type: ignore[union-attr]
            client.wait(30)
            client = None
            wait_fds(server.pid, lambda fds: fds <= fd0, "the closed connections", 60)
            time.sleep(CLOSED_SETTLE)
            rss3 = proc_rss_kib(server.pid)
        except Exception as e:
            raise RuntimeError(f"{e}; server stderr: {log_tail(log)!r}") from e
        finally:
            if client is not None:
                client.stdin.close()  # type: ignore[union-attr]
                client.wait(30)
            stop_process(server)
    rec = record(
        case,
        name,
        (rss2 - rss0) / n,
        (ns1 - ns0) / 1e9 / (t1 - t0),
        float("nan"),
        rss_before_kib=rss0,
        rss_connected_kib=rss1,
        rss_after_kib=rss2,
        rss_closed_kib=rss3,
        conns=n,
        conns_open_at_end=fds_end,
        window_s=t1 - t0,
    )
    rec["errors"] = int(fds_end < n)  # the server closed some of the idle connections
    return rec


def wait_fds(pid: int, done: Callable[[int], bool], what: str, timeout: float) -> None:
    """Poll the server's fd count until ``done(count)``; RuntimeError naming ``what`` after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done(fds := proc_fd_count(pid)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"waited {timeout} s for {what}; the server holds {fds} fds")
        time.sleep(0.2)


# -- the session --------------------------------------------------------------------------


Case = tuple[str, str, Callable[..., dict], tuple, tuple[str, ...]]


def plan(a: argparse.Namespace) -> list[Case]:
    """(case name, unit, run function, its extra args, servers) in session order."""
    cases: list[Case] = []
    if "echo" in a.cases:
        for msg, conns in ECHO_CASES:
            name = f"echo {msg // KIB} KiB x {conns}"
            cases.append((name, "rt/s", run_echo, (msg, conns), ECHO_SERVERS))
    if "http" in a.cases:
        cases.append((f"http hello, wrk -c {WRK_CONNS}", "req/s", run_http, (), HTTP_SERVERS))
        name = f"http hello, new conn. per request, wrk -c {WRK_CLOSE_CONNS}"
        cases.append((name, "req/s", run_http, (True,), HTTP_SERVERS))
    if "uvicorn" in a.cases:
        name = f"uvicorn + httptools hello, wrk -c {WRK_CONNS}"
        cases.append((name, "req/s", run_http, (False, False, True), asyncio_cases.SERVERS))
    if "streams" in a.cases:
        for msg, conns in asyncio_cases.STREAMS_CASES:
            name = f"streams echo {msg // KIB} KiB x {conns}"
            cases.append((name, "rt/s", run_echo, (msg, conns, False, True), asyncio_cases.SERVERS))
    if "tls" in a.cases:
        servers = tls_cases.TLS_SERVERS
        name = f"https hello, wrk -c {WRK_CONNS}"
        cases.append((name, "req/s", run_http, (False, True), servers))
        name = f"https hello, new TLS conn. per request, wrk -c {WRK_CLOSE_CONNS}"
        cases.append((name, "req/s", run_http, (True, True), servers))
        for msg, conns in tls_cases.ECHO_CASES:
            name = f"tls echo {msg // KIB} KiB x {conns}"
            cases.append((name, "rt/s", run_echo, (msg, conns, True), tls_cases.ECHO_SERVERS))
    if "accept" in a.cases:
        cases.append(("accept, connect+close", "acc/s", run_accept, (), ACCEPT_SERVERS))
        name = "accept, connect + 1-byte echo + close"
        cases.append((name, "conn/s", run_accept_echo, (), ECHO_SERVERS))
    if "idle" in a.cases:
        for app in ("echo", "http"):
            servers = ECHO_SERVERS if app == "echo" else HTTP_SERVERS
            name = f"idle {a.idle_conns:,} conns after 1 message, {app}"
            cases.append((name, "KiB/conn", run_idle, (app,), servers))
    return cases


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["idle-client"]:
        return idle_client_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 round of short runs (~2 min)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--cases", default=DEFAULT_CASES, help=f"comma-separated, of: {KNOWN_CASES}")
    p.add_argument("--accept-ats", default="ats_pt1", choices=[c for c in accept_bench.CONFIGS])
    p.add_argument("--idle-conns", type=int, default=IDLE_CONNS)
    p.add_argument("--idle-rounds", type=int, default=2, help="rounds with the idle cases")
    p.add_argument("-o", "--output", help="write the summary and every run as JSON")
    p.add_argument("--md", help="also write the Markdown report here")
    a = p.parse_args(argv)
    a.cases = set(a.cases.split(","))
    if a.cases - set(KNOWN_CASES.split(",")):
        p.error(f"unknown case(s) {sorted(a.cases - set(KNOWN_CASES.split(',')))}")
    a.echo_duration, a.echo_warmup = 2.0, 0.5
    a.http_duration, a.http_warmup = 3, 1
    a.accept_duration, a.accept_warmup = 3.0, 0.5
    a.idle_window = 5.0
    if a.quick:
        a.rounds, a.idle_rounds = 1, 1
        a.echo_duration, a.echo_warmup = 1.0, 0.3
        a.http_duration = 2
        a.accept_duration = 2.0
        a.idle_window = 3.0

    echo_bench.build_loadgen()
    accept_bench.build_gen()
    a.wrk = ensure_wrk() if a.cases & {"http", "uvicorn", "tls"} else None
    a.cert = tls_cases.prepare() if "tls" in a.cases else None
    raise_nofile(a.idle_conns + 1024 if "idle" in a.cases else 0)  # the children inherit it
    avail, cpus = pin_cpus()
    cases = plan(a)
    runs: list[dict] = []
    load0 = os.getloadavg()
    t0 = time.monotonic()
    for rnd in range(a.rounds):
        for case, unit, func, extra, servers in cases:
            if func is run_idle and rnd >= a.idle_rounds:
                continue
            # Every other round the other way round: a drift of the machine's speed over
            # a round does not favour the servers that come first.
            for s in servers if rnd % 2 == 0 else servers[::-1]:
                try:
                    r = func(case, s, a, cpus, *extra)
                except Exception as e:  # one failed run must not lose the session
                    r = {"case": case, "server": s, "error": str(e)}
                r["round"] = rnd + 1
                runs.append(r)
                if "error" in r:
                    msg = f"FAILED: {r['error']}"
                elif unit == "KiB/conn":
                    msg = (
                        f"{r['value']:8.2f} KiB/conn  idle CPU {r['cpu']:.2%}  "
                        f"RSS {r['rss_before_kib']:,} -> {r['rss_after_kib']:,} KiB, "
                        f"{r['rss_closed_kib']:,} KiB once closed"
                    )
                else:
                    msg = (
                        f"{r['value']:>10,.0f} {unit}  {r['cpu']:6.1f} µs/op  "
                        f"server CPU {r.get('server_cpu_frac', float('nan')):.0%}  "
                        f"client CPU {r['client_cpu_frac']:.0%}"
                    )
                    if r["errors"]:
                        msg += f"  ERRORS {r['errors']}"
                print(
                    f"  [{time.monotonic() - t0:4.0f} s] round {rnd + 1}  {case:<26} {s:<11}" + msg,
                    file=sys.stderr,
                )
    rows = summarize(runs, cases)
    load1 = os.getloadavg()
    cmd = "python perf/compare_peers.py " + shlex.join(argv)
    head = (
        f"`{cmd.strip()}`: {len(runs)} runs in {time.monotonic() - t0:.0f} s, {python_impl()}, "
        f"{len(avail)} CPUs (server on CPU {cpus[0]}, clients on CPU {cpus[1]}), "
        f"{a.rounds} round(s), load average {load0[0]:.2f} before, {load1[0]:.2f} after."
    )
    rt = rounds_table(rows)
    print_report(head, table(rows) + ("\n\n" + rt if rt else ""), a.md)
    if a.output:
        meta = {
            "command": cmd.strip(),
            **host_meta(avail, cpus),
            "rounds": a.rounds,
            "idle_rounds": a.idle_rounds,
            "echo": {"duration": a.echo_duration, "warmup": a.echo_warmup},
            "http": {
                "duration": a.http_duration,
                "warmup": a.http_warmup,
                "conns": WRK_CONNS,
                "close_conns": WRK_CLOSE_CONNS,
            },
            "accept": {
                "duration": a.accept_duration,
                "warmup": a.accept_warmup,
                "ats": a.accept_ats,
            },
            "idle": {"conns": a.idle_conns, "window": a.idle_window},
            "loadavg_before": load0,
            "loadavg_after": load1,
            "wall_seconds": time.monotonic() - t0,
        }
        write_json(a.output, {"meta": meta, "summary": rows, "runs": runs})
    bad = any(
        v and (v.get("errors") or v.get("failed")) for row in rows for v in map(row.get, SERVERS)
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
