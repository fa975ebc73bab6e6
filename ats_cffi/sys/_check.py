"""How the sys layer reports: its return codes, its ``OSError``s naming the call, and the
checks of the arguments it hands to C (``TypeError``/``ValueError`` naming the argument)."""

from __future__ import annotations

import errno as _errno
import os
from typing import Any

from ats_cffi._native import ffi, lib

#: Returned instead of raising when a non-blocking call would block.
AGAIN: int = -_errno.EAGAIN
#: Returned by :func:`connect` on a non-blocking socket whose connect is under way.
IN_PROGRESS: int = -_errno.EINPROGRESS

EINTR = _errno.EINTR
EAGAIN = _errno.EAGAIN

# The ranges of a C ``int`` (fds, levels, options, flags, ...) and of a ``uint32_t``.
INT_MIN: int = lib.INT_MIN
INT_MAX: int = lib.INT_MAX
C_INT = (INT_MIN, INT_MAX)
UINT32 = (0, 2**32 - 1)
INT_SIZE: int = ffi.sizeof("int")


def oserror(call: str, err: int) -> OSError:
    return OSError(err, f"{call}: {os.strerror(err)}")


def type_error(call: str, exc: Exception) -> TypeError:
    return TypeError(f"{call}: {exc}")


def would_block(call: str) -> bool:
    """After a call that failed (returned -1): True for EAGAIN, False for EINTR (call it
    again); any other ``errno`` raises ``OSError`` naming ``call``."""
    err = ffi.errno
    if err == EAGAIN:
        return True
    if err == EINTR:
        return False
    raise oserror(call, err)


def check_int(call: str, name: str, value: Any, bounds: tuple[int, int] | None = None) -> None:
    """``TypeError`` unless ``value`` is an int (not a bool); with ``bounds`` (``lo, hi``),
    ``ValueError`` unless ``lo <= value <= hi`` (``C_INT`` for a C ``int`` argument)."""
    if type(value) is not int:
        raise TypeError(f"{call}: {name} must be an int, not {type(value).__name__}")
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        raise ValueError(f"{call}: {name} must be in {bounds[0]}..{bounds[1]}, got {value}")


def check_size(call: str, name: str, value: Any) -> None:
    check_int(call, name, value)
    if value < 0:
        raise ValueError(f"{call}: {name} must be >= 0, got {value}")


def check_fd(call: str, fd: Any) -> None:
    """Raise ``TypeError`` unless ``fd`` is an int, ``ValueError`` unless it fits in a C
    ``int`` (a negative one fails later as EBADF)."""
    if type(fd) is not int:
        raise TypeError(f"{call}: fd must be an int, not {type(fd).__name__}")
    if not INT_MIN <= fd <= INT_MAX:
        raise ValueError(f"{call}: fd must be in {INT_MIN}..{INT_MAX}, got {fd}")


def arg_error(call: str, exc: Exception, **args: Any) -> Exception:
    """The error to raise after cffi rejected one of ``args`` (C ``int`` arguments) with
    ``exc``: the ``TypeError``/``ValueError`` of the first one that is not an int in the C
    ``int`` range, naming it, else ``exc`` as a ``TypeError`` naming ``call``. The calls made
    per event check nothing up front and call this only on failure, so the checks cost
    nothing when the arguments are good."""
    for name, value in args.items():
        try:
            check_int(call, name, value, C_INT)
        except (TypeError, ValueError) as err:
            return err
    return type_error(call, exc)
