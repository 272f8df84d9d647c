"""`moesim predict` (an offline workload) and `moesim serve` (Poisson arrivals).

Both take every Scenario flag (:mod:`moesim.cli.args`); `serve` needs --rate, and `predict`
with --rate serves online too: the scenario decides.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import MoesimError
from ..paths import check_output
from ..units import fmt_bytes, fmt_config, fmt_rate, fmt_seconds
from .args import add_scenario_arguments, add_system_param_arguments, build_scenario


def add_parsers(subparsers) -> None:
    pr = subparsers.add_parser("predict", help="predict throughput, latency and utilisation")
    add_scenario_arguments(pr, required=("model",))
    add_system_param_arguments(pr)
    pr.add_argument("--trace", help="write a Chrome/Perfetto trace of a decode step to this file")
    pr.add_argument("--breakdown", action="store_true",
                    help="time per module in a decode step, and how much of each transfer compute hides")
    pr.add_argument("--json", action="store_true", help="print one JSON object")
    on = subparsers.add_parser("serve", help="online serving: Poisson arrivals, latency percentiles")
    add_scenario_arguments(on, required=("model", "arrival_rate_per_s"),
                           help_overrides={"system": "serving system with an online scheduler (default vllm)"})
    add_system_param_arguments(on)
    on.add_argument("--json", action="store_true", help="print one JSON object")


def _scenario(args: argparse.Namespace):
    scenario = build_scenario(args) if getattr(args, "scenario__hardware", None) else None
    if scenario is None:
        raise MoesimError("give --hw NAME (a platform or GPU) or --gpu NAME")
    return scenario


def predict(args: argparse.Namespace) -> int:
    from ..predict import predict as run

    if args.trace is not None:
        check_output(args.trace, "--trace")  # before the prediction
    scenario = _scenario(args)
    if scenario.online:
        if args.trace:
            raise MoesimError("--trace writes a decode step of an offline prediction; online serving (--rate) has none")
        return _report_online(args, scenario)
    pred = run(scenario, trace_path=args.trace)
    if args.trace:
        print(f"trace of the middle decode step: {args.trace} (open it in ui.perfetto.dev)", file=sys.stderr)
    if args.json:
        print(json.dumps(pred.to_json_dict(), indent=2, allow_nan=False))
        return 0
    w = pred.workload
    rows = [
        ("model", f"{pred.model} ({pred.dtype}, KV {pred.kv_dtype})"),
        ("hardware", f"{pred.hardware}: "
                     + (f"{pred.num_nodes} nodes x " if pred.num_nodes > 1 else "") + f"{pred.num_gpus} x {pred.gpu}"),
        ("system", pred.system + ("" if pred.policy == "as-deployed" else f" (policy {pred.policy})")),
        ("workload", f"{w['num_requests']} requests, prompt {w['prompt_tokens']}, generate {w['gen_tokens']}"),
        ("configuration", fmt_config(pred.config)),
        ("prefill throughput", _banded(pred, "prefill_tok_s", lambda v: fmt_rate(v, "tok/s"))),
        ("decode throughput", _banded(pred, "decode_tok_s", lambda v: fmt_rate(v, "tok/s"))),
        ("generation throughput", _banded(pred, "throughput_tok_s", lambda v: fmt_rate(v, "tok/s"))),
        ("TTFT (per batch)", _banded(pred, "ttft_s", fmt_seconds)),
        ("TPOT", _banded(pred, "tpot_s", fmt_seconds)),
        ("time for the workload", _banded(pred, "total_time_s", fmt_seconds)),
        *_best_rows(pred),
        ("S-MBU / S-MFU", f"{pred.s_mbu:.3f} / {pred.s_mfu:.3f}"),
        # every expert counted, read or not: above 1 for an MoE whose step reads few of them (never clamped)
        ("MBU / MFU (dense-equivalent)", f"{pred.mbu:.3f} / {pred.mfu:.3f}"),
        ("bottleneck", f"{pred.bottleneck} ("
         + ", ".join(f"{k} {v:.0%}" for k, v in sorted(pred.utilization.items(), key=lambda kv: -kv[1])) + ")"),
        ("memory", f"GPU {fmt_bytes(pred.gpu_mem_bytes)} per GPU, host {fmt_bytes(pred.host_mem_bytes)}"),
        ("placement", ", ".join(f"{k}: {v}" for k, v in pred.placement.items())),
        ("calibrated", "yes (see assumptions)" if pred.calibrated else "no (uncalibrated efficiency profile: see assumptions)"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if args.breakdown:
        total = sum(pred.decode_step_breakdown_s.values()) or 1.0
        print(f"\ndecode step (at the middle context), busy time per module ({fmt_seconds(pred.tpot_s)} per step):")
        for cat, sec in sorted(pred.decode_step_breakdown_s.items(), key=lambda kv: -kv[1]):
            print(f"  {cat:14s} {fmt_seconds(sec):>10s}  {sec / total:6.1%} of busy time")
        for res, frac in pred.transfer_hidden_fraction.items():
            print(f"  {res} transfers hidden behind compute: {frac:.0%}")
    if len(pred.systems_compared) > 1:
        print("\nsystems compared:")
        for name, verdict in pred.systems_compared.items():
            print(f"  {name}: {verdict}")
    print("\nassumptions:")
    for note in pred.assumptions:
        print(f"  - {note}")
    return 0


def _best_rows(pred) -> list[tuple[str, str]]:
    """The line giving moesim's best policy for the system, where it differs from the as-deployed one by > 10 %."""
    best = pred.best_policy
    if not best:
        return []
    change = best["speedup"] - 1
    return [("with --policy best", f"{fmt_rate(best['throughput_tok_s'], 'tok/s')} generation throughput "
             f"({change:+.0%} vs as-deployed; prefill {fmt_rate(best['prefill_tok_s'], 'tok/s')}, decode "
             f"{fmt_rate(best['decode_tok_s'], 'tok/s')}): {fmt_config(best['config'])}")]


def _banded(pred, name: str, fmt) -> str:
    """A figure with its uncertainty band: value (low - high, -a%/+b%)."""
    v, lo, hi = getattr(pred, name), getattr(pred, f"{name}_low"), getattr(pred, f"{name}_high")
    return f"{fmt(v)}  ({fmt(lo)} - {fmt(hi)}, -{1 - lo / v:.0%}/+{hi / v - 1:.0%})"


def serve(args: argparse.Namespace) -> int:
    scenario = _scenario(args)
    if "system" not in scenario.model_fields_set:
        scenario = scenario.replace(system="vllm")
    return _report_online(args, scenario)


def _report_online(args: argparse.Namespace, scenario) -> int:
    from ..predict import predict_online

    result = predict_online(scenario)
    if args.json:
        print(json.dumps(result.to_json_dict(), indent=2, allow_nan=False))
        return 0
    print(result.format())
    return 0
