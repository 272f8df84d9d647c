"""Planning time per serving system over the mix of ``bench_predict.py``.

Run: python benchmarks/bench_systems.py [--repeats 3] [--systems moe-gen,moe-lightning]

The mix: Mixtral-8x7B and DeepSeek-R1 on an RTX 4090 at three workloads (prompt/generation 512/256,
256/512, 1024/128) and three PCIe speeds (x1, x1.5, x2): 18 cases. Each case gets one Context that every
system plans on in registry order, as ``moesim predict --system auto`` does (systems share what they
memoise on it), so the figures add up to an ``auto`` prediction's planning time. A case's Context is
made afresh for each pass: nothing is carried from one prediction to the next. Prints milliseconds
per prediction for each system (an infeasible plan counts the time it took to refuse) and their sum: the
median and the least over the passes (the least is the steadier figure on a shared machine).
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

import moesim
from moesim import scenario as sc
from moesim.errors import InfeasibleError
from moesim.modules import Context
from moesim.predict import resolve
from moesim.systems import SYSTEMS

MODELS = ("mixtral-8x7b", "deepseek-r1")
WORKLOADS = ((512, 256), (256, 512), (1024, 128))
PCIE = (1.0, 1.5, 2.0)


def cases(hardware: str) -> list:
    """The resolved specs (model, platform, workload, options) of the 18 cases."""
    hw = moesim.get_hardware(hardware)
    out = []
    for model in MODELS:
        for prompt, gen in WORKLOADS:
            for factor in PCIE:
                r = resolve(sc.build(model, hw.scaled(pcie=factor), prompt_tokens=prompt, gen_tokens=gen))
                out.append((r.model, r.platform, r.workload, r.options))
    return out


def time_systems(specs: list, names: list[str], repeats: int) -> list[dict[str, float]]:
    """Per repeat, seconds per prediction spent planning each system."""
    out = []
    for _ in range(repeats):
        total: collections.Counter = collections.Counter()
        for spec in specs:
            ctx = Context(*spec)
            for name in names:
                t0 = time.perf_counter()
                try:
                    SYSTEMS[name]().plan(ctx)
                except InfeasibleError:
                    pass
                total[name] += time.perf_counter() - t0
        out.append({name: total[name] / len(specs) for name in names})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="passes over the 18 cases")
    ap.add_argument("--systems", default=",".join(SYSTEMS),
                    help="comma-separated systems, planned in this order on each case's Context (default: all, "
                         "registry order, as auto)")
    ap.add_argument("--hardware", default="rtx4090")
    args = ap.parse_args()
    names = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in names if s not in SYSTEMS]
    if unknown:
        ap.error(f"unknown system(s) {', '.join(unknown)}; known: {', '.join(SYSTEMS)}")
    specs = cases(args.hardware)
    moesim.predict("mixtral-8x7b", args.hardware)  # warm the databases and imports
    runs = time_systems(specs, names, args.repeats)
    width = max(map(len, names))
    print(f"{'ms per prediction':<{width}}  {'median':>7}  {'min':>7}   over {args.repeats} passes of {len(specs)} cases "
          f"({args.hardware})")
    for name in names + ["total"]:
        values = [sum(r.values()) if name == "total" else r[name] for r in runs]
        print(f"{name:<{width}}  {statistics.median(values) * 1e3:7.2f}  {min(values) * 1e3:7.2f}")


if __name__ == "__main__":
    main()
