"""The raw cffi module: what it binds and that the compiler, not we, gave the layout."""

from __future__ import annotations

import errno
import select
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from ats_cffi._native import ffi, lib

FUNCTIONS = [
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "eventfd", "accept4",
    "read", "readv", "recv", "write", "writev", "send", "close", "shutdown", "socket",
    "bind", "listen", "connect", "getsockopt", "setsockopt", "getsockname", "getpeername",
]  # fmt: skip


@pytest.mark.parametrize("name", FUNCTIONS)
def test_lib_binds_each_system_call(name: str) -> None:
    assert callable(getattr(lib, name))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("EPOLLIN", select.EPOLLIN),
        ("EPOLLOUT", select.EPOLLOUT),
        ("EPOLLERR", select.EPOLLERR),
        ("EPOLLHUP", select.EPOLLHUP),
        ("EPOLLRDHUP", select.EPOLLRDHUP),
        ("EPOLLET", select.EPOLLET),
        ("EPOLLONESHOT", select.EPOLLONESHOT),
        ("EPOLLEXCLUSIVE", select.EPOLLEXCLUSIVE),
        ("SOCK_NONBLOCK", socket.SOCK_NONBLOCK),
        ("SOCK_CLOEXEC", socket.SOCK_CLOEXEC),
        ("SO_REUSEPORT", socket.SO_REUSEPORT),
        ("TCP_DEFER_ACCEPT", socket.TCP_DEFER_ACCEPT),
        ("TCP_NODELAY", socket.TCP_NODELAY),
        ("AF_INET6", socket.AF_INET6),
        ("SO_ACCEPTCONN", socket.SO_ACCEPTCONN),
    ],
)
def test_constants_come_from_the_system_headers(name: str, expected: int) -> None:
    assert getattr(lib, name) == expected


def test_eventfd_and_epoll_ctl_constants_exist() -> None:
    for name in ("EFD_NONBLOCK", "EFD_CLOEXEC", "EFD_SEMAPHORE", "EPOLL_CLOEXEC",
                 "EPOLL_CTL_ADD", "EPOLL_CTL_MOD", "EPOLL_CTL_DEL"):  # fmt: skip
        assert isinstance(getattr(lib, name), int)
    assert len({lib.EPOLL_CTL_ADD, lib.EPOLL_CTL_MOD, lib.EPOLL_CTL_DEL}) == 3


def test_epoll_event_layout_is_the_compilers() -> None:
    # x86-64 packs struct epoll_event (4 + 8 bytes, no padding); elsewhere it is 16.
    size = ffi.sizeof("struct epoll_event")
    assert size in (12, 16)
    assert ffi.offsetof("struct epoll_event", "data") in (4, 8)


def test_raw_epoll_wait_reports_a_readable_socket() -> None:
    a, b = socket.socketpair()
    epfd = lib.epoll_create1(lib.EPOLL_CLOEXEC)
    try:
        ev = ffi.new("struct epoll_event *")
        ev.events = lib.EPOLLIN
        ev.data.u64 = 77
        assert lib.epoll_ctl(epfd, lib.EPOLL_CTL_ADD, a.fileno(), ev) == 0
        b.send(b"x")
        out = ffi.new("struct epoll_event[]", 4)
        assert lib.epoll_wait(epfd, out, 4, 1000) == 1
        assert out[0].data.u64 == 77
        assert out[0].events & lib.EPOLLIN
    finally:
        lib.close(epfd)
        a.close()
        b.close()


def test_helper_constants_are_exported_once_from_their_c_headers() -> None:
    assert lib.ATS_IOV_MAX == 64
    assert lib.ATS_SPLICE_TAG == 1 << 63
    assert lib.ATS_CTR_COUNT == 4
    assert (lib.INT_MIN, lib.INT_MAX) == (-(2**31), 2**31 - 1)


@pytest.fixture
def pipe() -> Iterator[tuple[Any, Any, socket.socket, socket.socket, socket.socket]]:
    """A native pipe from one socketpair to another: ``(pipe, its source end, the socket it
    reads, the socket that feeds that one, the socket its bytes reach)``, released and
    closed after the test."""
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    ends = ffi.new("struct ats_splice_end[2]")  # the source's, with the pipe; the sink's
    src, dst = ends + 0, ends + 1
    p = ffi.addressof(ends[0], "pipe")
    p.src_fd, p.dst_fd = a.fileno(), c.fileno()
    p.cap = p.budget = 4096
    p.src_end, p.dst_end = src, dst
    dst.out = p
    lib.ats_pipe_stop(ffi.addressof(ends[1], "pipe"))  # the sink's own pipe: none here
    try:
        yield p, src, a, b, d
    finally:
        lib.ats_pipe_release(p)
        lib.ats_splice_free_all()  # this thread's scratch and moved list
        for s in (a, b, c, d):
            s.close()


def test_splice_setup_links_the_ends_and_starts_from_the_edge_state_it_is_given() -> None:
    ends = ffi.new("struct ats_splice_end[2]")
    tags = [
        lib.ats_splice_setup(ends, 2, 0, 7, 8, 4096, 1024, 1, 0, 1, 0, 41),
        lib.ats_splice_setup(ends, 2, 1, 8, 7, 4096, 1024, 0, 1, 0, errno.ECONNRESET, 42),
    ]
    for i in (0, 1):
        assert tags[i] == lib.ATS_SPLICE_TAG | int(ffi.cast("uintptr_t", ends + i))
    a, b = ffi.addressof(ends[0], "pipe"), ffi.addressof(ends[1], "pipe")
    assert (a.src_fd, a.dst_fd, a.cap, a.budget) == (7, 8, 4096, 1024)
    assert (a.src_ready, a.src_hup, a.dst_ready, a.err) == (1, 0, 1, 0)
    assert a.src_end == ends + 0 and a.dst_end == ends + 1 and ends[1].out == a
    assert b.src_end == ends + 1 and b.dst_end == ends + 0 and ends[0].out == b
    assert (ends[0].token, ends[1].token) == (41, 42)
    # An error the socket's last read found after its data: that pipe starts failed.
    assert not lib.ats_pipe_done(a) and ends[0].status == 0
    assert lib.ats_pipe_done(b) and b.err == errno.ECONNRESET
    assert ends[1].status == lib.ATS_SPLICE_ERROR
    # One end (an echo): the pipe writes back to its own end.
    one = ffi.new("struct ats_splice_end[1]")
    lib.ats_splice_setup(one, 1, 0, 9, 9, 4096, 1024, 0, 0, 0, 0, 5)
    p = ffi.addressof(one[0], "pipe")
    assert p.src_end == one + 0 and p.dst_end == one + 0 and one[0].out == p


def test_splice_stop_report_stops_every_pipe_and_reports_counts_and_the_first_failure() -> None:
    ends = ffi.new("struct ats_splice_end[2]")
    for i in (0, 1):
        lib.ats_splice_setup(ends, 2, i, 7 + i, 8 - i, 4096, 1024, 0, 0, 0, 0, i)
    a, b = ffi.addressof(ends[0], "pipe"), ffi.addressof(ends[1], "pipe")
    a.nread, a.nwritten, b.nread, b.nwritten = 10, 9, 5, 3
    out = ffi.new("uint64_t[4]")
    assert lib.ats_splice_stop_report(ends, 2, out) == 0  # none failed
    assert list(out) == [10, 9, 5, 3]
    assert lib.ats_pipe_done(a) and lib.ats_pipe_done(b)
    # The first failed pipe: its errno, and the end whose fd failed (the sink's: the
    # other end, if err_on_dst).
    b.err, b.err_on_dst = errno.EPIPE, 1
    assert lib.ats_splice_stop_report(ends, 2, out) == 0 << 32 | errno.EPIPE
    b.err_on_dst = 0
    assert lib.ats_splice_stop_report(ends, 2, out) == 1 << 32 | errno.EPIPE
    a.err = errno.ECONNRESET
    assert lib.ats_splice_stop_report(ends, 2, out) == 0 << 32 | errno.ECONNRESET
    one = ffi.new("struct ats_splice_end[1]")
    lib.ats_splice_setup(one, 1, 0, 9, 9, 4096, 1024, 0, 0, 0, errno.ECONNRESET, 5)
    out = ffi.new("uint64_t[4]", [7] * 4)
    assert lib.ats_splice_stop_report(one, 1, out) == errno.ECONNRESET
    assert list(out) == [0, 0, 7, 7]  # one pipe: the rest untouched


def test_a_stopped_pipe_is_done_and_its_pump_moves_no_byte(pipe: Any) -> None:
    p, src, source, feed, _ = pipe
    ctr = ffi.new("uint64_t[]", lib.ATS_CTR_COUNT)
    feed.send(b"spliced")
    assert not lib.ats_pipe_done(p)
    lib.ats_pipe_stop(p)
    assert lib.ats_pipe_done(p)
    assert lib.ats_splice_end_event(src, lib.EPOLLIN | lib.EPOLLOUT, ctr) == 0
    assert p.nread == 0 and list(ctr) == [0] * lib.ATS_CTR_COUNT
    assert source.recv(64) == b"spliced"  # still in the socket: the stopped pump read nothing


def test_a_running_pipe_moves_bytes_and_counts_them(pipe: Any) -> None:
    p, src, _, feed, sink = pipe
    ctr = ffi.new("uint64_t[]", lib.ATS_CTR_COUNT)
    p.dst_ready = 1
    feed.send(b"spliced")
    st = lib.ats_splice_end_event(src, lib.EPOLLIN, ctr)
    assert st & lib.ATS_SPLICE_MOVED
    assert sink.recv(64) == b"spliced"
    assert (p.nread, p.nwritten) == (7, 7)
    assert ctr[lib.ATS_CTR_READ_BYTES] == ctr[lib.ATS_CTR_WRITE_BYTES] == 7
    assert not lib.ats_pipe_done(p)
