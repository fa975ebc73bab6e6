"""pyperf micro-benchmarks of ``ats_cffi.sys`` against the stdlib (DESIGN.md 9, 11).

Every benchmark is a pair ``<what>-ats_cffi`` / ``<what>-stdlib`` (plus variants named
``<what>-ats_cffi_<variant>``), timed with ``Runner.bench_time_func``: the setup
(sockets, epoll registrations, backlog filling) and the teardown are outside the timed
part, and both sides run the same loop shape with the callables bound to locals.

- ``epoll_wait0``: a zero-timeout wait on an epoll holding 10 idle socketpair ends
  (level-triggered EPOLLIN, no events): ``Epoll.wait(0)`` vs ``select.epoll.poll(0)``.
  Both wait for up to 1023/1024 events (their defaults).
- ``readiness_roundtrip``: send 1 byte on one end of a non-blocking AF_UNIX socketpair,
  wait on an edge-triggered epoll for the other end, read the byte back. Each side makes
  exactly three syscalls (send, epoll_wait, read/recv): ``sys.write`` + ``Epoll.wait`` +
  ``sys.read_fill`` into a cdata made once (``_read_into`` variant: ``sys.read_into`` into
  a bytearray) vs ``socket.send`` + ``select.epoll.poll`` + ``socket.recv_into``. The read
  asks for 1 byte, so neither side makes the extra read that would see EAGAIN.
- ``accept``: a non-blocking listener on 127.0.0.1 whose backlog is filled with N=64
  connected clients (blocking connects, untimed); only the accepting is timed, and values
  are per accepted connection (``inner_loops=N``). ``sys.accept4`` (returns fd and peer
  address) and ``sys.accept_batch(fd, N)`` (fds only, one native call) vs
  ``socket.accept()`` + ``setblocking(False)``. Clients use SO_LINGER 0 so that closing
  them leaves no TIME_WAIT behind; every fd is closed after each loop. The ~16 us of
  untimed connect per connection would make pyperf's 100 ms of timed work per value cost
  seconds, so the accept benchmarks calibrate to at most ``ACCEPT_MIN_TIME`` (10 ms) of
  timed accepting per value (a smaller ``--min-time`` still wins).
- ``eventfd``: ``EventFD.write(1)`` + ``EventFD.read()`` vs ``os.eventfd_write`` +
  ``os.eventfd_read`` on ``os.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)``.

Run: ``python perf/bench_sys.py -o sys.json`` (any pyperf option works, e.g. ``--fast``,
``--processes 6``), then ``python perf/table.py sys.json``.
"""

from __future__ import annotations

import os
import select
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from time import perf_counter
from typing import Any

import pyperf
from _common import HOST, LINGER0

from ats_cffi import sys as asys
from ats_cffi._native import ffi, lib

N_IDLE = 10
N_ACCEPT = 64
ACCEPT_MIN_TIME = 0.010  # seconds of timed accepting per value (see docstring)
WAIT_MS = 1000  # readiness waits: the data is already there, this only guards a hang


def _pairs(n: int) -> list[tuple[socket.socket, socket.socket]]:
    pairs = []
    for _ in range(n):
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        pairs.append((a, b))
    return pairs


def _close_pairs(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    for a, b in pairs:
        a.close()
        b.close()


@contextmanager
def _epoll_and_pairs(
    make_epoll: Callable[[], Any], n: int
) -> Iterator[tuple[Any, list[tuple[socket.socket, socket.socket]]]]:
    """An epoll (``make_epoll()``) and ``n`` non-blocking socketpairs, closed on the way out
    (the set-up and tear-down of a timed function, outside its timed part)."""
    pairs = _pairs(n)
    ep = make_epoll()
    try:
        yield ep, pairs
    finally:
        ep.close()
        _close_pairs(pairs)


# ------------------------------------------------------------------ epoll_wait0


def epoll_wait0_ats(loops: int) -> float:
    with _epoll_and_pairs(asys.Epoll, N_IDLE) as (ep, pairs):
        for _, b in pairs:
            ep.add(b.fileno(), lib.EPOLLIN)
        wait = ep.wait
        assert wait(0) == 0
        it = range(loops)
        t0 = perf_counter()
        for _ in it:
            wait(0)
        return perf_counter() - t0


def epoll_wait0_stdlib(loops: int) -> float:
    with _epoll_and_pairs(select.epoll, N_IDLE) as (ep, pairs):
        for _, b in pairs:
            ep.register(b.fileno(), select.EPOLLIN)
        poll = ep.poll
        assert poll(0) == []
        it = range(loops)
        t0 = perf_counter()
        for _ in it:
            poll(0)
        return perf_counter() - t0


# ---------------------------------------------------------- readiness_roundtrip


def roundtrip_ats_read_fill(loops: int) -> float:
    keep = bytearray(4096)
    cbuf = ffi.from_buffer(keep)
    with _epoll_and_pairs(asys.Epoll, 1) as (ep, [(a, b)]):
        afd, bfd = a.fileno(), b.fileno()
        ep.add(bfd, lib.EPOLLIN | lib.EPOLLET)
        write, wait, read_fill = asys.write, ep.wait, asys.read_fill
        assert write(afd, b"x") == 1 and wait(WAIT_MS) == 1 and read_fill(bfd, cbuf, 0, 1) == (1, 1)
        data = b"x"
        it = range(loops)
        t0 = perf_counter()
        for _ in it:
            write(afd, data)
            wait(WAIT_MS)
            read_fill(bfd, cbuf, 0, 1)
        return perf_counter() - t0


def roundtrip_ats_read_into(loops: int) -> float:
    buf = bytearray(4096)
    with _epoll_and_pairs(asys.Epoll, 1) as (ep, [(a, b)]):
        afd, bfd = a.fileno(), b.fileno()
        ep.add(bfd, lib.EPOLLIN | lib.EPOLLET)
        write, wait, read_into = asys.write, ep.wait, asys.read_into
        assert write(afd, b"x") == 1 and wait(WAIT_MS) == 1 and read_into(bfd, buf, 1) == 1
        data = b"x"
        it = range(loops)
        t0 = perf_counter()
        for _ in it:
            write(afd, data)
            wait(WAIT_MS)
            read_into(bfd, buf, 1)
        return perf_counter() - t0


def roundtrip_stdlib(loops: int) -> float:
    buf = bytearray(4096)
    timeout = WAIT_MS / 1000
    with _epoll_and_pairs(select.epoll, 1) as (ep, [(a, b)]):
        ep.register(b.fileno(), select.EPOLLIN | select.EPOLLET)
        send, poll, recv_into = a.send, ep.poll, b.recv_into
        assert send(b"x") == 1 and len(poll(timeout)) == 1 and recv_into(buf, 1) == 1
        data = b"x"
        it = range(loops)
        t0 = perf_counter()
        for _ in it:
            send(data)
            poll(timeout)
            recv_into(buf, 1)
        return perf_counter() - t0


# ----------------------------------------------------------------------- accept


def _listener() -> socket.socket:
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((HOST, 0))
    ls.listen(2 * N_ACCEPT)
    ls.setblocking(False)
    return ls


def _fill_backlog(addr: tuple[str, int], n: int) -> list[socket.socket]:
    """n connected clients; on loopback a blocking connect returns once the
    connection is in the listener's accept queue."""
    clients = []
    try:
        for _ in range(n):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            clients.append(c)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
            c.connect(addr)
    except BaseException:
        for c in clients:
            c.close()
        raise
    return clients


def _close_socks(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def accept_ats(loops: int) -> float:
    ls = _listener()
    fd, addr = ls.fileno(), ls.getsockname()
    accept4 = asys.accept4
    it = range(N_ACCEPT)
    total = 0.0
    try:
        for _ in range(loops):
            clients = _fill_backlog(addr, N_ACCEPT)
            got: list[tuple[int, object]] = []
            append = got.append
            try:
                t0 = perf_counter()
                for _ in it:
                    append(accept4(fd))
                total += perf_counter() - t0
            finally:
                _close_socks(clients)
                for r in got:
                    if r is not None:
                        os.close(r[0])
            assert len(got) == N_ACCEPT and None not in got
    finally:
        ls.close()
    return total


def accept_ats_batch(loops: int) -> float:
    ls = _listener()
    fd, addr = ls.fileno(), ls.getsockname()
    accept_batch = asys.accept_batch
    n = N_ACCEPT
    total = 0.0
    try:
        for _ in range(loops):
            clients = _fill_backlog(addr, n)
            fds: list[int] = []
            try:
                t0 = perf_counter()
                fds, err = accept_batch(fd, n)
                total += perf_counter() - t0
            finally:
                _close_socks(clients)
                for f in fds:
                    os.close(f)
            assert len(fds) == n and err == 0, (len(fds), err)
    finally:
        ls.close()
    return total


def accept_stdlib(loops: int) -> float:
    ls = _listener()
    addr = ls.getsockname()
    accept = ls.accept
    it = range(N_ACCEPT)
    total = 0.0
    try:
        for _ in range(loops):
            clients = _fill_backlog(addr, N_ACCEPT)
            got: list[socket.socket] = []
            append = got.append
            try:
                t0 = perf_counter()
                for _ in it:
                    s, _peer = accept()
                    s.setblocking(False)
                    append(s)
                total += perf_counter() - t0
            finally:
                _close_socks(clients)
                _close_socks(got)
            assert len(got) == N_ACCEPT
    finally:
        ls.close()
    return total


# ---------------------------------------------------------------------- eventfd


def eventfd_ats(loops: int) -> float:
    ev = asys.EventFD()
    try:
        write, read = ev.write, ev.read
        assert write(1) and read() == 1
        it = range(loops)
        t0 = perf_counter()
        for _ in it:
            write(1)
            read()
        return perf_counter() - t0
    finally:
        ev.close()


def eventfd_stdlib(loops: int) -> float:
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        write, read = os.eventfd_write, os.eventfd_read
        write(fd, 1)
        assert read(fd) == 1
        it = range(loops)
        t0 = perf_counter()
        for _ in it:
            write(fd, 1)
            read(fd)
        return perf_counter() - t0
    finally:
        os.close(fd)


BENCHMARKS = [
    ("epoll_wait0-ats_cffi", epoll_wait0_ats, 1),
    ("epoll_wait0-stdlib", epoll_wait0_stdlib, 1),
    ("readiness_roundtrip-ats_cffi", roundtrip_ats_read_fill, 1),
    ("readiness_roundtrip-ats_cffi_read_into", roundtrip_ats_read_into, 1),
    ("readiness_roundtrip-stdlib", roundtrip_stdlib, 1),
    ("accept-ats_cffi", accept_ats, N_ACCEPT),
    ("accept-ats_cffi_batch", accept_ats_batch, N_ACCEPT),
    ("accept-stdlib", accept_stdlib, N_ACCEPT),
    ("eventfd-ats_cffi", eventfd_ats, 1),
    ("eventfd-stdlib", eventfd_stdlib, 1),
]


def main() -> None:
    runner = pyperf.Runner()
    runner.metadata["description"] = "ats_cffi.sys vs stdlib socket/select/os"
    args = runner.parse_args()
    # Workers get --min-time from the master, so the cap must be idempotent.
    min_time = args.min_time
    for name, func, inner in BENCHMARKS:
        slow = name.startswith("accept-")
        args.min_time = min(min_time, ACCEPT_MIN_TIME) if slow else min_time
        runner.bench_time_func(name, func, inner_loops=inner)


if __name__ == "__main__":
    main()
