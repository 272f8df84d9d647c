"""Time predictions: the cold command line, one prediction with its batch-size search, and 1,000 predictions.

Run: python benchmarks/bench_predict.py [--n 1000] [--cold 3]
Prints seconds; targets on 2 cores: one prediction < 1 s and 1,000 predictions < 60 s (issue 2);
``auto`` at most 30 ms a prediction on average over this mix, the cold CLI at most 1.5 s (issue 10).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import subprocess
import sys
import time

import moesim


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--cold", type=int, default=3, help="runs of the cold command line (0: skip)")
    args = ap.parse_args()
    if args.cold:
        runs = []
        for _ in range(args.cold):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "moesim", "predict", "--model", "deepseek-r1", "--hw", "rtx4090"],
                           check=True, capture_output=True)
            runs.append(time.perf_counter() - t0)
        print(f"cold CLI (moesim predict --model deepseek-r1 --hw rtx4090): median {statistics.median(runs):.2f} s "
              f"of {args.cold} runs")
    t0 = time.perf_counter()
    moesim.predict("deepseek-r1", "rtx4090")  # first call: loads the databases
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    moesim.predict("deepseek-r1", "rtx4090")
    warm = time.perf_counter() - t0
    print(f"one prediction incl. search (DeepSeek-R1 on RTX 4090, auto): first {first:.3f} s, warm {warm:.3f} s")
    hw = moesim.get_hardware("rtx4090")
    grid = itertools.cycle(
        [(m, w, f) for m in ("mixtral-8x7b", "deepseek-r1") for w in ((512, 256), (256, 512), (1024, 128))
         for f in (1.0, 1.5, 2.0)]
    )
    t0 = time.perf_counter()
    for _ in range(args.n):
        model, (prompt, gen), factor = next(grid)
        moesim.predict(model, hw.scaled(pcie=factor), "auto", {"prompt_tokens": prompt, "gen_tokens": gen})
    total = time.perf_counter() - t0
    print(f"{args.n} predictions (auto, varied model/workload/PCIe): {total:.1f} s ({args.n / total:.1f} per second, "
          f"{total / args.n * 1e3:.1f} ms each)")


if __name__ == "__main__":
    main()
