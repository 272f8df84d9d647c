"""`moesim plot KIND`: figures of predictions (PNG or SVG by the --plot extension).

Its scenario flags are generated from the Scenario (:mod:`moesim.cli.args`).

    moesim plot throughput-vs-batch --model mixtral-8x7b --hw c2 --plot tput.png
    moesim plot roofline --model mixtral-8x7b --hw c2 --system moe-gen --plot roof.svg
    moesim plot timeline --model deepseek-v2-lite --hw h100-sxm --plot step.png
    moesim plot pareto --model mixtral-8x7b --plot cost.png [--hw c2,rtx4090,...] [--costs hgx-h100=300000]
    moesim plot utilization --model mixtral-8x7b --hw c2 --system moe-gen --plot util.png
"""

from __future__ import annotations

import argparse
import math
import sys

from ..errors import MoesimError
from ..paths import check_output, writing
from ..scenario import GROUPS
from .args import add_scenario_arguments, given, scenario_fields

KINDS = ("throughput-vs-batch", "roofline", "timeline", "pareto", "utilization")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("plot", help="throughput vs batch, roofline, step timeline, cost Pareto, utilisation")
    p.add_argument("kind", choices=KINDS)
    add_scenario_arguments(p, groups=[g for g in GROUPS if g != "online"], required=("model",), help_overrides={
        "hardware": "platform or GPU name (pareto: comma-separated platforms; default all)",
        "system": "serving system (default auto; throughput-vs-batch: comma-separated, default all)",
        "batch_size": "roofline/timeline/pareto: fix the batch size"})
    p.add_argument("--plot", required=True, help="output file, .png or .svg")
    p.add_argument("--batches", help="batch sizes for the batch plots, e.g. 1,4,16,64,256")
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
        if sep and not (math.isfinite(out[name.strip()]) and out[name.strip()] > 0):
            raise MoesimError(f"--costs: the price of {name.strip()} must be a finite number of US dollars above 0 "
                              f"(got {usd!r})")
        if not sep or not name.strip():
            raise MoesimError(f"--costs expects NAME=USD,... (got {item!r})")
    return out


def run(args: argparse.Namespace) -> int:
    from ..analysis import plots

    check_output(args.plot, "--plot", plots.FORMATS)  # before the predictions
    if args.workers < 1:
        raise MoesimError(f"--workers must be at least 1 (got {args.workers})")
    raw = given(args)
    hw, system = raw.get("hardware"), raw.get("system")
    kw = scenario_fields(args, exclude=("model", "hardware", "system"))
    batch = kw.pop("batch_size", None)
    model = raw["model"]
    batches = _ints(args.batches) if args.batches else plots.DEFAULT_BATCHES
    with writing(args.plot, "--plot"):
        path = _draw(args, model, hw, system, kw, batch, batches)
    print(f"wrote {path}")
    return 0


def _draw(args: argparse.Namespace, model, hw, system, kw: dict, batch, batches):
    from ..analysis import plots

    kind = args.kind
    if kind != "pareto" and not hw:
        raise MoesimError(f"plot {kind} needs --hw")
    if kind in ("throughput-vs-batch", "utilization") and batch is not None:
        raise MoesimError(f"plot {kind} varies the batch: use --batches, not --batch")
    if kind == "throughput-vs-batch":
        systems = [s.strip() for s in system.split(",")] if system else None
        path, fig = plots.throughput_vs_batch(model, hw, args.plot, systems=systems, batch_sizes=batches,
                                              workers=args.workers, return_figure=True, **kw)
    elif kind == "utilization":
        path, fig = plots.utilization_vs_batch(model, hw, args.plot, system=system or "auto", batch_sizes=batches,
                                               workers=args.workers, return_figure=True, **kw)
    elif kind == "pareto":
        platforms = [h.strip() for h in hw.split(",") if h.strip()] if hw else None
        path, fig = plots.pareto(model, args.plot, platforms=platforms, system=system or "auto",
                                 costs=_costs(args.costs), batch_size=batch, return_figure=True, **kw)
    else:
        func = plots.roofline if kind == "roofline" else plots.timeline
        if batch is not None:
            kw["batch_size"] = batch
        path, fig = func(model, hw, args.plot, system=system or "auto", return_figure=True, **kw)
    for line in plots.not_drawn(fig):  # also under the figure, with long reasons shortened
        print(f"moesim: not drawn: {line}", file=sys.stderr)
    return path
