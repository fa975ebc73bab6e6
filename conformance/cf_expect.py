"""The exceptions file (exceptions.toml) and the per-test verdicts of one suite's run.

Format (see README.md)::

    [[exception]]
    id = "uvloop.tcp::Test_ATS_TCP::test_create_server_4"   # SUITE::CLASS::TEST
    loops = ["ats_cffi.asyncio:new_event_loop"]               # or ["*"]
    kind = "bug"            # difference | bug | hang | env
    reason = "what differs or what is broken, and why"
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KINDS = ("difference", "bug", "hang", "env")
NEVER_FINISHED = "(the test never finished)"


@dataclass(frozen=True)
class Exception_:
    id: str
    kind: str
    reason: str


def load(path: Path, loop: str) -> dict[str, Exception_]:
    """The entries of ``path`` that apply to ``loop``, by test id (errors on a bad entry)."""
    if not path.is_file():
        return {}
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    entries: dict[str, Exception_] = {}
    for n, raw in enumerate(data.get("exception", []), 1):
        where = f"{path.name}: exception #{n}"
        missing = {"id", "loops", "kind", "reason"} - raw.keys()
        if missing:
            raise ValueError(f"{where} lacks {', '.join(sorted(missing))}")
        if raw["kind"] not in KINDS:
            raise ValueError(f"{where}: kind {raw['kind']!r} is not one of {KINDS}")
        if raw["id"].count("::") != 2:
            raise ValueError(f"{where}: id {raw['id']!r} is not SUITE::CLASS::TEST")
        if "*" in raw["loops"] or loop in raw["loops"]:
            if raw["id"] in entries:
                raise ValueError(f"{where}: {raw['id']} is listed twice for {loop}")
            entries[raw["id"]] = Exception_(raw["id"], raw["kind"], raw["reason"].strip())
    return entries


@dataclass
class Outcome:
    outcome: str = "started"  # passed | failed | skipped | started (never finished)
    message: str = ""
    duration: float = 0.0


def read_results(path: Path, suite: str) -> dict[str, Outcome]:
    """Per test id (``suite::Class::test``), its worst outcome over the setup/call/teardown."""
    results: dict[str, Outcome] = {}
    if not path.is_file():
        return results
    rank = {"started": 0, "passed": 1, "skipped": 2, "failed": 3}
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec["event"] == "sessionfinish":
            continue
        test_id = suite + "::" + rec["id"].split("::", 1)[-1]
        if rec["event"] == "collect":
            test_id = f"{suite}::<collect>::{rec['id']}"
        cur = results.setdefault(test_id, Outcome())
        if rec["event"] == "start":
            continue
        cur.duration += rec.get("duration", 0.0)
        if rank[rec["outcome"]] > rank[cur.outcome]:
            cur.outcome, cur.message = rec["outcome"], rec.get("message", "")
    return results


@dataclass
class Verdict:
    suite: str
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # not listed: an error
    skipped: list[str] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)  # listed, and failed
    unexpected_pass: list[str] = field(default_factory=list)  # listed, and passed: an error
    deselected: list[str] = field(default_factory=list)  # kind = "hang"
    messages: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.failed and not self.unexpected_pass


def judge(suite: str, results: dict[str, Outcome], listed: dict[str, Exception_]) -> Verdict:
    verdict = Verdict(suite)
    for test_id, res in sorted(results.items()):
        entry = listed.get(test_id)
        if res.outcome == "skipped":
            verdict.skipped.append(test_id)
        elif res.outcome == "passed":
            (verdict.unexpected_pass if entry else verdict.passed).append(test_id)
        else:
            (verdict.expected if entry else verdict.failed).append(test_id)
            verdict.messages[test_id] = res.message or NEVER_FINISHED
    prefix = suite + "::"
    verdict.deselected = sorted(
        i for i, e in listed.items() if e.kind == "hang" and i.startswith(prefix)
    )
    return verdict
