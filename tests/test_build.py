"""The profile-guided build (build_pgo.py): its training run works on the package as it
is, the library in place is the optimised one and not the instrumented one, and a compiler
other than gcc (or ``ATS_CFFI_PGO=0``) builds without a profile."""

from __future__ import annotations

import os
import subprocess
import sys
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
    if subprocess.run(["gcc", "--version"], capture_output=True).returncode != 0:
        pytest.skip("no gcc")
    monkeypatch.setenv("CC", "gcc -pthread")
    monkeypatch.delenv("ATS_CFFI_PGO", raising=False)
    assert build_pgo.pgo_wanted() is True
    monkeypatch.setenv("ATS_CFFI_PGO", "0")
    assert build_pgo.pgo_wanted() is False
