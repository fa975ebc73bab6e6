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

Judged against the same run: a shared machine is slower in some hours than in others (on
unchanged code, a slower hour once moved 10 benchmarks and their ``-stdlib`` pairs by
1.4-1.9x together). So a benchmark with a ``-stdlib`` pair is judged by its ratio *relative
to its pair's* when the pair got slower: (new / baseline) / (pair's new / pair's baseline).
The pair runs no ats_cffi code, in the same run, so it measures the machine's drift; what is
left is the code's. A pair that got faster earns the benchmark nothing (its ratio is judged
as it is): some pairs are bimodal (``schedule_cross_thread-stdlib``: 3.2 or 5.5 us per
worker), and a pair's lucky run must not fail the code. ``--absolute`` judges the plain
ratio (the only view for a benchmark without a pair).

Other load that comes and goes within a run inflates some values, hence the mean, but
leaves the fastest ones where they were; a slower code path shifts them all. Each row also
shows the ratio of the fastest quartile of the values (``q25``, relative to the pair's q25
too); with ``--robust`` a benchmark fails only when that is over the threshold as well.
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
    base_path: Path,
    new_path: Path,
    threshold: float,
    gate_stdlib: bool,
    robust: bool,
    absolute: bool = False,
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
    fast_ratios = {
        name: q25(new_by_name[name]) / q25(b)
        for name, b in base_by_name.items()
        if name in new_by_name
    }
    rows, regressions = [], []
    for b in base.get_benchmarks():
        name = b.get_name()
        n = new_by_name.pop(name, None)
        if n is None:
            rows.append(
                (new_path.stem, name, _fmt(b, b.mean()), "missing", "-", "-", "-", "missing")
            )
            continue
        ratio = ratios[name]
        fast = fast_ratios[name]
        pair = ratios.get(pair_of(name)) if not is_ref(name) else None
        if pair is not None and not absolute:
            judged = ratio / max(pair, 1.0)
            fast = fast / max(fast_ratios[pair_of(name)], 1.0)
        else:
            judged = ratio
        gated = gate_stdlib or not is_ref(name)
        slower = judged > threshold and (fast > threshold or not robust)
        if slower:
            verdict = ("SLOWER > " if gated else "ref, slower > ") + f"{threshold:g}x"
        elif judged > threshold:
            verdict = "noise (q25 ok)" if gated else "ref, noise"
        else:
            verdict = "ok" if gated else "ref"
        base_v, new_v = _fmt(b, b.mean()), _fmt(n, n.mean())
        shown = f"{judged:.2f}x" if judged is not ratio else "-"
        rows.append(
            (new_path.stem, name, base_v, new_v, f"{ratio:.2f}x", shown, f"{fast:.2f}x", verdict)
        )
        if slower and gated:
            regressions.append((name, ratio, judged, base_v, new_v, pair, fast))
    for name, n in new_by_name.items():
        rows.append(
            (new_path.stem, name, "-", _fmt(n, n.mean()), "-", "-", "-", "new (no baseline)")
        )
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
    p.add_argument(
        "--absolute",
        action="store_true",
        help="judge new / baseline alone, not relative to the -stdlib pair of the same run",
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
        r, g = compare_file(bp, np_, args.threshold, args.gate_stdlib, args.robust, args.absolute)
        rows += r
        regressions += g
    judged = "ratio" if args.absolute else "ratio / its -stdlib pair's ratio when over 1"
    print(f"## ratios (new mean / baseline mean; judged: {judged}; threshold {args.threshold:g})\n")
    print("| suite | benchmark | baseline | new | ratio | relative | q25 | verdict |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    drift = [row for row in rows if row[7].startswith("ref, slower")]
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
    for name, ratio, judged, b, n, pair, fast in regressions:
        msg = f"REGRESSION: {name} is {ratio:.2f}x slower ({b} -> {n})"
        if judged is not ratio:
            msg += f", {judged:.2f}x relative to its -stdlib pair ({pair:.2f}x)"
        msg += f" > {args.threshold:g}x (q25 {fast:.2f}x)"
        if fast <= args.threshold:
            msg += ": the fastest values did not move, so other load is likely; rerun"
        print(msg)
    return 1


if __name__ == "__main__":
    sys.exit(main())
