"""Out of file descriptors: the accept loops back off instead of spinning, and serve again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.net.conftest import recv_exactly

SERVER = r"""
import os, resource, signal, sys, threading
resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
from ats_cffi.eventsystem import Continuation, ProxyMutex
from ats_cffi.net import AcceptOptions, net_processor, net_stats
from tests.net.conftest import Echo

class Acceptor(Continuation):
    def __init__(self):
        super().__init__(ProxyMutex(), lambda event, vc: Echo(vc))

net_processor.start(1)
action = net_processor.accept(
    Acceptor(),
    AcceptOptions(
        local_address="127.0.0.1",
        accept_threads=int(sys.argv[1]),
        frequent_accept=sys.argv[2] == "frequent",
    ),
)
filler = []
stop = threading.Event()

def fill(*_):
    while True:
        try:
            filler.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            break
    print("FULL", len(filler), flush=True)

def free(*_):
    while filler:
        os.close(filler.pop())
    print("FREE", flush=True)

def backoffs(*_):
    print("BACKOFF", net_stats.get("proxy.process.net.accepts_throttle_backoff"), flush=True)

signal.signal(signal.SIGWINCH, backoffs)
signal.signal(signal.SIGUSR1, fill)
signal.signal(signal.SIGUSR2, free)
signal.signal(signal.SIGTERM, lambda *_: stop.set())
print("PORT", action.na.port, flush=True)
while not stop.wait(0.05):
    pass
action.cancel()
net_processor.shutdown()
print("BYE", flush=True)
"""


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_line(proc: subprocess.Popen, prefix: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if line.startswith(prefix):
            return line
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"server never printed {prefix!r}")


@pytest.mark.parametrize(
    ("accept_threads", "mode"),
    [(0, "frequent"), (1, "frequent"), (0, "periodic")],
    ids=["per_thread", "accept_thread", "periodic"],
)
def test_out_of_fds_the_server_backs_off_without_spinning_and_serves_again(
    accept_threads: int, mode: str
) -> None:
    # periodic (frequent_accept=False): the accept pass runs on every loop pass; it used to
    # start one more retry timer chain on each, so the passes multiplied over time.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(accept_threads), mode],
        stdout=subprocess.PIPE,
        text=True,
        cwd=root,
    )
    clients: list[socket.socket] = []
    try:
        port = int(read_line(proc, "PORT").split()[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(b"before")
            assert recv_exactly(c, 6) == b"before"
        proc.send_signal(signal.SIGUSR1)
        read_line(proc, "FULL")
        for i in range(30):
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            c.sendall(b"%05d" % i)
            clients.append(c)
        time.sleep(0.5)
        cpu0 = cpu_seconds(proc.pid)
        proc.send_signal(signal.SIGWINCH)
        backoffs0 = int(read_line(proc, "BACKOFF").split()[1])
        time.sleep(1.0)
        used = cpu_seconds(proc.pid) - cpu0
        proc.send_signal(signal.SIGWINCH)
        backoffs = int(read_line(proc, "BACKOFF").split()[1]) - backoffs0
        # A loop retrying accept4 on EMFILE without a pause would burn the whole second.
        assert used < 0.3, f"server used {used:.2f} s of CPU in 1 s while out of fds"
        # One accept attempt per throttle_delay (50 ms): about 20 in the second.
        assert backoffs <= 40, f"{backoffs} accept attempts in 1 s while out of fds"
        assert proc.poll() is None, "the server died while out of fds"
        proc.send_signal(signal.SIGUSR2)
        read_line(proc, "FREE")
        for i, c in enumerate(clients):
            c.settimeout(5)
            assert recv_exactly(c, 5) == b"%05d" % i
    finally:
        for c in clients:
            c.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    assert proc.returncode == 0
    assert "BYE" in out
