"""The TLS cases of compare_peers.py (``--cases tls``): the HTTP hello server and the echo
over TLS.

``ats-cffi http --tls-cert --tls-key`` (SSLNetVConnection: OpenSSL reads and writes the
socket, records decrypted into and encrypted from IOBuffer blocks in C) against the same
server logic on asyncio and on uvloop with ``create_server(ssl=ctx)`` (perf/http_peers.py
``--tls-cert``), all with an ECDSA P-256 certificate made here, TLS 1.3, ALPN http/1.1;
the same server on ats_cffi's asyncio loop with the net core's TLS (``ats_asyncio``,
``ssl=ServerContext``); and, as the bound, the plaintext ``ats-cffi http`` (``ats_plain``).

- keep-alive: ``wrk -c 100 https://``, server CPU per request;
- a new connection per request (``Connection: close``): one full handshake each (wrk does
  not resume sessions), so requests/s is handshakes/s.

And the echo of perf/servers.py over TLS (``--tls-cert``; the same logic on each server:
ats's VIO continuation on SSLNetVConnections, the asyncio Protocol on ats_cffi's asyncio
loop with ``ssl=ServerContext``, on asyncio and on uvloop with ``ssl=`` an
``ssl.SSLContext``), loaded by perf/tlsloadgen.c: closed loop, one message in flight per
connection, every connection's handshake done before the warm-up, TLS 1.3 with OpenSSL's
default suite order (TLS_AES_256_GCM_SHA384 on all four). 100 KiB messages x 10 and 100
connections, and 1 KiB x 100 (per-record costs); server CPU per round trip and round
trips/s, as the plaintext echo rows. The spliced echo cannot do TLS (it would move the
records), so these rows have no splice.
"""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import sys
import tempfile
from pathlib import Path

import echo_bench
from _common import HOST, port_after, start_ready

HERE = Path(__file__).resolve().parent
HTTP_PEERS = HERE / "http_peers.py"
#: The servers of the TLS cases: ats over TLS, the plaintext ats bound, the TLS peers.
TLS_SERVERS = ("ats", "ats_plain", "ats_asyncio", "asyncio", "uvloop")
#: The servers of the TLS echo cases (perf/servers.py with ``--tls-cert``).
ECHO_SERVERS = ("ats", "ats_asyncio", "asyncio", "uvloop")
#: (message size, connections) of the TLS echo cases.
ECHO_CASES = [(1024, 100), (102400, 10), (102400, 100)]


def make_certificate(directory: Path) -> tuple[str, str]:
    """A self-signed ECDSA P-256 certificate for 127.0.0.1 and localhost: (cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


def certificate() -> tuple[str, str]:
    """The session's certificate, in a directory that lives as long as the process."""
    d = tempfile.mkdtemp(prefix="ats-tls-bench-")
    return make_certificate(Path(d))


def prepare() -> tuple[str, str]:
    """What the TLS cases need before they run: tlsloadgen built, and the session's
    certificate (returned)."""
    echo_bench.build_tlsloadgen()
    return certificate()


def start_https(
    name: str, cpu: int | None, log, cert: tuple[str, str]
) -> tuple[subprocess.Popen, int]:
    tls = ["--tls-cert", cert[0], "--tls-key", cert[1]]
    if name in ("ats", "ats_plain"):
        cmd = [sys.executable, "-m", "ats_cffi", "http", "--listen", f"{HOST}:0"]
        cmd += ["--drain-timeout", "1"] + (tls if name == "ats" else [])
        return start_ready(cmd, cpu, port_after("ats-cffi http listening on "), stderr=log)
    cmd = [sys.executable, str(HTTP_PEERS), name, "--backlog", "4096", *tls]
    return start_ready(cmd, cpu, port_after("READY "), stderr=log)


def scheme(name: str) -> str:
    return "http" if name == "ats_plain" else "https"
