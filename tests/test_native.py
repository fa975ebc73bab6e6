"""The raw cffi module: what it binds and that the compiler, not we, gave the layout."""

from __future__ import annotations

import select
import socket

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
