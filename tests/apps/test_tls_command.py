"""The command with TLS (``apps/tls.py``), against clients this project did not write: curl,
``openssl s_client``, Python's ssl module and wrk. Certificates by SNI, ALPN, sessions
resumed across ``--workers`` (random ticket keys made before the fork, or a ticket key file
rotated on SIGHUP), echo and tunnel with TLS on either side, bad files, and the stats."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from ats_cffi.apps import cli as cli_module
from ats_cffi.apps.config import reset_records
from ats_cffi.apps.runner import command_tls
from tests.net.conftest import payload_of, recv_exactly
from tests.net.test_tls_server import echo_round_trip
from tests.net.tls_certs import Leaf, TestCA

from .conftest import Cli, get_json, wait_for

MiB = 1 << 20
#: What s_client sends: the server answers, then closes (s_client then exits).
REQUEST = b"GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
TICKET_KEY = "proxy.config.ssl.server.ticket_key.filename"
RELOADED = "SIGHUP: reloaded the ticket keys of"

needs_openssl = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="needs openssl s_client (.ci/run installs it)"
)


@pytest.fixture(autouse=True)
def _reset_records() -> Any:
    yield
    reset_records()  # in-process main() sets the records of this process


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path)


@pytest.fixture
def leaf(ca: TestCA) -> Leaf:
    return ca.leaf("localhost", "localhost", "127.0.0.1")


def tls_args(leaf: Leaf) -> list[str]:
    return ["--tls-cert", str(leaf.cert), "--tls-key", str(leaf.key)]


def https(cli: Any, leaf: Leaf, *extra: str, service: str = "http") -> Cli:
    srv = cli(service, "--listen", "127.0.0.1:0", *tls_args(leaf), *extra)
    return srv.wait_listening(1 + ("--stats" in extra))


def client_context(ca: TestCA) -> ssl.SSLContext:
    c = ssl.create_default_context(cafile=str(ca.pem))
    c.set_alpn_protocols(["http/1.1"])
    return c


def get_over_tls(port: int, ca: TestCA, *paths: str) -> list[bytes]:
    """GET each of ``paths`` on one TLS connection (Python's ssl, the certificate verified
    for 127.0.0.1); the bodies. The connection must be the same for all."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=client_context(ca))
    bodies = []
    try:
        for path in paths:
            conn.request("GET", path)
            resp = conn.getresponse()
            assert resp.status == 200, (path, resp.status)
            bodies.append(resp.read())
            if len(bodies) == 1:
                first = conn.sock
                assert first.selected_alpn_protocol() == "http/1.1"
            assert conn.sock is first  # kept alive
    finally:
        conn.close()
    return bodies


def tls_stats(port: int, ca: TestCA) -> dict[str, int]:
    (body,) = get_over_tls(port, ca, "/_stats")
    return json.loads(body)["global"]


def sent_then_closed(port: int, data: bytes) -> bytes:
    """Send ``data`` to 127.0.0.1:``port`` and read until the server closes (a reset, when
    it closes without reading all of ``data``, ends it too): what came back."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        try:
            while chunk := s.recv(4096):
                got += chunk
        except ConnectionResetError:
            pass
    return got


def s_client(port: int, *args: str, path: str = "/") -> str:
    """``openssl s_client`` to 127.0.0.1:``port`` sending a GET of ``path``: its stdout."""
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-ign_eof", *args],
        input=REQUEST % path.encode(),
        capture_output=True,
        timeout=10,
    )
    return out.stdout.decode(errors="replace")


# ---------------------------------------------------------------------- http


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl (.ci/run installs it)")
def test_curl_makes_two_requests_on_one_tls_connection_and_speaks_http_1_1(cli, ca, leaf):
    srv = https(cli, leaf)
    base = f"https://localhost:{srv.port}"
    curl = ["curl", "-sS", "-v", "--cacert", str(ca.pem),
            "--resolve", f"localhost:{srv.port}:127.0.0.1"]  # fmt: skip
    out = subprocess.run([*curl, f"{base}/", f"{base}/_stats"], capture_output=True, timeout=10)
    assert out.returncode == 0, out.stderr
    hello, _, stats = out.stdout.partition(b"{")
    assert hello == b"Hello, World!"
    g = json.loads(b"{" + stats)["global"]
    err = out.stderr.decode()
    assert "Re-using existing connection" in err
    assert re.search(r"ALPN.*accepted.*http/1\.1", err), err
    # Two requests, one TLS handshake (the second request is counted after its answer).
    assert g["proxy.process.ssl.total_success_handshake_count_in"] == 1
    assert g["proxy.process.http.incoming_requests"] == 1
    assert g["proxy.process.tcp.total_accepts"] == 1
    out = subprocess.run([*curl, "--http1.1", f"{base}/"], capture_output=True, timeout=10)
    assert (out.returncode, out.stdout) == (0, b"Hello, World!"), out.stderr
    err = out.stderr.decode()
    assert "< HTTP/1.1 200 OK" in err and not re.search(r"ALPN.*offer.*h2", err), err


@needs_openssl
def test_openssl_s_client_negotiates_alpn_http_1_1_and_verifies_the_certificate(
    cli, ca, leaf
) -> None:
    srv = https(cli, leaf)
    out = s_client(srv.port, "-alpn", "http/1.1", "-servername", "localhost",
                   "-CAfile", str(ca.pem), "-verify_return_error")  # fmt: skip
    assert "ALPN protocol: http/1.1" in out
    assert "Verify return code: 0 (ok)" in out
    assert "HTTP/1.1 200 OK" in out and "Hello, World!" in out
    # A client that offers only other protocols gets none, and is served all the same.
    out = s_client(srv.port, "-alpn", "h2", "-servername", "localhost", "-CAfile", str(ca.pem))
    assert "No ALPN negotiated" in out and "HTTP/1.1 200 OK" in out


@needs_openssl
def test_tls_config_serves_the_certificate_the_sni_names(cli, ca, tmp_path) -> None:
    a = ca.leaf("a.test", "a.test")
    b = ca.leaf("b.test", "b.test")
    multicert = tmp_path / "ssl_multicert.config"
    multicert.write_text(
        f"dest_ip=* ssl_cert_name={a.cert.name} ssl_key_name={a.key.name}\n"
        f"ssl_cert_name={b.cert.name} ssl_key_name={b.key.name}\n"
    )
    srv = cli("http", "--listen", "127.0.0.1:0", "--tls-config", str(multicert)).wait_listening()
    for name in ("a.test", "b.test"):
        out = s_client(srv.port, "-alpn", "http/1.1", "-servername", name,
                       "-CAfile", str(ca.pem), "-verify_hostname", name)  # fmt: skip
        assert f"subject=CN = {name}" in out, out
        assert "Verify return code: 0 (ok)" in out and "ALPN protocol: http/1.1" in out
        assert "HTTP/1.1 200 OK" in out


def test_python_ssl_client_makes_requests_on_a_kept_alive_connection(cli, ca, leaf) -> None:
    srv = https(cli, leaf)
    hello, hello2, stats = get_over_tls(srv.port, ca, "/", "/", "/_stats")
    assert hello == hello2 == b"Hello, World!"
    g = json.loads(stats)["global"]
    assert g["proxy.process.ssl.total_success_handshake_count_in"] == 1
    assert g["proxy.process.http.incoming_requests"] == 2
    assert g["proxy.process.ssl.read_bytes"] > 0 and g["proxy.process.ssl.write_bytes"] > 0


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (.ci/run installs it)")
def test_wrk_over_https_gets_only_2xx_answers_and_no_socket_error(cli, leaf) -> None:
    srv = https(cli, leaf)
    out = subprocess.run(
        ["wrk", "-t1", "-c10", "-d1s", f"https://127.0.0.1:{srv.port}/"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 0, out.stderr
    requests = re.search(r"(\d+) requests in", out.stdout)
    assert requests and int(requests.group(1)) > 0, out.stdout
    assert "Socket errors" not in out.stdout, out.stdout  # printed only when there are
    assert "Non-2xx" not in out.stdout, out.stdout


def test_plaintext_on_the_tls_port_ends_that_connection_and_counts_an_ssl_error(
    cli, ca, leaf
) -> None:
    srv = https(cli, leaf)
    got = sent_then_closed(srv.port, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert b"HTTP/" not in got  # at most a TLS alert
    g = tls_stats(srv.port, ca)  # and the service serves on
    assert g["proxy.process.ssl.ssl_error_ssl"] == 1
    assert g["proxy.process.ssl.total_success_handshake_count_in"] == 1
    (metrics,) = get_over_tls(srv.port, ca, "/metrics")
    assert b"\nproxy_process_ssl_ssl_error_ssl_total 1\n" in metrics
    assert b"\nproxy_process_ssl_attempts_handshake_count_in_total 3\n" in metrics


# ---------------------------------------------------------------------- sessions


def _reused(out: str) -> bool:
    reused, new = "Reused, TLS" in out, "New, TLS" in out
    assert reused != new, out
    return reused


def resumptions(port: int, session: Path, least: int = 8, most: int = 48) -> tuple[set, set]:
    """``-sess_in session`` connections, at least ``least`` and until both workers answered
    (their pid in ``/_stats``): the set of "Reused" outcomes and the set of pids."""
    outcomes, pids = [], set()
    while len(outcomes) < most and (len(outcomes) < least or len(pids) < 2):
        out = s_client(port, "-servername", "localhost", "-sess_in", str(session), path="/_stats")
        outcomes.append(_reused(out))
        m = re.search(r'"pid": (\d+)', out)
        assert m, out
        pids.add(int(m.group(1)))
    assert len(pids) == 2, f"{len(outcomes)} connections all went to worker {pids}"
    return set(outcomes), pids


def new_session(port: int, path: Path) -> Path:
    out = s_client(port, "-servername", "localhost", "-sess_out", str(path))
    assert not _reused(out) and "HTTP/1.1 200 OK" in out
    assert path.stat().st_size > 0
    return path


@needs_openssl
def test_workers_resume_each_others_sessions_with_the_keys_made_before_the_fork(
    cli, leaf, tmp_path
) -> None:
    srv = https(cli, leaf, "--workers", "2")
    session = new_session(srv.port, tmp_path / "s1")
    assert resumptions(srv.port, session)[0] == {True}


@needs_openssl
def test_a_ticket_key_file_is_shared_by_the_workers_and_rotated_on_sighup(
    cli, leaf, tmp_path
) -> None:
    keys = tmp_path / "ticket.key"
    k1, k2 = os.urandom(48), os.urandom(48)
    keys.write_bytes(k1)
    records = tmp_path / "records.toml"
    records.write_text(f'"{TICKET_KEY}" = "{keys}"\n')
    srv = https(cli, leaf, "--workers", "2", "--config", str(records))
    s1 = new_session(srv.port, tmp_path / "s1")
    assert resumptions(srv.port, s1)[0] == {True}

    def rotate(data: bytes, hups: int) -> None:
        keys.write_bytes(data)
        srv.signal(signal.SIGHUP)  # the parent passes it on to each worker
        wait_for(lambda: srv.stderr().count(RELOADED) == 2 * hups)

    # A new key first: new tickets are sealed with it, the old one still opens s1's.
    rotate(k2 + k1, 1)
    assert resumptions(srv.port, s1)[0] == {True}
    s2 = new_session(srv.port, tmp_path / "s2")
    # The old key dropped: s1 needs a full handshake in both workers; s2 resumes.
    rotate(k2, 2)
    assert resumptions(srv.port, s1)[0] == {False}
    assert resumptions(srv.port, s2)[0] == {True}
    srv.signal(signal.SIGTERM)
    assert srv.wait(10) == 0


# ---------------------------------------------------------------------- echo, tunnel


def plain_round_trip(port: int, data: bytes) -> bytes:
    """Send ``data`` (from a thread) to 127.0.0.1:``port`` and read as much back."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        sender = threading.Thread(target=s.sendall, args=(data,))
        sender.start()
        try:
            return recv_exactly(s, len(data))
        finally:
            sender.join(10)


def tls_round_trip(port: int, ca: TestCA, data: bytes) -> bytes:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with client_context(ca).wrap_socket(raw, server_hostname="localhost") as s:
        return echo_round_trip(s, data)


def test_echo_over_tls_sends_back_a_mebibyte(cli, ca, leaf) -> None:
    srv = https(cli, leaf, service="echo")
    data = payload_of(MiB)
    assert tls_round_trip(srv.port, ca, data) == data


def test_tunnel_terminates_tls_in_front_of_a_plaintext_echo(cli, ca, leaf) -> None:
    echo = cli("echo", "--listen", "127.0.0.1:0").wait_listening()
    tunnel = https(cli, leaf, "--upstream", f"127.0.0.1:{echo.port}", service="tunnel")
    data = payload_of(MiB, seed=3)
    assert tls_round_trip(tunnel.port, ca, data) == data


def test_tunnel_originates_tls_verified_for_the_upstream_name_it_sends_in_the_sni(
    cli, ca, tmp_path
) -> None:
    # The upstream's default certificate names another host: only an SNI of upstream.test
    # gets the certificate that verifies (neither no SNI nor the resolved address would).
    other, named = ca.leaf("other.test", "other.test"), ca.leaf("upstream.test", "upstream.test")
    multicert = tmp_path / "ssl_multicert.config"
    multicert.write_text(
        f"dest_ip=* ssl_cert_name={other.cert.name} ssl_key_name={other.key.name}\n"
        f"ssl_cert_name={named.cert.name} ssl_key_name={named.key.name}\n"
    )
    echo = cli("echo", "--listen", "127.0.0.1:0", "--tls-config", str(multicert),
               "--stats", "127.0.0.1:0").wait_listening(2)  # fmt: skip
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 upstream.test\n")
    records = tmp_path / "records.toml"
    records.write_text(f'"proxy.config.hostdb.host_file.path" = "{hosts}"\n')
    tunnel = cli("tunnel", "--listen", "127.0.0.1:0", "--config", str(records),
                 "--upstream", f"upstream.test:{echo.port}",
                 "--upstream-tls", "--upstream-ca", str(ca.pem)).wait_listening()  # fmt: skip
    data = payload_of(MiB, seed=4)
    assert plain_round_trip(tunnel.port, data) == data
    g = get_json(echo.ports["stats"])["global"]
    assert g["proxy.process.ssl.total_success_handshake_count_in"] == 1


def test_tunnel_reencrypts_to_an_upstream_address_and_refuses_one_it_cannot_verify(
    cli, ca, leaf
) -> None:
    echo = https(cli, leaf, "--stats", "127.0.0.1:0", service="echo")  # 127.0.0.1 in its SANs
    upstream = ["--upstream", f"127.0.0.1:{echo.port}", "--upstream-tls"]
    # Both sides TLS: decrypted, then encrypted again (an address is verified as one).
    both = https(cli, leaf, *upstream, "--upstream-ca", str(ca.pem), service="tunnel")
    data = payload_of(MiB, seed=5)
    assert tls_round_trip(both.port, ca, data) == data
    # The system's CAs do not know the test CA: the upstream is refused, the client closed.
    unverified = cli("tunnel", "--listen", "127.0.0.1:0", *upstream).wait_listening()
    assert sent_then_closed(unverified.port, b"never echoed") == b""
    stats_port = echo.ports["stats"]
    g = wait_for(lambda: _stats_if(stats_port, "proxy.process.ssl.ssl_error_ssl", 1))
    assert g["proxy.process.ssl.total_success_handshake_count_in"] == 1


def _stats_if(port: int, name: str, value: int) -> dict[str, int] | None:
    g = get_json(port)["global"]
    return g if g[name] == value else None


# ---------------------------------------------------------------------- errors, records


BAD = [
    (["http", "--tls-cert", "{cert}"], "--tls-cert needs --tls-key"),
    (["http", "--tls-key", "{key}"], "--tls-key needs --tls-cert"),
    (["http", "--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-config", "{multicert}"],
     "mutually exclusive"),
    (["http", "--tls-config", ""], "--tls-config: empty file name"),
    (["tunnel", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9", "--upstream-ca", "{ca}"],
     "--upstream-ca needs --upstream-tls"),
    (["echo", "--upstream-tls"], "unrecognized arguments: --upstream-tls"),
    (["http", "--tls-cert", "{dir}/nope.crt", "--tls-key", "{key}"],
     "--tls-cert {dir}/nope.crt: No such file or directory"),
    (["http", "--tls-cert", "{cert}", "--tls-key", "{other_key}"], "key values mismatch"),
    (["echo", "--tls-cert", "{key}", "--tls-key", "{key}"], "localhost.key"),
    (["http", "--tls-config", "{dir}/bad.config"], "bad.config:1: unknown field"),
    (["tunnel", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9", "--upstream-tls",
      "--upstream-ca", "{key}"], "localhost.key"),
    (["http", "--tls-cert", "{cert}", "--tls-key", "{key}", "--config", "{dir}/short.toml"],
     "keys of 48 bytes"),
    (["http", "--config", "{dir}/policy.toml"], "expected one of ENFORCED, DISABLED"),
]  # fmt: skip


@pytest.mark.parametrize("args, message", BAD)
def test_bad_tls_options_and_files_give_one_line_and_status_2(
    capsys, ca, leaf, tmp_path, args, message
) -> None:
    other = ca.leaf("other", "other")
    (tmp_path / "bad.config").write_text("ssl_cert_name=x.crt ssl_ca_name=y\n")
    (tmp_path / "short").write_bytes(b"short")
    (tmp_path / "short.toml").write_text(f'"{TICKET_KEY}" = "{tmp_path / "short"}"\n')
    (tmp_path / "policy.toml").write_text(
        '"proxy.config.ssl.client.verify.server.policy" = "PERMISSIVE"\n'
    )
    names = {"cert": leaf.cert, "key": leaf.key, "other_key": other.key, "ca": ca.pem,
             "dir": tmp_path, "multicert": tmp_path / "bad.config"}  # fmt: skip
    argv = [a.format(**names) for a in args]
    try:
        status = cli_module.main(argv)
    except SystemExit as exc:  # argparse's errors
        status = int(exc.code or 0)
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ats-cffi: error:"), err
    assert message.format(**names) in err[0], err


def test_a_key_that_does_not_match_stops_the_command_before_any_worker_starts(cli, ca, leaf):
    other = ca.leaf("other", "other")
    c = cli("http", "--listen", "127.0.0.1:0", "--workers", "2",
            "--tls-cert", str(leaf.cert), "--tls-key", str(other.key))  # fmt: skip
    assert c.wait(20) == 2
    err = c.stderr().strip().splitlines()
    assert len(err) == 1 and "key values mismatch" in err[0], err
    assert c.rest_of_output() == []  # no listening line


def test_ssl_records_of_the_config_file_reach_the_contexts(ca, leaf, tmp_path) -> None:
    multicert = tmp_path / "ssl_multicert.config"
    multicert.write_text(f"dest_ip=* ssl_cert_name={leaf.cert.name} ssl_key_name={leaf.key.name}\n")
    records = tmp_path / "records.toml"
    records.write_text(
        f'[proxy.config.ssl]\nhandshake_timeout_in = 2.5\n"server.multicert.filename" = '
        f'"{multicert}"\n'
    )
    for argv, alpn in (
        (["http", "--config", str(records)], ("http/1.1",)),  # the file's multicert
        (["echo", "--config", str(records), *tls_args(leaf)], ()),  # the options win
    ):
        settings = cli_module.parse_args(argv)
        cli_module.configure_records(settings)
        tls = command_tls(settings)
        assert tls.server is not None and tls.upstream is None
        assert tls.server.handshake_timeout_in == 2.5
        assert tls.server.alpn == alpn
    settings = cli_module.parse_args(["http"])
    cli_module.configure_records(settings)  # the records back to their defaults: no TLS
    assert command_tls(settings).server is None
