"""Soak: each ``ats-cffi`` service in turn (echo, tunnel, http) under a bounded mix of
well-behaved and abusive clients, then a SIGTERM under load; a table of checks at the end.

    python perf/soak.py --seconds 60    # 60 s of load per service: about 3.5 min in all
    python perf/soak.py --short         # CI: 3 s of load per service, about 12 s in all

Per service, one subprocess ``python -m ats_cffi SERVICE --listen 127.0.0.1:0 --stats
127.0.0.1:0 --config RECORDS`` under ``RLIMIT_NOFILE`` ``--nofile`` (1024; the tunnel's
upstream is an echo of its own, under the soak's limit; ``--vio`` runs echo and tunnel with
``--vio``: through VIOs and Python continuations, not spliced). For ``--seconds``, threads of this
process run (perf/soak_clients.py), all on 127.0.0.1:

- well-behaved clients: echo/tunnel, messages of 1 B..256 KiB from a seeded stream per
  connection, every byte checked in order; http, keep-alive batches of ``GET /``, every
  response checked;
- abusive ones: resets mid-transfer (SO_LINGER 0), half-closes (every byte, then EOF),
  slow readers, garbage to http (400, then EOF), and cycles of an idle flood (hundreds of
  idle connections, then closed) and of a burst of ``--nofile`` connections, more than the
  service can hold: it must refuse some (its throttle) and go on serving the others;
- a SIGHUP every few seconds, the records file changed before each.

Then, with the clients gone, the service's fds must come back to their count at start
(``/proc/PID/fd``, listeners included) and its VmRSS within 20 MiB of its start; then new
clients loop (echo/tunnel: messages; http: keep-alive requests, checking for a pending EOF
before each, as tests/apps/test_drain.py) and the service gets SIGTERM: every byte sent
must come back and every request written be answered, the process must exit 0 with its
summary line. No "Traceback" on its stderr. Exit status 0 only if every check passed;
a global deadline kills everything (exit 3) should anything hang.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from soak_checks import RSS_SLACK_KIB, Drain, Load, Reading, Result, Row, check_rows, markdown
from soak_clients import (
    Client,
    DrainHttp,
    DrainStream,
    Garbage,
    HalfCloser,
    HttpClient,
    HttpHalfCloser,
    HttpResetter,
    HttpSlowReader,
    Overload,
    Resetter,
    SlowReader,
    StreamClient,
)
from soak_io import OP_TIMEOUT, Probe
from soak_proc import (
    HOST,
    RECORDS,
    Monitor,
    Reloader,
    ServiceProcess,
    Watchdog,
    install_stop_handlers,
    kill_all,
    raise_own_fd_limit,
    write_records,
)

SERVICES = ("echo", "tunnel", "http")
#: ats_cffi.net.throttle: an fd headroom of min(192, RLIMIT_NOFILE / 4), and an accept
#: refused once the open connections x 1.1 reach the limit (a tunnel's client counts 2).
ACCEPT_HEADROOM = 1.1


@dataclass(frozen=True)
class Plan:
    """How much of everything, per service."""

    seconds: float
    nofile: int = 1024
    clients: int = 6
    abusers: int = 2
    idle: int = 200
    burst: int = 1024
    hold: float = 1.0
    pause: float = 1.0
    hup_every: float = 2.0
    drain_clients: int = 24
    drain_timeout: float = 10.0
    settle: float = 10.0
    #: echo/tunnel through VIOs and Python continuations (``--vio``), not the splice.
    vio: bool = False


def make_plan(args: argparse.Namespace) -> Plan:
    if args.short:
        plan = Plan(seconds=3.0, hold=0.3, pause=0.1, hup_every=0.6, settle=6.0)
    else:
        plan = Plan(seconds=args.seconds, hup_every=min(2.0, max(0.6, args.seconds / 5)))
    return replace(plan, nofile=args.nofile, burst=args.nofile, vio=args.vio)


def fit_plan(plan: Plan, service: str) -> Plan:
    """The idle flood within what the service holds (half its throttle), the burst within
    this process's own fd limit."""
    own = raise_own_fd_limit(plan.burst + plan.idle + 512)
    nofile = min(plan.nofile, own - plan.idle - 256)
    throttle = nofile - min(192, nofile // 4)
    per_client = 2 if service == "tunnel" else 1
    holds = int(throttle / ACCEPT_HEADROOM / per_client)
    idle = min(plan.idle, holds // 2)
    return replace(plan, nofile=nofile, burst=min(plan.burst, nofile), idle=idle)


T0 = time.monotonic()


def log(msg: str) -> None:
    sys.stderr.write(f"soak: {time.monotonic() - T0:6.1f} s  {msg}\n")
    sys.stderr.flush()


def start_service(name: str, plan: Plan, workdir: Path) -> tuple[ServiceProcess, ...]:
    """The service (and for the tunnel its upstream echo, first), listening."""
    records = workdir / f"{name}.toml"
    write_records(records, *RECORDS[0])
    procs: list[ServiceProcess] = []
    extra: list[str] = []
    if name == "tunnel":
        up = ServiceProcess("upstream", ["echo", "--listen", f"{HOST}:0"], workdir, None)
        procs.append(up.wait_listening(1))
        extra = ["--upstream", f"{HOST}:{up.ports['echo']}"]
    if plan.vio and name != "http":
        extra.append("--vio")
    args = [name, "--listen", f"{HOST}:0", *extra, "--stats", f"{HOST}:0"]
    args += ["--config", str(records), "--drain-timeout", str(plan.drain_timeout)]
    svc = ServiceProcess(name, args, workdir, plan.nofile)
    procs.insert(0, svc.wait_listening(2))
    return tuple(procs)


def load_clients(
    name: str, port: int, plan: Plan, until: float, stop: threading.Event
) -> list[Client]:
    http = name == "http"
    kinds: list[type[Client]] = [HttpClient if http else StreamClient] * plan.clients
    abusive = [HttpHalfCloser, HttpResetter, HttpSlowReader, Garbage] if http else [
        HalfCloser, Resetter, SlowReader]  # fmt: skip
    kinds += [k for k in abusive for _ in range(plan.abusers)]
    return [kind(port, seed, until, stop) for seed, kind in enumerate(kinds)]


def run_load(name: str, svc: ServiceProcess, plan: Plan) -> Load:
    """Every client of the load for ``plan.seconds``, the SIGHUPs, the fd and RSS peaks."""
    port = svc.ports[name]
    stop = threading.Event()
    until = time.monotonic() + plan.seconds
    clients = load_clients(name, port, plan, until, stop)
    well = [c for c in clients if c.group == "clients"]
    sizes = (plan.idle, plan.burst, plan.hold, plan.pause)
    probe = Probe(http=name == "http")
    clients.append(
        Overload(port, until, stop, probe, sizes, lambda: sum(c.counts["messages"] for c in well))
    )
    reloader = Reloader(svc, svc_records(svc), plan.hup_every, until, stop)
    monitor = Monitor(svc, threading.Event())
    for t in (monitor, reloader, *clients):
        t.start()
    for c in clients:
        c.join(max(0.0, until + OP_TIMEOUT + 15 - time.monotonic()))
    stop.set()
    stuck = sum(c.is_alive() for c in clients)
    reloader.join(5)
    monitor.stop.set()
    monitor.join(5)
    return Load(
        groups=merge(clients),
        errors=[e for c in clients for e in c.errors],
        stuck=stuck,
        hups=reloader.sent,
        peak=Reading(monitor.peak_fds, monitor.peak_rss),
        plan_idle=plan.idle,
        plan_burst=plan.burst,
    )


def svc_records(svc: ServiceProcess) -> Path:
    return Path(svc.args[svc.args.index("--config") + 1])


def merge(clients: list[Client]) -> dict[str, Counter[str]]:
    """Every client's counts, summed per group."""
    groups: dict[str, Counter[str]] = {}
    for c in clients:
        groups.setdefault(c.group, Counter()).update(c.counts)
    return groups


def settle(svc: ServiceProcess, start: Reading, timeout: float) -> tuple[Reading, float]:
    """Wait (up to ``timeout`` s) for the fds back at their start count and VmRSS within
    ``RSS_SLACK_KIB`` of its start; the last reading and how long it took."""
    t0 = time.monotonic()
    while True:
        now = Reading(svc.fd_count(), svc.rss_kib())
        waited = time.monotonic() - t0
        if (now.fds <= start.fds and now.rss <= start.rss + RSS_SLACK_KIB) or waited > timeout:
            return now, waited
        time.sleep(0.1)


def wait_for(pred: Callable[[], object], timeout: float) -> bool:
    """Poll ``pred()`` every 10 ms for up to ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return False


def run_drain(name: str, svc: ServiceProcess, plan: Plan) -> Drain:
    """Clients looping on connections opened before the SIGTERM; SIGTERM once each has
    had two answers; how they ended."""
    port = svc.ports[name]
    sigterm = threading.Event()
    hard = time.monotonic() + plan.drain_timeout + OP_TIMEOUT + 10
    clients: list[Client] = [
        DrainHttp(port, seed, hard) if name == "http" else DrainStream(port, seed, hard, sigterm)
        for seed in range(plan.drain_clients)
    ]
    for c in clients:
        c.start()
    wait_for(lambda: all(c.counts["messages"] >= 2 or not c.is_alive() for c in clients), 10)
    svc.signal(signal.SIGTERM)
    sigterm_at = time.monotonic()
    sigterm.set()
    for c in clients:
        c.join(max(0.0, hard - time.monotonic()))
    return Drain(
        counts=merge(clients).get("drain", Counter()),
        errors=[e for c in clients for e in c.errors],
        clients=len(clients),
        stuck=sum(c.is_alive() for c in clients),
        sigterm_at=sigterm_at,
    )


def soak_service(name: str, plan: Plan, workdir: Path) -> Result:
    """One service's whole soak: start, load, settle, drain under SIGTERM, exit."""
    log(f"{name}: starting")
    procs = start_service(name, plan, workdir)
    svc = procs[0]
    try:
        start = Reading(svc.fd_count(), svc.rss_kib())
        throttled0 = svc.stats()["proxy.process.net.connections_throttled_in"]
        log(f"{name}: pid {svc.pid}, {plan.seconds:g} s of load (ulimit -n {plan.nofile})")
        load = run_load(name, svc, plan)
        log(f"{name}: load done")
        after, waited = settle(svc, start, plan.settle)
        throttled = svc.stats()["proxy.process.net.connections_throttled_in"] - throttled0
        wait_for(lambda: svc.reloads() >= load.hups, 2.0)
        log(f"{name}: settled, SIGTERM under {plan.drain_clients} clients")
        drain = run_drain(name, svc, plan)
        status, summary = svc.finish(plan.drain_timeout + 10)
        exit_seconds = time.monotonic() - drain.sigterm_at
        log(f"{name}: exited {status}")
        others = [(p.name, *p.finish_after(signal.SIGTERM, 15)) for p in procs[1:]]
        return Result(
            service=name,
            http=name == "http",
            start=start,
            after=after,
            settle_seconds=waited,
            load=load,
            throttled_in=throttled,
            hups_logged=svc.reloads(),
            drain=drain,
            status=status,
            summary=summary,
            exit_seconds=exit_seconds,
            others=others,
            tracebacks=[p.name for p in procs if "Traceback" in p.stderr_text()],
            nofile=plan.nofile,
        )
    finally:
        for p in procs:
            p.kill()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="load per service (default 60)")
    ap.add_argument("--short", action="store_true", help="CI: 3 s per service, ~12 s in all")
    ap.add_argument("--nofile", type=int, default=1024, help="the service's ulimit -n")
    ap.add_argument("--services", default=",".join(SERVICES), help="echo,tunnel,http")
    ap.add_argument("--vio", action="store_true", help="echo/tunnel --vio (not spliced)")
    args = ap.parse_args(argv)
    names = [s for s in args.services.split(",") if s]
    if not names or set(names) - set(SERVICES) or args.seconds <= 0 or args.nofile < 256:
        ap.error("--services among echo,tunnel,http; --seconds > 0; --nofile >= 256")
    plan = make_plan(args)
    budget = len(names) * (plan.seconds + plan.settle + plan.drain_timeout + 2 * OP_TIMEOUT + 40)
    watchdog = Watchdog(budget).start()
    install_stop_handlers()
    t0 = time.monotonic()
    rows: list[Row] = []
    try:
        with tempfile.TemporaryDirectory(prefix="ats-soak-") as tmp:
            for name in names:
                try:
                    rows += check_rows(soak_service(name, fit_plan(plan, name), Path(tmp)))
                except Exception as exc:  # noqa: BLE001 - a failed row, then the next one
                    rows.append(Row(name, "soak ran", False, f"{exc!r}"[:500]))
    finally:
        watchdog.cancel()
        kill_all()
    print(markdown(rows))
    failed = [r for r in rows if not r.ok]
    print(f"\n{len(rows) - len(failed)}/{len(rows)} checks passed in {time.monotonic() - t0:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
