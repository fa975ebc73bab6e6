"""Fixtures for the ``ats-cffi`` command: run it in a subprocess, read its listening lines,
and make sure no process of it outlives the test."""

from __future__ import annotations

import json
import os
import re
import resource
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.net.conftest import recv_exactly  # noqa: F401  (the app tests import it from here)

REPO = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"^ats-cffi (\w+) listening on (?:\[([^\]]+)\]|([^:]+)):(\d+)$")
SUMMARY = re.compile(r"^ats-cffi (\w+) stopped: (.*)$")


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(name))
    out: set[int] = set()
    stack = [pid]
    while stack:
        for c in children.get(stack.pop(), ()):
            out.add(c)
            stack.append(c)
    return out


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def parse_summary(line: str) -> dict[str, str]:
    m = SUMMARY.match(line)
    assert m, f"not a summary line: {line!r}"
    return dict(kv.split("=", 1) for kv in m.group(2).split())


def _limit_fds(nofile: int) -> None:
    """In the child before exec: ``ulimit -n nofile``."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))


class Cli:
    """One running ``python -m ats_cffi ...``: its listeners, its output, its signals."""

    def __init__(self, args: list[str], stderr_path: Path, nofile: int | None = None) -> None:
        self.args = args
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ats_cffi", *args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            preexec_fn=None if nofile is None else lambda: _limit_fds(nofile),
        )
        self._buf = b""
        self.lines: list[str] = []
        self.ports: dict[str, int] = {}
        self.known_pids: set[int] = {self.proc.pid}

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def port(self) -> int:
        """The port of the first listener."""
        return next(iter(self.ports.values()))

    def readline(self, timeout: float = 10.0) -> str | None:
        """The next stdout line, or None at end of output; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            assert left > 0, f"no line from {self.args} in {timeout} s; stderr: {self.stderr()}"
            r, _, _ = select.select([fd], [], [], left)
            if r:
                data = os.read(fd, 65536)
                if not data:
                    if self._buf:
                        break
                    return None
                self._buf += data
        line, _, self._buf = self._buf.partition(b"\n")
        text = line.decode()
        self.lines.append(text)
        return text

    def wait_listening(self, n: int = 1, timeout: float = 15.0) -> Cli:
        """Read ``n`` listening lines and record each listener's port."""
        for _ in range(n):
            line = self.readline(timeout)
            assert line is not None, f"{self.args} ended early; stderr: {self.stderr()}"
            m = LISTENING.match(line)
            assert m, f"unexpected line {line!r}"
            self.ports[m.group(1)] = int(m.group(4))
        self.known_pids |= descendants(self.pid)
        return self

    def signal(self, sig: int) -> None:
        self.known_pids |= descendants(self.pid)
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 15.0) -> int:
        """Wait for the process to exit; its exit status."""
        return self.proc.wait(timeout)

    def rest_of_output(self, timeout: float = 5.0) -> list[str]:
        """Every stdout line until end of output."""
        out = []
        while (line := self.readline(timeout)) is not None:
            out.append(line)
        return out

    def stderr(self) -> str:
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def rss_kib(self, field: str = "VmRSS") -> int:
        """``VmRSS`` (or ``VmHWM``: the peak) of the process, in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} for {self.pid}")

    def close(self) -> None:
        """Kill whatever still runs, reap it, close the pipes."""
        self.known_pids |= descendants(self.pid) if self.proc.poll() is None else set()
        for pid in self.known_pids:
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            self.proc.wait(10)
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self._stderr.close()


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Callable[..., Cli]]:
    """``cli(*args, nofile=None)`` starts ``python -m ats_cffi *args`` (under ``ulimit -n
    nofile`` if given); every process it started (workers
    included) is killed after the test, and the test fails if one is still alive or if one
    printed a traceback."""
    started: list[Cli] = []

    def start(*args: str, nofile: int | None = None) -> Cli:
        c = Cli(list(args), tmp_path / f"stderr-{len(started)}.txt", nofile)
        started.append(c)
        return c

    yield start
    for c in started:
        c.close()
    for c in started:  # no uncaught exception anywhere, workers included
        assert "Traceback" not in c.stderr(), f"{c.args}:\n{c.stderr()}"
    pids = {p for c in started for p in c.known_pids}
    wait_until(
        lambda: not any(alive(p) for p in pids),
        what=f"processes to end: {sorted(p for p in pids if alive(p))}",
        interval=0.05,
    )


def get_json(port: int, path: str = "/_stats") -> dict[str, Any]:
    """GET ``path`` on a new connection and parse the JSON answer."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200
        return json.loads(resp.read())
    finally:
        conn.close()


def wait_for(pred: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> Any:
    """``wait_until(pred)`` that returns the true value ``pred`` gave."""
    got: list[Any] = [None]

    def check() -> Any:
        got[0] = pred()
        return got[0]

    wait_until(check, timeout, getattr(pred, "__qualname__", "a condition"), interval)
    return got[0]


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def port_refuses(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:``port``."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:  # accepted by the kernel just before the listener closed
        pass
    return False
