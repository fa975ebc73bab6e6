"""``ats-cffi echo``: bytes come back, a half-close flushes, stats count, timeouts and the
connections throttle hold."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from tests.conftest import wait_until
from tests.net.conftest import asleep_in_the_kernel

from .conftest import connect, get_json, recv_exactly, wait_for

#: The native splice (default) and the VIO path (``--vio``) must behave alike.
MODES = pytest.mark.parametrize("mode", [[], ["--vio"]], ids=["splice", "vio"])


@pytest.mark.parametrize(
    "options",
    [
        [],
        ["--vio"],
        ["--accept-threads", "0", "--net-threads", "2"],
        ["--accept-threads", "2", "--net-threads", "3", "--defer-accept", "1"],
    ],
    ids=["defaults", "vio", "accept-on-net-threads", "accept-threads-defer"],
)
def test_echo_sends_back_what_each_client_sends(cli, options) -> None:
    srv = cli("echo", "--listen", "127.0.0.1:0", *options).wait_listening()
    clients = [connect(srv.port) for _ in range(5)]
    try:
        for round_ in range(20):
            for i, s in enumerate(clients):
                s.sendall(b"client %d round %d\n" % (i, round_))
            for i, s in enumerate(clients):
                want = b"client %d round %d\n" % (i, round_)
                assert recv_exactly(s, len(want)) == want
    finally:
        for s in clients:
            s.close()


@MODES
def test_echo_flushes_everything_after_a_half_close_then_closes(cli, mode) -> None:
    srv = cli("echo", "--listen", "127.0.0.1:0", *mode).wait_listening()
    payload = os.urandom(3 << 20)
    with connect(srv.port) as s:
        s.sendall(payload[: 1 << 20])
        got = bytearray(recv_exactly(s, 1000))
        s.sendall(payload[1 << 20 :])
        s.shutdown(socket.SHUT_WR)
        while chunk := s.recv(1 << 20):
            got += chunk
    assert bytes(got) == payload


@MODES
def test_echo_returns_every_byte_to_a_client_that_reads_late(cli, mode) -> None:
    # The client sends 8 MiB from a thread and starts reading only later: once the kernel's
    # buffers fill, the server stops reading at its water mark, then resumes as the client
    # drains the echo (each write's completion re-enables the read); every byte must come
    # back in order.
    srv = cli("echo", "--listen", "127.0.0.1:0", *mode).wait_listening()
    payload = os.urandom(8 << 20)
    with connect(srv.port, timeout=20) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        sender = threading.Thread(target=s.sendall, args=(payload,), daemon=True)
        sender.start()
        # Read only once the sender is held back (every buffer on the way full), or done.
        wait_until(
            lambda: asleep_in_the_kernel(sender) or not sender.is_alive(),
            what="the sender held back, or done",
        )
        got = recv_exactly(s, len(payload))
        sender.join(10)
        assert not sender.is_alive()
    assert got == payload


@MODES
def test_echo_stats_listener_counts_what_the_clients_did(cli, mode) -> None:
    srv = cli("echo", "--listen", "127.0.0.1:0", "--stats", "127.0.0.1:0", *mode)
    srv.wait_listening(2)
    port, stats_port = srv.ports["echo"], srv.ports["stats"]
    for n in (10, 200, 3000):
        with connect(port) as s:
            s.sendall(b"e" * n)
            assert recv_exactly(s, n) == b"e" * n

    def closed_on_server() -> dict:
        doc = get_json(stats_port)
        g = doc["global"]
        return doc if g["proxy.process.echo.current_client_connections"] == 0 else {}

    doc = wait_for(closed_on_server)
    g = doc["global"]
    assert doc["service"] == "echo" and doc["pid"] == srv.pid
    assert g["proxy.process.echo.total_client_connections"] == 3
    # Every stats request (one per poll) is a connection too.
    assert g["proxy.process.tcp.total_accepts"] >= 4
    assert g["proxy.process.net.connections_currently_open"] == 1  # this stats request
    assert g["proxy.process.net.read_bytes"] >= 3210
    assert g["proxy.process.net.write_bytes"] >= 3210


def test_inactivity_timeout_closes_an_idle_client_in_about_a_second(cli) -> None:
    srv = cli("echo", "--listen", "127.0.0.1:0", "--inactivity-timeout", "1").wait_listening()
    with connect(srv.port) as busy, connect(srv.port) as idle:
        idle.sendall(b"x")
        assert recv_exactly(idle, 1) == b"x"
        t0 = time.monotonic()
        # The busy client keeps talking: activity pushes its deadline on.
        idle.settimeout(0.3)
        closed_after = None
        while time.monotonic() - t0 < 5 and closed_after is None:
            busy.sendall(b"y")
            assert recv_exactly(busy, 1) == b"y"
            try:
                if idle.recv(1) == b"":
                    closed_after = time.monotonic() - t0
            except TimeoutError:
                pass
            except ConnectionResetError:
                closed_after = time.monotonic() - t0
        assert closed_after is not None, "the idle client was not closed"
        assert 0.7 <= closed_after <= 2.5
        busy.sendall(b"still here")
        assert recv_exactly(busy, 10) == b"still here"


def _served(port: int) -> bool:
    """Connect, send a byte and say whether it came back (False: refused or closed)."""
    s = connect(port, timeout=3)
    try:
        s.sendall(b"?")
        return s.recv(1) == b"?"
    except (ConnectionResetError, BrokenPipeError, TimeoutError):
        return False
    finally:
        s.close()


def test_connections_throttle_holds_the_limit(cli) -> None:
    limit = 5
    srv = cli(
        "echo",
        "--listen", "127.0.0.1:0",
        "--stats", "127.0.0.1:0",
        "--connections-throttle", str(limit),
    ).wait_listening(2)  # fmt: skip
    port = srv.ports["echo"]
    held: list[socket.socket] = []
    try:
        # Up to the limit, each new connection is served (open × 1.1 < limit when it comes);
        # with `limit` open, every further one is refused while they stay open.
        for _ in range(limit):
            s = connect(port)
            held.append(s)
            s.sendall(b"!")
            assert recv_exactly(s, 1) == b"!"
        assert not any(_served(port) for _ in range(6))
        # The stats listener is a backdoor: never throttled.
        g = get_json(srv.ports["stats"])["global"]
        assert g["proxy.process.net.connections_throttled_in"] == 6
        assert g["proxy.process.echo.total_client_connections"] == limit
    finally:
        for s in held:
            s.close()
    # Below the limit again: served.
    wait_for(lambda: _served(port), timeout=5)
