"""`moesim sweep` and `moesim sensitivity`.

``add_parser(sub)`` adds both sub-commands; ``run`` handles both (it dispatches on
``args.command``). Their flags are the Scenario's (:mod:`moesim.cli.args`).

    moesim sweep --model mixtral-8x7b --hw c2 --batch 1,8,64 --pcie gen3,gen4,gen5 --out s.csv
    moesim sweep --model mixtral-8x7b,deepseek-v2-lite --hw c2,rtx4090 --grid gen=128,256 --out s.csv --workers 8
    moesim sweep ... --scheduler tcp://10.0.0.5:8786          # on a Dask cluster (pip install 'moesim[dask]')
    moesim sensitivity --model mixtral-8x7b --hw c2 --system moe-gen
"""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import MoesimError
from ..paths import check_output, writing
from ..scenario import GROUPS, fields
from .args import add_scenario_arguments, build_scenario, given


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    values = [v.strip() for v in text.split(",") if v.strip()]
    return values or None


_OFFLINE = [g for g in GROUPS if g != "online"]


def add_parser(subparsers) -> None:
    sw = subparsers.add_parser(
        "sweep", help="predict every point of a parameter grid (parallel, resumable CSV)",
        description="Predict every point of a grid. Every scenario flag takes comma-separated values, each "
                    "flag one dimension; --grid NAME=V1,V2,... does the same by field name (e.g. batch_size, "
                    "or the short names batch, prompt, gen, requests, experts, gpus, host_mem; system "
                    "parameters as param=KEY=V&KEY=V). Rerunning with the same --out skips finished points.")
    add_scenario_arguments(sw, required=("model", "hardware"),
                           multi=[n for n in fields() if n != "system_params"])
    sw.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...", help="a swept parameter")
    sw.add_argument("--out", help="CSV file: records are appended as they finish; an existing file is resumed")
    sw.add_argument("--workers", type=int, help="local processes (default: one per CPU; 1 = serial)")
    sw.add_argument("--scheduler", help="Dask scheduler address, e.g. tcp://HOST:8786 (needs dask[distributed])")
    sw.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    sw.add_argument("--json", action="store_true", help="print the summary as JSON")

    se = subparsers.add_parser("sensitivity", help="which resource upgrade pays: throughput with each resource x2")
    add_scenario_arguments(se, groups=_OFFLINE, required=("model", "hardware"))
    se.add_argument("--factor", type=float, default=2.0, help="scale of each resource (default 2)")
    se.add_argument("--json", action="store_true", help="print the records as JSON")


def _join_params(items: list[str]) -> list[str]:
    """Fixed --param pairs: one grid value holding all of them."""
    return ["&".join(items)]


def _sweep(args: argparse.Namespace) -> int:
    from ..analysis.sweep import Grid, format_summary, run_sweep

    if args.out is not None:
        check_output(args.out, "--out")  # before the grid is run
    if args.workers is not None and args.workers < 1:
        raise MoesimError(f"--workers must be at least 1 (got {args.workers})")
    dims = {name: (_join_params(value) if name == "system_params" else _names(value))
            for name, value in given(args).items()}
    grid = Grid.from_strings(args.grid, **dims)
    npoints = len(grid)
    if not args.no_progress:
        print(f"sweep: {npoints} points" + (f" -> {args.out}" if args.out else ""), file=sys.stderr)
    with writing(args.out, "--out"):
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

    records = sensitivity(build_scenario(args), factor=args.factor)
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
