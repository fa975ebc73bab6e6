"""Helpers shared by the macro benchmarks (echo_bench.py, accept_bench.py, compare_peers.py).

Not a benchmark: building the C load generators, pinning server and client to their CPUs,
reading a process's CPU time and memory from /proc, and formatting ratios.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SATURATED = 0.95  # client CPU / wall above this: the client core was the bottleneck


def build_c(src: Path, exe: Path) -> Path:
    """Compile ``src`` with ``cc -O2`` into ``exe`` unless ``exe`` is newer than ``src``."""
    exe.parent.mkdir(exist_ok=True)
    if exe.exists() and exe.stat().st_mtime >= src.stat().st_mtime:
        return exe
    cc = os.environ.get("CC") or shutil.which("cc") or "gcc"
    cmd = [cc, "-O2", "-Wall", "-Wextra", "-o", str(exe), str(src)]
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
