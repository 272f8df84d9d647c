"""MoE-CAP's cost-accuracy-performance (CAP) view of deployment configurations.

MoE-CAP (arXiv 2412.07067) argues that an MoE serving system optimises two of cost, accuracy
and performance at the expense of the third, and draws configurations on a three-axis radar
(paper Fig. 3): Performance = TPOT (s/token), Cost = hardware price ($) or power (W),
Accuracy = exact-match accuracy; better is toward the rim on every axis.

Radar scaling, as MoE-CAP's plotting code does it (open-moe-llm-leaderboard
``plot_drawer/draw_radar.py``), on a radial range 0..100 with a baseline b (default 20):

    performance  r = b + (v_max - v) / (v_max - v_min) (100 - b)   reversed min-max of TPOT over the configs
    cost         r = b + (M - min(v, M)) / M (100 - b)            M = cost cap; MoE-CAP uses the axis' second
                                                                 to last tick, here the largest cost shown
                                                                 unless ``cost_max`` is given
    accuracy     r = b + (v - a_min) / (1 - a_min) (100 - b)      a_min = lowest accuracy shown, v in [0, 1]

Larger is better on every axis, so the cost axis measures *cheapness* (the rim is free, the
inner ring is the dearest configuration shown) and the performance axis *speed* (the rim is the
lowest TPOT); the drawing says so in its axis labels and gives the raw value at the rim and at
the inner ring of each axis, as MoE-CAP's radar labels its ticks in raw units.

Where MoE-CAP's formula divides by zero (all TPOTs equal, or a_min = 1) the axis scores 100 for
every config (nobody is worse). An unknown cost or accuracy is not plotted on its axis (None);
it is never guessed.

Classification (MoE-CAP §1 and Table 7: PA = performance-accuracy, PC = performance-cost,
CA = cost-accuracy; the name lists the two properties kept, the third is compromised). The paper
places SGLang/vLLM at the released precision on GPUs as PA ("original accuracy with lowest
latency"), K-Transformers with quantization as PC ("low cost and moderate speed"), MoE-Infinity's
expert offloading as CA ("original accuracy with low cost"), and quantized SGLang (FP8/AWQ) as
trading accuracy for cost and throughput. moesim's rule, from those examples:

    1. weights stored below the model's released precision (quantized)    -> performance-cost (PC)
    2. otherwise weights (or experts) kept outside GPU memory (offloaded)  -> cost-accuracy (CA)
    3. otherwise (released precision, all on GPU)                          -> performance-accuracy (PA)

A quantized and offloaded configuration is PC, as K-Transformers (quantization + CPU experts) is
in the paper. Beside this design rule, :func:`cap_radar_data` reports for each configuration the
axis with its lowest radar score among the configurations compared (``weakest_axis``) and the
class named by the other two (``class_by_scores``): the empirical reading of the same idea.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:  # pragma: no cover
    from .pricing import CostReport
    from ..predict import Prediction

AXES = ("performance", "cost", "accuracy")
AXIS_LABELS = {"performance": "Performance: speed (TPOT, s/token)", "cost": "Cost: cheapness",
               "accuracy": "Accuracy (exact match)"}
BETTER = "larger is better on every axis: toward the rim = faster, cheaper, more accurate"
CLASS_NAMES = {
    frozenset({"performance", "accuracy"}): "performance-accuracy",
    frozenset({"performance", "cost"}): "performance-cost",
    frozenset({"cost", "accuracy"}): "cost-accuracy",
}
ABBREVIATIONS = {"performance-accuracy": "PA", "performance-cost": "PC", "cost-accuracy": "CA"}
DEFAULT_BASELINE = 20.0


class CAPPoint(BaseModel):
    """One configuration on the CAP radar (raw values)."""

    model_config = ConfigDict(frozen=True)

    label: str
    tpot_s: float
    cost: float | None  # $ (capital) or W (power), see cost_unit
    cost_unit: Literal["USD", "W"] = "USD"
    accuracy: float | None  # fraction in [0, 1]
    quantized: bool | None = None
    offloaded: bool | None = None
    notes: tuple[str, ...] = ()


def _dtype_bytes(text: str) -> float | None:
    """Smallest storage size among the dtypes named in a Prediction.dtype string ('bf16 (experts int4)')."""
    from ..specs.common import BYTES_PER_ELEMENT

    found = [BYTES_PER_ELEMENT[t] for t in text.replace("(", " ").replace(")", " ").split() if t in BYTES_PER_ELEMENT]
    return min(found) if found else None


def is_quantized(prediction: "Prediction") -> bool | None:
    """Weights stored in fewer bytes than the model's released dtype (None if the model is unknown)."""
    from ..db import models
    from ..specs.common import BYTES_PER_ELEMENT

    spec = models().find(prediction.model)
    served = _dtype_bytes(prediction.dtype)
    if spec is None or served is None:
        return None
    return served < BYTES_PER_ELEMENT[spec.weight_dtype()]


def is_offloaded(prediction: "Prediction") -> bool:
    """Weights (or some of them) live outside GPU memory."""
    where = prediction.placement.get("weights", "gpu").lower()
    return where != "gpu" and any(w in where for w in ("host", "disk", "cpu"))


def classify_design(quantized: bool, offloaded: bool) -> str:
    """MoE-CAP class by design (module docstring rule): quantized -> PC, offloaded -> CA, else PA."""
    if quantized:
        return "performance-cost"
    if offloaded:
        return "cost-accuracy"
    return "performance-accuracy"


def classify(prediction: "Prediction") -> str:
    """The MoE-CAP class of a predicted configuration, by the design rule."""
    return classify_design(bool(is_quantized(prediction)), is_offloaded(prediction))


def cap_point(prediction: "Prediction", cost: "CostReport | float | None" = None, accuracy: float | None = None,
              *, label: str | None = None, cost_axis: Literal["capital", "power"] = "capital") -> CAPPoint:
    """A radar point from a prediction, its cost (a CostReport, or a number in ``cost_axis`` units)
    and its accuracy (fraction in [0, 1]; a value above 1 is read as percent)."""
    notes: list[str] = []
    unit: Literal["USD", "W"] = "USD" if cost_axis == "capital" else "W"
    if cost is None or isinstance(cost, (int, float)):
        value = None if cost is None else float(cost)
    else:
        value = cost.capital_usd if cost_axis == "capital" else cost.power_w
        if value is None:
            notes.append(f"{cost_axis} unknown ({'; '.join(cost.notes[:1])})")
    if accuracy is not None and accuracy > 1.0:
        accuracy = accuracy / 100.0
    if accuracy is None:
        notes.append("accuracy unknown (no published score for this dtype)")
    return CAPPoint(
        label=label or f"{prediction.system} {prediction.dtype} on {prediction.num_gpus}x {prediction.gpu}",
        tpot_s=prediction.tpot_s, cost=value, cost_unit=unit, accuracy=accuracy,
        quantized=is_quantized(prediction), offloaded=is_offloaded(prediction), notes=tuple(notes),
    )


def _as_point(item: Any) -> CAPPoint:
    if isinstance(item, CAPPoint):
        return item
    if isinstance(item, dict):
        return CAPPoint.model_validate(item)
    pred, cost, acc = (tuple(item) + (None, None))[:3]
    return cap_point(pred, cost, acc)


def normalize_performance(v: float, vmin: float, vmax: float, baseline: float = DEFAULT_BASELINE) -> float:
    """b + (v_max - v)/(v_max - v_min) (100 - b); 100 when every value is equal."""
    if vmax <= vmin:
        return 100.0
    return baseline + (vmax - v) / (vmax - vmin) * (100.0 - baseline)


def normalize_cost(v: float, cap: float, baseline: float = DEFAULT_BASELINE) -> float:
    """b + (M - min(v, M))/M (100 - b)."""
    if cap <= 0:
        return 100.0
    return baseline + (cap - min(v, cap)) / cap * (100.0 - baseline)


def normalize_accuracy(v: float, amin: float, baseline: float = DEFAULT_BASELINE) -> float:
    """b + (v - a_min)/(1 - a_min) (100 - b); 100 when a_min = 1."""
    if amin >= 1.0:
        return 100.0
    return baseline + (v - amin) / (1.0 - amin) * (100.0 - baseline)


def cap_radar_data(configs: list[Any], *, baseline: float = DEFAULT_BASELINE, cost_max: float | None = None,
                   acc_min: float | None = None) -> list[dict[str, Any]]:
    """Raw and scaled (0..100) CAP values of each configuration, with its classes.

    ``configs``: CAPPoints, or (prediction, cost, accuracy) tuples (see :func:`cap_point`).
    Each row: ``label``, ``raw`` {performance: TPOT s, cost, accuracy}, ``scaled`` {axis: 0..100 or
    None}, ``class`` (design rule, or None if quantization/offload is unknown), ``weakest_axis``
    and ``class_by_scores`` (from the scaled values; None when an axis is unknown).
    """
    points = [_as_point(c) for c in configs]
    if not points:
        return []
    units = {p.cost_unit for p in points if p.cost is not None}
    if len(units) > 1:
        raise ValueError("mixed cost units on one radar (USD and W); use one cost axis")
    tpots = [p.tpot_s for p in points]
    costs = [p.cost for p in points if p.cost is not None]
    accs = [p.accuracy for p in points if p.accuracy is not None]
    cap = cost_max if cost_max is not None else (max(costs) if costs else None)
    amin = acc_min if acc_min is not None else (min(accs) if accs else None)
    rows = []
    for p in points:
        scaled = {
            "performance": normalize_performance(p.tpot_s, min(tpots), max(tpots), baseline),
            "cost": None if p.cost is None or cap is None else normalize_cost(p.cost, cap, baseline),
            "accuracy": None if p.accuracy is None or amin is None else normalize_accuracy(p.accuracy, amin, baseline),
        }
        weakest = by_scores = None
        if all(v is not None for v in scaled.values()):
            weakest = min(AXES, key=lambda a: (scaled[a], AXES.index(a)))
            by_scores = CLASS_NAMES[frozenset(AXES) - {weakest}]
        design = (classify_design(p.quantized, bool(p.offloaded)) if p.quantized is not None else None)
        rows.append({
            "label": p.label,
            "raw": {"performance": p.tpot_s, "cost": p.cost, "accuracy": p.accuracy},
            "cost_unit": p.cost_unit,
            "scaled": scaled,
            "class": design,
            "class_abbrev": ABBREVIATIONS.get(design or ""),
            "weakest_axis": weakest,
            "class_by_scores": by_scores,
            "notes": list(p.notes),
        })
    return rows


def plot_cap_radar(configs: list[Any], path: str, *, title: str = "CAP radar", baseline: float = DEFAULT_BASELINE,
                   cost_max: float | None = None, acc_min: float | None = None, return_figure: bool = False):
    """Draw the CAP radar of ``configs`` to ``path`` (PNG/SVG/PDF by extension); returns the path
    (``return_figure=True``: ``(path, figure)``).

    Larger is better on every axis (module docstring): the axis labels say what the rim means and
    each axis carries its raw values at the inner ring and at the rim. matplotlib is imported here
    only: predictions never import it. An axis value that is unknown is drawn at the centre and
    the legend says so.
    """
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    rows = cap_radar_data(configs, baseline=baseline, cost_max=cost_max, acc_min=acc_min)
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # SVG keeps its text as text
        fig = _draw(Figure, rows, path, title, baseline, cost_max, acc_min)
    return (str(path), fig) if return_figure else str(path)


def _money(v: float, unit: str) -> str:
    return f"${v:,.0f}" if unit == "USD" else f"{v:,.0f} W"


def _axis_ends(rows: list[dict[str, Any]], cost_max: float | None, acc_min: float | None) -> dict[str, tuple]:
    """(raw value at the rim, raw value at the inner ring) of each axis, as text; None where unknown."""
    unit = rows[0]["cost_unit"] if rows else "USD"
    tpots = [r["raw"]["performance"] for r in rows]
    costs = [r["raw"]["cost"] for r in rows if r["raw"]["cost"] is not None]
    accs = [r["raw"]["accuracy"] for r in rows if r["raw"]["accuracy"] is not None]
    cap = cost_max if cost_max is not None else (max(costs) if costs else None)
    amin = acc_min if acc_min is not None else (min(accs) if accs else None)
    if tpots and max(tpots) > min(tpots):
        perf = (f"TPOT {min(tpots):.3g} s/token", f"{max(tpots):.3g} s/token")
    else:
        perf = (f"TPOT {tpots[0]:.3g} s/token (all equal)" if tpots else None, None)
    return {
        "performance": perf,
        "cost": (_money(0, unit), f"{_money(cap, unit)} or more") if cap else (_money(0, unit), None),
        "accuracy": ("100%", f"{amin:.1%}" if amin is not None and amin < 1 else None),
    }


def axis_labels(rows: list[dict[str, Any]], cost_max: float | None = None, acc_min: float | None = None) -> list[str]:
    """The radar's axis labels (performance, cost, accuracy): what the axis measures, with larger
    better, and the raw values at its rim and inner ring."""
    unit = rows[0]["cost_unit"] if rows else "USD"
    ends = _axis_ends(rows, cost_max, acc_min)
    names = {"performance": AXIS_LABELS["performance"],
             "cost": AXIS_LABELS["cost"] + (" (capital, $)" if unit == "USD" else " (power, W)"),
             "accuracy": AXIS_LABELS["accuracy"]}
    out = []
    for axis in AXES:
        rim, inner = ends[axis]
        lines = [names[axis]]
        if rim:
            lines.append(f"rim (best): {rim}")
        if inner:
            lines.append(f"inner ring: {inner}")
        out.append("\n".join(lines))
    return out


def _draw(Figure, rows: list[dict[str, Any]], path: str, title: str, baseline: float,
          cost_max: float | None = None, acc_min: float | None = None):
    import math

    angles = [math.pi / 2 + i * 2 * math.pi / 3 for i in range(3)]
    fig = Figure(figsize=(7.5, 7.5))
    ax = fig.add_subplot(111, polar=True)
    for row in rows:
        vals = [row["scaled"][a] for a in AXES]
        missing = [a for a, v in zip(AXES, vals) if v is None]
        r = [0.0 if v is None else v for v in vals]
        name = row["label"] + (f" [{row['class_abbrev']}]" if row["class_abbrev"] else "")
        if missing:
            name += f" ({', '.join(missing)} unknown: drawn at the centre)"
        ax.plot(angles + angles[:1], r + r[:1], linewidth=2, marker="o", ms=4, label=name)
        ax.fill(angles + angles[:1], r + r[:1], alpha=0.12)
    ax.set_xticks(angles)
    ax.set_xticklabels(axis_labels(rows, cost_max, acc_min), fontsize=9)
    ax.tick_params(axis="x", pad=10)
    for label, angle in zip(ax.get_xticklabels(), angles):  # outward from the rim, never across it
        c, sn = math.cos(angle), math.sin(angle)
        label.set_horizontalalignment("center" if abs(c) < 0.2 else "left" if c > 0 else "right")
        label.set_verticalalignment("bottom" if sn > 0.2 else "top" if sn < -0.2 else "center")
    ax.set_ylim(0, 100)
    ax.set_yticks([baseline, 60, 100])
    ax.set_yticklabels([])  # a 0..100 score has no unit: the axis labels give each axis' raw values
    ax.set_title(f"{title}\n({BETTER}; the inner ring is the worst value shown)", fontsize=10, pad=30)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.06), fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig
