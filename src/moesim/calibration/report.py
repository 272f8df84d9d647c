"""Predicted beside measured, per case, split into fitted and held-out cases.

Error = (predicted - measured) / measured. Summaries give the median and 90th percentile of
|error| per family and overall, for the fitted (training) cases and the held-out ones
separately; end-to-end cases are always held out. ``mode`` selects which efficiency curves
predict: ``own`` (the GPU's fitted profile), ``borrowed`` (another GPU's profile of the same
architecture, no refit: the cross-GPU check), or ``default`` (the uncalibrated profile).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..db import gpus, normalize
from ..db.resolve import get_hardware
from ..errors import MoesimError
from ..specs import CalibrationProfile
from .cases import Case, load_measurements
from .store import gpu_slug


@dataclass(frozen=True)
class Row:
    case: Case
    predicted_s: float

    @property
    def error(self) -> float:
        return (self.predicted_s - self.case.median_s) / self.case.median_s


def measurements_dir(root: Path, gpu_name: str) -> Path:
    return root / "measurements" / gpu_slug(gpu_name)


def measurement_files(root: Path, gpu_name: str) -> list[Path]:
    files = sorted(measurements_dir(root, gpu_name).glob("*.json"))
    if not files:
        raise MoesimError(f"no measurements for {gpu_name} under {measurements_dir(root, gpu_name)}")
    return files


def latest_measurements(root: Path, gpu_name: str) -> Path:
    return measurement_files(root, gpu_name)[-1]


def primary_measurements(root: Path, gpu_name: str) -> Path:
    """The file a GPU's report is about: the one its own calibration profile was fitted on (the
    profile names it, relative to the repository), else the newest."""
    hw = get_hardware(gpu_name)
    prof = hw.calibration
    if prof is not None and normalize(prof.gpu) == normalize(hw.gpu.name):
        named = root.parent / prof.measurements
        if named.is_file():
            return named
    return latest_measurements(root, gpu_name)


def host_figures(path: Path) -> dict[str, float]:
    """The host's own figures in a measurement file: one sync and one kernel launch (seconds)."""
    _, cases = load_measurements(path)
    return {c.family: c.median_s for c in cases if c.family in ("host_sync", "launch")}


def summarize(rows: list[Row]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    groups: dict[str, list[float]] = {}
    for r in rows:
        split = "held_out" if r.case.held_out else "fitted"
        for key in (f"{r.case.family}/{split}", f"all/{split}"):
            groups.setdefault(key, []).append(abs(r.error))
    for key, errs in sorted(groups.items()):
        a = np.array(errs)
        out[key] = {"n": float(len(a)), "median": float(np.median(a)), "p90": float(np.percentile(a, 90))}
    return out


def validation_report(gpu: str, root: Path, mode: str = "own",
                      profile: CalibrationProfile | None = None, path: Path | None = None) -> dict[str, Any]:
    """Predict every measured case of ``gpu`` (in ``path``, by default :func:`primary_measurements`)
    and compare."""
    hw = get_hardware(gpu)
    path = path or primary_measurements(root, hw.gpu.name)
    env, cases = load_measurements(path)
    if mode == "default":
        hw = hw.model_copy(update={"calibration": None})
    elif mode == "borrowed" and profile is None:
        from .store import _profiles

        donors = [p for p in _profiles().values() if normalize(p.gpu) != normalize(hw.gpu.name)
                  and (g := gpus().find(p.gpu)) is not None and g.architecture == hw.gpu.architecture]
        if not donors:
            raise MoesimError(f"no other {hw.gpu.architecture} GPU has a calibration profile to lend")
        hw = hw.model_copy(update={"calibration": donors[0]})
    elif profile is not None:
        hw = hw.model_copy(update={"calibration": profile})
    elif mode == "own" and (hw.calibration is None or normalize(hw.calibration.gpu) != normalize(hw.gpu.name)):
        raise MoesimError(f"{hw.gpu.name} has no calibration profile of its own; run `moesim calibrate --gpu {gpu}`")
    rows = [Row(c, t) for c in cases if (t := c.predict_s(hw)) is not None]
    return {"gpu": hw.gpu.name, "mode": mode, "measurements": str(path), "environment": env,
            "profile_from": hw.calibration.gpu if hw.calibration else "default", "profile": hw.calibration,
            "rows": rows, "summary": summarize(rows)}


def host_free_check(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Where the harness also timed a case back to back (``burst_s``) and under a CUDA graph
    (``graph_s``, timing v2 and later): |error| of the model's GPU time alone (the parts' roofs,
    no host terms) against the graphed time, and of its steady state, max(GPU time, calls x
    dispatch_s), against the back-to-back time, per family (all cases, fitted or not)."""
    import json

    from ..costs import efficiency_for
    from ..costs.roofline import _roof_s

    hw = get_hardware(report["gpu"])
    if report.get("profile") is not None:
        hw = hw.model_copy(update={"calibration": report["profile"]})
    eff = efficiency_for(hw.empirical, hw.calibration)
    raw = {json.dumps({"family": c["family"], **c["params"]}, sort_keys=True): c
           for c in json.loads(Path(report["measurements"]).read_text()).get("cases", []) if "error" not in c}
    groups: dict[str, list[tuple[float, float]]] = {}
    for r in report["rows"]:
        c = raw.get(r.case.key, {})
        op = r.case.op()
        if "graph_s" not in c or op is None or not hasattr(op, "cost"):
            continue
        cost = op.cost()
        gpu_s = sum(_roof_s(part, hw.gpu, eff) for part in cost.pieces())
        steady_s = max(gpu_s, cost.launches * eff.dispatch_s(cost))
        groups.setdefault(r.case.family, []).append((abs(gpu_s / c["graph_s"] - 1), abs(steady_s / c["burst_s"] - 1)))
    out = {}
    for fam, errs in sorted(groups.items()):
        a = np.array(errs)
        out[fam] = {"n": float(len(a)), "gpu_median": float(np.median(a[:, 0])), "gpu_p90": float(np.percentile(a[:, 0], 90)),
                    "steady_median": float(np.median(a[:, 1])), "steady_p90": float(np.percentile(a[:, 1], 90))}
    return out


def write_plots(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Predicted vs measured (log-log) and |error| by family; matplotlib only here."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = report["rows"]
    tag = f"{gpu_slug(report['gpu'])}-{report['mode']}"
    fig, ax = plt.subplots(figsize=(6, 6))
    for held, marker in ((False, "o"), (True, "x")):
        sel = [r for r in rows if r.case.held_out == held]
        ax.scatter([r.case.median_s for r in sel], [r.predicted_s for r in sel], marker=marker, s=14,
                   label="held out" if held else "fitted")
    lo = min(min(r.case.median_s, r.predicted_s) for r in rows)
    hi = max(max(r.case.median_s, r.predicted_s) for r in rows)
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="measured time (s)", ylabel="predicted time (s)",
           title=f"{report['gpu']}: predicted vs measured ({report['mode']} curves)")
    ax.legend()
    p1 = out_dir / f"{tag}-pred-vs-meas.png"
    fig.savefig(p1, dpi=120, bbox_inches="tight")
    plt.close(fig)
    fams = sorted({r.case.family for r in rows})
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.boxplot([[abs(r.error) for r in rows if r.case.family == f] for f in fams], showfliers=True)
    ax.set_xticks(range(1, len(fams) + 1), fams, rotation=30, ha="right")
    ax.set(ylabel="|error|", title=f"{report['gpu']}: error by operation family ({report['mode']} curves)")
    p2 = out_dir / f"{tag}-error-by-family.png"
    fig.savefig(p2, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return [p1, p2]
