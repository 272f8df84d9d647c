"""Speed of the published-corpus paths the tests exercise (measured here, never asserted in tests).

Run: python benchmarks/bench_published.py [--repeat N]
Times (1) ``moesim validate --published --quick --json`` as a subprocess (interpreter, imports and one quick cell
per source; CI runs it in a test) and (2) ``records`` of validation/published/aiconfigurator.py over the rows
committed in tests/data (four of them expressible, so predicted), and prints the median of each.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import time
from pathlib import Path

from moesim.calibration.published import load_module

ROOT = Path(__file__).resolve().parents[1]
ROWS = ROOT / "tests" / "data" / "aiconfigurator_silicon_rows.csv"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    quick = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "moesim", "validate", "--published", "--quick", "--json"], cwd=ROOT,
                       check=True, capture_output=True)
        quick.append(time.perf_counter() - t0)
    mod = load_module("aiconfigurator")
    with open(ROWS, newline="") as f:
        rows = list(csv.DictReader(f))
    rec = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        mod.records(rows)
        rec.append(time.perf_counter() - t0)
    print(f"validate --published --quick --json (cold CLI): median {statistics.median(quick):.2f} s")
    print(f"aiconfigurator records, {len(rows)} committed test rows: median {statistics.median(rec):.2f} s "
          f"(first run {rec[0]:.2f} s, later runs reuse memoised plans)")


if __name__ == "__main__":
    main()
