"""SSLNetVConnection, server side, against Python's ssl module as the client: the bytes, the
versions, ALPN, certificates by SNI, session resumption by tickets and the ticket key file,
and the TLS stats."""

from __future__ import annotations

import select
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from ats_cffi.net.stats import tls_stats
from ats_cffi.net.tls import ServerContext, TLSConfigError, tls_config

from .conftest import Echo, payload_of, wait_until
from .tls_certs import TestCA


@pytest.fixture
def tls_echo(net: Any, listen: Any, ca: TestCA) -> Any:
    """``tls_echo(ctx=None)`` → port of a TLS echo listener (default: a localhost cert)."""

    def make(ctx: ServerContext | None = None) -> int:
        if ctx is None:
            leaf = ca.leaf("localhost", "localhost", "127.0.0.1")
            ctx = ServerContext.from_files(leaf.cert, leaf.key, alpn=("http/1.1",))
        _, _, port = listen(lambda vc: Echo(vc), tls=ctx)
        return port

    return make


def client_ctx(ca: TestCA, **kw: Any) -> ssl.SSLContext:
    c = ssl.create_default_context(cafile=str(ca.pem))
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def connect(port: int, ctx: ssl.SSLContext, name: str | None = "localhost", **kw: Any) -> Any:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        return ctx.wrap_socket(raw, server_hostname=name, **kw)
    except BaseException:
        raw.close()
        raise


def echo_round_trip(s: ssl.SSLSocket, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` and read as much back, in one thread (an SSLSocket may not be used by
    two threads at once: it is one OpenSSL object), the socket non-blocking meanwhile."""
    s.setblocking(False)
    sent = 0
    got = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while len(got) < len(data) and time.monotonic() < deadline:
            want_write = sent < len(data)
            if want_write:
                try:
                    sent += s.send(data[sent : sent + (1 << 16)])
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                    pass
            try:
                b = s.recv(1 << 16)
                if not b:
                    break
                got += b
                continue
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                pass
            select.select([s], [s] if want_write else [], [], 0.05)
    finally:
        s.setblocking(True)
        s.settimeout(5)
    return bytes(got)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_a_mebibyte_echoes_exactly_over_tls_1_2_and_1_3(tls_echo, ca, version) -> None:
    port = tls_echo()
    c = client_ctx(ca, minimum_version=version, maximum_version=version)
    data = payload_of(1 << 20)
    with connect(port, c) as s:
        assert s.version() == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]
        assert echo_round_trip(s, data) == data
    snap = tls_stats.snapshot()
    assert snap["proxy.process.ssl.total_success_handshake_count_in"] == 1
    assert snap["proxy.process.ssl.read_bytes"] == len(data)
    wait_until(lambda: tls_stats.get("proxy.process.ssl.write_bytes") == len(data))


def test_tls_1_1_and_older_are_refused(tls_echo, ca) -> None:
    port = tls_echo()
    c = client_ctx(ca)
    c.minimum_version = c.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionError)):
        connect(port, c)
    wait_until(lambda: tls_stats.get("proxy.process.ssl.ssl_error_ssl") == 1)


def test_alpn_selects_http_1_1_and_nothing_when_not_offered(tls_echo, ca) -> None:
    port = tls_echo()
    c = client_ctx(ca)
    c.set_alpn_protocols(["h2", "http/1.1"])
    with connect(port, c) as s:
        assert s.selected_alpn_protocol() == "http/1.1"
    c = client_ctx(ca)
    c.set_alpn_protocols(["h2"])
    with connect(port, c) as s:
        assert s.selected_alpn_protocol() is None
        assert echo_round_trip(s, b"still serving") == b"still serving"


def multicert(ca: TestCA, tmp: Path, default: bool) -> Path:
    a = ca.leaf("a.test", "a.test")
    b = ca.leaf("*.b.test", "*.b.test")
    d = ca.leaf("default.test")  # no SAN: its common name
    lines = [
        f"ssl_cert_name={a.cert.name} ssl_key_name={a.key.name}",
        f"ssl_cert_name={b.cert.name} ssl_key_name={b.key.name}  # a wildcard",
    ]
    if default:
        lines.append(f"dest_ip=* ssl_cert_name={d.cert.name} ssl_key_name={d.key.name}")
    path = tmp / "ssl_multicert.config"
    path.write_text("\n".join(lines) + "\n")
    return path


def peer_cn(s: ssl.SSLSocket) -> str:
    return dict(x[0] for x in s.getpeercert()["subject"])["commonName"]


def test_sni_chooses_the_certificate_of_a_multicert_file(tls_echo, ca, tmp_path) -> None:
    port = tls_echo(ServerContext.from_multicert(multicert(ca, tmp_path, default=True)))
    c = client_ctx(ca)
    for name, cn in (("a.test", "a.test"), ("x.b.test", "*.b.test"), ("A.TEST", "a.test")):
        with connect(port, c, name) as s:
            assert peer_cn(s) == cn
    c.check_hostname = False
    for name in ("other.test", "y.x.b.test", None):  # no match, two labels, no SNI
        with connect(port, c, name) as s:
            assert peer_cn(s) == "default.test"


def test_an_unknown_name_without_a_default_certificate_is_refused(tls_echo, ca, tmp_path) -> None:
    port = tls_echo(ServerContext.from_multicert(multicert(ca, tmp_path, default=False)))
    c = client_ctx(ca)
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME|unrecognized name"):
        connect(port, c, "nobody.test")
    with connect(port, c, "a.test") as s:  # the listener serves on
        assert echo_round_trip(s, b"ok") == b"ok"
    wait_until(lambda: tls_stats.get("proxy.process.ssl.ssl_error_ssl") == 1)


def resumed_session(port: int, c: ssl.SSLContext, session: Any = None) -> tuple[bool, Any]:
    """One connection (offering ``session``): whether it resumed, and its session."""
    with connect(port, c, session=session) as s:
        assert echo_round_trip(s, b"ticket") == b"ticket"  # TLS 1.3: the tickets come after
        return s.session_reused, s.session


def test_sessions_resume_by_ticket(tls_echo, ca) -> None:
    port = tls_echo()
    c = client_ctx(ca)
    reused, session = resumed_session(port, c)
    assert not reused
    reused, _ = resumed_session(port, c, session)
    assert reused
    assert tls_stats.get("proxy.process.ssl.user_agent_session_hit") == 1


def test_two_contexts_with_one_ticket_key_file_resume_each_others_sessions(
    net, listen, ca, tmp_path
) -> None:
    # As two --workers processes do: the same file, each its own context.
    keys = tmp_path / "ticket.key"
    k1, k2 = payload_of(48, seed=1), payload_of(48, seed=2)
    keys.write_bytes(k1)
    tls_config.set("proxy.config.ssl.server.ticket_key.filename", str(keys))
    leaf = ca.leaf("localhost", "localhost")
    ctxs = [ServerContext.from_files(leaf.cert, leaf.key) for _ in range(2)]
    ports = [listen(lambda vc: Echo(vc), tls=ctx)[2] for ctx in ctxs]
    c = client_ctx(ca)
    _, session = resumed_session(ports[0], c)
    assert resumed_session(ports[1], c, session)[0]
    # Rotation: a new key first, the old one after: old tickets still resume (renewed).
    keys.write_bytes(k2 + k1)
    ctxs[1].reload_ticket_keys()
    assert resumed_session(ports[1], c, session)[0]
    # The old key dropped: a full handshake.
    keys.write_bytes(k2)
    ctxs[1].reload_ticket_keys()
    assert not resumed_session(ports[1], c, session)[0]


def test_bad_files_are_errors_naming_the_file(ca, tmp_path) -> None:
    leaf = ca.leaf("localhost", "localhost")
    other = ca.leaf("other", "other")
    with pytest.raises(TLSConfigError, match="nope.pem"):
        ServerContext.from_files(tmp_path / "nope.pem", leaf.key)
    with pytest.raises(TLSConfigError, match="mismatch|does not match"):
        ServerContext.from_files(leaf.cert, other.key)
    bad = tmp_path / "bad.key"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    with pytest.raises(TLSConfigError, match="bad.key"):
        ServerContext.from_files(leaf.cert, bad)
    (tmp_path / "m.config").write_text("ssl_cert_name=x.crt ssl_ca_name=y\n")
    with pytest.raises(TLSConfigError, match="m.config:1: unknown field"):
        ServerContext.from_multicert(tmp_path / "m.config")
    (tmp_path / "k").write_bytes(b"short")
    tls_config.set("proxy.config.ssl.server.ticket_key.filename", str(tmp_path / "k"))
    with pytest.raises(TLSConfigError, match="48 bytes"):
        ServerContext.from_files(leaf.cert, leaf.key)
    tls_config.reset()
    tls_config.set("proxy.config.ssl.TLSv1_2", 0)
    tls_config.set("proxy.config.ssl.TLSv1_3", 0)
    with pytest.raises(TLSConfigError, match="no protocol left"):
        ServerContext.from_files(leaf.cert, leaf.key)
    with pytest.raises(ValueError, match="verify.server.policy"):
        tls_config.set("proxy.config.ssl.client.verify.server.policy", "PERMISSIVE")
