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
    # A quick in-place build. cffi writes its generated C file under the module's dotted
    # path inside tmpdir: with the default tmpdir (".") that path is ats_cffi/_native.c,
    # the helpers' source itself, so build under build/ and copy the extension in.
    import shutil

    built = Path(ffibuilder.compile(tmpdir=str(HERE / "build" / "cffi"), verbose=True))
    target = HERE / "ats_cffi" / built.name
    tmp = target.with_name(target.name + ".tmp")
    shutil.copy2(built, tmp)
    tmp.replace(target)  # atomic: a process importing meanwhile sees the old or the new one
    for old in (HERE / "ats_cffi").glob("_native*.so"):
        if old != target:
            old.unlink()  # one extension in the package: the import picks no stale one
    print(f"copied {built.name} into ats_cffi/")
