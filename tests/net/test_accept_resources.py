"""Out of file descriptors: the accept loops back off instead of spinning, and serve again.

Counted in accept attempts, not in CPU seconds: on a net thread the back-off is a timer on
the fake clock (no attempt while it stands still, one each time the delay passes); a
dedicated accept thread sleeps on the real clock, long enough that a spin would show."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.net.conftest import recv_exactly, wait_until

SERVER = r"""
import os, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
from ats_cffi.eventsystem import Continuation, EventProcessor, ProxyMutex
from ats_cffi.net import AcceptOptions, net_config, net_processor, net_stats
from tests.conftest import FakeClock, settle
from tests.net.conftest import Echo

class Acceptor(Continuation):
    def __init__(self):
        super().__init__(ProxyMutex(), lambda event, vc: Echo(vc))

accept_threads, mode, throttle_delay = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
net_config.set("proxy.config.net.throttle_delay", throttle_delay)
# The net threads' back-off is a timer: on a fake clock, driven by the test ("advance").
# A dedicated accept thread's is a sleep on the real clock.
clock = FakeClock()
net_processor.start(1, processor=EventProcessor(clock))
clock.on_advance(lambda: settle(net_processor.netthreads))
action = net_processor.accept(
    Acceptor(),
    AcceptOptions(
        local_address="127.0.0.1",
        accept_threads=accept_threads,
        frequent_accept=mode == "frequent",
    ),
)
filler = []
print("PORT", action.na.port, flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "fill":
        while True:
            try:
                filler.append(os.open("/dev/null", os.O_RDONLY))
            except OSError:
                break
        print("FULL", len(filler), flush=True)
    elif cmd == "free":
        while filler:
            os.close(filler.pop())
        print("FREE", flush=True)
    elif cmd == "advance":
        clock.advance(float(args[0]))
    elif cmd == "stop":
        break
    # Every command is answered with the back-offs so far (accept attempts that failed
    # for want of an fd).
    print("BACKOFF", net_stats.get("proxy.process.net.accepts_throttle_backoff"), flush=True)
action.cancel()
net_processor.shutdown()
print("BYE", flush=True)
"""


class Server:
    """The server above in a subprocess, and its command channel (stdin/stdout)."""

    def __init__(self, accept_threads: int, mode: str, throttle_delay_ms: int) -> None:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(accept_threads), mode, str(throttle_delay_ms)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=root,
        )

    def read_line(self, prefix: str) -> str:
        """The next line starting with ``prefix`` (a child that hangs is pytest-timeout's);
        ``AssertionError`` naming it if the child ends without printing it."""
        while True:
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
            if line.startswith(prefix):
                return line
            if not line and self.proc.poll() is not None:
                raise AssertionError(f"server never printed {prefix!r}")

    def ask(self, command: str, answer: str = "BACKOFF") -> str:
        self.proc.stdin.write(command + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return self.read_line(answer)

    def backoffs(self, command: str = "backoffs") -> int:
        return int(self.ask(command).split()[1])


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
    on_net_thread = accept_threads == 0
    # The net threads wait throttle_delay on the fake clock; the accept thread, on the real
    # one: half a second, in which a spin would make thousands of attempts.
    delay = 0.05 if on_net_thread else 0.5
    server = Server(accept_threads, mode, int(delay * 1000))
    proc = server.proc
    clients: list[socket.socket] = []
    try:
        port = int(server.read_line("PORT").split()[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(b"before")
            assert recv_exactly(c, 6) == b"before"
        server.ask("fill", "FULL")
        server.read_line("BACKOFF")
        for i in range(30):
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            c.sendall(b"%05d" % i)
            clients.append(c)
        # The connections make the listener's edge: its accept fails (EMFILE) and backs off.
        wait_until(lambda: server.backoffs() >= 1, what="the first back-off")
        if on_net_thread:
            first = server.backoffs()
            for _ in range(10):  # loop passes, the clock still: no attempt before the delay
                assert server.backoffs("advance 0") == first, "an attempt without a back-off"
            for k in range(1, 6):  # one attempt each time the delay has passed
                assert server.backoffs(f"advance {delay}") == first + k
        else:
            # The next attempt comes after the accept thread's sleep (the real clock's: a
            # dedicated thread runs no timers); a spinning thread makes thousands meanwhile.
            first = server.backoffs()
            wait_until(lambda: server.backoffs() > first, what="the next attempt", interval=0.01)
            assert server.backoffs() == first + 1, "attempts without a back-off"
        assert proc.poll() is None, "the server died while out of fds"
        server.ask("free", "FREE")
        server.read_line("BACKOFF")
        if on_net_thread:
            server.ask(f"advance {delay}")  # the next attempt accepts them all
        for i, c in enumerate(clients):
            c.settimeout(5)
            assert recv_exactly(c, 5) == b"%05d" % i
    finally:
        for c in clients:
            c.close()
        if proc.poll() is None:
            proc.stdin.write("stop\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    assert proc.returncode == 0
    assert "BYE" in out
