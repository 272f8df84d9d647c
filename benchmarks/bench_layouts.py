"""Speed of the layout search (``moesim recommend --layouts``), the issue's "under 10 s" figure.

Run: python benchmarks/bench_layouts.py [--repeat N]
Times ``search_layouts`` for DeepSeek-R1 on one HGX H200 node with a TTFT and a TPOT SLO, from a cold cache each
repeat (the memoised plans cleared), and prints the median and the number of configurations predicted.
"""

from __future__ import annotations

import argparse
import statistics
import time

from moesim.analysis import layouts as L


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    times, n = [], 0
    for _ in range(args.repeat):
        L.clear_cache()
        t0 = time.perf_counter()
        res = L.search_layouts("deepseek-r1", "hgx-h200", prompt_tokens=1024, gen_tokens=1024, max_tpot_s=0.05,
                               max_ttft_s=2.0)
        times.append(time.perf_counter() - t0)
        n = len(res.points)
    print(f"layout search, deepseek-r1 on hgx-h200: median {statistics.median(times):.2f} s over {args.repeat} cold "
          f"runs ({n} configurations predicted; the issue's bar: under 10 s)")


if __name__ == "__main__":
    main()
