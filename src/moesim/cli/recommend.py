"""`moesim recommend`: which hardware, serving system and quantization to buy for a target.

Its scenario flags (workload and knobs every prediction takes) are generated from the Scenario;
hardware, system and dtype are what it searches. Kept out of the predict path (it imports
nothing heavy until run).
"""

from __future__ import annotations

import argparse
import sys
import json

from ..errors import MoesimError
from ..paths import FIGURE_FORMATS, check_output, writing
from .args import add_scenario_arguments, given, scenario_fields


def add_parser(subparsers) -> argparse.ArgumentParser:
    rec = subparsers.add_parser(
        "recommend", help="cheapest hardware x serving system x quantization that reaches a target",
        description="Search the hardware database (each platform, multi-GPU ones also with 1/2/4 GPUs), every "
                    "serving system and the given weight dtypes; rank what reaches the target by capital cost, "
                    "then $ per million tokens, and say why the others lost.")
    add_scenario_arguments(rec, groups=("scenario", "workload", "execution", "variant", "speculative"),
                           exclude=("hardware", "system", "system_params", "dtype"), required=("model",))
    rec.add_argument("--target-tok-s", type=float, required=True,
                     help="tokens/s to reach: generation throughput (offline) or one user's 1/TPOT (online)")
    rec.add_argument("--max-tpot", type=float, help="latency limit: time per output token, seconds")
    rec.add_argument("--budget", type=float, help="capital budget, US dollars")
    rec.add_argument("--scenario", choices=["offline", "online"], default="offline")
    rec.add_argument("--dtypes", default="bf16,fp8,int4", help="weight dtypes to consider, comma-separated")
    rec.add_argument("--platforms", help="restrict to these platforms or GPUs, comma-separated")
    rec.add_argument("--usd-per-kwh", type=float, default=0.15, help="electricity price (default 0.15 $/kWh)")
    rec.add_argument("--years", type=float, default=3.0, help="amortisation period of owned hardware (default 3)")
    rec.add_argument("--top", type=int, default=12, help="rows of the ranked table (default 12)")
    rec.add_argument("--json", action="store_true", help="print the ranked list as JSON")
    rec.add_argument("--plot", help="draw the CAP radar of the top configurations to this file (.png, .svg or .pdf)")
    return rec


def run(args: argparse.Namespace) -> int:
    from ..analysis.recommend import check_number, format_table, recommend

    # every flag checked before the search (seconds of work)
    check_number("--target-tok-s", args.target_tok_s)
    check_number("--max-tpot", args.max_tpot, optional=True)
    check_number("--budget", args.budget, optional=True)
    check_number("--usd-per-kwh", args.usd_per_kwh, zero=True)
    check_number("--years", args.years)
    if args.top < 1:
        raise MoesimError(f"--top must be at least 1 (got {args.top})")
    if args.plot:
        check_output(args.plot, "--plot", FIGURE_FORMATS)
    knobs = scenario_fields(args, exclude=("model",))
    model = given(args)["model"]
    dtypes = tuple(d.strip() for d in args.dtypes.split(",") if d.strip())
    if not dtypes:
        raise MoesimError(f"--dtypes names no dtype (got {args.dtypes!r}); e.g. bf16,fp8,int4")
    platforms = [p.strip() for p in args.platforms.split(",") if p.strip()] if args.platforms else None
    recs = recommend(model, args.target_tok_s, max_tpot_s=args.max_tpot, budget_usd=args.budget,
                     scenario=args.scenario, dtypes=dtypes, platforms=platforms, usd_per_kwh=args.usd_per_kwh,
                     amortization_years=args.years, progress=sys.stderr.isatty(), **knobs)
    if args.json:
        print(json.dumps([r.model_dump() for r in recs], indent=2))
    else:
        print(format_table(recs, limit=args.top, amortization_years=args.years, usd_per_kwh=args.usd_per_kwh))
    if args.plot:
        from ..analysis.cap import CAPPoint, plot_cap_radar

        from ..db.resolve import get_model

        released = get_model(model).default_dtype
        ranked = [r for r in recs if r.rank is not None and r.tpot_s][:6]
        if not ranked:
            raise MoesimError("no configuration reaches the target: nothing to draw")
        points = [CAPPoint(label=f"#{r.rank} {r.hardware} {r.system} {r.dtype}", tpot_s=r.tpot_s,
                           cost=r.capital_usd, cost_unit="USD",
                           accuracy=(r.accuracy or {}).get("value", None) and r.accuracy["value"] / 100.0,
                           quantized=r.dtype != released, offloaded=r.system not in ("gpu-resident", "vllm"))
                  for r in ranked]
        with writing(args.plot, "--plot"):
            drawn = plot_cap_radar(points, args.plot, title=f"{model}: CAP of the top configurations")
        print(f"CAP radar: {drawn}")
    return 0 if any(r.rank is not None for r in recs) else 3
