"""The soak's service processes (perf/soak.py): ``python -m ats_cffi SERVICE`` started under
a chosen ``RLIMIT_NOFILE``, its listening lines, ``/_stats``, fds and RSS read while it runs,
its signals, its exit status and summary line; the records file its SIGHUPs reload; and the
global deadline that kills every process the soak started, so that the soak never hangs.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
LISTENING = re.compile(r"^ats-cffi (\w+) listening on ([^:]+):(\d+)$")
SUMMARY = re.compile(r"^ats-cffi (\w+) stopped: (.*)$")
RELOADED = "SIGHUP: reloaded"

#: Every process started here, killed by ``kill_all`` (at exit, or by the deadline).
_started: list[ServiceProcess] = []
_started_lock = threading.Lock()


def _limit_fds(nofile: int) -> None:
    """In the child, before exec: ``ulimit -n nofile`` (soft and hard)."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))


def raise_own_fd_limit(want: int) -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` towards ``want`` (up to the hard limit);
    returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < top:
        resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))
        soft = top
    return soft


def _readable(fd: int, timeout: float) -> bool:
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(timeout * 1000))


class ServiceProcess:
    """One running ``python -m ats_cffi ARGS``: stdout is read for its lines, stderr goes to
    a file (read back for tracebacks and reload lines)."""

    def __init__(self, name: str, args: list[str], workdir: Path, nofile: int | None) -> None:
        self.name = name
        self.args = args
        self.stderr_path = workdir / f"{name}.stderr"
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in kill()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ats_cffi", *args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            preexec_fn=None if nofile is None else lambda: _limit_fds(nofile),
        )
        with _started_lock:
            _started.append(self)
        self._buf = b""
        self.ports: dict[str, int] = {}
        self.lines: list[str] = []

    @property
    def pid(self) -> int:
        return self.proc.pid

    def readline(self, timeout: float) -> str | None:
        """The next stdout line; None at end of output or after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not _readable(fd, left):
                return None
            data = os.read(fd, 65536)
            if not data:
                if not self._buf:
                    return None
                self._buf += b"\n"
            self._buf += data
        line, _, self._buf = self._buf.partition(b"\n")
        text = line.decode(errors="replace")
        self.lines.append(text)
        return text

    def wait_listening(self, n: int, timeout: float = 15.0) -> ServiceProcess:
        """Read ``n`` listening lines and record each listener's port; RuntimeError if the
        process ends or says something else first."""
        for _ in range(n):
            line = self.readline(timeout)
            m = LISTENING.match(line or "")
            if m is None:
                raise RuntimeError(
                    f"{self.name}: expected a listening line, got {line!r}; "
                    f"stderr: {self.stderr_text()[-2000:]}"
                )
            self.ports[m.group(1)] = int(m.group(3))
        return self

    def stats(self) -> dict[str, int]:
        """``/_stats`` of the ``--stats`` listener (exempt from the throttle): the ``global``
        counters."""
        conn = http.client.HTTPConnection(HOST, self.ports["stats"], timeout=5)
        try:
            conn.request("GET", "/_stats")
            resp = conn.getresponse()
            if resp.status != 200:
                raise RuntimeError(f"{self.name}: /_stats answered {resp.status}")
            doc: dict[str, Any] = json.loads(resp.read())
        finally:
            conn.close()
        return doc["global"]

    def fd_count(self) -> int:
        """How many fds the process holds (``ls /proc/PID/fd``)."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kib(self, field: str = "VmRSS") -> int:
        """``VmRSS`` (or ``VmHWM``, the peak) of the process, in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"no {field} for pid {self.pid}")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def finish(self, timeout: float) -> tuple[int | None, str | None]:
        """Wait up to ``timeout`` s for the exit: (exit status or None if it did not end,
        its summary line or None)."""
        try:
            status: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            status = None
        summary = None
        while (line := self.readline(1.0 if status is not None else 0.1)) is not None:
            if SUMMARY.match(line):
                summary = line
        return status, summary

    def finish_after(self, sig: int, timeout: float) -> tuple[int | None, str | None]:
        """``signal(sig)``, then ``finish(timeout)``."""
        self.signal(sig)
        return self.finish(timeout)

    def stderr_text(self) -> str:
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def reloads(self) -> int:
        """How many SIGHUP reloads the process logged."""
        return self.stderr_text().count(RELOADED)

    def kill(self) -> None:
        """Kill the process if it still runs, reap it, close the pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


def kill_all() -> None:
    """Kill every process started here that still runs."""
    with _started_lock:
        procs = list(_started)
    for p in procs:
        if p.proc.poll() is None:
            try:
                p.proc.kill()
            except OSError:
                pass
    for p in procs:
        try:
            p.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


def parse_summary(line: str) -> dict[str, str]:
    """``ats-cffi SERVICE stopped: k=v ...`` → ``{k: v}``."""
    m = SUMMARY.match(line)
    if m is None:
        return {}
    return dict(kv.split("=", 1) for kv in m.group(2).split() if "=" in kv)


def write_records(path: Path, throttle: int, inactivity: int) -> None:
    """Write the records file that ``--config`` names (TOML, README's format); the soak
    rewrites it before each SIGHUP so that every reload changes a dynamic record."""
    path.write_text(
        "[proxy.config.net]\n"
        f"connections_throttle = {throttle}\n"
        f"default_inactivity_timeout = {inactivity}\n"
    )


class Watchdog:
    """The global deadline: past it, say so, kill every process started here and exit 3
    (from a daemon thread: whatever the main thread is blocked on)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def start(self) -> Watchdog:
        self._timer.start()
        return self

    def cancel(self) -> None:
        self._timer.cancel()

    def _expire(self) -> None:
        sys.stderr.write(f"soak: global deadline of {self.seconds:.0f} s passed; killing\n")
        sys.stderr.flush()
        kill_all()
        os._exit(3)


def install_stop_handlers() -> None:
    """SIGINT/SIGTERM to the soak: kill the services, exit 130/143."""

    def stop(signum: int, frame: Any) -> None:
        kill_all()
        os._exit(128 + signum)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


#: The records each SIGHUP alternates between: a throttle above what the fd limit allows
#: (the effective limit stays the fd limit's) and an inactivity timeout longer than the soak.
RECORDS = ((30000, 600), (20000, 900))


class Reloader(threading.Thread):
    """SIGHUP to ``proc`` every ``every`` s until ``until`` (monotonic) or ``stop``, the
    records file rewritten before each so that every reload changes something."""

    def __init__(
        self, proc: ServiceProcess, path: Path, every: float, until: float, stop: threading.Event
    ) -> None:
        super().__init__(daemon=True, name="soak-sighup")
        self.proc = proc
        self.path = path
        self.every = every
        self.until = until
        self.stop = stop
        self.sent = 0

    def run(self) -> None:
        for i in range(1, 100_000):
            if self.stop.wait(self.every) or time.monotonic() >= self.until:
                return
            write_records(self.path, *RECORDS[i % 2])
            self.proc.signal(signal.SIGHUP)
            self.sent += 1


class Monitor(threading.Thread):
    """The peak fd count and VmRSS of ``proc``, sampled every 0.2 s until ``stop``."""

    def __init__(self, proc: ServiceProcess, stop: threading.Event) -> None:
        super().__init__(daemon=True, name="soak-monitor")
        self.proc = proc
        self.stop = stop
        self.peak_fds = 0
        self.peak_rss = 0

    def run(self) -> None:
        for _ in range(1_000_000):
            try:
                self.peak_fds = max(self.peak_fds, self.proc.fd_count())
                self.peak_rss = max(self.peak_rss, self.proc.rss_kib())
            except (OSError, RuntimeError):
                return  # the process is gone: the exit check says why
            if self.stop.wait(0.2):
                return
