"""The tunnel at its fd limit: under ``ulimit -n 128``, 400 clients at once. Each client
needs two fds (its own and its upstream's) and the throttle counts both: what the process
cannot serve is refused at accept (counted in ``connections_throttled_in``), no upstream
connect fails for want of an fd, the log stays a few lines long, and once the flood is over
every new client is served again. (Before: the throttle was off under 192 fds, and 141 of
400 clients were accepted, then failed with EMFILE at their upstream connect, a log line
each.)"""

from __future__ import annotations

import signal
import socket

from .conftest import get_json, parse_summary, recv_exactly, wait_for

CLIENTS = 400
OPEN = "proxy.process.net.connections_currently_open"


def served(s: socket.socket, payload: bytes) -> bool:
    """Send ``payload``; True if it comes back through the tunnel, False if the tunnel
    closed the connection instead (EOF or a reset) without a byte."""
    try:
        s.sendall(payload)
        return recv_exactly(s, len(payload)) == payload
    except (ConnectionResetError, BrokenPipeError, EOFError):
        return False


def test_a_tunnel_at_its_fd_limit_refuses_at_accept_and_recovers(cli) -> None:
    up = cli("echo", "--listen", "127.0.0.1:0").wait_listening()
    tun = cli(
        "tunnel",
        "--listen", "127.0.0.1:0",
        "--upstream", f"127.0.0.1:{up.port}",
        "--stats", "127.0.0.1:0",
        nofile=128,
    ).wait_listening(2)  # fmt: skip
    port = tun.ports["tunnel"]
    clients = []
    try:
        for _ in range(CLIENTS):  # all connected before any sends: all held at once
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            clients.append(s)
        results = [served(s, b"flood %d" % i) for i, s in enumerate(clients)]
    finally:
        for s in clients:
            s.close()
    n_served = sum(results)
    assert 20 <= n_served < CLIENTS  # some served, the rest refused
    # Recovered: once the flood's connections are closed, new clients are served.
    # (The stats request's own connection is the one left open.)
    wait_for(lambda: get_json(tun.ports["stats"])["global"][OPEN] == 1, timeout=10)
    for i in range(20):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            assert served(s, b"after %d" % i)
    tun.signal(signal.SIGTERM)
    assert tun.wait(15) == 0
    summary = parse_summary(tun.rest_of_output()[0])
    assert summary["drain"] == "complete"
    # Refused at accept, not after: no upstream connect failed (EMFILE, or the throttle).
    assert int(summary["connections_throttled_in"]) == CLIENTS - n_served, " ".join(
        f"{k}={v}" for k, v in summary.items()
    )
    assert summary["upstream_connect_failures"] == "0"
    # A line for the throttle, maybe one for an accept that found no fd (EMFILE: the
    # client waits in the backlog until the next try): each once a minute at most.
    log_lines = [line for line in tun.stderr().splitlines() if line.strip()]
    assert 1 <= len(log_lines) <= 4, log_lines
