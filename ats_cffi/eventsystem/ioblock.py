"""IOBufferBlock: one fixed-size block of memory of an IOBuffer chain (iobuffer.py).

A block is written once, front to back (``end`` grows), and read front to back (``start``
or a reader's offset grows); native code reads into and writes from it through its
``cdata``, made once per block. Its private field (``_cdata``) is this module's alone.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["DEFAULT_BLOCK_SIZE", "MAX_BLOCK_SIZE", "IOBufferBlock", "check_int"]

DEFAULT_BLOCK_SIZE: Final = 32768
#: Largest block (1 GiB). ATS's largest buffer size index is 2 MiB; bigger blocks are
#: allowed, up to this bound, well inside the C int the native reads and writes take.
MAX_BLOCK_SIZE: Final = 2**30
_EMPTY: Final = bytearray()
_EMPTY_VIEW: Final = memoryview(_EMPTY)
#: The native extension's ``ffi``, imported at the first ``IOBufferBlock.cdata``.
_ffi: Any = None


def _native_ffi() -> Any:
    # Imported on first use so that the buffer layer works (and is testable) without the
    # native extension; kept in a global since an import statement costs ~0.8 us, more than
    # the ffi.from_buffer it serves.
    global _ffi
    from ats_cffi._native import ffi

    _ffi = ffi
    return ffi


class IOBufferBlock:
    """One fixed-size block of a buffer chain: valid bytes are ``data[start:end]``.

    The free space ``data[end:]`` is where the writer (or a native read) puts new bytes.
    Native code is always handed ``(block.cdata, offset, length)``; no pointer arithmetic is
    done on the Python side.
    """

    __slots__ = ("data", "size", "start", "end", "next", "view", "_cdata")

    def __init__(self, size: Any) -> None:
        """Allocate a zeroed block of ``size`` bytes, empty.

        Raises TypeError for a non-integer size (bool included), ValueError for one that is
        negative or above MAX_BLOCK_SIZE.
        """
        if size.__class__ is not int:
            check_int("IOBufferBlock: size", size)
            size = int(size)
        if not 0 <= size <= MAX_BLOCK_SIZE:
            raise ValueError(
                f"IOBufferBlock: size must be between 0 and {MAX_BLOCK_SIZE}, got {size}"
            )
        #: ``len(data)``: blocks never change size.
        self.size: int = size
        self.start = 0
        self.end = 0
        self.next: IOBufferBlock | None = None
        self._cdata: Any = None
        if size == 0:
            # The empty block every MIOBuffer starts its chain with holds no byte: all of
            # them share one empty array and view (an idle connection's buffers cost less).
            self.data = _EMPTY
            self.view = _EMPTY_VIEW
            return
        self.data = bytearray(size)
        # One memoryview per block, sliced for views instead of re-exporting the bytearray
        # on every call.
        self.view = memoryview(self.data)

    @property
    def cdata(self) -> Any:
        """The block's memory as a cffi ``char[]`` (created on first use, then cached).

        Raises ImportError if the native extension has not been built.
        """
        c = self._cdata
        if c is None:
            ffi = _ffi if _ffi is not None else _native_ffi()
            c = self._cdata = ffi.from_buffer(self.data)
        return c

    def read_avail(self) -> int:
        """Number of valid bytes in this block."""
        return self.end - self.start

    def write_avail(self) -> int:
        """Number of free bytes after the valid ones."""
        return self.size - self.end

    def __repr__(self) -> str:
        return f"<IOBufferBlock size={self.size} start={self.start} end={self.end}>"


def check_int(name: str, value: object) -> int:
    # bool is an int subclass but never a meaningful size or count.
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    return value
