"""Figures of predictions: throughput vs batch, hierarchical roofline, step timeline, cost Pareto
frontier, and sparse vs dense utilisation.

matplotlib is imported inside each function (the predict path never imports it) and figures
are drawn on the Agg canvas without pyplot, so nothing global changes. Each function saves a
PNG or SVG (chosen by the path's extension) and returns the path; ``return_figure=True``
returns ``(path, figure)`` instead, for inspection.

What a figure cannot show is said, never dropped: a system or batch that cannot run, a platform
without a price, an operation the roofline cannot place is listed under the figure ("not
drawn: ...") and kept on the figure for :func:`not_drawn` (the CLI prints it on stderr). A batch
plot where nothing can run raises :class:`MoesimError` with the reasons instead of drawing an
empty figure.

    from moesim import plots
    plots.throughput_vs_batch("mixtral-8x7b", "c2", "tput.png")
    plots.roofline("mixtral-8x7b", "c2", "roof.svg", system="moe-gen")
"""

from __future__ import annotations

import sys

import re
from pathlib import Path
from typing import Any

from ..errors import MoesimError

DEFAULT_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
FORMATS = (".png", ".svg")
_RESOURCE_ORDER = ("gpu", "gpu-link", "h2d", "d2h", "cpu", "disk")
# roofline operations: colours apart from the roofs' C0 (GPU), C3 (PCIe) and C2 (CPU)
_OP_COLORS = ("C1", "C4", "C5", "C6", "C7", "C8", "C9", "#000080", "#808000", "#ff1493")


# ---- shared helpers --------------------------------------------------------------------------
def _figure(**kw):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kw)
    FigureCanvasAgg(fig)
    return fig


def _check_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise MoesimError(f"plot path {path} must end in {' or '.join(FORMATS)}")
    return path


def _finish(fig, path: Path, return_figure: bool):
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=path.suffix.lower()[1:], dpi=150, bbox_inches="tight")
    return (path, fig) if return_figure else path


def _name(obj: Any) -> str:
    return getattr(obj, "name", None) or str(obj)


def _short(text: Any, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def _reason(system: str, reason: str | None) -> str:
    """A reason without its leading "system:" (the caller names the system already)."""
    text = " ".join((reason or "no reason given").split())
    head, sep, rest = text.partition(": ")
    return rest if sep and head.lower() == system.lower() else text


def _tok_s(value: float) -> str:
    return f"{value:,.0f} tok/s" if value >= 100 else f"{value:.3g} tok/s"


def _note_not_drawn(fig, items: list[str], shown: list[str] | None = None) -> None:
    """List what the figure does not show under it (``shown``: the same items with long reasons
    shortened, default ``items``) and keep ``items``, in full, on the figure for :func:`not_drawn`."""
    import textwrap

    fig._moesim_not_drawn = list(items)
    if not items:
        return
    width = max(60, int(fig.get_figwidth() * 17))
    lines = ["not drawn:"]
    for item in shown if shown is not None else items:
        lines += textwrap.wrap("- " + item, width, subsequent_indent="   ")
    fig.text(0.01, -0.01, "\n".join(lines), fontsize=7, ha="left", va="top",
             bbox=dict(boxstyle="round,pad=0.4", facecolor="#f6f6f6", edgecolor="#bbbbbb"))


def not_drawn(fig) -> list[str]:
    """What a figure of this module does not show and why (empty when everything is drawn)."""
    return list(getattr(fig, "_moesim_not_drawn", []))


def _platform_name(hardware: Any, kw: dict[str, Any]) -> str:
    from ..db.resolve import get_hardware

    overrides = {k: kw.get(k) for k in ("num_gpus", "cpu", "host_memory_bytes", "pcie")}
    try:
        return get_hardware(hardware, **overrides).name
    except Exception:  # noqa: BLE001 - a name for a message only; the sweep already ran
        return _name(hardware)


def _plain_log_axis(axis, unit: str = "") -> None:
    """Label a log axis with plain numbers (1, 10, 200, $8k) where matplotlib would label it
    (it thins minor labels on wide ranges), instead of powers of ten."""
    from matplotlib.ticker import LogFormatterSciNotation

    def plain(x: float) -> str:
        if unit == "$":
            return f"${x / 1e6:g}M" if x >= 1e6 else f"${x / 1e3:g}k" if x >= 1e3 else f"${x:g}"
        return f"{x:,.0f}" if x >= 1 else f"{x:g}"

    class Plain(LogFormatterSciNotation):
        def __call__(self, x, pos=None):
            return plain(x) if super().__call__(x, pos) else ""

    axis.set_major_formatter(Plain())
    axis.set_minor_formatter(Plain(labelOnlyBase=False, minor_thresholds=(2, 1.2)))


def _fit_axis(ax, which: str, values: list[float], unit: str = "") -> bool:
    """Scale one axis to positive ``values``: log where they span a factor of 4 or more, linear
    (never below 0) where they do not, with a margin either way. Returns whether it is log."""
    from matplotlib.ticker import FuncFormatter

    lo, hi = min(values), max(values)
    axis = ax.xaxis if which == "x" else ax.yaxis
    set_scale, set_lim = (ax.set_xscale, ax.set_xlim) if which == "x" else (ax.set_yscale, ax.set_ylim)
    if hi >= 4 * lo:
        set_scale("log")
        _plain_log_axis(axis, unit)
        pad = (hi / lo) ** 0.08
        set_lim(lo / pad, hi * pad)
        return True
    pad = 0.1 * (hi - lo) if hi > lo else 0.1 * hi
    set_lim(max(0.0, lo - pad), hi + pad)
    if unit == "$":
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"${v:,.0f}"))
    return False


def _batch_axis(ax, batches) -> None:
    """log2 batch axis with the batch sizes written as numbers."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(batches))))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(b) for b in sorted(set(batches))])
    ax.set_xlabel("batch size (sequences)")


def _infeasible_notes(recs, systems: list[str], limit: int = 200) -> tuple[list[str], list[str]]:
    """One line per system with batches that cannot run: which batches, and the first reason
    (in full, and shortened to ``limit`` characters for the figure)."""
    full, short = [], []
    for system in systems:
        mine = sorted((r for r in recs if r["system"] == system), key=lambda r: r["batch_size"])
        bad = [r for r in mine if not r["feasible"]]
        if not bad:
            continue
        where = ("at every batch" if len(bad) == len(mine)
                 else "at batch " + ", ".join(str(r["batch_size"]) for r in bad))
        reason = _reason(system, bad[0]["reason"])
        full.append(f"{system} {where}: {reason}")
        short.append(f"{system} {where}: {_short(reason, limit)}")
    return full, short


def _nothing_runs(model: Any, hardware: Any, systems: list[str], recs, kw: dict[str, Any]) -> MoesimError:
    batches = sorted({r["batch_size"] for r in recs})
    who = f"{systems[0]} cannot run" if len(systems) == 1 and systems[0] != "auto" else "no system can run"
    reasons = []
    for system in systems:
        first = min((r for r in recs if r["system"] == system), key=lambda r: r["batch_size"], default=None)
        if first is not None:
            reasons.append(f"  {system}: {_short(_reason(system, first['reason']), 400)}")
    return MoesimError(f"{who} {_name(model)} on {_platform_name(hardware, kw)} at any batch "
                       f"({', '.join(map(str, batches))}); nothing to draw:\n" + "\n".join(reasons))


def _plan(model: Any, hardware: Any, system: str, **kw: Any):
    """(Context, Plan) of one prediction, as predict() builds them (the step's engine included).

    ``kw``: any Scenario field."""
    from .. import scenario as sc
    from ..predict import plan_scenario

    ctx, plan, _, _ = plan_scenario(sc.build(model, hardware, system, **kw))
    return ctx, plan


def _batch_sweep(model: Any, hardware: Any, systems: list[str], batch_sizes, workers: int, kw: dict[str, Any]):
    from .sweep import Grid, run_sweep

    if not isinstance(hardware, (str, Path)) or not isinstance(model, (str, Path)):
        raise MoesimError("batch plots take model and hardware names (sweeps record names)")
    grid = Grid({**{k: v for k, v in kw.items() if v is not None}, "model": model, "hardware": hardware,
                 "system": systems, "batch_size": list(batch_sizes)})
    return run_sweep(grid, None, workers=workers, progress=sys.stderr.isatty())


# ---- throughput vs batch size ----------------------------------------------------------------
_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "h", "<", ">")


def throughput_vs_batch(model: str, hardware: str, path: str | Path, systems: list[str] | None = None,
                        batch_sizes=DEFAULT_BATCHES, workers: int = 1, return_figure: bool = False, **kw: Any):
    """Generation throughput against the (fixed) batch size, one line per serving system.

    ``systems``: default every registered system; ``kw``: other sweep parameters (prompt_tokens,
    gen_tokens, num_requests, dtype, pcie, num_gpus, ...). A system or batch that cannot run is
    not drawn and is listed, with its reason, under the figure; when nothing can run,
    :class:`MoesimError` says why (no empty figure).
    """
    from ..systems import SYSTEMS

    path = _check_path(path)
    systems = list(systems or SYSTEMS)
    recs = _batch_sweep(model, hardware, systems, batch_sizes, workers, kw)
    if not any(r["feasible"] for r in recs):
        raise _nothing_runs(model, hardware, systems, recs, kw)
    fig = _figure(figsize=(8, 4.8))
    ax = fig.add_subplot()
    drawn: dict[str, tuple[list, list]] = {}
    for i, system in enumerate(systems):
        rows = sorted((r for r in recs if r["system"] == system and r["feasible"]), key=lambda r: r["batch_size"])
        if not rows:
            continue
        xs, ys = [r["batch_size"] for r in rows], [r["throughput_tok_s"] for r in rows]
        twin = next((other for other, (ox, oy) in drawn.items()
                     if ox == xs and all(abs(a - b) <= 0.01 * max(a, b) for a, b in zip(oy, ys))), None)
        style = dict(color=f"C{i % 10}", marker=_MARKERS[i % len(_MARKERS)], ms=5, label=system)
        if twin:  # it would hide the line it coincides with: dashed, hollow markers, and said so
            style.update(ls="--", mfc="none", ms=8, label=f"{system} (same as {twin})")
        ax.plot(xs, ys, **style)
        drawn[system] = (xs, ys)
    _batch_axis(ax, batch_sizes)
    ax.set_yscale("log")
    _plain_log_axis(ax.yaxis)
    ax.set_ylabel("generation throughput (tok/s, log scale)")
    ax.set_title(f"{_name(model)} on {_platform_name(hardware, kw)}: throughput vs batch size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="system", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _note_not_drawn(fig, *_infeasible_notes(recs, systems))
    return _finish(fig, path, return_figure)


# ---- hierarchical roofline -------------------------------------------------------------------
def _module_ops(ctx, plan, batch: int, context: int) -> list[tuple[str, str, Any]]:
    """(name, device, OpCost) of the modules of one decode step, from the cost model the systems use."""
    m = ctx.model
    ops = [("attention proj", "gpu", ctx.attention_proj(batch)),
           ("attention core", "gpu", ctx.attention_core(batch, 1, context, False))]
    if m.moe:
        ops.append(("router", "gpu", ctx.router(batch)))
        ops.append(("routed experts", "gpu", ctx.experts(ctx.active_experts(batch), batch * m.moe.top_k)))
        shared = ctx.shared_experts(batch)
        if shared is not None:
            ops.append(("shared experts", "gpu", shared))
    if m.num_dense_layers:
        ops.append(("dense FFN", "gpu", ctx.dense_ffn(batch)))
    ops.append(("LM head", "gpu", ctx.head(batch, batch)))
    cpu_fraction = float(plan.config.get("cpu_attention_fraction") or 0.0)
    cpu_seqs = round(cpu_fraction * batch)
    if cpu_seqs:
        ops.append((f"CPU attention ({cpu_seqs} seq)", "cpu", ctx.cpu_attention(cpu_seqs, context, False)))
    return ops


def roofline_data(model: Any, hardware: Any, system: str = "auto", **kw: Any) -> dict[str, Any]:
    """Roofs and operation points of the middle decode step of a prediction.

    Operations: engine tasks carrying both FLOPs and bytes are placed as they are; when the
    system records none (compute tasks carry times only), each module of the step is priced
    with the cost model the systems use (FLOPs, HBM bytes, time). The whole step is placed once
    per memory level it reads (HBM bytes, and PCIe bytes where weights or KV stream from the
    host): one achieved FLOP/s at several intensities, the hierarchical roofline.
    """
    from .. import metrics
    from ..costs import compute_dtype

    ctx, plan = _plan(model, hardware, system, **kw)
    context, step = plan.mid_decode
    batch = plan.batch_size
    p = ctx.platform
    gpu_peak = p.gpu.peak_for(compute_dtype(ctx.edtype, p.gpu))[0]
    roofs = {
        "gpu_flop_per_s": gpu_peak,
        "hbm_bytes_per_s": p.gpu.memory_bandwidth_bytes_per_s,
        "pcie_bytes_per_s": p.host_link.h2d_pinned_bytes_per_s,
        "cpu_flop_per_s": p.cpu.peak_for(ctx.edtype) * p.num_cpus,
        "dram_bytes_per_s": p.host_memory_bandwidth_bytes_per_s,
    }
    points = []
    for t in step.engine.tasks:
        if t.flop > 0 and t.bytes > 0 and t.duration_s > 0 and t.resource in ("gpu", "cpu"):
            points.append({"name": t.name, "device": t.resource, "level": "HBM" if t.resource == "gpu" else "DRAM",
                           "intensity": t.flop / t.bytes, "flop_per_s": t.flop / t.duration_s, "source": "engine"})
    not_placed = []
    if not points:
        for name, device, cost in _module_ops(ctx, plan, batch, context):
            seconds = ctx.gpu_s(cost) if device == "gpu" else ctx.cpu_s(cost)
            if cost.flop > 0 and cost.bytes > 0 and seconds > 0:
                points.append({"name": name, "device": device, "level": "HBM" if device == "gpu" else "DRAM",
                               "intensity": cost.flop / cost.bytes, "flop_per_s": cost.flop / seconds,
                               "source": "cost model"})
            else:
                zero = [what for what, v in (("FLOPs", cost.flop), ("bytes", cost.bytes), ("time", seconds)) if v <= 0]
                not_placed.append(f"{name} ({device}): no {' or '.join(zero)}, so no place on a log-log roofline")
    n = p.num_gpus
    step_flop = batch * metrics.sparse_flop_per_token(ctx, context) / n
    achieved = step_flop / step.time_s
    hbm_bytes = (metrics.activated_weight_bytes(ctx, batch) + metrics.kv_read_bytes(ctx, batch, context)) / n
    steps = [{"name": "decode step", "level": "HBM", "intensity": step_flop / hbm_bytes, "flop_per_s": achieved}]
    scale = step.time_s / step.engine.makespan_s if step.engine.makespan_s else 1.0
    h2d_bytes = sum(t.bytes for t in step.engine.tasks if t.resource == "h2d") * scale
    if h2d_bytes > 0:
        steps.append({"name": "decode step", "level": "PCIe", "intensity": step_flop / h2d_bytes,
                      "flop_per_s": achieved})
    return {"model": ctx.model.name, "hardware": p.name, "gpu": p.gpu.name, "system": plan.system, "batch": batch,
            "context": context, "step_time_s": step.time_s, "bottleneck": step.bottleneck(), "roofs": roofs,
            "operations": points, "step": steps, "not_placed": not_placed}


def roofline(model: Any, hardware: Any, path: str | Path, system: str = "auto", return_figure: bool = False,
             **kw: Any):
    """Hierarchical roofline (GPU compute, HBM, PCIe, CPU compute, host DRAM) with the operations
    of one simulated decode step placed on it."""
    import numpy as np

    path = _check_path(path)
    data = roofline_data(model, hardware, system, **kw)
    r = data["roofs"]
    xs = [pt["intensity"] for pt in data["operations"] + data["step"]]
    lo = min([0.1] + [x / 3 for x in xs])
    hi = max([1e4] + [x * 3 for x in xs])
    x = np.logspace(np.log10(lo), np.log10(hi), 400)
    fig = _figure(figsize=(8, 5.5))
    ax = fig.add_subplot()
    ax.plot(x, np.minimum(r["gpu_flop_per_s"], x * r["hbm_bytes_per_s"]), color="C0", lw=2,
            label=f"GPU roof: {r['gpu_flop_per_s'] / 1e12:.4g} TFLOP/s, HBM {r['hbm_bytes_per_s'] / 1e9:.4g} GB/s")
    ax.plot(x, np.minimum(r["gpu_flop_per_s"], x * r["pcie_bytes_per_s"]), color="C3", lw=2, ls="--",
            label=f"PCIe roof: {r['pcie_bytes_per_s'] / 1e9:.3g} GB/s host->GPU")
    ax.plot(x, np.minimum(r["cpu_flop_per_s"], x * r["dram_bytes_per_s"]), color="C2", lw=2, ls=":",
            label=f"CPU roof: {r['cpu_flop_per_s'] / 1e12:.3g} TFLOP/s, DRAM {r['dram_bytes_per_s'] / 1e9:.4g} GB/s")
    for i, pt in enumerate(data["operations"]):
        marker = ("o", "D", "^", "v", "P", "X", "h")[i % 7] if pt["device"] == "gpu" else "s"
        ax.scatter(pt["intensity"], pt["flop_per_s"], marker=marker, s=40, zorder=5, edgecolor="white",
                   linewidth=0.4, color=_OP_COLORS[i % len(_OP_COLORS)],
                   label=f"{pt['name']} ({pt['device']}, {pt['level']} bytes)")
    step = sorted(data["step"], key=lambda s: s["intensity"])
    if step:
        ax.plot([s["intensity"] for s in step], [s["flop_per_s"] for s in step], color="k", ls=":", lw=1, zorder=2)
        ax.scatter([s["intensity"] for s in step], [s["flop_per_s"] for s in step], marker="*", s=200,
                   facecolors="none", edgecolors="k", linewidths=1.2, zorder=4,
                   label="whole decode step (achieved FLOP/s)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.autoscale_view()  # final limits before the labels are placed
    _place_labels(ax, [(s["intensity"], s["flop_per_s"]) for s in step], [f"step vs {s['level']} bytes" for s in step],
                  avoid=[(pt["intensity"], pt["flop_per_s"]) for pt in data["operations"]])
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("performance (FLOP/s)")
    ax.set_title(f"hierarchical roofline: {data['model']} on {data['hardware']}, {data['system']}\n"
                 f"decode step, batch {data['batch']}, context {data['context']} (bottleneck {data['bottleneck']})",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="lower right")
    _note_not_drawn(fig, data["not_placed"])
    return _finish(fig, path, return_figure)


# ---- timeline --------------------------------------------------------------------------------
def timeline(model: Any, hardware: Any, path: str | Path, system: str = "auto", return_figure: bool = False,
             **kw: Any):
    """Gantt chart of the simulated middle decode step: one row per resource, bars by module category."""
    path = _check_path(path)
    ctx, plan = _plan(model, hardware, system, **kw)
    context, step = plan.mid_decode
    tasks = [t for t in step.engine.tasks if t.duration_s > 0]
    resources = sorted({t.resource for t in tasks},
                       key=lambda r: (_RESOURCE_ORDER.index(r) if r in _RESOURCE_ORDER else len(_RESOURCE_ORDER), r))
    categories = sorted({t.category for t in tasks})
    colors = {c: f"C{i % 10}" for i, c in enumerate(categories)}
    fig = _figure(figsize=(10, 1.2 + 0.6 * max(len(resources), 1)))
    ax = fig.add_subplot()
    thin = 0.003 * step.engine.makespan_s * 1e3  # a bar this short would vanish under a white edge
    for row, resource in enumerate(resources):
        for cat in categories:
            bars = [(t.start_s * 1e3, t.duration_s * 1e3) for t in tasks
                    if t.resource == resource and t.category == cat]
            wide = [b for b in bars if b[1] >= thin]
            narrow = [b for b in bars if b[1] < thin]
            if wide:
                ax.broken_barh(wide, (row - 0.4, 0.8), facecolors=colors[cat], edgecolor="white", linewidth=0.3)
            if narrow:  # edged in their own colour so that they stay visible
                ax.broken_barh(narrow, (row - 0.4, 0.8), facecolors=colors[cat], edgecolor=colors[cat], linewidth=0.6)
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=colors[c], label=c) for c in categories]
    ax.set_yticks(range(len(resources)))
    ax.set_yticklabels(resources)
    ax.invert_yaxis()
    ax.set_xlim(0, step.engine.makespan_s * 1e3 if step.engine.makespan_s else 1)
    ax.set_xlabel("time (ms)")
    ax.set_ylabel("resource")
    ax.set_title(f"{plan.system}: decode step of {ctx.model.name} on {ctx.platform.name} "
                 f"({step.simulated_layers} of {step.total_layers} layers simulated, batch {plan.batch_size}, "
                 f"context {context})", fontsize=10)
    if handles:
        ax.legend(handles=handles, title="module", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, axis="x", alpha=0.3)
    return _finish(fig, path, return_figure)


# ---- Pareto frontier of throughput vs capital cost -------------------------------------------
def platform_cost_usd(platform) -> float | None:
    """num_gpus x the GPU's launch price + the platform's price without GPUs; None where unknown."""
    from .pricing import capital_cost_usd

    return capital_cost_usd(platform.num_gpus, platform.gpu.launch_price_usd, platform.price_usd_excluding_gpus)[2]


def pareto_points(model: Any, platforms: list[Any] | None = None, system: str = "auto",
                  costs: dict[str, float] | None = None, **kw: Any):
    """One record per platform: cost, throughput, feasibility, and whether it is on the Pareto frontier.

    ``costs`` (platform name -> USD) prices platforms whose database entries lack a price (or
    overrides theirs)."""
    from .. import db
    from .. import scenario as sc
    from ..db import normalize
    from ..db.resolve import get_hardware
    from ..predict import predict
    from .sweep import Records, _flat

    names = list(platforms) if platforms else db.platforms().names()
    rows = []
    for name in names:
        scenario = sc.build(model, name, system, **kw)
        platform = get_hardware(name, **scenario.platform_overrides())
        given = {normalize(k): v for k, v in (costs or {}).items()}
        cost = given.get(normalize(platform.name), given.get(normalize(_name(name))))
        row = {"platform": platform.name, "gpu": platform.gpu.name, "num_gpus": platform.num_gpus,
               "cost_usd": float(cost) if cost is not None else platform_cost_usd(platform)}
        try:
            p = predict(scenario.replace(hardware=platform, **dict.fromkeys(scenario.platform_overrides())))
        except MoesimError as exc:
            row.update(system=None, throughput_tok_s=None, feasible=False, reason=_flat(exc))
        else:
            row.update(system=p.system, throughput_tok_s=p.throughput_tok_s, feasible=True, reason=None)
        rows.append(row)
    best = -1.0
    for row in sorted((r for r in rows if r["feasible"] and r["cost_usd"] is not None),
                      key=lambda r: (r["cost_usd"], -r["throughput_tok_s"])):
        row["pareto"] = row["throughput_tok_s"] > best
        best = max(best, row["throughput_tok_s"])
    for row in rows:
        row.setdefault("pareto", False)
    return Records(rows)


def _place_labels(ax, points: list[tuple[float, float]], texts: list[str], fontsize: float = 8,
                  color: str = "black", avoid: list[tuple[float, float]] = ()) -> list[Any]:
    """Annotate each point with its text where the text overlaps no other label or point.

    Tries the four corners beside the point, then rings further out (with a leader line to the
    point); a label that finds no free place takes the last ring's first place (still with its
    leader line). ``avoid``: other points no label may cover. Sizes are estimated from the font
    size. The axes' limits and scales must be final."""
    import math

    fig = ax.figure
    px = fig.dpi / 72.0  # display pixels per point
    xy = ax.transData.transform(points) if points else []
    frame = ax.bbox
    marker_r = 5 * px
    others = ax.transData.transform(list(avoid)) if avoid else []
    obstacles = [(x - marker_r, y - marker_r, x + marker_r, y + marker_r) for x, y in list(xy) + list(others)]
    placed: list[tuple[float, float, float, float]] = []

    def free(box) -> bool:
        x0, y0, x1, y1 = box
        if x0 < frame.x0 or x1 > frame.x1 or y0 < frame.y0 or y1 > frame.y1:
            return False
        return not any(x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1 for b in placed + obstacles)

    out = []
    for (x, y), text in zip(xy, texts):
        w, h = 0.62 * fontsize * len(text) * px, 1.25 * fontsize * px
        gap = 4 * px
        candidates = [(gap + marker_r / 2, gap / 2), (gap + marker_r / 2, -h - gap / 2),
                      (-w - gap - marker_r / 2, gap / 2), (-w - gap - marker_r / 2, -h - gap / 2)]
        for radius in (16, 26, 38, 52):
            for k in range(12):
                a = math.pi / 4 + k * math.pi / 6
                candidates.append((radius * px * math.cos(a) - w / 2, radius * px * math.sin(a) - h / 2))
        chosen = next((c for c in candidates if free((x + c[0], y + c[1], x + c[0] + w, y + c[1] + h))),
                      candidates[-12])
        placed.append((x + chosen[0], y + chosen[1], x + chosen[0] + w, y + chosen[1] + h))
        far = math.hypot(chosen[0] + w / 2, chosen[1] + h / 2) > 12 * px
        out.append(ax.annotate(
            text, ax.transData.inverted().transform((x, y)), xytext=(chosen[0] / px, chosen[1] / px),
            textcoords="offset points", ha="left", va="bottom", fontsize=fontsize, color=color, zorder=6,
            arrowprops=dict(arrowstyle="-", lw=0.6, color="grey", shrinkA=0, shrinkB=3) if far else None))
    return out


def pareto(model: Any, path: str | Path, platforms: list[Any] | None = None, system: str = "auto",
           costs: dict[str, float] | None = None, return_figure: bool = False, **kw: Any):
    """Generation throughput against capital cost over platforms, with the Pareto frontier
    (no cheaper platform is faster).

    Each drawn platform carries a number on the plot and a numbered legend entry (platform,
    system, cost, throughput). Every platform not drawn is listed under the figure with why: no
    known price (with its throughput where it runs) or cannot run the model (with the reason).
    When no platform can be drawn :class:`MoesimError` says why."""
    from matplotlib.lines import Line2D

    path = _check_path(path)
    rows = pareto_points(model, platforms, system, costs, **kw)
    model_name = _name(model)
    shown = sorted((r for r in rows if r["feasible"] and r["cost_usd"] is not None),
                   key=lambda r: (r["cost_usd"], r["throughput_tok_s"]))
    unpriced = [r for r in rows if r["cost_usd"] is None]
    infeasible = [r for r in rows if not r["feasible"] and r["cost_usd"] is not None]
    notes, shown_notes = [], []
    if unpriced:
        notes.append("no price on file (give one with --costs NAME=USD, or costs={name: usd}): " + "; ".join(
            f"{r['platform']} ({r['system']}, {_tok_s(r['throughput_tok_s'])})" if r["feasible"]
            else f"{r['platform']} (cannot run it either: {r['reason']})" for r in unpriced))
        shown_notes.append("no price on file (give one with --costs NAME=USD, or costs={name: usd}): " + "; ".join(
            f"{r['platform']} ({r['system']}, {_tok_s(r['throughput_tok_s'])})" if r["feasible"]
            else f"{r['platform']} (cannot run it either)" for r in unpriced))
    for r in infeasible:
        reason = re.sub(r"^no serving system can run .+? on .+?: ", "", r["reason"] or "no reason given")
        reason = re.sub(r"\b([\w.-]+): \1: ", r"\1: ", reason)  # "vllm: vllm: ..." said once
        notes.append(f"{r['platform']} cannot run {model_name}: {reason}")
        shown_notes.append(f"{r['platform']} cannot run {model_name}: {_short(reason, 220)}")
    if not shown:
        raise MoesimError(f"no platform can be drawn on the cost Pareto plot of {model_name}:\n  "
                          + "\n  ".join(_short(n, 600) for n in notes))
    front = [r for r in shown if r["pareto"]]
    fig = _figure(figsize=(10, 5.5))
    ax = fig.add_subplot()
    ax.step([r["cost_usd"] for r in front], [r["throughput_tok_s"] for r in front], where="post", color="C3",
            lw=1.5, alpha=0.8, zorder=2)
    for r in shown:
        ax.scatter(r["cost_usd"], r["throughput_tok_s"], color="C3" if r["pareto"] else "C0",
                   s=60 if r["pareto"] else 36, zorder=4, edgecolor="white", linewidth=0.5)
    xs = [r["cost_usd"] for r in shown]
    ys = [r["throughput_tok_s"] for r in shown]
    x_log = _fit_axis(ax, "x", xs, "$")
    y_log = _fit_axis(ax, "y", ys)
    _place_labels(ax, list(zip(xs, ys)), [str(i) for i in range(1, len(shown) + 1)], fontsize=8)
    handles = [Line2D([], [], color="C3", lw=1.5, label="Pareto frontier (no cheaper platform is faster)"),
               Line2D([], [], marker="o", ls="none", color="C3", label="on the frontier"),
               Line2D([], [], marker="o", ls="none", color="C0", label="dominated (a cheaper one is as fast)")]
    handles += [Line2D([], [], ls="none", label=f"{i}. {r['platform']} ({r['system']}): ${r['cost_usd']:,.0f}, "
                                                f"{_tok_s(r['throughput_tok_s'])}")
                for i, r in enumerate(shown, 1)]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), handlelength=1.5)
    ax.set_xlabel("capital cost (USD" + (", log scale)" if x_log else ")"))
    ax.set_ylabel("generation throughput (tok/s" + (", log scale)" if y_log else ")"))
    ax.set_title(f"{model_name}: throughput vs capital cost ({len(shown)} of {len(rows)} platforms drawn, "
                 f"system {system})")
    ax.grid(True, which="both", alpha=0.3)
    _note_not_drawn(fig, notes, shown_notes)
    return _finish(fig, path, return_figure)


# ---- utilisation vs batch --------------------------------------------------------------------
def utilization_vs_batch(model: str, hardware: str, path: str | Path, system: str = "auto",
                         batch_sizes=DEFAULT_BATCHES, workers: int = 1, return_figure: bool = False, **kw: Any):
    """S-MBU and S-MFU (sparsity-aware, MoE-CAP) against batch size, beside the dense MBU and MFU.

    One colour per serving system: with ``system="auto"`` each batch may be served by a different
    system, and a line joins only neighbouring batches served by the same one (the figure legend
    names the systems; the line style says which metric). Batches that cannot run are listed
    under the figure; when none can, :class:`MoesimError` says why."""
    import math

    from matplotlib.lines import Line2D

    path = _check_path(path)
    recs = _batch_sweep(model, hardware, [system], batch_sizes, workers, kw)
    feasible = sorted((r for r in recs if r["feasible"]), key=lambda r: r["batch_size"])
    if not feasible:
        raise _nothing_runs(model, hardware, [system], recs, kw)
    chosen = list(dict.fromkeys(r["chosen_system"] for r in feasible))
    fig = _figure(figsize=(11, 4.5))
    ax_bw, ax_fl = fig.subplots(1, 2)
    b = [r["batch_size"] for r in feasible]
    metrics = ((ax_bw, "s_mbu", "-", "o"), (ax_bw, "mbu", "--", "s"), (ax_fl, "s_mfu", "-", "o"),
               (ax_fl, "mfu", "--", "s"))
    for i, name in enumerate(chosen):
        for ax, key, ls, marker in metrics:
            ys = [r[key] if r["chosen_system"] == name else math.nan for r in feasible]
            ax.plot(b, ys, color=f"C{i % 10}", ls=ls, marker=marker, ms=5,
                    label=f"{name}: {key.replace('_', '-').upper()}")
    for ax, what in ((ax_bw, "memory-bandwidth utilisation (fraction of peak)"),
                     (ax_fl, "compute utilisation (fraction of peak FLOP/s)")):
        _batch_axis(ax, batch_sizes)
        ax.set_ylabel(what)
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_ylim(0, max(1.05, ax.get_ylim()[1]))
        ax.grid(True, which="both", alpha=0.3)
    ax_bw.set_title("bandwidth: S-MBU vs MBU")
    ax_fl.set_title("compute: S-MFU vs MFU")
    fig.subplots_adjust(right=0.78, wspace=0.28)
    fig.legend(handles=[Line2D([], [], color=f"C{i % 10}", lw=2, label=name) for i, name in enumerate(chosen)],
               title="system" + (" chosen by auto" if system == "auto" else ""), fontsize=8, title_fontsize=8,
               loc="upper left", bbox_to_anchor=(0.795, 0.88))
    fig.legend(handles=[Line2D([], [], color="black", ls="-", marker="o", ms=5,
                               label="S-MBU: activated weights + KV\nS-MFU: top-k (+ shared) experts"),
                        Line2D([], [], color="black", ls="--", marker="s", ms=5,
                               label="MBU: all weights + KV\nMFU: all parameters")],
               title="metric (line style)", fontsize=8, title_fontsize=8, loc="lower left",
               bbox_to_anchor=(0.795, 0.12))
    fig.suptitle(f"{_name(model)} on {_platform_name(hardware, kw)} ({system}): decode utilisation vs batch size")
    _note_not_drawn(fig, *_infeasible_notes(recs, [system]))
    return _finish(fig, path, return_figure)


PLOTS = {
    "throughput-vs-batch": throughput_vs_batch,
    "roofline": roofline,
    "timeline": timeline,
    "pareto": pareto,
    "utilization": utilization_vs_batch,
}

__all__ = ["PLOTS", "not_drawn", "pareto", "pareto_points", "platform_cost_usd", "roofline", "roofline_data", "throughput_vs_batch",
           "timeline", "utilization_vs_batch"]
