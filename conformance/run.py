#!/usr/bin/env python3
"""Run test suites written by others (uvloop's, CPython's test_asyncio) against a loop factory.

    python conformance/run.py [--loop MODULE:FACTORY] [--suite NAME ...] [--fast] [--cache DIR]

Exit status: 0 when every test passed, was skipped, or failed as conformance/exceptions.toml
says; 1 when a test failed that is not listed there, or a listed test passed; 2 when the
harness could not run (the loop factory does not import, the sdist could not be fetched).
See conformance/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.append(str(PROJECT))

import cf_expect  # noqa: E402
import cf_loop  # noqa: E402
import cf_suites  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--loop", default=cf_loop.DEFAULT_LOOP, help="MODULE:FACTORY (%(default)s)")
    p.add_argument("--suite", nargs="+", metavar="NAME", help="suites or prefixes (default all)")
    p.add_argument("--fast", action="store_true", help=f"only {', '.join(sorted(cf_suites.FAST))}")
    p.add_argument("--cache", type=Path, default=PROJECT / ".conformance-cache")
    p.add_argument("--exceptions", type=Path, default=HERE / "exceptions.toml")
    p.add_argument("--timeout", type=float, default=30.0, help="per test, s (%(default)s)")
    p.add_argument("--suite-timeout", type=float, default=1200.0, help="per suite, s")
    p.add_argument(
        "--implementation",
        choices=["auto", "asyncio", "uvloop"],
        default="auto",
        help="what uvloop's tests see as self.implementation (auto: 'uvloop' for "
        "a uvloop.Loop, else 'asyncio')",
    )
    p.add_argument("--uvloop-sdist", type=Path, help="use this sdist instead of pip download")
    p.add_argument("-k", dest="keyword", help="pytest -k expression (a partial run)")
    p.add_argument("-v", "--verbose", action="store_true", help="show pytest's output")
    p.add_argument("--list", action="store_true", help="list the suites and exit")
    return p.parse_args(argv)


def child_env(args: argparse.Namespace, uv_root: Path | None, results: Path) -> dict[str, str]:
    env = dict(os.environ)
    path = [str(HERE)]
    if uv_root is not None:
        path.append(str(uv_root))
    path += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    path += [str(PROJECT), str(args.cache / "shims")]
    env["PYTHONPATH"] = os.pathsep.join(path)
    env[cf_loop.ENV_LOOP] = args.loop
    env[cf_loop.ENV_IMPLEMENTATION] = args.implementation
    env["CONFORMANCE_RESULTS"] = str(results)
    env.setdefault("PYTHONFAULTHANDLER", "1")
    return env


def pytest_cmd(args: argparse.Namespace, suite: cf_suites.Suite, skip: list[str]) -> list[str]:
    """The pytest command for ``suite``, deselecting ``skip`` (pytest node ids)."""
    run_dir = args.cache / "run"
    cmd = [sys.executable, "-m", "pytest", "-c", str(run_dir / "pytest.ini")]
    cmd += ["--rootdir", str(run_dir), "-p", "cf_plugin", "-p", "no:cacheprovider"]
    # no capture: uvloop's redirect tests dup2 over sys.stdout's fd, as under unittest
    cmd += ["--capture=no"]
    cmd += [f"--timeout={args.timeout:g}", "-q", "-rfE", str(run_dir / f"{suite.stub}.py")]
    for node_id in skip:
        cmd += ["--deselect", node_id]
    if args.keyword:
        cmd += ["-k", args.keyword]
    return cmd


def _node_id(suite: cf_suites.Suite, test_id: str) -> str:
    return f"{suite.stub}.py::" + test_id.split("::", 1)[1]


def _started(results: Path) -> list[str]:
    """The pytest node ids that the records of ``results`` say were started."""
    if not results.is_file():
        return []
    records = [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines()]
    return [r["id"] for r in records if r["event"] == "start"]


MAX_RESTARTS = 20


def run_suite(
    args: argparse.Namespace,
    suite: cf_suites.Suite,
    listed: dict[str, cf_expect.Exception_],
    uv_root: Path | None,
) -> cf_expect.Verdict:
    """Run one suite; when pytest dies (a crash, the suite timeout), run it again without the
    tests already started, so that one crashing test does not hide the rest of the suite."""
    results_dir = args.cache / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    results = results_dir / f"{suite.stub}.jsonl"
    results.unlink(missing_ok=True)
    hangs = [_node_id(suite, i) for i, e in listed.items() if e.kind == "hang"]
    hangs = [n for n in hangs if n.startswith(suite.stub + ".py::")]
    (args.cache / "work").mkdir(parents=True, exist_ok=True)
    start, crashes, note = time.monotonic(), {}, ""
    with open(results_dir / f"{suite.stub}.log", "w") as log:
        for _ in range(MAX_RESTARTS + 1):
            before = _started(results)
            left = args.suite_timeout - (time.monotonic() - start)
            note = _run_once(
                args, pytest_cmd(args, suite, hangs + before), results, uv_root, log, max(left, 1.0)
            )
            if not note or _session_finished(results) or len(_started(results)) == len(before):
                break
            crashes[suite.name + "::" + _started(results)[-1].split("::", 1)[1]] = note
            if "suite killed" in note:
                break
    verdict = cf_expect.judge(suite.name, cf_expect.read_results(results, suite.name), listed)
    verdict.seconds = time.monotonic() - start
    _add_notes(verdict, crashes, note)
    return verdict


EXIT_GRACE = 30.0


def _run_once(
    args: argparse.Namespace,
    cmd: list[str],
    results: Path,
    uv_root: Path | None,
    log: IO[str],
    timeout: float,
) -> str:
    """Run pytest once; '' when it ended normally, else what happened to it."""
    log.flush()
    proc = subprocess.Popen(
        cmd,
        cwd=args.cache / "work",
        env=child_env(args, uv_root, results),
        stdout=None if args.verbose else log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline, finished_at = time.monotonic() + timeout, 0.0
    while proc.poll() is None:
        now = time.monotonic()
        if not finished_at and _session_finished(results):
            finished_at = now
        if finished_at and now - finished_at > EXIT_GRACE:
            _kill(proc)
            return f"pytest did not exit {EXIT_GRACE:g} s after its tests (stacks in the .log)"
        if now > deadline:
            _kill(proc)
            return f"suite killed after {args.suite_timeout:g} s"
        time.sleep(0.2)
    if proc.returncode < 0:
        return f"pytest died of signal {-proc.returncode}"
    if proc.returncode not in (0, 1, 5):
        return f"pytest exited {proc.returncode}"
    return ""


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGABRT first (faulthandler writes every thread's stack to the log), then SIGKILL."""
    proc.send_signal(signal.SIGABRT)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # and whatever it started
    except ProcessLookupError:
        pass
    proc.wait()


def _session_finished(results: Path) -> bool:
    """Whether the last record says pytest's session finished (all its tests ran)."""
    try:
        with open(results, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 200))
            return b'"event": "sessionfinish"' in f.read().splitlines()[-1]
    except (OSError, IndexError):
        return False


def _add_notes(verdict: cf_expect.Verdict, crashes: dict[str, str], last: str) -> None:
    """Say which tests pytest died in, and how; fail the suite if pytest never ran right."""
    for test_id, note in crashes.items():
        if verdict.messages.get(test_id) == cf_expect.NEVER_FINISHED:
            verdict.messages[test_id] = f"{cf_expect.NEVER_FINISHED}: {note}"
    notes = [f"{len(crashes)} test(s) crashed pytest"] if crashes else []
    if last and last not in crashes.values():
        notes.append(last)
    verdict.note = "; ".join(notes)
    if last:  # the run was not clean: a failure of its own, listable as SUITE::<run>::<pytest>
        verdict.failed.append(f"{verdict.suite}::<run>::<pytest>")
        verdict.messages[verdict.failed[-1]] = last


def report(verdict: cf_expect.Verdict) -> None:
    v = verdict
    print(
        f"{v.suite:24} passed {len(v.passed):4}  failed {len(v.failed):3}  "
        f"skipped {len(v.skipped):3}  expected-fail {len(v.expected):3}  "
        f"unexpected-pass {len(v.unexpected_pass):2}  deselected {len(v.deselected):2}  "
        f"{v.seconds:6.1f} s{'  (' + v.note + ')' if v.note else ''}",
        flush=True,
    )


def summarize(verdicts: list[cf_expect.Verdict], listed: dict[str, cf_expect.Exception_]) -> int:
    bad = False
    for v in verdicts:
        for test_id in v.failed:
            bad = True
            print(f"FAIL (not in exceptions.toml) {test_id}\n    {v.messages[test_id][:300]}")
        for test_id in v.unexpected_pass:
            bad = True
            print(f"PASS (listed as {listed[test_id].kind}: remove it) {test_id}")
    total = {
        k: sum(len(getattr(v, k)) for v in verdicts)
        for k in ("passed", "failed", "skipped", "expected", "unexpected_pass", "deselected")
    }
    print(
        f"conformance: {total['expected']} expected failures, "
        f"{total['unexpected_pass']} unexpected passes, {total['deselected']} deselected"
    )
    # last, alone: the plain 'N passed, N failed, N skipped' line that CI logs are read for
    print(
        f"conformance: {total['passed']} passed, {total['failed']} failed, "
        f"{total['skipped']} skipped"
    )
    return 1 if bad else 0


def _drop_cpython(suites: list[cf_suites.Suite]) -> list[cf_suites.Suite]:
    """CPython's suites need an asyncio.BaseEventLoop: test_asyncio.utils.TestCase closes
    the loop through its internals (``_default_executor``), some tests call ``_run_once``."""
    dropped = [s.name for s in suites if s.source == "cpython"]
    if dropped:
        print(f"conformance: not an asyncio.BaseEventLoop: n/a {', '.join(dropped)}")
    return [s for s in suites if s.source != "cpython"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for s in cf_suites.SUITES.values():
            print(f"{s.name:24} {'fast' if s.fast else ''}")
        return 0
    args.cache = args.cache.resolve()
    suites = cf_suites.select(args.suite, args.fast)
    try:
        listed = cf_expect.load(args.exceptions, args.loop)
        desc, base_loop = cf_loop.check_factory(args.loop)
        print(f"conformance: loop {args.loop} -> {desc}", flush=True)
        if not base_loop:
            suites = _drop_cpython(suites)
        cf_suites.prepare_cache(args.cache)
        uv_root = None
        if any(s.source == "uvloop" for s in suites):
            uv_root = cf_suites.fetch_uvloop_tests(args.cache, args.uvloop_sdist)
            cf_suites.write_shims(args.cache)
            if not cf_suites.has_pyopenssl():
                print("conformance: pyOpenSSL absent: the tests that use it are skipped")
        cf_suites.write_stubs(args.cache / "run", suites)
    except Exception as exc:  # noqa: BLE001 - the harness cannot run: say why, exit 2
        print(f"conformance: cannot run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    verdicts = []
    for suite in suites:
        verdicts.append(run_suite(args, suite, listed, uv_root))
        report(verdicts[-1])
    return summarize(verdicts, listed)


if __name__ == "__main__":
    sys.exit(main())
