"""Build script of the out-of-line, API-mode cffi module ``ats_cffi._native``.

The cdef and the C source live in ``ats_cffi/_native.h`` and ``ats_cffi/_native.c`` so
that C tooling can read them; this file only wires them together.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

ffibuilder = FFI()
ffibuilder.cdef((HERE / "ats_cffi" / "_native.h").read_text())
ffibuilder.set_source(
    "ats_cffi._native",
    (HERE / "ats_cffi" / "_native.c").read_text(),
    extra_compile_args=["-O2", "-std=gnu11", "-Wall"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
