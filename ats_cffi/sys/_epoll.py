"""``Epoll``: an epoll instance whose waits fill preallocated arrays (DESIGN.md section 9)."""

from __future__ import annotations

import errno
from typing import Any

from ats_cffi._native import ffi, lib
from ats_cffi.sys._check import EINTR, check_int, oserror
from ats_cffi.sys._fd import FdOwner

_CTL_ADD = lib.EPOLL_CTL_ADD
_CTL_MOD = lib.EPOLL_CTL_MOD
_CTL_DEL = lib.EPOLL_CTL_DEL


class Epoll(FdOwner):
    """An epoll instance (close-on-exec) with preallocated result arrays.

    After ``n = ep.wait(timeout_ms)``, ``ep.tokens[i]`` and ``ep.masks[i]`` for
    ``i < n`` are the token given at registration and the event mask: plain
    memoryviews, so reading them costs no cffi access per field.
    Raises ``OSError`` naming ``epoll_create1``/``epoll_ctl``/``epoll_wait``.
    ``tokens`` and ``masks`` stay the same objects for the Epoll's life: a NetHandler's poll
    step keeps them (``PollDescriptor``, which also queues a pass's ADDs until its wait).
    """

    __slots__ = (
        "max_events",
        "_evs",
        "_tokens_c",
        "_masks_c",
        "tokens",
        "masks",
        "net_args",
    )

    def __init__(self, max_events: int = 1024) -> None:
        check_int("Epoll", "max_events", max_events)
        if max_events <= 0:
            raise ValueError(f"Epoll: max_events must be > 0, got {max_events}")
        self._fd = -1
        fd = lib.epoll_create1(lib.EPOLL_CLOEXEC)
        if fd < 0:
            raise oserror("epoll_create1", ffi.errno)
        self._fd = fd
        self.max_events = max_events
        self._evs = ffi.new("struct epoll_event[]", max_events)
        self._tokens_c = ffi.new("uint64_t[]", max_events)
        self._masks_c = ffi.new("uint32_t[]", max_events)
        self.tokens = memoryview(ffi.buffer(self._tokens_c)).cast("B").cast("Q")
        self.masks = memoryview(ffi.buffer(self._masks_c)).cast("B").cast("I")
        #: The NetHandler's wait's arguments (``set_net_wait``), None once closed.
        self.net_args: tuple[int, ...] | None = None

    def ctl(self, op: int, fd: int, events: int, token: int | None = None) -> None:
        """``epoll_ctl(op, fd)`` with ``events`` and a 64-bit ``token`` (default: ``fd``)."""
        if token is None:
            token = fd
        try:
            r = lib.ats_epoll_ctl(self._fd, op, fd, events, token)
        except (TypeError, OverflowError) as exc:
            raise TypeError(f"epoll_ctl: {exc}") from None
        if r < 0:
            raise oserror("epoll_ctl", -r)

    def add(self, fd: int, events: int, token: int | None = None) -> None:
        """Register ``fd`` (``EPOLL_CTL_ADD``)."""
        self.ctl(_CTL_ADD, fd, events, token)

    def modify(self, fd: int, events: int, token: int | None = None) -> None:
        """Change or re-arm ``fd`` (``EPOLL_CTL_MOD``): with edge trigger, a MOD with the
        same mask reports readiness that is already pending once more."""
        self.ctl(_CTL_MOD, fd, events, token)

    def delete(self, fd: int) -> None:
        """Unregister ``fd`` (``EPOLL_CTL_DEL``)."""
        self.ctl(_CTL_DEL, fd, 0, 0)

    def wait(self, timeout_ms: int = -1) -> int:
        """Wait up to ``timeout_ms`` (-1: forever, 0: poll) and return the number of events."""
        while True:
            try:
                n = lib.ats_epoll_wait(
                    self._fd, self._evs, self.max_events, timeout_ms, self._tokens_c, self._masks_c
                )
            except (TypeError, OverflowError) as exc:
                raise TypeError(f"epoll_wait: timeout_ms: {exc}") from None
            if n >= 0:
                return n
            if n != -EINTR:
                raise oserror("epoll_wait", -n)

    def set_net_wait(self, notify: Any, nnotify: Any, counters: Any) -> tuple[int, ...]:
        """Make ``net_args``: what ``ats_cffi._fastio.net_wait`` takes to run a NetHandler
        pass's wait (``ats_net_wait``, through its address, with the GIL released): events
        whose token has bit 63 set belong to spliced fds (``ats_cffi.net.splice``) and are
        handled natively, not returned; the tokens of the spliced ends that need Python go to
        ``notify`` (``nnotify[0]`` of them); the native pumps add to ``counters``
        (``uint64_t[4]``). The other events are in ``tokens``/``masks`` as for ``wait``. The
        arrays are the caller's and this object's: both keep them for as long as
        ``net_args`` is set (``close`` clears it)."""
        if self._fd < 0:
            raise oserror("epoll_wait", errno.EBADF)
        addr = [ffi.addressof(lib, "ats_net_wait"), self._evs, self._tokens_c, self._masks_c]
        addr += [notify, nnotify, counters]
        a = [int(ffi.cast("uintptr_t", p)) for p in addr]
        self.net_args = (a[0], self._fd, a[1], self.max_events, *a[2:])
        return self.net_args

    def close(self) -> None:
        """Close the epoll fd; a second call does nothing."""
        self.net_args = None
        super().close()

    def __repr__(self) -> str:
        return f"<Epoll fd={self._fd} max_events={self.max_events}>"
