"""Build script of the out-of-line, API-mode cffi module ``ats_cffi._native``, and of the
mypyc-compiled modules listed in ``ats_cffi/_compiled.py``.

The cdef and the C live in ``ats_cffi/`` as files C tooling can read: ``_native.h`` (the
cdef of the system calls bound directly), and per C concern a header (which is also its
cdef) and a source: ``_native_sys`` (the syscall helpers), ``_native_rw`` (the read and
write loops), ``_native_splice`` (the splice pump), ``_native_tls_ctx``/``_native_tls``.
Also ``ats_cffi._fastio`` (``_fastio.c``), the VC path's per-event reads and writes as a
CPython extension of its own, over ``_native_rw``'s loops (why: its header comment). This
file only wires them together.

``python build_ffi.py`` rebuilds all three in place (after editing a compiled module, too),
the compiled modules' library with a training profile (``build_pgo.py``; ``ATS_CFFI_PGO=0``
skips it: a quicker build while developing); with ``ATS_CFFI_PURE=1`` it builds the two C
extensions only.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from cffi import FFI

from build_pgo import cmdclass

HERE = Path(__file__).resolve().parent
NATIVE = HERE / "ats_cffi"
#: The C concerns of the extension: ``<name>.h`` (cdef and C header) and ``<name>.c``.
C_PARTS = ("_native_sys", "_native_rw", "_native_splice", "_native_tls_ctx", "_native_tls")


def cdef_of(header: Path) -> str:
    """``header`` as cffi's cdef() takes it: without its ``#pragma``/``#include`` lines."""
    return re.sub(r"(?m)^[ \t]*#[ \t]*(pragma|include)\b.*$", "", header.read_text())


def check_openssl_headers() -> None:
    """Stop the build with one line when libssl's headers are missing (the TLS helpers,
    ``_native_tls``, are compiled against them)."""
    import sysconfig

    dirs = [sysconfig.get_paths()["include"], "/usr/include", "/usr/local/include"]
    dirs += os.environ.get("CPATH", "").split(":")
    if not any(d and (Path(d) / "openssl" / "ssl.h").is_file() for d in dirs):
        raise SystemExit(
            "ats_cffi: OpenSSL headers not found (openssl/ssl.h): install libssl-dev "
            "(Debian/Ubuntu) or openssl-devel, then build again"
        )


#: The C compiler's options, for both C extensions.
C_FLAGS = ["-O2", "-std=gnu11", "-Wall", "-fvisibility=hidden", "-fno-plt"]
#: Added to mypyc's own options for the compiled modules' shared library, one C file of
#: calls between its functions (CPyDef_*). Built as position-independent code with default
#: visibility, each of those calls went through the PLT and none could be inlined, in case
#: another library interposed the symbol; nothing links against them (a module reaches
#: another's functions through its capsule), so they are bound in place and hidden, and calls
#: into libpython load their address from the GOT instead of a PLT stub. Callgrind, VIO echo
#: 1 KiB x 10: 8,110 -> 7,858 instructions per round trip; user CPU 3.70-3.82 -> 3.30-3.52 us
#: in an A/B on one core.
MYPYC_C_FLAGS = ["-fno-semantic-interposition", "-fvisibility=hidden", "-fno-plt"]

check_openssl_headers()
ffibuilder = FFI()
ffibuilder.cdef("\n".join(cdef_of(NATIVE / f"{h}.h") for h in ("_native", *C_PARTS)))
# One translation unit: the module includes the sources (setuptools takes no absolute
# source path, and cffi's own compile() runs in another directory).
ffibuilder.set_source(
    "ats_cffi._native",
    "".join(f'#include "{part}.c"\n' for part in C_PARTS),
    include_dirs=[str(NATIVE)],
    extra_compile_args=C_FLAGS,
    libraries=["ssl", "crypto"],
)


def fastio_extension() -> Any:
    """The ``ats_cffi._fastio`` extension (``_fastio.c``, which includes ``_native_rw.c``,
    ``_fastio_args.c``, ``_fastio_net.c``, ``_fastio_splice.c`` and ``_fastio_slots.c``)."""
    from setuptools import Extension

    return Extension(
        "ats_cffi._fastio",
        sources=["ats_cffi/_fastio.c"],
        include_dirs=["ats_cffi"],
        depends=[
            "ats_cffi/_native_rw.c",
            "ats_cffi/_native_rw.h",
            "ats_cffi/_native_syscall.h",
            "ats_cffi/_fastio_args.c",
            "ats_cffi/_fastio_net.c",
            "ats_cffi/_fastio_splice.c",
            "ats_cffi/_native_splice.h",
            "ats_cffi/_fastio_slots.c",
        ],
        extra_compile_args=C_FLAGS,
    )


#: The mypy options the compiled modules are checked with (mypyc compiles only what checks).
MYPY_OPTIONS = ("--follow-imports=silent", "--ignore-missing-imports", "--python-version=3.10")


def compiled_modules() -> tuple[str, ...]:
    """``ats_cffi/_compiled.py``'s list, read without importing the package."""
    scope: dict[str, Any] = {}
    exec((HERE / "ats_cffi" / "_compiled.py").read_text(), scope)
    return scope["MODULES"]


def mypyc_extensions() -> list[Any]:
    """The mypyc extensions of the compiled modules (none with ``ATS_CFFI_PURE=1``)."""
    if os.environ.get("ATS_CFFI_PURE"):
        return []
    from mypyc.build import mypycify

    paths = [m.replace(".", "/") + ".py" for m in compiled_modules()]
    cwd = os.getcwd()
    os.chdir(HERE)  # mypyc names its sources relative to the working directory
    try:
        exts = mypycify([*paths, *MYPY_OPTIONS], opt_level="3", group_name="ats_cffi._compiled")
    finally:
        os.chdir(cwd)
    for ext in exts:
        ext.extra_compile_args = [*ext.extra_compile_args, *MYPYC_C_FLAGS]
    return exts


def build_compiled_in_place() -> None:
    """Compile ``_fastio`` and the mypyc modules next to their sources (what ``pip install
    -e .`` does)."""
    from setuptools import setup

    cwd = os.getcwd()
    os.chdir(HERE)
    try:
        setup(
            name="ats_cffi",
            script_args=["-q", "build_ext", "--inplace"],
            ext_modules=[fastio_extension()],
        )
    finally:
        os.chdir(cwd)
    ext = mypyc_extensions()
    if ext:
        cwd = os.getcwd()
        os.chdir(HERE)
        try:
            setup(
                name="ats_cffi",
                script_args=["-q", "build_ext", "--inplace"],
                ext_modules=ext,
                cmdclass=cmdclass(),
            )
        finally:
            os.chdir(cwd)
        # mypyc regenerated the C from the sources as they are now; when that C did not
        # change, setuptools kept the old library. Either way it matches the sources: say so
        # to the test suite's staleness check (tests/conftest.py), which compares times.
        for lib in (HERE / "ats_cffi").glob("_compiled__mypyc.*.so"):
            os.utime(lib)
        print(f"compiled {len(compiled_modules())} modules with mypyc into ats_cffi/")


if __name__ == "__main__":
    # A quick in-place build: under build/ (cffi writes its generated C file under the
    # module's dotted path inside tmpdir, ats_cffi/_native.c), then copy the extension in.
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
    build_compiled_in_place()
