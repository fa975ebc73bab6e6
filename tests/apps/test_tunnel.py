"""``ats-cffi tunnel``: bytes both ways with checksums, half-close carried across,
back-pressure keeping memory bounded, a failed upstream closing the client."""

from __future__ import annotations

import hashlib
import importlib.util
import random
import socket
import sys
import threading

import pytest

from ats_cffi.apps.cli import main as cli_main
from ats_cffi.apps.tunnel import start_name_resolution
from ats_cffi.net import net_config
from tests.conftest import wait_until
from tests.net.conftest import asleep_in_the_kernel

from .conftest import connect, get_json, wait_for

MiB = 1 << 20

#: The native splice (default) and the VIO path (``--vio``) must behave alike.
MODES = pytest.mark.parametrize("mode", [[], ["--vio"]], ids=["splice", "vio"])


def _tunnel_to(cli, upstream_port: int, *extra: str):
    return cli(
        "tunnel",
        "--listen", "127.0.0.1:0",
        "--upstream", f"127.0.0.1:{upstream_port}",
        *extra,
    ).wait_listening(1 + ("--stats" in extra))  # fmt: skip


@MODES
def test_100_mib_round_trip_through_the_tunnel_to_an_echo_with_a_half_close(cli, mode) -> None:
    echo = cli("echo", "--listen", "127.0.0.1:0", *mode).wait_listening()
    # Two net threads: a client and its upstream connection may live on different threads.
    tunnel = _tunnel_to(cli, echo.port, "--net-threads", "2", *mode)
    total = 100 * MiB
    sent_digest = hashlib.sha256()
    errors: list[BaseException] = []
    s = connect(tunnel.port, timeout=20)

    def send() -> None:
        # Random chunks of random bytes, hashed as they go: the payload is never held whole.
        rnd = random.Random(2024)
        left = total
        try:
            while left:
                chunk = rnd.randbytes(min(left, rnd.randint(1, 2 * MiB)))
                sent_digest.update(chunk)
                s.sendall(chunk)
                left -= len(chunk)
            s.shutdown(socket.SHUT_WR)  # the half-close travels to the echo and back
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    got_digest = hashlib.sha256()
    got = 0
    buf = bytearray(4 * MiB)
    view = memoryview(buf)
    try:
        while n := s.recv_into(buf):
            got_digest.update(view[:n])
            got += n
    finally:
        sender.join(30)
        s.close()
    assert not errors, errors
    assert got == total
    assert got_digest.hexdigest() == sent_digest.hexdigest()


class _Upstream:
    """A one-connection server thread: ``serve(conn)`` runs on the accepted socket."""

    def __init__(self, serve) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.serve = serve
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.listener.settimeout(10)
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(20)
                self.serve(conn)
        except BaseException as exc:
            self.errors.append(exc)

    def close(self) -> None:
        self.thread.join(30)
        self.listener.close()
        assert not self.thread.is_alive()
        assert not self.errors, self.errors


@MODES
def test_slow_client_keeps_the_tunnel_memory_bounded_while_upstream_sends_200_mib(
    cli, mode
) -> None:
    total = 200 * MiB
    block = memoryview(random.Random(5).randbytes(MiB))
    sent = [0]

    def send_200_mib(conn: socket.socket) -> None:
        while sent[0] < total:
            conn.sendall(block)
            sent[0] += len(block)

    upstream = _Upstream(send_200_mib)
    try:
        tunnel = _tunnel_to(cli, upstream.port, *mode)
        with connect(tunnel.port, timeout=20) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
            baseline = tunnel.rss_kib()
            got = 0
            buf = bytearray(MiB)
            pauses = [0, 50 * MiB, 150 * MiB]
            while got < total:
                if pauses and got >= pauses[0]:
                    pauses.pop(0)
                    # Stop reading: the upstream must be held back (its send blocked), not
                    # buffered (it would then send all 200 MiB).
                    wait_until(
                        lambda: asleep_in_the_kernel(upstream.thread) or sent[0] >= total,
                        what="the upstream held back, or done",
                    )
                    assert sent[0] - got < 64 * MiB, "the upstream was not held back"
                n = s.recv_into(buf, min(len(buf), total - got))
                assert n, "the tunnel closed early"
                got += n
            assert s.recv(1) == b""  # the upstream's close was carried across
        peak = tunnel.rss_kib("VmHWM")
    finally:
        upstream.close()
    # Without back-pressure the tunnel would buffer much of the 200 MiB.
    print(f"tunnel RSS {baseline} KiB, peak {peak} KiB")
    assert peak - baseline < 48 * 1024, f"RSS grew from {baseline} KiB to a peak of {peak} KiB"


@MODES
def test_a_half_close_from_the_upstream_reaches_the_client_and_back(cli, mode) -> None:
    received = bytearray()

    def server_speaks_first(conn: socket.socket) -> None:
        conn.sendall(b"220 hello from upstream\r\n")
        conn.shutdown(socket.SHUT_WR)
        while chunk := conn.recv(65536):
            received.extend(chunk)

    upstream = _Upstream(server_speaks_first)
    try:
        tunnel = _tunnel_to(cli, upstream.port, *mode)
        with connect(tunnel.port) as s:
            greeting = b""
            while chunk := s.recv(100):
                greeting += chunk
            assert greeting == b"220 hello from upstream\r\n"  # ... and then EOF
            s.sendall(b"QUIT after your half-close\r\n")  # our side is still open
            s.shutdown(socket.SHUT_WR)
            assert s.recv(100) == b""  # closed once both directions are done
    finally:
        upstream.close()
    assert bytes(received) == b"QUIT after your half-close\r\n"


def test_a_failed_upstream_connect_closes_the_client(cli) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    dead_port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    tunnel = _tunnel_to(cli, dead_port, "--stats", "127.0.0.1:0")
    with connect(tunnel.ports["tunnel"]) as s:
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass
    g = wait_for(
        lambda: (
            (d := get_json(tunnel.ports["stats"])["global"])
            and d["proxy.process.tunnel.current_client_connections_blind_tcp"] == 0
            and d
        )
    )
    assert g["proxy.process.tunnel.upstream_connect_failures"] == 1
    assert g["proxy.process.net.connect_failures"] == 1


def test_without_the_dns_layer_an_upstream_host_name_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ats_cffi.dns", None)  # as if it were not installed
    with pytest.raises(ValueError, match="DNS layer"):
        start_name_resolution("upstream.invalid")
    assert start_name_resolution("127.0.0.1") is None  # numeric: nothing to start
    assert start_name_resolution("::1") is None
    args = ["tunnel", "--listen", "127.0.0.1:0", "--upstream", "upstream.invalid:80"]
    try:
        assert cli_main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "DNS layer" in err[0] and "numeric address" in err[0]
    finally:
        net_config.reset()


@pytest.mark.skipif(importlib.util.find_spec("ats_cffi.dns") is None, reason="no DNS layer")
def test_an_upstream_host_name_is_resolved_through_the_dns_layer(cli, tmp_path) -> None:
    echo = cli("echo", "--listen", "127.0.0.1:0").wait_listening()
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 upstream.ats-cffi.test\n")
    records = tmp_path / "records.toml"
    records.write_text(f'"proxy.config.hostdb.host_file.path" = "{hosts}"\n')
    tunnel = cli(
        "tunnel",
        "--listen", "127.0.0.1:0",
        "--upstream", f"upstream.ats-cffi.test:{echo.port}",
        "--config", str(records),
    ).wait_listening()  # fmt: skip
    with connect(tunnel.port) as s:
        s.sendall(b"by name")
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(100):
            got += chunk
    assert got == b"by name"
