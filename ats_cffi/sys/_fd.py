"""Closing a file descriptor, and the base of the objects that own one (``Epoll``,
``EventFD``): closed once, by ``close()``, a ``with`` block or the collector."""

from __future__ import annotations

from typing import TypeVar

from ats_cffi._native import ffi, lib
from ats_cffi.sys._check import EINTR, arg_error, check_fd, oserror

_lib_close = lib.close


def close(fd: int) -> None:
    """Close ``fd``. Not retried on EINTR: on Linux the fd is released anyway."""
    if type(fd) is not int:
        check_fd("close", fd)
    try:
        r = _lib_close(fd)
    except OverflowError as exc:
        raise arg_error("close", exc, fd=fd) from None
    if r < 0:
        err = ffi.errno
        if err != EINTR:
            raise oserror("close", err)


_Owner = TypeVar("_Owner", bound="FdOwner")


class FdOwner:
    """An object that owns ``fd`` (-1 once closed) and closes it exactly once.

    Subclasses set ``_fd`` in ``__init__`` (to -1 first, so that a failed ``__init__``
    leaves nothing for ``__del__`` to close) and add their own slots.
    """

    __slots__ = ("_fd",)

    @property
    def fd(self) -> int:
        """The file descriptor, -1 once closed."""
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        """Close the fd; a second call does nothing."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            _lib_close(fd)

    def __enter__(self: _Owner) -> _Owner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            self.close()
