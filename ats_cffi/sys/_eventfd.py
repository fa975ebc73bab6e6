"""``EventFD``: a non-blocking, close-on-exec eventfd (the EThreads' wake-up)."""

from __future__ import annotations

from ats_cffi._native import ffi, lib
from ats_cffi.sys._check import EAGAIN, EINTR, check_int, check_size, oserror
from ats_cffi.sys._fd import FdOwner


class EventFD(FdOwner):
    """A non-blocking, close-on-exec eventfd.

    ``write(n)`` adds to the counter; ``read()`` returns the counter and resets it
    (semaphore mode: returns 1 and decrements), or ``None`` when it is zero.
    Raises ``OSError`` naming ``eventfd``/``eventfd read``/``eventfd write``.
    """

    __slots__ = ("semaphore", "_value")

    def __init__(self, initval: int = 0, semaphore: bool = False) -> None:
        check_size("eventfd", "initval", initval)
        if initval > 0xFFFFFFFF:
            raise ValueError(f"eventfd: initval must fit in 32 bits, got {initval}")
        self._fd = -1
        flags = lib.EFD_NONBLOCK | lib.EFD_CLOEXEC
        if semaphore:
            flags |= lib.EFD_SEMAPHORE
        fd = lib.eventfd(initval, flags)
        if fd < 0:
            raise oserror("eventfd", ffi.errno)
        self._fd = fd
        self.semaphore = bool(semaphore)
        self._value = ffi.new("uint64_t *")

    def write(self, value: int = 1) -> bool:
        """Add ``value`` (> 0) to the counter; False if the counter is full (EAGAIN)."""
        check_int("eventfd write", "value", value)
        if value <= 0 or value >= 0xFFFFFFFFFFFFFFFF:
            raise ValueError(f"eventfd write: value must be in 1..2**64-2, got {value}")
        while True:
            r = lib.ats_eventfd_write(self._fd, value)
            if r == 0:
                return True
            if r == -EAGAIN:
                return False
            if r != -EINTR:
                raise oserror("eventfd write", -r)

    def read(self) -> int | None:
        """Take the counter (or 1 in semaphore mode); ``None`` when it is zero."""
        while True:
            r = lib.ats_eventfd_read(self._fd, self._value)
            if r == 0:
                return int(self._value[0])
            if r == -EAGAIN:
                return None
            if r != -EINTR:
                raise oserror("eventfd read", -r)

    def __repr__(self) -> str:
        return f"<EventFD fd={self._fd} semaphore={self.semaphore}>"
