"""Run the pyperf micro-benchmarks into one directory (input of check_regression.py).

    python perf/run_micro.py OUT_DIR [--only sys,schedule,net,http] [pyperf options ...]

Runs perf/bench_sys.py, perf/bench_schedule.py, perf/bench_net.py and perf/bench_http.py one
after the other, each writing ``OUT_DIR/<name>.json`` (an existing file of that name is
replaced). Every other option goes to each script as is: pyperf's own (``--processes 6``,
``--fast``, ``--affinity 0``, ``--quiet``, ...). The baseline in perf/baseline/ is made with
this script: ``python perf/run_micro.py perf/baseline --processes 6``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUITES = {
    "sys": HERE / "bench_sys.py",
    "schedule": HERE / "bench_schedule.py",
    "net": HERE / "bench_net.py",
    "http": HERE / "bench_http.py",
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="Unknown options are passed to every benchmark script (pyperf options).",
    )
    p.add_argument("out_dir", type=Path)
    p.add_argument("--only", default=",".join(SUITES), help="comma-separated subset")
    args, pyperf_args = p.parse_known_args(argv)
    names = [n for n in args.only.split(",") if n]
    for n in names:
        if n not in SUITES:
            p.error(f"unknown suite {n!r} (one of {', '.join(SUITES)})")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    for n in names:
        out = args.out_dir / f"{n}.json"
        out.unlink(missing_ok=True)  # pyperf refuses to overwrite
        cmd = [sys.executable, str(SUITES[n]), "-o", str(out), *pyperf_args]
        print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
        t0 = time.monotonic()
        rc = subprocess.run(cmd).returncode
        print(f"  {n}: exit {rc} after {time.monotonic() - t0:.0f} s", file=sys.stderr)
        if rc:
            failed.append(n)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
