"""The profile-guided build (build_pgo.py): its training run works on the package as it
is, the library in place is the optimised one and not the instrumented one, and a compiler
other than gcc (or ``ATS_CFFI_PGO=0``) builds without a profile."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from ats_cffi._pure import compiled

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import build_pgo  # noqa: E402

needs_compiled = pytest.mark.skipif(not compiled(), reason="the compiled modules' build")


@needs_compiled
def test_the_library_in_place_is_not_the_instrumented_build() -> None:
    # An instrumented library writes counts at every exit and runs slower: a build whose
    # training failed must not leave it behind (build_pgo removes it).
    libs = sorted((ROOT / "ats_cffi").glob("_compiled__mypyc.*.so"))
    assert libs
    for lib in libs:
        assert b"__gcov_" not in lib.read_bytes(), f"{lib.name} is the instrumented build"


@needs_compiled
def test_the_training_run_moves_every_byte_and_stops_its_servers(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, str(ROOT / "pgo_train.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=55,  # below the suite's own 60 s per test: this one's error, not a kill
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "VIO echo round trips" in run.stderr
    assert "HTTP requests" in run.stderr


def test_a_compiler_that_is_not_gcc_builds_without_a_profile(monkeypatch) -> None:
    monkeypatch.delenv("ATS_CFFI_PGO", raising=False)
    monkeypatch.setenv("CC", "true")  # defines no macro: not gcc
    assert build_pgo.pgo_wanted() is False
    monkeypatch.setenv("CC", "/nonexistent/cc")
    assert build_pgo.pgo_wanted() is False


def test_gcc_builds_with_a_profile_unless_asked_not_to(monkeypatch) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("no gcc")
    monkeypatch.setenv("CC", "gcc -pthread")
    monkeypatch.delenv("ATS_CFFI_PGO", raising=False)
    assert build_pgo.pgo_wanted() is True
    monkeypatch.setenv("ATS_CFFI_PGO", "0")
    assert build_pgo.pgo_wanted() is False


def build_group_lib(tmp_path: Path) -> Path:
    """Build a one-function stand-in for the compiled modules' library, named as it is,
    with build_pgo's build_ext, into ``tmp_path``: the path of the library built."""
    from setuptools import Extension, setup

    src = tmp_path / "lib.c"
    if not src.exists():  # (a second build of the same source: up to date)
        src.write_text(
            "#include <Python.h>\n"
            'static struct PyModuleDef m = {PyModuleDef_HEAD_INIT, "_compiled__mypyc"};\n'
            "PyMODINIT_FUNC PyInit__compiled__mypyc(void) { return PyModule_Create(&m); }\n"
        )
    ext = Extension(build_pgo.GROUP_LIB, sources=[str(src)])
    lib, tmp = tmp_path / "lib", tmp_path / "tmp"
    setup(
        name="stand_in",
        script_args=["-q", "build_ext", "--build-lib", str(lib), "--build-temp", str(tmp)],
        ext_modules=[ext],
        cmdclass=build_pgo.cmdclass(),
    )
    return lib / "ats_cffi" / f"_compiled__mypyc{sysconfig.get_config_var('EXT_SUFFIX')}"


def test_the_build_trains_the_instrumented_library_then_builds_it_again(
    tmp_path: Path, monkeypatch
) -> None:
    if not build_pgo.pgo_wanted():
        pytest.skip("no gcc")
    monkeypatch.chdir(tmp_path)
    seen = []

    def train(root: Path) -> None:  # the library as the training run finds it
        seen.append(b"__gcov_" in (root / "ats_cffi" / out.name).read_bytes())

    monkeypatch.setattr(build_pgo, "train", train)
    out = (
        tmp_path / "lib" / "ats_cffi" / f"_compiled__mypyc{sysconfig.get_config_var('EXT_SUFFIX')}"
    )
    assert build_group_lib(tmp_path) == out
    assert seen == [True]  # trained on the instrumented build
    assert b"__gcov_" not in out.read_bytes()  # then replaced by the profiled one


def test_a_failed_training_fails_the_build_and_leaves_no_library(
    tmp_path: Path, monkeypatch
) -> None:
    if not build_pgo.pgo_wanted():
        pytest.skip("no gcc")
    monkeypatch.chdir(tmp_path)

    def train(root: Path) -> None:
        raise RuntimeError("the training run (pgo_train.py) exited with status 1")

    monkeypatch.setattr(build_pgo, "train", train)
    with pytest.raises(SystemExit, match="profile-guided build failed: the training run"):
        build_group_lib(tmp_path)
    assert not list((tmp_path / "lib").rglob("*.so"))


def test_a_library_built_without_a_profile_is_built_again_with_one(
    tmp_path: Path, monkeypatch
) -> None:
    # After an ATS_CFFI_PGO=0 build, whose library is up to date with its sources, the next
    # build still trains and profiles it; a profiled library up to date is left as it is.
    if shutil.which("gcc") is None:
        pytest.skip("no gcc")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CC", "gcc -pthread")
    trained = []
    monkeypatch.setattr(build_pgo, "train", lambda root: trained.append(root))
    monkeypatch.setenv("ATS_CFFI_PGO", "0")
    out = build_group_lib(tmp_path)
    assert trained == [] and not (out.parent / (out.name + ".pgo")).exists()
    monkeypatch.setenv("ATS_CFFI_PGO", "1")
    assert build_group_lib(tmp_path) == out
    assert len(trained) == 1 and b"__gcov_" not in out.read_bytes()
    assert (out.parent / (out.name + ".pgo")).read_text() == str(out.stat().st_mtime_ns)
    mtime = out.stat().st_mtime_ns
    build_group_lib(tmp_path)
    assert len(trained) == 1 and out.stat().st_mtime_ns == mtime  # up to date: kept
    monkeypatch.setenv("ATS_CFFI_PGO", "0")
    out.unlink()  # built again, without a profile: its marker goes
    build_group_lib(tmp_path)
    assert out.exists() and not (out.parent / (out.name + ".pgo")).exists()
