"""`moesim plot KIND`: figures of predictions (PNG or SVG by the --plot extension).

Wiring (in cli.py): ``cli_plot.add_parser(sub)`` and ``"plot": cli_plot.run``.

    moesim plot throughput-vs-batch --model mixtral-8x7b --hw c2 --plot tput.png
    moesim plot roofline --model mixtral-8x7b --hw c2 --system moe-gen --plot roof.svg
    moesim plot timeline --model deepseek-v2-lite --hw h100-sxm --plot step.png
    moesim plot pareto --model mixtral-8x7b --plot cost.png [--hw c2,rtx4090,...] [--costs hgx-h100=300000]
    moesim plot utilization --model mixtral-8x7b --hw c2 --system moe-gen --plot util.png
"""

from __future__ import annotations

import argparse

from ..errors import MoesimError

KINDS = ("throughput-vs-batch", "roofline", "timeline", "pareto", "utilization")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("plot", help="throughput vs batch, roofline, step timeline, cost Pareto, utilisation")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--model", required=True)
    p.add_argument("--hw", help="platform or GPU name (pareto: comma-separated platforms; default all)")
    p.add_argument("--system", help="serving system (default auto; throughput-vs-batch: comma-separated, default all)")
    p.add_argument("--plot", required=True, help="output file, .png or .svg")
    p.add_argument("--batches", help="batch sizes for the batch plots, e.g. 1,4,16,64,256")
    p.add_argument("--prompt", type=int, help="prompt tokens (default 512)")
    p.add_argument("--gen", type=int, help="generated tokens (default 256)")
    p.add_argument("--requests", type=int, help="number of requests (default 1000)")
    p.add_argument("--batch", type=int, help="roofline/timeline/pareto: fix the batch size")
    p.add_argument("--dtype", help="weight dtype: bf16, fp16, fp8, int8, int4")
    p.add_argument("--gpus", type=int, help="number of GPUs")
    p.add_argument("--pcie", help="host link: gen3, gen4, gen5")
    p.add_argument("--host-mem", help="host memory, e.g. 512GB")
    p.add_argument("--costs", help="pareto: prices of platforms the database does not price, NAME=USD,...")
    p.add_argument("--workers", type=int, default=1, help="batch plots: local processes for the predictions")


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise MoesimError(f"--batches expects integers separated by commas (got {text!r})") from None
    if not values or min(values) < 1:
        raise MoesimError(f"--batches needs positive batch sizes (got {text!r})")
    return values


def _costs(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    out = {}
    for item in text.split(","):
        name, sep, usd = item.rpartition("=")
        try:
            out[name.strip()] = float(usd.replace("_", "").replace("$", ""))
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise MoesimError(f"--costs expects NAME=USD,... (got {item!r})")
    return out


def run(args: argparse.Namespace) -> int:
    from ..analysis import plots
    from ..units import parse_bytes

    kw = {k: v for k, v in (("prompt_tokens", args.prompt), ("gen_tokens", args.gen),
                            ("num_requests", args.requests), ("dtype", args.dtype), ("num_gpus", args.gpus),
                            ("pcie", args.pcie),
                            ("host_memory_bytes", parse_bytes(args.host_mem) if args.host_mem else None))
          if v is not None}
    batches = _ints(args.batches) if args.batches else plots.DEFAULT_BATCHES
    kind = args.kind
    if kind != "pareto" and not args.hw:
        raise MoesimError(f"plot {kind} needs --hw")
    if kind in ("throughput-vs-batch", "utilization") and args.batch is not None:
        raise MoesimError(f"plot {kind} varies the batch: use --batches, not --batch")
    if kind == "throughput-vs-batch":
        systems = [s.strip() for s in args.system.split(",")] if args.system else None
        path = plots.throughput_vs_batch(args.model, args.hw, args.plot, systems=systems, batch_sizes=batches,
                                         workers=args.workers, **kw)
    elif kind == "utilization":
        path = plots.utilization_vs_batch(args.model, args.hw, args.plot, system=args.system or "auto",
                                          batch_sizes=batches, workers=args.workers, **kw)
    elif kind == "pareto":
        platforms = [h.strip() for h in args.hw.split(",") if h.strip()] if args.hw else None
        path = plots.pareto(args.model, args.plot, platforms=platforms, system=args.system or "auto",
                            costs=_costs(args.costs), batch_size=args.batch, **kw)
    else:
        func = plots.roofline if kind == "roofline" else plots.timeline
        if args.batch is not None:
            kw["batch_size"] = args.batch
        path = func(args.model, args.hw, args.plot, system=args.system or "auto", **kw)
    print(f"wrote {path}")
    return 0
