"""VIO: the descriptor of one I/O operation in progress on a VConnection, as in ATS.

``do_io_read``/``do_io_write`` return a VIO. The state machine watches ``ndone``/``ntodo()``
and calls ``reenable()`` after it has consumed (read) or produced (write) data. The VIO only
holds state; the VConnection that owns it (``vc_server``) validates and acts on it.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, Final

from mypy_extensions import i64

from .continuation import Continuation, check_continuation
from .iobuffer import IOBufferReader, MIOBuffer
from .mutex import ProxyMutex

__all__ = ["INT64_MAX", "VIO", "VIOOp"]

INT64_MAX: Final = 2**63 - 1
"""``nbytes`` meaning "until end of stream"."""


class VIOOp(IntEnum):
    """The operation a VIO describes (ATS ``VIO::op`` values)."""

    NONE = 0
    READ = 1
    WRITE = 2
    CLOSE = 3
    ABORT = 4
    SHUTDOWN_READ = 5
    SHUTDOWN_WRITE = 6
    SHUTDOWN_READWRITE = 7
    SEEK = 8
    PREAD = 9
    PWRITE = 10
    STAT = 11


class VIO:
    """State of one read or write operation: who to call, how much, how far, which buffer.

    ``buffer`` is the MIOBuffer written into for a READ, the IOBufferReader read from for a
    WRITE. ``ndone`` is advanced by the VConnection with ``mutex`` held.
    """

    __slots__ = ("op", "cont", "nbytes", "ndone", "buffer", "vc_server", "mutex")

    def __init__(self, op: Any = VIOOp.NONE) -> None:
        """An idle VIO for operation ``op`` (a VIOOp or its int value: ``TypeError`` /
        ``ValueError`` otherwise)."""
        if type(op) is not VIOOp:
            if not isinstance(op, int) or isinstance(op, bool):
                raise TypeError(f"VIO: op must be a VIOOp, not {type(op).__name__}")
            if op not in VIOOp._value2member_map_:
                raise ValueError(f"VIO: op must be a VIOOp value, got {op}")
        # An int when compiled (a VIOOp member reads back as its value), as event codes.
        self.op: int = op
        self.cont: Continuation | None = None
        # Native 64-bit ints when compiled (ATS's int64_t): ``INT64_MAX``, a read VIO's usual
        # ``nbytes``, is too large for mypyc's tagged int, which would make every
        # ``nbytes - ndone`` of the read path a heap-allocated long.
        self.nbytes: i64 = 0
        self.ndone: i64 = 0
        self.buffer: MIOBuffer | IOBufferReader | None = None
        self.vc_server: Any = None
        self.mutex: ProxyMutex | None = None

    def ntodo(self) -> i64:
        """Bytes still to be done: ``nbytes - ndone``."""
        return self.nbytes - self.ndone

    def done(self) -> None:
        """End the operation at what is already committed.

        For a WRITE with a reader, that includes the bytes still waiting in the reader
        (``nbytes = ndone + read_avail()``), as ATS does; otherwise ``nbytes = ndone``.
        """
        b = self.buffer
        if isinstance(b, IOBufferReader):
            self.nbytes = self.ndone + b.read_avail()
        else:
            self.nbytes = self.ndone

    def get_continuation(self) -> Any:
        """The continuation that receives this operation's events."""
        return self.cont

    def set_continuation(self, cont: Any) -> None:
        """Send this operation's events to ``cont`` from now on, and adopt its mutex.

        Tells ``vc_server`` first (through its ``set_continuation(vio, cont)``, if it has one).
        ``cont`` may be None, which clears both the continuation and the mutex. ``TypeError``
        if it is not a Continuation (one without a mutex is given one, which the VIO adopts).
        """
        if cont is not None:
            check_continuation("VIO.set_continuation", cont)
        vc = self.vc_server
        if vc is not None:
            hook = getattr(vc, "set_continuation", None)
            if hook is not None:
                hook(self, cont)
        if cont is None:
            self.cont = None
            self.mutex = None
        else:
            self.cont = cont
            self.mutex = cont.mutex

    def set_writer(self, writer: Any) -> None:
        """Make ``writer`` the buffer of this (read) operation.

        Raises TypeError if writer is not an MIOBuffer or None.
        """
        if writer is not None and not isinstance(writer, MIOBuffer):
            raise TypeError(f"writer must be an MIOBuffer, not {type(writer).__name__}")
        self.buffer = writer

    def set_reader(self, reader: Any) -> None:
        """Make ``reader`` the buffer of this (write) operation.

        Raises TypeError if reader is not an IOBufferReader or None, ValueError if it has
        been deallocated.
        """
        if reader is not None:
            if not isinstance(reader, IOBufferReader):
                raise TypeError(f"reader must be an IOBufferReader, not {type(reader).__name__}")
            if reader.writer is None:
                raise ValueError("VIO.set_reader: reader has been deallocated")
        self.buffer = reader

    def get_writer(self) -> MIOBuffer | None:
        """The MIOBuffer behind this operation: the buffer itself, or the reader's buffer."""
        b = self.buffer
        if isinstance(b, IOBufferReader):
            return b.writer
        return b

    def get_reader(self) -> IOBufferReader | None:
        """The IOBufferReader of a write operation, None for a read operation."""
        b = self.buffer
        if isinstance(b, IOBufferReader):
            return b
        return None

    def reenable(self) -> None:
        """Tell the VConnection that progress may be possible again (``vc_server.reenable``).

        Does nothing when the VIO has no ``vc_server`` (its VConnection was freed), as ATS.
        """
        vc = self.vc_server
        if vc is not None:
            vc.reenable(self)

    def reenable_re(self) -> None:
        """Like ``reenable``, but the VConnection may do the I/O at once, re-entrantly.

        Does nothing when the VIO has no ``vc_server``, as ATS.
        """
        vc = self.vc_server
        if vc is not None:
            vc.reenable_re(self)

    def __repr__(self) -> str:
        op = VIOOp(self.op).name if self.op in VIOOp._value2member_map_ else self.op
        return f"<VIO op={op} nbytes={self.nbytes} ndone={self.ndone}>"
