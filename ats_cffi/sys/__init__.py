"""The Pythonic face of ``ats_cffi._native`` (DESIGN.md sections 2, 9, 10).

Failures become ``OSError(errno, "<call>: <strerror>")`` naming the system call;
``EINTR`` is retried; ``EAGAIN`` on the hot paths is the return value :data:`AGAIN`
(a negative errno-style sentinel), never an exception.

Two kinds of I/O calls are offered: convenience calls taking any bytes-like object
(:func:`read_into`, :func:`write`, :func:`writev`), which wrap the buffer for C on
every call, and the hot-path calls taking a cdata pointer made once by the caller
plus an offset and a length (:func:`read_fill`, :func:`write_block`,
:func:`writev_blocks`), which allocate nothing.

Everything is imported from here (``from ats_cffi import sys as _sys; _sys.read(...)``);
the private modules hold one concept each: ``_check`` (return codes, errors, argument
checks), ``_fd`` (closing an fd; the fd owners' base), ``_epoll``, ``_eventfd``,
``_address`` (sockaddr to and from tuples), ``_sockets`` (socket calls, accept),
``_io`` (reads and writes), ``_scratch`` (the per-thread C buffers they share).
"""

from __future__ import annotations

from ats_cffi.sys._address import PORT_MAX, Address, ip_family
from ats_cffi.sys._check import AGAIN, IN_PROGRESS, check_fd
from ats_cffi.sys._epoll import Epoll
from ats_cffi.sys._eventfd import EventFD
from ats_cffi.sys._fd import close
from ats_cffi.sys._io import (
    input_pending,
    read,
    read_fill,
    read_into,
    send_some,
    write,
    write_block,
    writev,
    writev_blocks,
)
from ats_cffi.sys._scratch import ACCEPT_BATCH_MAX
from ats_cffi.sys._sockets import (
    ACCEPT_FLAGS,
    accept4,
    accept_batch,
    bind,
    connect,
    getpeername,
    getsockname,
    getsockopt_int,
    listen,
    setsockopt_int,
    setsockopt_linger,
    shutdown,
    so_error,
    socket,
)

__all__ = [
    "ACCEPT_BATCH_MAX",
    "ACCEPT_FLAGS",
    "AGAIN",
    "IN_PROGRESS",
    "PORT_MAX",
    "Address",
    "Epoll",
    "EventFD",
    "accept4",
    "accept_batch",
    "bind",
    "check_fd",
    "close",
    "connect",
    "getpeername",
    "getsockname",
    "getsockopt_int",
    "input_pending",
    "ip_family",
    "listen",
    "read",
    "read_fill",
    "read_into",
    "send_some",
    "setsockopt_int",
    "setsockopt_linger",
    "shutdown",
    "so_error",
    "socket",
    "write",
    "write_block",
    "writev",
    "writev_blocks",
]
