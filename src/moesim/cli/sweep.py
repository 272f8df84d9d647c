"""`moesim sweep` and `moesim sensitivity`.

Wiring (in cli.py): ``cli_sweep.add_parser(sub)`` adds both sub-commands; ``cli_sweep.run``
handles both (it dispatches on ``args.command``).

    moesim sweep --model mixtral-8x7b --hw c2 --grid batch_size=1,8,64 --grid pcie=gen3,gen4,gen5 --out s.csv
    moesim sweep --model mixtral-8x7b,deepseek-v2-lite --hw c2,rtx4090 --grid gen=128,256 --out s.csv --workers 8
    moesim sweep ... --scheduler tcp://10.0.0.5:8786          # on a Dask cluster (pip install 'moesim[dask]')
    moesim sensitivity --model mixtral-8x7b --hw c2 --system moe-gen
"""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import MoesimError


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    values = [v.strip() for v in text.split(",") if v.strip()]
    return values or None


def _add_workload(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", type=int, help="prompt tokens (default 512)")
    p.add_argument("--gen", type=int, help="generated tokens (default 256)")
    p.add_argument("--requests", type=int, help="number of requests (default 1000)")
    p.add_argument("--batch", type=int, help="fix the batch size instead of searching it")
    p.add_argument("--dtype", help="weight dtype: bf16, fp16, fp8, int8, int4")
    p.add_argument("--gpus", type=int, help="number of GPUs")
    p.add_argument("--pcie", help="host link: gen3, gen4, gen5")
    p.add_argument("--host-mem", help="host memory, e.g. 512GB")


def add_parser(subparsers) -> None:
    sw = subparsers.add_parser(
        "sweep", help="predict every point of a parameter grid (parallel, resumable CSV)",
        description="Predict every point of a grid. Each --grid NAME=V1,V2,... adds a dimension; names: "
                    "model, hardware, system, batch_size, prompt_tokens, gen_tokens, num_requests, dtype, "
                    "num_experts, top_k, expert_ffn, pcie, host_memory_bytes, num_gpus (short: batch, prompt, gen, "
                    "requests, experts, gpus, host_mem). Rerunning with the same --out skips finished points.")
    sw.add_argument("--model", required=True, help="model name(s), comma-separated")
    sw.add_argument("--hw", required=True, help="platform or GPU name(s), comma-separated")
    sw.add_argument("--system", default="auto", help="serving system(s), comma-separated (default auto)")
    sw.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...", help="a swept parameter")
    sw.add_argument("--out", help="CSV file: records are appended as they finish; an existing file is resumed")
    sw.add_argument("--workers", type=int, help="local processes (default: one per CPU; 1 = serial)")
    sw.add_argument("--scheduler", help="Dask scheduler address, e.g. tcp://HOST:8786 (needs dask[distributed])")
    sw.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    sw.add_argument("--json", action="store_true", help="print the summary as JSON")

    se = subparsers.add_parser("sensitivity", help="which resource upgrade pays: throughput with each resource x2")
    se.add_argument("--model", required=True)
    se.add_argument("--hw", required=True, help="platform or GPU name")
    se.add_argument("--system", default="auto", help="serving system (default auto)")
    se.add_argument("--factor", type=float, default=2.0, help="scale of each resource (default 2)")
    _add_workload(se)
    se.add_argument("--json", action="store_true", help="print the records as JSON")


def _sweep(args: argparse.Namespace) -> int:
    from ..analysis.sweep import Grid, format_summary, run_sweep

    grid = Grid.from_strings(args.grid, model=_names(args.model), hardware=_names(args.hw),
                             system=_names(args.system))
    npoints = len(grid)
    if not args.no_progress:
        print(f"sweep: {npoints} points" + (f" -> {args.out}" if args.out else ""), file=sys.stderr)
    records = run_sweep(grid, args.out, workers=args.workers, scheduler=args.scheduler,
                        progress=not args.no_progress)
    if args.json:
        summary = records.summary()
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(format_summary(records))
        if args.out:
            print(f"records: {args.out}")
    return 0


def _sensitivity(args: argparse.Namespace) -> int:
    from ..analysis.sweep import format_sensitivity, sensitivity
    from ..units import parse_bytes

    kw = {k: v for k, v in (("prompt_tokens", args.prompt), ("gen_tokens", args.gen),
                            ("num_requests", args.requests), ("batch_size", args.batch), ("dtype", args.dtype),
                            ("num_gpus", args.gpus), ("pcie", args.pcie),
                            ("host_memory_bytes", parse_bytes(args.host_mem) if args.host_mem else None))
          if v is not None}
    records = sensitivity(args.model, args.hw, args.system, args.factor, **kw)
    if args.json:
        print(json.dumps(list(records), indent=2))
    else:
        print(format_sensitivity(records))
    return 0


def run(args: argparse.Namespace) -> int:
    commands = {"sweep": _sweep, "sensitivity": _sensitivity}
    command = getattr(args, "command", None)
    if command not in commands:
        raise MoesimError(f"cli_sweep handles {', '.join(commands)}, not {command!r}")
    return commands[command](args)
