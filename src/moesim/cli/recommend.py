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
        "recommend", help="cheapest hardware x serving system x quantization that reaches a target; with --layouts, "
                          "the engine, layout and concurrency for latency SLOs on given GPUs",
        description="Search the hardware database (each platform, multi-GPU ones also with 1/2/4 GPUs), every "
                    "serving system and the given weight dtypes; rank what reaches the target by capital cost, "
                    "then $ per million tokens, and say why the others lost. With --layouts: on the GPUs of --hw "
                    "(--gpus per node x --nodes, or what --budget buys), search vLLM, SGLang and TensorRT-LLM "
                    "layouts (tensor, attention-data and expert parallel) and closed-loop concurrencies, print the "
                    "Pareto front of tok/s/GPU against tok/s/user, the best configuration meeting the SLOs "
                    "(--max-ttft, --max-tpot, --min-tok-s-per-user) and its launch command.")
    add_scenario_arguments(rec, groups=("scenario", "workload", "execution", "variant", "speculative", "platform"),
                           exclude=("system", "system_params", "dtype", "cpu", "pcie", "host_memory_bytes"),
                           required=("model",),
                           help_overrides={"hardware": "platform or GPU name (with --layouts: the GPUs searched)",
                                           "num_gpus": "with --layouts: GPUs of each node to fill (default: the "
                                                       "platform's)",
                                           "num_nodes": "with --layouts: nodes to fill (default 1)",
                                           "batch_size": "with --layouts: only this closed-loop concurrency "
                                                         "(requests in flight)"})
    rec.add_argument("--target-tok-s", type=float,
                     help="tokens/s to reach: generation throughput (offline) or one user's 1/TPOT (online); "
                          "required without --layouts")
    rec.add_argument("--max-tpot", type=float, metavar="SECONDS",
                     help="latency limit: time per output token, seconds")
    rec.add_argument("--budget", type=float, metavar="USD", help="capital budget, US dollars (with --layouts: buys "
                                                                 "the GPUs searched, instead of --gpus / --nodes)")
    rec.add_argument("--scenario", choices=["offline", "online"], default="offline")
    rec.add_argument("--dtypes", default=None, help="weight dtypes to consider, comma-separated (default "
                                                    "bf16,fp8,int4; with --layouts one dtype, default the released)")
    rec.add_argument("--platforms", help="restrict to these platforms or GPUs, comma-separated")
    rec.add_argument("--usd-per-kwh", type=float, default=0.15, help="electricity price (default 0.15 $/kWh)")
    rec.add_argument("--years", type=float, default=3.0, help="amortisation period of owned hardware (default 3)")
    rec.add_argument("--top", type=int, default=None, help="rows of the ranked table (default 12; --layouts: rows "
                                                           "of the Pareto table, default 20)")
    rec.add_argument("--json", action="store_true", help="print the ranked list (--layouts: the search) as JSON")
    rec.add_argument("--plot", help="draw the CAP radar of the top configurations to this file (.png, .svg or .pdf)")
    lay = rec.add_argument_group("layout search (--layouts)")
    lay.add_argument("--layouts", action="store_true",
                     help="search engines x parallel layouts x concurrency on the GPUs of --hw for the SLOs")
    lay.add_argument("--max-ttft", type=float, metavar="SECONDS",
                     help="SLO: mean time to the first token, seconds")
    lay.add_argument("--min-tok-s-per-user", type=float, metavar="TOK_S",
                     help="SLO: tokens/s each user sees (1 / TPOT), tokens per second")
    lay.add_argument("--systems", default=None, metavar="NAMES",
                     help="engines to search, comma-separated (default vllm,sglang,trtllm)")
    lay.add_argument("--concurrency", default=None, metavar="REQUESTS",
                     help="closed-loop concurrencies to search, comma-separated requests in flight per instance "
                          "(default 1,2,4,...,1024)")
    return rec


_LAYOUT_ONLY = ("max_ttft", "min_tok_s_per_user", "systems", "concurrency")
_HARDWARE_ONLY = ("target_tok_s", "platforms")


def run(args: argparse.Namespace) -> int:
    from ..analysis.recommend import check_number, format_table, recommend

    if args.layouts:
        return run_layouts(args)
    for name in _LAYOUT_ONLY:
        if getattr(args, name) is not None:
            raise MoesimError(f"--{name.replace('_', '-')} goes with --layouts")
    fields = given(args)
    for name, flag in (("hardware", "--hw"), ("num_gpus", "--gpus"), ("num_nodes", "--nodes")):
        if name in fields:
            raise MoesimError(f"{flag} goes with --layouts; without it recommend searches the hardware itself "
                              "(restrict it with --platforms)")
    if args.target_tok_s is None:
        raise MoesimError("--target-tok-s is required (or ask for the layout search with --layouts)")
    if args.dtypes is None:
        args.dtypes = "bf16,fp8,int4"
    if args.top is None:
        args.top = 12
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


def _int_list(text: str, flag: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = int(part)
        except ValueError:
            raise MoesimError(f"{flag} takes whole numbers, comma-separated (got {part!r})") from None
        if value < 1:
            raise MoesimError(f"{flag} takes numbers of at least 1 (got {value})")
        out.append(value)
    if not out:
        raise MoesimError(f"{flag} names no number (got {text!r})")
    return out


def run_layouts(args: argparse.Namespace) -> int:
    """``moesim recommend --layouts``: :func:`moesim.analysis.layouts.search_layouts` on the command line."""
    from ..analysis.layouts import DEFAULT_CONCURRENCIES, ENGINES, format_search, search_layouts
    from ..analysis.recommend import check_number

    for name in _HARDWARE_ONLY:
        if getattr(args, name) is not None:
            raise MoesimError(f"--{name.replace('_', '-')} goes with the hardware search, not --layouts")
    if args.scenario != "offline":
        raise MoesimError("--scenario goes with the hardware search; --layouts prices closed-loop concurrency")
    if args.plot:
        raise MoesimError("--plot draws the hardware search's CAP radar; with --layouts use --json and plot the "
                          "points")
    check_number("--max-ttft", args.max_ttft, optional=True)
    check_number("--max-tpot", args.max_tpot, optional=True)
    check_number("--min-tok-s-per-user", args.min_tok_s_per_user, optional=True)
    check_number("--budget", args.budget, optional=True)
    if args.top is not None and args.top < 1:
        raise MoesimError(f"--top must be at least 1 (got {args.top})")
    fields = scenario_fields(args)
    if "hardware" not in fields:
        raise MoesimError("--layouts needs --hw: the platform whose GPUs are searched")
    knobs = {k: v for k, v in fields.items() if k not in ("model", "hardware", "num_gpus", "num_nodes",
                                                          "prompt_tokens", "gen_tokens", "batch_size",
                                                          "num_requests")}
    if "num_requests" in fields:
        raise MoesimError("--requests does not go with --layouts: a closed loop at concurrency C keeps C in flight "
                          "(--batch or --concurrency)")
    if args.dtypes is not None:
        dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
        if len(dtypes) != 1:
            raise MoesimError(f"--layouts takes one weight dtype in --dtypes (got {args.dtypes!r})")
        knobs["dtype"] = dtypes[0]
    systems = ENGINES if args.systems is None else tuple(s.strip() for s in args.systems.split(",") if s.strip())
    if "batch_size" in fields and args.concurrency is not None:
        raise MoesimError("give --batch or --concurrency, not both")
    concurrencies = (_int_list(args.concurrency, "--concurrency") if args.concurrency is not None
                     else [fields["batch_size"]] if "batch_size" in fields else list(DEFAULT_CONCURRENCIES))
    res = search_layouts(fields["model"], fields["hardware"], gpus_per_node=fields.get("num_gpus"),
                         nodes=fields.get("num_nodes", 1), budget_usd=args.budget,
                         prompt_tokens=fields.get("prompt_tokens"), gen_tokens=fields.get("gen_tokens"),
                         max_ttft_s=args.max_ttft, max_tpot_s=args.max_tpot,
                         min_tok_s_per_user=args.min_tok_s_per_user, systems=systems, concurrencies=concurrencies,
                         **knobs)
    if args.json:
        print(json.dumps(res.model_dump(), indent=2))
    else:
        print(format_search(res, limit=args.top or 20))
    return 0 if res.chosen is not None else 3
