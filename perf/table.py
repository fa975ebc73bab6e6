"""Print a Markdown table of the ``<what>-ats_cffi*`` / ``<what>-stdlib`` pairs of one
pyperf JSON file: benchmark, ats_cffi mean, stdlib mean, ratio (ats/stdlib; < 1 means
ats_cffi is faster).

A variant such as ``readiness_roundtrip-ats_cffi_read_into`` gets its own row against
the same ``readiness_roundtrip-stdlib``. Names without a pair are listed with a ``-``.

Usage: ``python perf/table.py sys.json``
"""

from __future__ import annotations

import sys

import pyperf


def _fmt(bench: pyperf.Benchmark | None) -> str:
    if bench is None:
        return "-"
    return bench.format_value(bench.mean())


def table(path: str) -> str:
    suite = pyperf.BenchmarkSuite.load(path)
    groups: dict[str, dict[str, pyperf.Benchmark]] = {}
    for bench in suite.get_benchmarks():
        what, _, side = bench.get_name().rpartition("-")
        if not what:
            what, side = side, ""
        groups.setdefault(what, {})[side] = bench
    lines = [
        "| benchmark | ats_cffi mean | stdlib mean | ratio (ats/stdlib) |",
        "|---|---:|---:|---:|",
    ]
    for what, sides in groups.items():
        std = sides.get("stdlib")
        ats_sides = [s for s in sides if s.startswith("ats_cffi")] or [None]
        for side in ats_sides:
            ats = sides.get(side) if side else None
            label = what if side in (None, "ats_cffi") else f"{what} ({side[len('ats_cffi_') :]})"
            ratio = f"{ats.mean() / std.mean():.2f}" if ats and std else "-"
            lines.append(f"| {label} | {_fmt(ats)} | {_fmt(std)} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} RESULT.json")
    print(table(sys.argv[1]))


if __name__ == "__main__":
    main()
