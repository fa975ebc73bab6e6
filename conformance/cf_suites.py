"""The suites, the uvloop sdist fetch, and the generated pytest stub modules in the cache.

Cache layout (``--cache``, default ``.conformance-cache/`` in the project root)::

    downloads/uvloop-<ver>.tar.gz    the sdist, from ``pip download``
    uvloop-<ver>/uvloop_tests/       its tests/ (renamed: ``tests`` is the project's own package)
    shims/OpenSSL/                   only used when pyOpenSSL is absent (see README.md)
    run/                             pytest.ini and one stub module per suite (rootdir)
    results/<suite>.jsonl, .log      per-test records (cf_plugin) and pytest's output
    work/                            the tests' working directory (CPython's TESTFN files)
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import cf_cpython


@dataclass(frozen=True)
class Suite:
    name: str  # uvloop.<module> or cpython.<key>
    source: str  # "uvloop" or "cpython"
    module: str  # uvloop test module name, or a key of cf_cpython.CASES
    fast: bool = False

    @property
    def stub(self) -> str:
        return self.name.replace(".", "_")


UVLOOP_MODULES = (
    "base tcp unix udp dns signals executors context process sockets pipes aiohttp".split()
)
# uvloop test modules with no AIO variant (libuv internals, uvloop's policy and runner,
# Cython/fs-event/dealloc/regression tests on uvloop.Loop only, source linting).
UVLOOP_EXCLUDED = (
    "cython dealloc fs_event libuv_api process_spawning regr1 runner sourcecode testbase".split()
)
FAST = {"uvloop.base", "uvloop.tcp", "cpython.events"}

SUITES: dict[str, Suite] = {
    s.name: s
    for s in [
        *(
            Suite(f"uvloop.{m}", "uvloop", f"test_{m}", f"uvloop.{m}" in FAST)
            for m in UVLOOP_MODULES
        ),
        *(Suite(f"cpython.{k}", "cpython", k, f"cpython.{k}" in FAST) for k in cf_cpython.CASES),
    ]
}


def select(names: list[str] | None, fast: bool) -> list[Suite]:
    """Suites by exact name or prefix (``uvloop`` = every uvloop.* suite), in table order."""
    if not names:
        return [s for s in SUITES.values() if s.fast or not fast]
    chosen: list[Suite] = []
    for name in names:
        hits = [s for s in SUITES.values() if s.name == name or s.name.startswith(name + ".")]
        if not hits:
            raise SystemExit(f"unknown suite {name!r}; known: {', '.join(SUITES)}")
        chosen += [s for s in hits if s not in chosen and (s.fast or not fast)]
    return chosen


def uvloop_version() -> str:
    return importlib.metadata.version("uvloop")


def fetch_uvloop_tests(cache: Path, sdist: Path | None = None) -> Path:
    """The directory holding ``uvloop_tests/`` for the installed uvloop (fetched once)."""
    version = uvloop_version()
    root = cache / f"uvloop-{version}"
    if (root / "uvloop_tests" / "test_base.py").is_file():
        return root
    if sdist is None:
        sdist = cache / "downloads" / f"uvloop-{version}.tar.gz"
        if not sdist.is_file():
            _pip_download(version, sdist.parent)
    _extract_tests(sdist, version, root)
    return root


def _pip_download(version: str, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", f"uvloop=={version}"]
    cmd += ["--no-binary", ":all:", "--no-deps", "-d", str(dest)]
    print("conformance: fetching uvloop's sdist:", " ".join(cmd[2:]), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pip download failed ({proc.returncode}):\n{proc.stderr[-2000:]}")


def _extract_tests(sdist: Path, version: str, root: Path) -> None:
    prefix = f"uvloop-{version}/tests/"
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isreg()]
        if not members:
            raise RuntimeError(f"{sdist} has no {prefix}")
        for member in members:
            member.name = "uvloop_tests/" + member.name[len(prefix) :]
            tar.extract(member, tmp, filter="data")
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)


_OPENSSL_SHIM = '''"""Stand-in for pyOpenSSL (absent): a test that touches it is skipped."""
import unittest


def __getattr__(name):
    raise unittest.SkipTest("pyOpenSSL is not installed (conformance shim)")
'''


def prepare_cache(cache: Path) -> None:
    """Create the cache, self-ignored by git (a ``*`` .gitignore inside it)."""
    cache.mkdir(parents=True, exist_ok=True)
    ignore = cache / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# the conformance runner's cache (conformance/README.md)\n*\n")


def write_shims(cache: Path) -> Path:
    """A shim directory, put last on the path: pyOpenSSL's stand-in when it is absent."""
    shims = cache / "shims"
    pkg = shims / "OpenSSL"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "SSL.py").write_text(_OPENSSL_SHIM)
    return shims


def has_pyopenssl() -> bool:
    return importlib.util.find_spec("OpenSSL") is not None


_UVLOOP_STUB = """# generated by conformance/run.py: uvloop's {module} over the loop factory
import cf_uvloop
from uvloop_tests import {module} as _source

globals().update(cf_uvloop.make_cases(_source, __name__))
"""

_CPYTHON_STUB = """# generated by conformance/run.py: test_asyncio.{module} over the loop factory
import cf_cpython

_cases, _source = cf_cpython.build({key!r}, __name__)
globals().update(_cases)
tearDownModule = getattr(_source, "tearDownModule", None)
"""


def write_stubs(run_dir: Path, suites: list[Suite]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "pytest.ini").write_text("[pytest]\n")
    for suite in suites:
        if suite.source == "uvloop":
            text = _UVLOOP_STUB.format(module=suite.module)
        else:
            module = cf_cpython.CASES[suite.module].module
            text = _CPYTHON_STUB.format(module=module, key=suite.module)
        (run_dir / f"{suite.stub}.py").write_text(text)
