"""Real servers that the application tests talk to: redis-server and PostgreSQL, each
started by a fixture on 127.0.0.1 at a free port, in a temporary directory of its own, its
output in a log file that a failure quotes.

A binary that is not installed skips its tests (``find_binary`` returns None, the fixture
calls ``pytest.skip`` naming what to install); a server that is installed but does not come
up within ``START_TIMEOUT`` seconds fails them, with its log. PostgreSQL refuses to run as
root: as root, ``initdb`` and ``postgres`` run as the ``postgres`` user (the Debian package
makes it) or, failing that, as ``nobody``, in a directory that user owns.

The parent keeps no fd of a server (its output goes straight to the log file, which the
parent closes once the child has it), so the suite's leak check does not see them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import ats_cffi.asyncio

_T = TypeVar("_T")

#: How long a real server has to come up (and to stop) before its test fails.
START_TIMEOUT = 20.0
HOST = "127.0.0.1"
#: Where Debian's ``postgresql`` package puts the binaries (not on PATH).
POSTGRES_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


#: Bound of each test's whole conversation with its server(s).
TEST_TIMEOUT = 40.0


def run_on_ats_loop(main: Callable[[], Awaitable[_T]], timeout: float = TEST_TIMEOUT) -> _T:
    """Run ``main()`` on a new ``ats_cffi.asyncio`` loop (``ats_cffi.asyncio.run``:
    ``asyncio.Runner`` with its ``new_event_loop``, so the loop is closed, its executor
    shut down, on return), checking first that it runs on that loop, and bounded by
    ``timeout`` seconds."""

    async def bounded() -> _T:
        loop = asyncio.get_running_loop()
        assert type(loop) is ats_cffi.asyncio.Loop, f"running on {type(loop)!r}"
        return await asyncio.wait_for(main(), timeout)

    return ats_cffi.asyncio.run(bounded())


class ServerFailed(AssertionError):
    """A real server did not start (or stop) as it should; the message quotes its log."""


def find_binary(name: str, extra_dirs: Sequence[Path] = ()) -> str | None:
    """The path of the executable ``name``: on PATH, else in one of ``extra_dirs``."""
    found = shutil.which(name)
    if found:
        return found
    for d in extra_dirs:
        candidate = d / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def free_port(host: str = HOST) -> int:
    """A TCP port that nothing listens on now (bound to port 0 and released)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_accepts(host: str, port: int) -> bool:
    """True if a TCP connect to ``host:port`` succeeds now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class RealServer:
    """A server process started by a test: its name, port, log file and process."""

    name: str
    port: int
    log: Path
    proc: subprocess.Popen[bytes]
    stop_signal: int = signal.SIGTERM
    info: dict[str, Any] = field(default_factory=dict)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError as exc:
            return f"<no log: {exc}>"

    def fail(self, why: str) -> ServerFailed:
        return ServerFailed(f"{self.name} {why}; its log ({self.log}):\n{self.log_text()}")

    def wait_ready(self, log_marker: str | None = None, timeout: float = START_TIMEOUT) -> None:
        """Return once the server accepts TCP connections on its port (and its log shows
        ``log_marker``, if given); fail with its log if it exits or takes ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                raise self.fail(f"exited with status {code} while starting")
            marked = log_marker is None or log_marker in self.log_text()
            if marked and port_accepts(HOST, self.port):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise self.fail(f"did not come up on {HOST}:{self.port} within {timeout} s")
            time.sleep(0.05)

    def stop(self, timeout: float = START_TIMEOUT) -> int:
        """Stop the server (``stop_signal``, then SIGKILL after ``timeout`` s); its status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(self.stop_signal)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
                raise self.fail(
                    f"did not stop within {timeout} s of signal {self.stop_signal}"
                ) from None
        return int(self.proc.returncode)


def spawn(
    name: str,
    argv: Sequence[str],
    port: int,
    log: Path,
    user: pwd.struct_passwd | None = None,
    stop_signal: int = signal.SIGTERM,
    env: Mapping[str, str] | None = None,
) -> RealServer:
    """Start ``argv`` with stdout and stderr into ``log`` (as ``user``, and with the
    environment ``env``, if given)."""
    extra: dict[str, Any] = {}
    if user is not None:
        extra = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=log.parent,
            env=env,
            start_new_session=True,  # a ^C at the terminal reaches pytest, not the server
            **extra,
        )
    return RealServer(name, port, log, proc, stop_signal)


@contextlib.contextmanager
def owned_tempdir(prefix: str, user: pwd.struct_passwd | None = None) -> Iterator[Path]:
    """A new directory under the system's temp dir (owned by ``user`` if given), removed
    on exit. (Not pytest's ``tmp_path``: its parents are root's, mode 0700.)"""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        if user is not None:
            os.chown(path, user.pw_uid, user.pw_gid)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def self_signed_cert(directory: Path, user: pwd.struct_passwd | None = None) -> Path | None:
    """A self-signed certificate for 127.0.0.1 (an IP subjectAltName) made by the openssl
    command into ``directory`` (``cert.pem``, and ``key.pem`` of mode 0600, both owned by
    ``user`` if given); the certificate's path, or None if openssl is not installed."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert, key = directory / "cert.pem", directory / "key.pem"
    argv = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
    argv += ["-keyout", str(key), "-out", str(cert), "-subj", f"/CN={HOST}"]
    argv += ["-addext", f"subjectAltName=IP:{HOST}"]
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    if done.returncode != 0:
        out = (done.stdout + done.stderr).decode(errors="replace")
        raise ServerFailed(f"openssl req failed with status {done.returncode}:\n{out}")
    key.chmod(0o600)
    if user is not None:
        for path in (cert, key):
            os.chown(path, user.pw_uid, user.pw_gid)
    return cert


# --------------------------------------------------------------------------- redis


def redis_binary() -> str | None:
    return find_binary("redis-server")


def serving(server: RealServer, ready_marker: str, stop_name: str) -> Iterator[RealServer]:
    """The body of a server fixture: wait for ``ready_marker`` in its log, hand the server
    out, stop it (by ``stop_name``, its stop signal) and fail on a non-zero exit."""
    try:
        server.wait_ready(ready_marker)
        yield server
    finally:
        status = server.stop()
    if status != 0:
        raise server.fail(f"exited with status {status} on {stop_name}")


@contextlib.contextmanager
def redis_server() -> Iterator[RealServer]:
    """A redis-server on 127.0.0.1 at a free port, no persistence; stopped on exit."""
    binary = redis_binary()
    assert binary is not None, "redis-server is not installed"
    with owned_tempdir("ats-cffi-redis-") as tmp:
        port = free_port()
        argv = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(tmp), "--daemonize", "no", "--protected-mode", "yes"]
        server = spawn("redis-server", argv, port, tmp / "redis.log")
        yield from serving(server, "Ready to accept connections", "SIGTERM")


# --------------------------------------------------------------------------- PostgreSQL


def postgres_binaries() -> tuple[str, str] | None:
    """``(initdb, postgres)``, or None if either is missing."""
    initdb = find_binary("initdb", POSTGRES_DIRS)
    postgres = find_binary("postgres", POSTGRES_DIRS)
    if initdb is None or postgres is None:
        return None
    return initdb, postgres


def postgres_user() -> pwd.struct_passwd | None:
    """The user to run PostgreSQL as: None (this one) unless this is root, then
    ``postgres`` if it exists, else ``nobody``."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise ServerFailed("running as root, and neither a 'postgres' nor a 'nobody' user exists")


def _initdb(initdb: str, data: Path, user: pwd.struct_passwd | None) -> None:
    argv = [initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8"]
    argv += ["--locale=C", "--no-sync", "--no-instructions"]
    extra: dict[str, Any] = {}
    if user is not None:
        extra = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    done = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        cwd=data.parent,
        timeout=60,
        env={**os.environ, "LC_ALL": "C"},
        **extra,
    )
    if done.returncode != 0:
        out = (done.stdout + done.stderr).decode(errors="replace")
        raise ServerFailed(f"initdb failed with status {done.returncode}:\n{out}")


@contextlib.contextmanager
def postgres_server() -> Iterator[RealServer]:
    """A PostgreSQL cluster made by initdb in a temporary directory (trust auth, superuser
    ``postgres``), served on 127.0.0.1 at a free port (its unix socket in that directory,
    not the system's); stopped (fast shutdown) on exit. ``info`` holds ``user``,
    ``database``, ``dsn`` (without TLS: sslmode=disable) and, if the openssl command made
    it a certificate and TLS is on, ``ssl_cert`` (the path of that self-signed one)."""
    binaries = postgres_binaries()
    assert binaries is not None, "PostgreSQL (initdb, postgres) is not installed"
    initdb, postgres = binaries
    user = postgres_user()
    with owned_tempdir("ats-cffi-pg-", user) as tmp:
        data = tmp / "data"
        _initdb(initdb, data, user)
        port = free_port()
        argv = [postgres, "-D", str(data), "-k", str(tmp), "-h", HOST, "-p", str(port)]
        argv += ["-c", "fsync=off", "-c", "max_connections=40", "-c", "shared_buffers=16MB"]
        cert = self_signed_cert(tmp, user)
        if cert is not None:
            argv += ["-c", "ssl=on", "-c", f"ssl_cert_file={cert}"]
            argv += ["-c", f"ssl_key_file={cert.with_name('key.pem')}"]
        log = tmp / "postgres.log"
        server = spawn("postgres", argv, port, log, user, stop_signal=signal.SIGINT)
        server.info.update(user="postgres", database="postgres", ssl_cert=cert)
        server.info["dsn"] = f"postgresql://postgres@{HOST}:{port}/postgres?sslmode=disable"
        yield from serving(server, "database system is ready to accept connections", "SIGINT")
