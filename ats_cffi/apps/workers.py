"""``--workers N``: N processes serving the same port(s) with ``SO_REUSEPORT``.

The parent starts no thread: it makes the TLS contexts (``apps/tls.py``: the workers
inherit them, random ticket keys included, and resume each other's sessions), reserves each
port (a socket bound with ``SO_REUSEPORT`` but not listening, so the kernel hands it no
connection; for port 0 this picks the real port), forks the workers, and keeps the
reservation until every worker listens. Each worker runs
``serve`` with ``reuseport`` listeners and reports to the parent through a pipe, one JSON
object a line: ``{"ready": [[name, host, port], ...]}`` once listening, ``{"summary": ...}``
at the end. The parent prints the listening lines once, forwards SIGTERM/SIGINT/SIGHUP to
the workers, stops them all when one dies, and prints one summary for all.

A worker whose parent disappears (``getppid`` changes) stops by itself.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

from ats_cffi.apps.runner import (
    HANDLED_SIGNALS,
    CommandError,
    Settings,
    Signals,
    StartError,
    command_tls,
    listen_error,
    listening_line,
    report_error,
    serve,
)
from ats_cffi.apps.stats import summary_fields, summary_line
from ats_cffi.apps.tls import CommandTLS

log = logging.getLogger("ats.apps.workers")

#: Seconds the workers get to start listening.
READY_TIMEOUT = 30.0
#: Seconds past the drain timeout before a worker that did not stop is killed.
KILL_GRACE = 5.0


@dataclass
class Worker:
    index: int
    pid: int
    fd: int
    buf: bytes = b""
    ready: list[Any] | None = None
    summary: dict[str, Any] | None = None
    drained: bool = False
    status: int | None = None  # exit status once reaped


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``(host, port)`` with ``SO_REUSEPORT``, not listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host, port))
    except OSError as exc:
        s.close()
        raise listen_error(host, port, exc) from None
    return s


def _child(settings: Settings, index: int, wfd: int, tls: CommandTLS) -> int:
    """The worker's body (after fork): serve with the parent's TLS contexts, reporting
    through ``wfd``."""

    def report(msg: dict[str, Any]) -> None:
        data = (json.dumps(msg) + "\n").encode()
        try:
            while data:
                data = data[os.write(wfd, data) :]
        except BrokenPipeError:
            pass  # the parent is gone (killed): nobody to tell; the worker stops on its own

    try:
        return serve(settings, worker=index, report=report, tls=tls)
    except CommandError as exc:
        return report_error(exc)


def _spawn(
    settings: Settings,
    index: int,
    keep: list[socket.socket],
    others: list[int],
    signals: Signals,
    tls: CommandTLS,
) -> Worker:
    r, w = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    # Fork with the stop signals blocked: the worker unblocks them once its own handlers
    # are installed (Signals.install), so a SIGTERM that comes early is pending, not lost.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    pid = os.fork()
    if pid != 0:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    else:  # the worker: never return into the parent's frames
        code = 1
        try:
            # Its own process group: a terminal's Ctrl-C reaches the parent only, which
            # forwards one SIGTERM (a second stop signal would cut the drain short).
            os.setpgid(0, 0)
            os.close(r)
            for fd in others:
                os.close(fd)
            for s in keep:
                s.close()
            signal.set_wakeup_fd(-1)  # the parent's pipe: this process gets its own
            signals.close_fds()
            code = _child(settings, index, w, tls)
        except BaseException:
            log.exception("worker %d failed", index)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(w)
    os.set_blocking(r, False)
    return Worker(index, pid, r)


def _read_messages(w: Worker) -> bool:
    """Read what ``w`` wrote so far; closes its pipe and returns False at end of file."""
    try:
        data = os.read(w.fd, 65536)
    except BlockingIOError:
        return True
    if not data:
        os.close(w.fd)
        w.fd = -1
        return False
    w.buf += data
    *lines, w.buf = w.buf.split(b"\n")
    for line in lines:
        msg = json.loads(line)
        if "ready" in msg:
            w.ready = msg["ready"]
        if "summary" in msg:
            w.summary = msg["summary"]
            w.drained = bool(msg.get("drained"))
    return True


def _signal_all(workers: list[Worker], sig: int) -> None:
    for w in workers:
        if w.status is None:
            try:
                os.kill(w.pid, sig)
            except ProcessLookupError:
                pass


def _reap(workers: list[Worker]) -> list[Worker]:
    """Collect the exit status of workers that ended; returns them."""
    ended = []
    for w in workers:
        if w.status is not None:
            continue
        try:
            pid, status = os.waitpid(w.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = w.pid, 1 << 8
        if pid:
            w.status = os.waitstatus_to_exitcode(status)
            ended.append(w)
    return ended


def run_workers(settings: Settings, tls: CommandTLS | None = None) -> int:
    """Run ``settings.workers`` worker processes (see the module doc); exit status.
    ``tls``: the TLS contexts every worker serves with (None: made here, before the
    workers are forked, so that they share them: ``apps/tls.py``)."""
    if tls is None:
        tls = command_tls(settings)
    listeners = settings.listeners()
    reserved: list[socket.socket] = []
    try:
        for _name, (host, port) in listeners:
            reserved.append(reserve_port(host, port))
    except StartError:
        for s in reserved:
            s.close()
        raise
    ports = [s.getsockname()[1] for s in reserved]
    child_settings = settings.with_ports(ports)
    signals = Signals().install()
    workers: list[Worker] = []
    try:
        for i in range(settings.workers):
            others = [w.fd for w in workers]
            workers.append(_spawn(child_settings, i, reserved, others, signals, tls))
        return _supervise(settings, workers, reserved, signals)
    finally:
        for s in reserved:
            s.close()
        _signal_all(workers, signal.SIGKILL)
        for w in workers:
            if w.status is None:
                try:
                    os.waitpid(w.pid, 0)
                except ChildProcessError:
                    pass
        for w in workers:
            if w.fd >= 0:
                os.close(w.fd)
        signals.close()


def _supervise(
    settings: Settings, workers: list[Worker], reserved: list[socket.socket], signals: Signals
) -> int:
    announced = False
    failed = 0
    stops_forwarded = 0
    kill_at: float | None = None
    ready_by = time.monotonic() + READY_TIMEOUT
    while any(w.status is None for w in workers):
        fds = [signals.fd] + [w.fd for w in workers if w.fd >= 0]
        readable, _, _ = select.select(fds, [], [], 0.1)
        if signals.fd in readable:
            signals.drain()
        for w in workers:
            if w.fd >= 0 and w.fd in readable:
                _read_messages(w)
        if not announced and all(w.ready is not None for w in workers):
            announced = True
            for s in reserved:
                s.close()  # every worker listens: the reservation has done its job
            for name, host, port in workers[0].ready:  # type: ignore[union-attr]
                print(listening_line(name, host, port))
            sys.stdout.flush()
        if signals.stops > stops_forwarded:
            stops_forwarded = signals.stops
            _signal_all(workers, signal.SIGTERM)
            if kill_at is None:
                kill_at = time.monotonic() + settings.drain_timeout + KILL_GRACE
        if signals.hups:
            signals.hups = 0
            _signal_all(workers, signal.SIGHUP)
        for w in _reap(workers):
            if w.status != 0 or (not stops_forwarded and kill_at is None):
                # A worker died or stopped on its own: stop them all together.
                if w.status != 0:
                    failed = failed or w.status
                    log.error("worker %d (pid %d) exited with status %s", w.index, w.pid, w.status)
                if kill_at is None:
                    _signal_all(workers, signal.SIGTERM)
                    kill_at = time.monotonic() + settings.drain_timeout + KILL_GRACE
        if not announced and time.monotonic() > ready_by and kill_at is None:
            log.error("workers did not start listening within %.0f s", READY_TIMEOUT)
            failed = 1
            _signal_all(workers, signal.SIGTERM)
            kill_at = time.monotonic() + KILL_GRACE
        if kill_at is not None and time.monotonic() > kill_at:
            log.error("workers still running after the drain timeout: killing them")
            _signal_all(workers, signal.SIGKILL)
            kill_at = float("inf")
    for w in workers:  # every worker has exited: its pipe ends with what it wrote last
        if w.fd >= 0:
            os.set_blocking(w.fd, True)
            while _read_messages(w):
                pass
    if announced:
        print(_summary(settings, workers))
        sys.stdout.flush()
    if failed:
        return failed if failed in (1, 2) else 1
    return 0


def _summary(settings: Settings, workers: list[Worker]) -> str:
    totals: dict[str, int] = {}
    for w in workers:
        for k, v in (w.summary or {}).items():
            totals[k] = totals.get(k, 0) + v
    app_names = [
        k
        for k in totals
        if not k.startswith(("proxy.process.net.", "proxy.process.tcp.", "proxy.process.ssl."))
    ]
    fields = summary_fields(totals, app_names)
    accepts = ",".join(
        str((w.summary or {}).get("proxy.process.tcp.total_accepts", "?")) for w in workers
    )
    drained = all(w.drained for w in workers)
    fields += [
        f"workers={len(workers)}",
        f"accepts_per_worker={accepts}",
        f"drain={'complete' if drained else 'timeout'}",
    ]
    return summary_line(settings.service, fields)


__all__ = ["reserve_port", "run_workers"]
