"""Helpers shared by the perf scripts (the macro benchmarks and their servers, bench_sys.py).

Not a benchmark: the address, backlog and linger every script uses; building the C load
generators and running one against a server; pinning server and client to their CPUs;
reading a process's CPU time and memory from /proc; running wrk; and the pieces of the
reports (the client CPU cell, the session line, the JSON metadata).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SATURATED = 0.95  # client CPU / wall above this: the client core was the bottleneck
#: Every server and client of perf/ talks over loopback only.
HOST = "127.0.0.1"
#: The same listen backlog for every server (ats's default, somaxconn here).
BACKLOG = 4096
#: SO_LINGER on with 0 s: a close sends a reset and leaves no TIME_WAIT behind.
LINGER0 = struct.pack("ii", 1, 0)
#: wrk's connections in the keep-alive HTTP case, and in the new-connection-per-request
#: one (wrk reconnects after each close).
WRK_CONNS = 100
WRK_CLOSE_CONNS = 50
WRK_LUA = HERE / "wrk_report.lua"

T = TypeVar("T")


def build_c(src: Path, exe: Path, libs: Sequence[str] = ()) -> Path:
    """Compile ``src`` with ``cc -O2`` into ``exe`` (linked with ``libs``, e.g. ``-lssl``)
    unless ``exe`` is newer than ``src`` and the headers of perf/ it may include."""
    exe.parent.mkdir(exist_ok=True)
    newest = max(p.stat().st_mtime for p in (src, *HERE.glob("*.h")))
    if exe.exists() and exe.stat().st_mtime >= newest:
        return exe
    cc = os.environ.get("CC") or shutil.which("cc") or "gcc"
    cmd = [cc, "-O2", "-Wall", "-Wextra", "-o", str(exe), str(src), *libs]
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True)
    return exe


def proc_cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) in seconds of every thread of ``pid`` (fields 14 and 15 of
    /proc/PID/stat; clock-tick resolution)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid``."""
    return sum(proc_cpu_times(pid))


def proc_runtime_ns(pid: int) -> int:
    """CPU time of ``pid`` in nanoseconds: the sum over its live threads of the first field of
    /proc/PID/task/TID/schedstat (finer than clock ticks, for small amounts such as idle CPU)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # the thread exited meanwhile
    return total


def proc_rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (/proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def proc_fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def pin(cpu: int | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that pins the child to ``cpu`` (None: no pinning)."""
    return None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))


def pin_cpus() -> tuple[list[int], tuple[int | None, int | None]]:
    """(available CPUs, (server CPU, client CPU)). With 2+ CPUs, the server gets the first
    and the client the second, and this process (the driver) moves to the client's CPU."""
    avail = sorted(os.sched_getaffinity(0))
    cpus: tuple[int | None, int | None] = (avail[0], avail[1]) if len(avail) >= 2 else (None, None)
    if cpus[1] is not None:
        os.sched_setaffinity(0, {cpus[1]})  # keep this driver off the server's CPU
        print(f"server on CPU {cpus[0]}, client on CPU {cpus[1]}", file=sys.stderr)
    else:
        print("one CPU only: not pinning; client and server share it", file=sys.stderr)
    return avail, cpus


def start_ready(
    cmd: Sequence[str],
    cpu: int | None,
    parse: Callable[[str], int | None],
    timeout: float = 20.0,
    **popen_kw,
) -> tuple[subprocess.Popen, int]:
    """Start ``cmd`` pinned to ``cpu`` and read its stdout until ``parse(line)`` returns the
    port it listens on; ``RuntimeError`` (after killing it) if that takes over ``timeout`` s
    or stdout ends first."""
    p = subprocess.Popen(
        list(cmd), stdout=subprocess.PIPE, text=True, preexec_fn=pin(cpu), **popen_kw
    )
    port: list[int] = []
    seen: list[str] = []

    def read() -> None:  # in a thread, so that a server that never gets ready cannot hang us
        for line in p.stdout:  # type: ignore[union-attr]
            seen.append(line)
            got = parse(line)
            if got is not None:
                port.append(got)
                return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout)
    if not port:
        p.kill()
        p.wait()
        raise RuntimeError(f"{cmd[1:3]} did not get ready (stdout: {''.join(seen)!r})")
    return p, port[0]


def stop_process(p: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` s."""
    if p.poll() is None:
        p.terminate()
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        print(f"  pid {p.pid} did not exit on SIGTERM; killed", file=sys.stderr)
        p.kill()
        p.wait()


def raise_nofile(need: int = 0) -> int:
    """Raise this process's RLIMIT_NOFILE soft limit to its hard limit (inherited by the
    children started after); ``RuntimeError`` if the hard limit is below ``need``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY and hard < need:
        raise RuntimeError(f"RLIMIT_NOFILE hard limit {hard} < {need} (see ulimit -Hn)")
    return hard


def parse_servers(p: argparse.ArgumentParser, text: str, known: Sequence[str]) -> list[str]:
    """The ``--servers`` list (comma-separated); ``p.error`` for a name not in ``known``."""
    names = [s for s in text.split(",") if s]
    for s in names:
        if s not in known:
            p.error(f"unknown server {s!r} (one of {', '.join(known)})")
    return names


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}x" if x == x else "-"


def run_client(
    cmd: Sequence[str], cpu: int | None, sample: Callable[[], T], timeout: float
) -> tuple[str, int, T | None, T | None, str]:
    """Run a C load generator (loadgen, acceptgen) pinned to ``cpu``, calling ``sample()``
    where it writes ``MEASURE`` and ``DONE`` on stderr, the edges of its counted window.
    Returns its stdout, its exit status, the two samples (None for an edge not seen) and the
    rest of its stderr."""
    client = subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=pin(cpu),
    )
    first = last = None
    other_err = []
    for line in client.stderr:  # type: ignore[union-attr]
        if line == "MEASURE\n":
            first = sample()
        elif line == "DONE\n":
            last = sample()
        else:
            other_err.append(line)
    out, _ = client.communicate(timeout=timeout)
    return out, client.returncode, first, last, "".join(other_err)


# -- wrk ----------------------------------------------------------------------------------


def port_after(prefix: str) -> Callable[[str], int | None]:
    """A ``start_ready`` parser: the port at the end of the line starting with ``prefix``
    (after its last ``:``, else its second word)."""

    def parse(line: str) -> int | None:
        if line.startswith(prefix):
            return int(line.strip().rsplit(":", 1)[1] if ":" in line else line.split()[1])
        return None

    return parse


def log_tail(log: IO[bytes]) -> str:
    """The last 2000 characters written to ``log`` (a server's stderr file)."""
    log.seek(0)
    return log.read().decode(errors="replace")[-2000:]


def ensure_wrk() -> str:
    """The path of wrk; installs Debian's package (as root) when it is missing."""
    path = shutil.which("wrk")
    if path:
        return path
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "wrk"]
    print("+ " + " ".join(install), file=sys.stderr)
    if subprocess.run(install, env=env).returncode != 0:
        print("+ apt-get update", file=sys.stderr)
        subprocess.run(["apt-get", "update"], env=env, check=True)
        subprocess.run(install, env=env, check=True)
    path = shutil.which("wrk")
    if not path:
        raise RuntimeError("wrk is not on PATH after apt-get install wrk")
    return path


def run_wrk(
    wrk: str, port: int, seconds: int, cpu: int | None, close: bool = False,
    scheme: str = "http",
) -> tuple[dict, float, float]:  # fmt: skip
    """One wrk run: (its WRK_JSON report, its own CPU seconds, wall seconds). ``close``: a
    new connection per request (``Connection: close``, ``WRK_CLOSE_CONNS`` connections);
    ``scheme``: ``https`` for a TLS server."""
    conns = WRK_CLOSE_CONNS if close else WRK_CONNS
    cmd = [wrk, "-c", str(conns), "-t", "1", "-d", f"{seconds}s", "-s", str(WRK_LUA)]
    if close:
        cmd += ["-H", "Connection: close"]
    cmd.append(f"{scheme}://{HOST}:{port}/")
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, preexec_fn=pin(cpu))
    out = p.stdout.read()  # type: ignore[union-attr]
    _, status, ru = os.wait4(p.pid, 0)  # its own rusage: the client's CPU
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    p.stdout.close()  # type: ignore[union-attr]
    report = next((json.loads(x[9:]) for x in out.splitlines() if x.startswith("WRK_JSON ")), None)
    if p.returncode != 0 or report is None:
        raise RuntimeError(f"wrk failed (rc {p.returncode}): {out[-500:]!r}")
    return report, ru.ru_utime + ru.ru_stime, wall


def measure_wrk(
    server: subprocess.Popen,
    port: int,
    log: IO[bytes],
    wrk: str,
    warmup: int,
    seconds: int,
    cpu: int | None,
    close: bool = False,
    scheme: str = "http",
) -> tuple[dict, float, float, float, float]:
    """Against ``server`` (listening on ``port``, its stderr in ``log``): an unmeasured wrk
    run of ``warmup`` s (none when 0), then a measured one of ``seconds`` s; the server is
    stopped either way. Returns wrk's report, its CPU and wall seconds, and the server's
    user and system CPU seconds over the measured run. ``RuntimeError`` with the end of the
    server's stderr if a run fails."""
    try:
        if warmup > 0:
            run_wrk(wrk, port, warmup, cpu, close, scheme)
        u0, s0 = proc_cpu_times(server.pid)
        report, client_cpu, wall = run_wrk(wrk, port, seconds, cpu, close, scheme)
        u1, s1 = proc_cpu_times(server.pid)
    except Exception as e:
        raise RuntimeError(f"{e}; server stderr: {log_tail(log)!r}") from e
    finally:
        stop_process(server)
    return report, client_cpu, wall, u1 - u0, s1 - s0


def wrk_errors(report: dict) -> int:
    """The errors wrk counted: connect, read, write, non-2xx/3xx status and timeout."""
    return sum(report[k] for k in ("connect", "read", "write", "status", "timeout"))


# -- reports ------------------------------------------------------------------------------


def client_cell(frac: float) -> tuple[str, bool]:
    """A table's client CPU cell (its share of a core, `` (sat.)`` at SATURATED or more)
    and whether the client was saturated."""
    sat = frac >= SATURATED
    return f"{frac:.0%}" + (" (sat.)" if sat else ""), sat


def saturated_note(rate: str, per_op: str) -> str:
    """The footnote of the ``(sat.)`` rows: compare ``per_op`` there, not ``rate``."""
    return (
        f"(sat.): the client's core was >= {SATURATED:.0%} busy, so {rate} there is bounded "
        f"by the load generator too; compare {per_op} rather than {rate} for those rows."
    )


def python_impl() -> str:
    """``CPython 3.11.7``: the interpreter running the servers."""
    return f"{platform.python_implementation()} {platform.python_version()}"


def session_line(n_runs: int, t0: float, avail: Sequence[int], loads: Sequence[Any]) -> str:
    """The line that opens a session's report: its runs and time since ``t0``
    (``time.monotonic()``), the interpreter, the CPUs and the load average before and
    after (``loads``: two ``os.getloadavg()`` readings)."""
    return (
        f"\n{n_runs} runs in {time.monotonic() - t0:.0f} s, {python_impl()}, {len(avail)} CPUs, "
        f"load average {loads[0][0]:.2f} before, {loads[1][0]:.2f} after\n"
    )


def host_meta(avail: Sequence[int], cpus: tuple[int | None, int | None]) -> dict:
    """The JSON metadata of the machine a session ran on."""
    return {
        "python": sys.version,
        "platform": platform.platform(),
        "cpus": len(avail),
        "pinned": {"server": cpus[0], "client": cpus[1]},
    }


def session_meta(
    avail: Sequence[int],
    cpus: tuple[int | None, int | None],
    args: argparse.Namespace,
    loads: Sequence[Any],
    **extra: Any,
) -> dict:
    """The JSON metadata of an echo or accept session: the machine, each run's duration and
    warm-up, the rounds, ``extra``, and the load average before and after."""
    return {
        **host_meta(avail, cpus),
        "duration": args.duration,
        "warmup": args.warmup,
        "rounds": args.rounds,
        **extra,
        "loadavg_before": loads[0],
        "loadavg_after": loads[1],
    }


def print_run(line: str, run: dict, client: str, error_detail: str = "") -> None:
    """Print a run's progress ``line`` on stderr, with its errors and the client's exit
    status when either is not 0, then what the ``client`` load generator wrote on stderr
    besides its window edges."""
    if run["errors"] or run["client_rc"]:
        line += f"  ERRORS {run['errors']}{error_detail} rc={run['client_rc']}"
    print(line, file=sys.stderr)
    if run["client_stderr"]:
        print(f"  {client}: " + run["client_stderr"].strip(), file=sys.stderr)


def print_report(head: str, table: str, md: str | None) -> None:
    """Print a session's Markdown report (``head``, then ``table``); also into the file
    ``md`` when given."""
    report = head + "\n\n" + table
    print("\n" + report)
    if md:
        Path(md).write_text(report + "\n")


def write_json(path: str, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
