"""Regression gate: compare a run_micro.py directory with the committed baseline.

    python perf/check_regression.py NEW_DIR [--baseline perf/baseline] [--threshold 1.15]

For every ``<suite>.json`` of the baseline directory that NEW_DIR also has, it prints
``python -m pyperf compare_to BASELINE NEW --table`` (pyperf's view, with its significance
test), then its own table of ratios new mean / baseline mean per benchmark. Exit status 1
when any gated benchmark's ratio is above the threshold (slower by more than 15% by
default), naming each; 0 otherwise; 2 when there is nothing to compare.

Gated: every benchmark except the ``-stdlib`` ones, which run no ats_cffi code (asyncio,
socket, select, os) and cannot regress through a change here; they are shown as the
machine's drift (``ref``), and gated too with ``--gate-stdlib``.

Telling a regression from other load: a flagged benchmark's message shows its ``-stdlib``
pair's ratio (moved too: the machine) and the ratio of the fastest quartile of its values
(``q25``). Another process sharing the CPU for a while inflates some values, hence the mean,
but leaves the fastest ones where they were; a slower code path shifts them all. With
``--robust`` a benchmark fails only when its q25 ratio is over the threshold too.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

import pyperf

HERE = Path(__file__).resolve().parent


def _fmt(bench: pyperf.Benchmark, value: float) -> str:
    return bench.format_value(value)


def q25(bench: pyperf.Benchmark) -> float:
    """The first quartile of all the benchmark's values (every worker process's)."""
    values = bench.get_values()
    return statistics.quantiles(values, n=4)[0] if len(values) > 1 else values[0]


def is_ref(name: str) -> bool:
    """A ``<what>-stdlib`` benchmark: the reference side of a pair."""
    return name.endswith("-stdlib")


def pair_of(name: str) -> str:
    """``readiness_roundtrip-ats_cffi_read_into`` -> ``readiness_roundtrip-stdlib``."""
    return name.rpartition("-")[0] + "-stdlib"


def compare_file(
    base_path: Path, new_path: Path, threshold: float, gate_stdlib: bool, robust: bool
) -> tuple[list, list]:
    """(table rows, regressions) for one suite; prints pyperf's comparison first."""
    print(f"## {new_path.name}: python -m pyperf compare_to {base_path} {new_path} --table\n")
    cmd = [sys.executable, "-m", "pyperf", "compare_to", str(base_path), str(new_path), "--table"]
    sys.stdout.flush()
    subprocess.run(cmd)
    print()
    base = pyperf.BenchmarkSuite.load(str(base_path))
    new = pyperf.BenchmarkSuite.load(str(new_path))
    for suite, label in ((base, "baseline"), (new, "new")):
        meta = suite.get_metadata()
        if meta.get("slowdown_us"):
            print(f"note: the {label} run has a deliberate slowdown of {meta['slowdown_us']} µs")
    bpy = base.get_metadata().get("python_version")
    npy = new.get_metadata().get("python_version")
    if bpy != npy:
        print(f"warning: baseline Python {bpy}, new Python {npy}: not comparable")
    new_by_name = {b.get_name(): b for b in new.get_benchmarks()}
    base_by_name = {b.get_name(): b for b in base.get_benchmarks()}
    ratios = {
        name: new_by_name[name].mean() / b.mean()
        for name, b in base_by_name.items()
        if name in new_by_name
    }
    rows, regressions = [], []
    for b in base.get_benchmarks():
        name = b.get_name()
        n = new_by_name.pop(name, None)
        if n is None:
            rows.append((new_path.stem, name, _fmt(b, b.mean()), "missing", "-", "-", "missing"))
            continue
        ratio = ratios[name]
        fast = q25(n) / q25(b)
        gated = gate_stdlib or not is_ref(name)
        slower = ratio > threshold and (fast > threshold or not robust)
        if slower:
            verdict = ("SLOWER > " if gated else "ref, slower > ") + f"{threshold:g}x"
        elif ratio > threshold:
            verdict = "noise (q25 ok)" if gated else "ref, noise"
        else:
            verdict = "ok" if gated else "ref"
        base_v, new_v = _fmt(b, b.mean()), _fmt(n, n.mean())
        rows.append((new_path.stem, name, base_v, new_v, f"{ratio:.2f}x", f"{fast:.2f}x", verdict))
        if slower and gated:
            pair = ratios.get(pair_of(name)) if not is_ref(name) else None
            regressions.append((name, ratio, base_v, new_v, pair, fast))
    for name, n in new_by_name.items():
        rows.append((new_path.stem, name, "-", _fmt(n, n.mean()), "-", "-", "new (no baseline)"))
    return rows, regressions


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("new_dir", type=Path, help="directory written by perf/run_micro.py")
    p.add_argument("--baseline", type=Path, default=HERE / "baseline")
    p.add_argument(
        "--threshold",
        type=float,
        default=1.15,
        help="fail when new mean / baseline mean exceeds this (default 1.15)",
    )
    p.add_argument(
        "--gate-stdlib",
        action="store_true",
        help="also fail on the -stdlib reference benchmarks (machine drift)",
    )
    p.add_argument(
        "--robust",
        action="store_true",
        help="fail only when the fastest quartile (q25) is over the threshold too",
    )
    args = p.parse_args(argv)
    pairs = [
        (bp, args.new_dir / bp.name)
        for bp in sorted(args.baseline.glob("*.json"))
        if (args.new_dir / bp.name).exists()
    ]
    if not pairs:
        print(f"nothing to compare: no {args.baseline}/*.json in {args.new_dir}", file=sys.stderr)
        return 2
    rows, regressions = [], []
    for bp, np_ in pairs:
        r, g = compare_file(bp, np_, args.threshold, args.gate_stdlib, args.robust)
        rows += r
        regressions += g
    print(f"## ratios (new mean / baseline mean; threshold {args.threshold:g})\n")
    print("| suite | benchmark | baseline | new | ratio | q25 ratio | verdict |")
    print("|---|---|---:|---:|---:|---:|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    drift = [row for row in rows if row[6].startswith("ref, slower")]
    if drift:
        print(
            f"note: {len(drift)} -stdlib reference benchmark(s) ran over {args.threshold:g}x "
            f"slower ({', '.join(row[1] for row in drift)}): they run no ats_cffi code, so the "
            "machine is busier or noisier than for the baseline."
        )
    if not regressions:
        gated = "benchmark" if args.gate_stdlib else "ats_cffi benchmark"
        print(f"OK: no {gated} is more than {args.threshold:g}x slower than the baseline.")
        return 0
    for name, ratio, b, n, pair, fast in regressions:
        msg = f"REGRESSION: {name} is {ratio:.2f}x slower ({b} -> {n}) > {args.threshold:g}x"
        msg += f" (q25 {fast:.2f}x" + (f", its -stdlib pair {pair:.2f}x)" if pair else ")")
        if fast <= args.threshold:
            msg += ": the fastest values did not move, so other load is likely; rerun"
        print(msg)
    return 1


if __name__ == "__main__":
    sys.exit(main())
