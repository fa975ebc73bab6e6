"""The profile-guided build of the compiled modules' library (``ats_cffi._compiled__mypyc``).

mypyc turns the compiled modules into one C file of some 170,000 lines in which every
function looks alike to gcc: without a profile it cannot tell the per-event path from the
error paths beside it, and lays out and inlines them alike, spread over a 4 MB library that
the kernel evicts from the caches at every system call. So the library is built twice, as
CPython's ``--enable-optimizations`` build does:

1. instrumented (``PGO_GENERATE``), with the rest of the package;
2. ``pgo_train.py`` runs on it (the VIO echo, the asyncio loop, ``ats-cffi http`` and
   ``echo``, on 127.0.0.1), and the counts land next to the object file;
3. built again with them (``PGO_USE``): the hot paths together, inlined where they ran.
   Code the training did not reach is compiled as without a profile
   (``-fprofile-partial-training``), not for size.

Effect, VIO echo 1 KiB x 10 (perf/README.md): server user CPU per round trip 3.1-3.5 us ->
2.5-2.8 us in an A/B on one core.

gcc only (clang's profiles take other options and a merge step): with another compiler, or
with ``ATS_CFFI_PGO=0`` (a quicker build while developing), step 1 is the only build and
it is not instrumented. A failed training run fails the build, and the instrumented library
is removed: it is never left in place as if up to date. Nor is one built without a profile:
a library built with one has a marker beside it (``<library>.pgo``, holding its mtime), and
a profile-guided build redoes a library without it, though its sources did not change
(after an ``ATS_CFFI_PGO=0`` build, the next one kept the library without a profile).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
#: The library of the compiled modules (mypyc's group): the one build that is profiled.
GROUP_LIB = "ats_cffi._compiled__mypyc"
PGO_GENERATE = ["-fprofile-generate", "-fprofile-update=atomic"]
PGO_USE = [
    "-fprofile-use",
    "-fprofile-partial-training",
    "-fprofile-correction",  # counters of several threads (and processes) merged
    "-Wno-missing-profile",
]
#: The training run's limit: each of its parts is bounded far below this.
TRAIN_TIMEOUT = 600


def pgo_wanted() -> bool:
    """Whether to build with a profile: unless ``ATS_CFFI_PGO=0``, with gcc only (the
    compiler's own macros tell: ``__GNUC__`` without ``__clang__``, which clang and the
    compilers built on it define too)."""
    if os.environ.get("ATS_CFFI_PGO", "1") == "0":
        return False
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()
    try:
        out = subprocess.run(
            [*cc, "-dM", "-E", "-x", "c", os.devnull], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        out = None
    macros = out.stdout if out is not None and out.returncode == 0 else ""
    is_gcc = "#define __GNUC__ " in macros and "__clang__" not in macros
    if not is_gcc:
        print(f"ats_cffi: {cc[0]} is not gcc: building without a profile", file=sys.stderr)
    return is_gcc


def train(root: Path) -> None:
    """Run ``pgo_train.py`` on the package under ``root`` (in a directory of its own, so
    that no other copy of the package comes first on its path)."""
    path = [str(root), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    env.pop("ATS_CFFI_PURE", None)
    script = HERE / "pgo_train.py"
    with tempfile.TemporaryDirectory(prefix="ats_cffi_pgo_") as cwd:
        code = f"import runpy; runpy.run_path({str(script)!r}, run_name='__main__')"
        run = subprocess.run(
            [sys.executable, "-c", code],
            cwd=cwd,
            env=env,
            timeout=TRAIN_TIMEOUT,
        )
    if run.returncode != 0:
        raise RuntimeError(f"the training run (pgo_train.py) exited with status {run.returncode}")


def pgo_build_ext(base: Any) -> Any:
    """``base`` (setuptools' ``build_ext``) building ``GROUP_LIB`` with a profile."""

    class PgoBuildExt(base):  # type: ignore[misc, valid-type]
        def run(self) -> None:
            lib = next((e for e in self.extensions if e.name == GROUP_LIB), None)
            if lib is None:
                super().run()
                return
            compile_args, link_args = list(lib.extra_compile_args), list(lib.extra_link_args)
            out = self._built_path(lib)
            if not pgo_wanted():
                super().run()
                if out.exists() and not _profiled(out):
                    _marker(out).unlink(missing_ok=True)  # (out was built again, without)
                return
            if out.exists() and not _profiled(out):
                out.unlink()  # built without a profile: built again, with one
            before = out.stat().st_mtime_ns if out.exists() else None
            for stale in Path(self.build_temp).rglob("*.gcda"):
                stale.unlink()  # counts of another build of the C would not match
            lib.extra_compile_args = [*compile_args, *PGO_GENERATE]
            lib.extra_link_args = [*link_args, "-fprofile-generate"]
            super().run()
            if not out.exists() or out.stat().st_mtime_ns == before:
                return  # up to date: nothing was built, nothing to train
            try:
                train(HERE if self.inplace else Path(self.build_lib))
                lib.extra_compile_args = [*compile_args, *PGO_USE]
                lib.extra_link_args = link_args
                # distutils relinks only when an object is newer than the library, by whole
                # seconds in older setuptools: a quick rebuild would keep the instrumented one
                out.unlink()
                self._rebuild(lib)
                _marker(out).write_text(str(out.stat().st_mtime_ns))
            except BaseException as exc:  # Ctrl-C too: no instrumented library stays behind
                self._remove(lib, out)
                if isinstance(exc, (OSError, RuntimeError, subprocess.TimeoutExpired)):
                    raise SystemExit(
                        f"ats_cffi: profile-guided build failed: {exc} (ATS_CFFI_PGO=0 "
                        "builds without a profile)"
                    ) from None
                raise
            print("ats_cffi: built the compiled modules with their training profile")

        def _rebuild(self, ext: Any) -> None:
            # As build_ext.run builds: into build_lib, then copied into the package when
            # building in place.
            force, inplace = self.force, self.inplace
            self.force, self.inplace = True, False
            try:
                self.build_extension(ext)
            finally:
                self.force, self.inplace = force, inplace
            if self.inplace:
                self.copy_extensions_to_source()

        def _built_path(self, ext: Any) -> Path:
            inplace, self.inplace = self.inplace, False
            try:
                return Path(self.get_ext_fullpath(ext.name))
            finally:
                self.inplace = inplace

        def _remove(self, ext: Any, out: Path) -> None:
            # The instrumented library, here and copied into the package, goes: it is newer
            # than the sources, and a later build would keep it.
            out.unlink(missing_ok=True)
            if self.inplace:
                name = Path(self.get_ext_filename(ext.name)).name
                (HERE / "ats_cffi" / name).unlink(missing_ok=True)

    return PgoBuildExt


def _marker(lib: Path) -> Path:
    """The file whose presence says ``lib`` was built with a profile (module doc)."""
    return lib.with_name(lib.name + ".pgo")


def _profiled(lib: Path) -> bool:
    """Whether ``lib``, as it is now, is the one built with a profile."""
    try:
        return _marker(lib).read_text() == str(lib.stat().st_mtime_ns)
    except OSError:
        return False


def cmdclass() -> dict[str, Any]:
    """setup()'s ``cmdclass``: the profile-guided ``build_ext``."""
    from setuptools.command.build_ext import build_ext

    return {"build_ext": pgo_build_ext(build_ext)}


__all__ = ["GROUP_LIB", "PGO_GENERATE", "PGO_USE", "cmdclass", "pgo_wanted", "train"]
