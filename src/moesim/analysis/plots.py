"""Figures of predictions: throughput vs batch, hierarchical roofline, step timeline, cost Pareto
frontier, and sparse vs dense utilisation.

matplotlib is imported inside each function (the predict path never imports it) and figures
are drawn on the Agg canvas without pyplot, so nothing global changes. Each function saves a
PNG or SVG (chosen by the path's extension) and returns the path; ``return_figure=True``
returns ``(path, figure)`` instead, for inspection.

    from moesim import plots
    plots.throughput_vs_batch("mixtral-8x7b", "c2", "tput.png")
    plots.roofline("mixtral-8x7b", "c2", "roof.svg", system="moe-gen")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import MoesimError

DEFAULT_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
FORMATS = (".png", ".svg")
_RESOURCE_ORDER = ("gpu", "gpu-link", "h2d", "d2h", "cpu", "disk")


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
    return run_sweep(grid, None, workers=workers, progress=False)


# ---- throughput vs batch size ----------------------------------------------------------------
def throughput_vs_batch(model: str, hardware: str, path: str | Path, systems: list[str] | None = None,
                        batch_sizes=DEFAULT_BATCHES, workers: int = 1, return_figure: bool = False, **kw: Any):
    """Generation throughput against the (fixed) batch size, one line per serving system.

    ``systems``: default every registered system; ``kw``: other sweep parameters (prompt_tokens,
    gen_tokens, num_requests, dtype, pcie, num_gpus, ...). Infeasible batches leave gaps.
    """
    from ..systems import SYSTEMS

    path = _check_path(path)
    systems = list(systems or SYSTEMS)
    recs = _batch_sweep(model, hardware, systems, batch_sizes, workers, kw)
    fig = _figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    plotted = 0
    for system in systems:
        rows = [r for r in recs if r["system"] == system and r["feasible"]]
        if rows:
            ax.plot([r["batch_size"] for r in rows], [r["throughput_tok_s"] for r in rows], marker="o", label=system)
            plotted += 1
        else:
            ax.plot([], [], label=f"{system} (infeasible)", linestyle="none")
    ax.set_xscale("log", base=2)
    if plotted:
        ax.set_yscale("log")
    ax.set_xlabel("batch size (sequences)")
    ax.set_ylabel("generation throughput (tok/s)")
    ax.set_title(f"{model} on {hardware}: throughput vs batch size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
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
    if not points:
        for name, device, cost in _module_ops(ctx, plan, batch, context):
            seconds = ctx.gpu_s(cost) if device == "gpu" else ctx.cpu_s(cost)
            if cost.flop > 0 and cost.bytes > 0 and seconds > 0:
                points.append({"name": name, "device": device, "level": "HBM" if device == "gpu" else "DRAM",
                               "intensity": cost.flop / cost.bytes, "flop_per_s": cost.flop / seconds,
                               "source": "cost model"})
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
            "operations": points, "step": steps}


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
        marker = "o" if pt["device"] == "gpu" else "s"
        ax.scatter(pt["intensity"], pt["flop_per_s"], marker=marker, s=36, zorder=3,
                   color=f"C{(i + 4) % 10}", label=f"{pt['name']} ({pt['device']}, {pt['level']} bytes)")
    step = data["step"]
    if step:
        ax.plot([s["intensity"] for s in step], [s["flop_per_s"] for s in step], color="k", ls=":", lw=1, zorder=2)
        for i, s in enumerate(sorted(step, key=lambda s: s["intensity"])):
            ax.scatter(s["intensity"], s["flop_per_s"], marker="*", s=160, color="k", zorder=4)
            ax.annotate(f"step vs {s['level']} bytes", (s["intensity"], s["flop_per_s"]), textcoords="offset points",
                        xytext=(-8, 8) if i % 2 == 0 else (8, -14), ha="right" if i % 2 == 0 else "left", fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("performance (FLOP/s)")
    ax.set_title(f"hierarchical roofline: {data['model']} on {data['hardware']}, {data['system']}\n"
                 f"decode step, batch {data['batch']}, context {data['context']} (bottleneck {data['bottleneck']})",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="lower right")
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
    for row, resource in enumerate(resources):
        for cat in categories:
            bars = [(t.start_s * 1e3, t.duration_s * 1e3) for t in tasks
                    if t.resource == resource and t.category == cat]
            if bars:
                ax.broken_barh(bars, (row - 0.4, 0.8), facecolors=colors[cat], edgecolor="white", linewidth=0.3)
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


def pareto(model: Any, path: str | Path, platforms: list[Any] | None = None, system: str = "auto",
           costs: dict[str, float] | None = None, return_figure: bool = False, **kw: Any):
    """Generation throughput against capital cost over platforms, with the Pareto frontier
    (no cheaper platform is faster). Platforms without a known price or that cannot run the
    model are listed in the figure's note, not plotted."""
    path = _check_path(path)
    rows = pareto_points(model, platforms, system, costs, **kw)
    shown = [r for r in rows if r["feasible"] and r["cost_usd"] is not None]
    front = sorted((r for r in shown if r["pareto"]), key=lambda r: r["cost_usd"])
    fig = _figure(figsize=(8, 5.5))
    ax = fig.add_subplot()
    if shown:
        ax.scatter([r["cost_usd"] for r in shown], [r["throughput_tok_s"] for r in shown], color="C0",
                   label="platforms", zorder=3)
        ax.step([r["cost_usd"] for r in front], [r["throughput_tok_s"] for r in front], where="post", color="C3",
                lw=2, label="Pareto frontier", zorder=2)
        ax.scatter([r["cost_usd"] for r in front], [r["throughput_tok_s"] for r in front], color="C3", s=60, zorder=4)
        for r in shown:
            ax.annotate(f"{r['platform']} ({r['system']})", (r["cost_usd"], r["throughput_tok_s"]),
                        textcoords="offset points", xytext=(5, 3), fontsize=7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    notes = []
    unpriced = [r["platform"] for r in rows if r["cost_usd"] is None]
    infeasible = [r["platform"] for r in rows if not r["feasible"] and r["cost_usd"] is not None]
    if unpriced:
        notes.append("price unknown (pass costs={name: usd}): " + ", ".join(unpriced))
    if infeasible:
        notes.append("cannot run the model: " + ", ".join(infeasible))
    if notes:
        fig.text(0.01, -0.02, "not plotted - " + "; ".join(notes), fontsize=7, wrap=True, va="top")
    ax.set_xlabel("capital cost (USD)")
    ax.set_ylabel("generation throughput (tok/s)")
    model_name = getattr(model, "name", None) or str(model)
    ax.set_title(f"{model_name}: throughput vs capital cost ({len(shown)} platforms, system {system})")
    ax.grid(True, which="both", alpha=0.3)
    return _finish(fig, path, return_figure)


# ---- utilisation vs batch --------------------------------------------------------------------
def utilization_vs_batch(model: str, hardware: str, path: str | Path, system: str = "auto",
                         batch_sizes=DEFAULT_BATCHES, workers: int = 1, return_figure: bool = False, **kw: Any):
    """S-MBU and S-MFU (sparsity-aware, MoE-CAP) against batch size, beside the dense MBU and MFU."""
    path = _check_path(path)
    recs = [r for r in _batch_sweep(model, hardware, [system], batch_sizes, workers, kw) if r["feasible"]]
    fig = _figure(figsize=(11, 4.5))
    ax_bw, ax_fl = fig.subplots(1, 2)
    b = [r["batch_size"] for r in recs]
    ax_bw.plot(b, [r["s_mbu"] for r in recs], marker="o", label="S-MBU (activated weights + KV)")
    ax_bw.plot(b, [r["mbu"] for r in recs], marker="s", ls="--", label="MBU (all weights + KV)")
    ax_fl.plot(b, [r["s_mfu"] for r in recs], marker="o", label="S-MFU (top-k experts)")
    ax_fl.plot(b, [r["mfu"] for r in recs], marker="s", ls="--", label="MFU (all parameters)")
    for ax, what in ((ax_bw, "memory-bandwidth utilisation"), (ax_fl, "compute utilisation")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size (sequences)")
        ax.set_ylabel(what)
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax_bw.set_title("bandwidth: S-MBU vs MBU")
    ax_fl.set_title("compute: S-MFU vs MFU")
    systems = sorted({r["chosen_system"] for r in recs}) or [system]
    fig.suptitle(f"{model} on {hardware} ({', '.join(systems)}): decode utilisation vs batch size")
    return _finish(fig, path, return_figure)


PLOTS = {
    "throughput-vs-batch": throughput_vs_batch,
    "roofline": roofline,
    "timeline": timeline,
    "pareto": pareto,
    "utilization": utilization_vs_batch,
}

__all__ = ["PLOTS", "pareto", "pareto_points", "platform_cost_usd", "roofline", "roofline_data", "throughput_vs_batch",
           "timeline", "utilization_vs_batch"]
