"""pytest plugin (``-p cf_plugin``): one JSON line per test report into $CONFORMANCE_RESULTS.

A ``start`` line precedes each test, so that when the pytest process dies (a crash in the loop's
C code, an ``os._exit``) the runner knows which test was running.
"""

from __future__ import annotations

import json
import os
from typing import IO, Any

import pytest

ENV_RESULTS = "CONFORMANCE_RESULTS"
_out: IO[str] | None = None


def _write(record: dict[str, Any]) -> None:
    global _out
    if _out is None:
        _out = open(os.environ[ENV_RESULTS], "a", encoding="utf-8")  # noqa: SIM115
    _out.write(json.dumps(record) + "\n")
    _out.flush()


def _message(report: pytest.TestReport) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])
    text = getattr(report, "longreprtext", "") or ""
    lines = [line for line in text.splitlines() if line.startswith("E ")]
    if lines:
        return " | ".join(line[1:].strip() for line in lines[:3])
    tail = [line for line in text.splitlines() if line.strip()]
    return tail[-1].strip() if tail else ""


def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    _write({"id": nodeid, "event": "start"})


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or report.outcome != "passed":
        _write(
            {
                "id": report.nodeid,
                "event": report.when,
                "outcome": report.outcome,
                "duration": round(report.duration, 3),
                "message": _message(report)[:500],
            }
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _write({"id": "", "event": "sessionfinish", "exitstatus": int(exitstatus)})


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _write(
            {
                "id": report.nodeid,
                "event": "collect",
                "outcome": "failed",
                "message": str(report.longrepr)[-800:],
            }
        )
