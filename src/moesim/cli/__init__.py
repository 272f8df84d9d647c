"""The `moesim` command line. Converts units at the edges; every error is a message and an exit code."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import MoesimError
from ..units import fmt_bytes, fmt_rate, fmt_seconds, parse_bytes


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moesim", description="Predict MoE LLM inference performance.")
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("predict", help="predict throughput, latency and utilisation")
    pr.add_argument("--model", required=True, help="database name, moesim YAML, or HF config.json")
    pr.add_argument("--hw", help="platform or GPU name (a GPU gets its documented default host)")
    pr.add_argument("--gpu", help="compose a platform: GPU name")
    pr.add_argument("--gpus", type=int, help="number of GPUs")
    pr.add_argument("--cpu", help="CPU name")
    pr.add_argument("--host-mem", help="host memory, e.g. 512GB")
    pr.add_argument("--pcie", help="host link: gen3, gen4, gen5")
    pr.add_argument("--system", default="auto", help="serving system (default: auto = best feasible)")
    pr.add_argument("--prompt", type=int, help="prompt tokens (default 512)")
    pr.add_argument("--gen", type=int, help="generated tokens (default 256)")
    pr.add_argument("--requests", type=int, help="number of requests (default 1000)")
    pr.add_argument("--batch", type=int, help="fix the batch size instead of searching it")
    pr.add_argument("--dtype", help="weight dtype: bf16, fp16, fp8, int8, int4")
    pr.add_argument("--kv-dtype", default="bf16")
    pr.add_argument("--moe-impl", default="fused", choices=["fused", "loop"])
    pr.add_argument("--zipf", type=float, default=0.0, help="router skew (Zipf exponent; 0 = uniform)")
    pr.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="a parameter of the named --system, e.g. --param cpu_offload_gb=72 (repeatable)")
    pr.add_argument("--expert-histogram", help="JSON file: measured per-expert activation counts (router skew)")
    pr.add_argument("--experts", type=int, help="variant: number of routed experts (pruning / sweeps)")
    pr.add_argument("--top-k", type=int, help="variant: experts per token")
    pr.add_argument("--expert-ffn", type=int, help="variant: expert FFN size")
    pr.add_argument("--draft", help="speculative decoding: draft model name")
    pr.add_argument("--spec-tokens", type=int, default=4, help="speculative decoding: draft tokens per step")
    pr.add_argument("--spec-accept", type=float, default=0.7, help="speculative decoding: per-token acceptance rate")
    pr.add_argument("--no-mla-absorption", action="store_true",
                    help="MLA decode up-projects the cached latent every step (as Hugging Face DeepSeek code does)")
    pr.add_argument("--trace", help="write a Chrome/Perfetto trace of a decode step to this file")
    pr.add_argument("--breakdown", action="store_true",
                    help="time per module in a decode step, and how much of each transfer compute hides")
    pr.add_argument("--json", action="store_true", help="print one JSON object")
    from . import plot as cli_plot, recommend as cli_recommend, sweep as cli_sweep
    from .validate import add_parsers as add_validation_parsers

    add_validation_parsers(sub)
    cli_sweep.add_parser(sub)
    cli_plot.add_parser(sub)
    cli_recommend.add_parser(sub)
    on = sub.add_parser("serve", help="online serving: Poisson arrivals, latency percentiles (vllm)")
    on.add_argument("--model", required=True)
    on.add_argument("--hw", required=True)
    on.add_argument("--rate", type=float, required=True, help="arrivals per second")
    on.add_argument("--requests", type=int, default=500)
    on.add_argument("--prompt", type=float, default=512, help="mean prompt tokens")
    on.add_argument("--gen", type=float, default=256, help="mean generated tokens")
    on.add_argument("--lengths", choices=["fixed", "uniform", "lognormal"], default="lognormal")
    on.add_argument("--gpus", type=int)
    on.add_argument("--dtype")
    on.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    on.add_argument("--json", action="store_true")
    ls = sub.add_parser("list", help="list models, hardware or systems")
    ls.add_argument("what", choices=["models", "hardware", "systems"])
    sh = sub.add_parser("show", help="show one entry")
    sh.add_argument("what", choices=["model", "hw"])
    sh.add_argument("name")
    return p


def _params(items: list[str]) -> dict | None:
    """KEY=VALUE pairs; values are read as YAML scalars (numbers, booleans, null, strings)."""
    if not items:
        return None
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MoesimError(f"--param takes KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _predict(args: argparse.Namespace) -> int:
    from ..predict import predict

    if not args.hw and not args.gpu:
        raise MoesimError("give --hw NAME (a platform or GPU) or --gpu NAME")
    if args.batch is not None and args.batch < 1:
        raise MoesimError(f"--batch must be at least 1 (got {args.batch})")
    workload = {k: v for k, v in (("prompt_tokens", args.prompt), ("gen_tokens", args.gen),
                                  ("num_requests", args.requests), ("batch_size", args.batch)) if v is not None}
    pred = predict(
        args.model, args.hw or args.gpu, args.system, workload or None,
        dtype=args.dtype, kv_dtype=args.kv_dtype, moe_impl=args.moe_impl, zipf_s=args.zipf,
        mla_absorbed=not args.no_mla_absorption, expert_popularity=args.expert_histogram,
        speculative={"draft_model": args.draft, "num_tokens": args.spec_tokens, "acceptance_rate": args.spec_accept}
        if args.draft else None,
        num_experts=args.experts, top_k=args.top_k, expert_ffn=args.expert_ffn,
        system_params=_params(args.param),
        num_gpus=args.gpus, cpu=args.cpu, host_memory_bytes=parse_bytes(args.host_mem) if args.host_mem else None,
        pcie=args.pcie, trace_path=args.trace,
    )
    if args.json:
        print(json.dumps(pred.to_json_dict(), indent=2))
        return 0
    w = pred.workload
    rows = [
        ("model", f"{pred.model} ({pred.dtype}, KV {pred.kv_dtype})"),
        ("hardware", f"{pred.hardware}: {pred.num_gpus} x {pred.gpu}"),
        ("system", pred.system),
        ("workload", f"{w['num_requests']} requests, prompt {w['prompt_tokens']}, generate {w['gen_tokens']}"),
        ("configuration", ", ".join(f"{k}={v}" for k, v in pred.config.items())),
        ("prefill throughput", fmt_rate(pred.prefill_tok_s, "tok/s")),
        ("decode throughput", fmt_rate(pred.decode_tok_s, "tok/s")),
        ("generation throughput", fmt_rate(pred.throughput_tok_s, "tok/s")),
        ("TTFT (per batch)", fmt_seconds(pred.ttft_s)),
        ("TPOT", fmt_seconds(pred.tpot_s)),
        ("time for the workload", fmt_seconds(pred.total_time_s)),
        ("S-MBU / MBU", f"{pred.s_mbu:.3f} / {pred.mbu:.3f}"),
        ("S-MFU / MFU", f"{pred.s_mfu:.3f} / {pred.mfu:.3f}"),
        ("bottleneck", f"{pred.bottleneck} ("
         + ", ".join(f"{k} {v:.0%}" for k, v in sorted(pred.utilization.items(), key=lambda kv: -kv[1])) + ")"),
        ("memory", f"GPU {fmt_bytes(pred.gpu_mem_bytes)} per GPU, host {fmt_bytes(pred.host_mem_bytes)}"),
        ("placement", ", ".join(f"{k}: {v}" for k, v in pred.placement.items())),
        ("calibrated", "yes (see assumptions)" if pred.calibrated else "no (default efficiency profile)"),
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


def _serve(args: argparse.Namespace) -> int:
    from ..predict import predict_online

    def dist(mean: float) -> dict:
        d = {"kind": args.lengths, "mean_tokens": mean}
        if args.lengths == "lognormal":
            d["sigma"] = 0.5
        if args.lengths == "uniform":
            d.update(min_tokens=max(1, int(mean / 2)), max_tokens=int(mean * 1.5))
        return d

    result = predict_online(args.model, args.hw, {"arrival_rate_per_s": args.rate, "num_requests": args.requests,
                                                  "prompt": dist(args.prompt), "gen": dist(args.gen)},
                            system_params=_params(args.param), dtype=args.dtype, num_gpus=args.gpus)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    for key, value in result.items():
        if key == "assumptions":
            continue
        if isinstance(value, dict):
            value = "  ".join(f"{k} {fmt_seconds(v)}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value:.4g}"
        print(f"{key:28s} {value}")
    print("assumptions:")
    for note in result["assumptions"]:
        print(f"  - {note}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from .. import db
    from ..systems import SYSTEMS

    if args.what == "models":
        for name, m in sorted(db.models().entries.items()):
            print(f"{name:28s} {m.total_params / 1e9:7.1f}B total {m.active_params() / 1e9:6.1f}B active  {m.default_dtype}")
    elif args.what == "systems":
        for name, cls in SYSTEMS.items():
            print(f"{name:14s} {cls.summary}")
    else:
        print("GPUs:")
        for name, g in sorted(db.gpus().entries.items()):
            print(f"  {name:20s} {fmt_bytes(g.memory_bytes):>10s} {fmt_rate(g.memory_bandwidth_bytes_per_s, 'B/s'):>12s}")
        print("platforms:")
        for name, p in sorted(db.platforms().entries.items()):
            print(f"  {name:32s} {p.num_gpus} x {p.gpu}, {p.cpu}, {fmt_bytes(p.host_memory_bytes)} host")
    return 0


def _show(args: argparse.Namespace) -> int:
    import yaml

    from ..db.resolve import get_hardware, get_model

    spec = get_model(args.name) if args.what == "model" else get_hardware(args.name)
    print(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        from .validate import calibrate, validate

        from . import plot as cli_plot, recommend as cli_recommend, sweep as cli_sweep

        commands = {"recommend": cli_recommend.run, "serve": _serve, "predict": _predict, "list": _list, "show": _show, "calibrate": calibrate, "validate": validate,
                    "sweep": cli_sweep.run, "sensitivity": cli_sweep.run, "plot": cli_plot.run}
        return commands[args.command](args)
    except MoesimError as exc:
        print(f"moesim: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
