"""Fit a GPU's efficiency curves to measured cases (scipy least squares on log time).

Stages, each fitting one family with the others held fixed:

1. overheads: ``launch`` -> kernel_launch_s, ``host_sync`` -> host_sync_s (medians as measured);
   ``copy_beside_gemm`` -> copy_compute_slowdown (compute slowed by a copy beside it);
2. links: ``copy`` cases -> latency + bytes / bandwidth per kind (least squares on relative error);
3. ``vector``/``copy`` memory curve from ``hbm_copy`` (memory_max, bytes_half);
4. ``gemm:<dtype>`` from ``gemm`` (compute_max, rows_half, memory_max, bytes_half);
5. ``expert`` from ``expert_ffn``; 6. ``scatter`` (index_add_) from the fused layers' combine
   timed alone (``combine_s``, where the harness recorded it), then ``grouped_expert`` (with its
   per-expert time ``group_s``) from fused ``moe_layer``, jointly with the scatter's memory
   fraction where there is no direct measurement;
7. the clock drop under sustained tensor-core work (``sustained_clock``, ``clock_tau_s``: one pair
   per GPU, see :meth:`moesim.specs.FamilyCurve.sustained_compute_s`) on the ``gemm``,
   ``expert_ffn`` and fused ``moe_layer`` cases together, the curves' other parameters held;
   then ``moe_loop`` (per-launch host time of the per-expert Python loop) from loop ``moe_layer``;
8. ``attention`` from ``attention``; 9. ``mla`` from ``mla_decode``;
10. the host: the issue latency of operations that begin with a cuBLAS matmul (``overhead_s`` of
    the GEMM, expert, grouped-expert and MLA families) and the issue time per further torch call
    (``dispatch_s``, one figure for every kernel family, since PyTorch issues every call the same
    way; see :mod:`moesim.costs.roofline`), fitted together on all the kernel families' cases so
    that no single small, noisy case sets them. Stages 3-10 are repeated three times.
    Calls that sort, select or index by a tensor (topk, argsort, bincount, ``x[idx]``,
    ``index_add_``) have their own host time (``index_call_s``, one figure for every family),
    fitted after stage 6 on the fused ``moe_layer`` cases, the only fitted operations that make them.

Each family's ``overhead_s`` is the issue latency of an operation's first kernel (paid once per
operation timed alone).

Residuals are log(predicted / measured), so every case weighs the same whatever its size, under a
soft-L1 loss (scale 0.1) so that a few outliers (a first call, a clock ramp) do not drag a curve.
Only cases with ``held_out == False`` enter a fit (see :mod:`moesim.calibration.cases`).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .. import ops
from ..db.resolve import get_hardware
from ..specs import CalibrationProfile, FamilyCurve, LinkCalibration, Platform
from .cases import Case, combine_cases

NEUTRAL = FamilyCurve(compute_max=1.0, rows_half=0.0, memory_max=1.0, bytes_half=0.0, overhead_s=0.0)
# parameters: name -> (lower, upper, initial); halves and overheads are fitted as log10(1 + x)
PARAMS = {
    "compute_max": (0.05, 1.0, 0.7),
    "rows_half": (0.0, 5.0, 1.5),
    "memory_max": (0.05, 1.0, 0.8),
    "bytes_half": (0.0, 10.0, 5.0),
    "overhead_s": (0.0, 3.0, 0.5),  # log10(1 + microseconds)
    "dispatch_s": (0.0, 3.0, 1.0),  # log10(1 + microseconds)
    "index_call_s": (0.0, 3.0, 1.0),  # log10(1 + microseconds)
    "group_s": (0.0, 2.0, 0.3),  # log10(1 + microseconds)
    "sustained_clock": (0.5, 1.0, 0.9),
    "clock_tau_s": (0.0, 2.5, 0.3),  # log10(1 + milliseconds)
}
LOG_PARAMS = {"rows_half": 1.0, "bytes_half": 1.0, "overhead_s": 1e-6, "dispatch_s": 1e-6, "index_call_s": 1e-6,
              "group_s": 1e-6, "clock_tau_s": 1e-3}
#: the power limiter's clock drop (FamilyCurve.sustained_compute_s): a property of the GPU, fitted
#: once on all the cases whose long runs are matmuls (GEMMs of every dtype, expert FFNs, fused MoE
#: layers) with their other parameters held, and applied to the matmul families
CLOCK_PARAMS = ("sustained_clock", "clock_tau_s")


def _decode(names: list[str], x: np.ndarray, base: FamilyCurve) -> FamilyCurve:
    values = base.model_dump()
    for name, v in zip(names, x):
        values[name] = (10.0 ** v - 1.0) * LOG_PARAMS[name] if name in LOG_PARAMS else float(v)
    return FamilyCurve.model_validate(values)


def _with(profile: CalibrationProfile, key: str, curve: FamilyCurve) -> CalibrationProfile:
    return profile.model_copy(update={"families": {**profile.families, key: curve}})


def _platform(hw: Platform, profile: CalibrationProfile) -> Platform:
    return hw.model_copy(update={"calibration": profile})


def log_errors(hw: Platform, cases: list[Case]) -> np.ndarray:
    return np.array([np.log(ops.estimate(c.op(), hw) / c.median_s) for c in cases])


def _fit_family(hw: Platform, profile: CalibrationProfile, key: str, cases: list[Case], names: list[str],
                base: FamilyCurve = NEUTRAL, also: tuple[tuple[str, list[str], FamilyCurve], ...] = (),
                shared: tuple[str, ...] = ()) -> CalibrationProfile:
    """Fit ``names`` of curve ``key`` (jointly with the ``also`` curves' own parameters, and the
    ``shared`` parameters, one value for all of them) to ``cases``."""
    from scipy.optimize import least_squares

    if not cases:
        return profile
    blocks = [(key, names, base), *also]
    flat = [n for _, ns, _ in blocks for n in ns] + list(shared)
    lo = np.array([PARAMS[n][0] for n in flat])
    hi = np.array([PARAMS[n][1] for n in flat])
    x0 = np.array([PARAMS[n][2] for n in flat])

    def trial(x: np.ndarray) -> CalibrationProfile:
        out, i = profile, 0
        common = x[len(x) - len(shared):] if shared else x[:0]
        for k, ns, b in blocks:
            out = _with(out, k, _decode(ns + list(shared), np.concatenate([x[i:i + len(ns)], common]), b))
            i += len(ns)
        return out

    def residuals(x: np.ndarray) -> np.ndarray:
        return log_errors(_platform(hw, trial(x)), cases)

    # soft-L1 loss: a few outlying cases (first calls, clock ramps) do not drag the curve
    best = least_squares(residuals, x0, bounds=(lo, hi), method="trf", diff_step=1e-3, max_nfev=400,
                         loss="soft_l1", f_scale=0.1)
    return trial(best.x)


def _fit_link(cases: list[Case], link_name: str) -> LinkCalibration | None:
    """t = latency + n / bandwidth per copy kind, least squares on relative error (weights 1/t),
    so that small copies weigh as much as large ones, as in every other family's fit."""
    values: dict[str, float] = {}
    latencies = []
    for kind in ("h2d_pinned", "d2h_pinned", "h2d_pageable", "d2h_pageable"):
        pts = [(c.params["nbytes"], c.median_s) for c in cases if c.params.get("kind") == kind]
        if len(pts) < 2:
            return None
        n, t = np.array(pts).T
        slope, intercept = np.polyfit(n, t, 1, w=1.0 / t)  # t = latency + n / bandwidth
        values[f"{kind}_bytes_per_s"] = 1.0 / slope
        latencies.append(max(intercept, 0.0))
    return LinkCalibration(link=link_name, latency_s=float(np.median(latencies)), **values)


def _copy_compute_slowdown(cases: list[Case]) -> float:
    """From one pinned copy beside a run of GEMMs longer than it (``copy_beside_gemm``): the GEMMs'
    extra time over the copy's duration, (t_both - t_gemm) / t_copy, clipped to [0, 1]; the median
    over cases where the copy is the shorter (0 without such a case)."""
    s = [(c.median_s - c.extra["gemm_alone_s"]) / c.extra["copy_alone_s"] for c in cases
         if c.extra.get("copy_alone_s") and c.extra.get("gemm_alone_s", 0.0) >= c.extra["copy_alone_s"]]
    return float(np.clip(np.median(s), 0.0, 1.0)) if s else 0.0


def _fit_host(hw: Platform, profile: CalibrationProfile, cases: list[Case], keys: list[str],
              issue_keys: list[str]) -> tuple[float, float]:
    """(issue latency of the cuBLAS-led host path, issue time per further ordinary torch call): the
    first for the families ``issue_keys``, the second for all kernel families ``keys`` (PyTorch
    issues every call the same way), least squares on log time over all their cases together."""
    from scipy.optimize import least_squares

    def trial(x: np.ndarray) -> CalibrationProfile:
        o, d = ((10.0 ** v - 1.0) * 1e-6 for v in x)
        fams = {}
        for k, v in profile.families.items():
            update = ({"dispatch_s": d} if k in keys else {}) | ({"overhead_s": o} if k in issue_keys else {})
            fams[k] = v.model_copy(update=update) if update else v
        return profile.model_copy(update={"families": fams})

    best = least_squares(lambda x: log_errors(_platform(hw, trial(x)), cases), np.log10([21.0, 11.0]),
                         bounds=([0.0, 0.0], [3.0, 3.0]), diff_step=1e-2, loss="soft_l1", f_scale=0.1)
    o, d = ((10.0 ** v - 1.0) * 1e-6 for v in best.x)
    return float(o), float(d)


def fit_profile(env: dict[str, Any], cases: list[Case], gpu: str, measurements_path: str,
                log: Callable[[str], None] = lambda s: None) -> CalibrationProfile:
    """Fit a calibration profile for ``gpu`` from the training split of ``cases``."""
    hw = get_hardware(gpu).model_copy(update={"calibration": None})
    train = [c for c in cases if not c.held_out]
    by = lambda fam, **kw: [c for c in train if c.family == fam and all(c.params.get(k) == v for k, v in kw.items())]
    launch = [c.median_s for c in train if c.family == "launch"] or [5e-6]
    sync = [c.median_s for c in train if c.family == "host_sync"] or [2e-5]
    profile = CalibrationProfile(
        gpu=hw.gpu.name, measurements=measurements_path,
        environment={k: str(v) for k, v in env.items() if not isinstance(v, (dict, list))},
        families={"moe_loop": NEUTRAL.model_copy(update={"overhead_s": float(np.median(launch))})},
        kernel_launch_s=float(np.median(launch)), host_sync_s=float(np.median(sync)),
        link=_fit_link(by("copy"), hw.host_link.name),
        copy_compute_slowdown=_copy_compute_slowdown(by("copy_beside_gemm")),
    )
    # Each family: its roofs' achieved fractions (and the GEMM tile-filling half point). The fixed
    # time of an operation timed alone is the host's issue latency of its first kernel
    # (``overhead_s``), so it belongs to the host path, not the family: one for copies, one for
    # SDPA (its backend selection), and one for everything that starts with a cuBLAS matmul
    # (GEMMs of every dtype, expert FFNs, MoE layers behind their router GEMM, the eager MLA
    # decode behind its first bmm), fitted in the host stage on all their cases together. No
    # bytes_half: a small operation's fixed time is that latency, not a lower bandwidth, and a
    # half point fitted to a handful of large shapes extrapolates wildly to small ones.
    curve_params = ["compute_max", "rows_half", "memory_max"]
    fused = by("moe_layer", impl="fused")
    scatter = [c for c in combine_cases(cases) if not c.held_out]
    dtypes = sorted({c.params.get("dtype", "bf16") for c in by("gemm")})
    gemm_keys = [f"gemm:{dt}" for dt in dtypes]
    kernel_keys = [k for k in ["vector", *gemm_keys, "expert", "grouped_expert", "attention", "mla"]] + (
        ["scatter"] if fused else [])
    stages = [
        ("vector", by("hbm_copy"), ["memory_max", "overhead_s"], (), ()),
        (gemm_keys[0], by("gemm"), curve_params, tuple((k, curve_params) for k in gemm_keys[1:]), ()),
        ("expert", by("expert_ffn"), curve_params, (), ()),
        # the index_add_ combine on its own where the harness timed it alone, else jointly with the layers
        *([("scatter", scatter, ["memory_max", "overhead_s"], (), ())] if scatter else []),
        ("grouped_expert", fused, curve_params + ["group_s"],
         (("scatter", ["memory_max"]),) if fused and not scatter else (), ()),
        # the host time of calls that sort, select or index by a tensor: of the fitted operations only
        # the fused MoE layers make them, so their cases set it (one figure for every kernel family)
        ("grouped_expert", fused, [], tuple((k, []) for k in kernel_keys if k != "grouped_expert"),
         ("index_call_s",)),
        # the clock drop under sustained tensor-core work: one GPU property, fitted on every family
        # whose long runs are matmuls (GEMMs of all dtypes, expert FFNs, fused MoE layers)
        (gemm_keys[0], by("gemm") + by("expert_ffn") + fused, [],
         tuple((k, []) for k in [*gemm_keys[1:], "expert", "grouped_expert"]), CLOCK_PARAMS),
        ("moe_loop", by("moe_layer", impl="loop"), ["overhead_s"], (), ()),
        ("attention", by("attention"), ["compute_max", "memory_max", "overhead_s"], (), ()),
        ("mla", by("mla_decode"), ["compute_max", "memory_max"], (), ()),
    ]
    matmul_led = [*gemm_keys, "expert", "grouped_expert", "mla"]
    # matmul families beyond the GEMMs that take the clock drop. Not SDPA: its flash kernels' own
    # efficiency grows with sequence length (tiles per SM), which this model does not describe,
    # and giving them the drop fits worse (H100 attention held-out median 6.8% -> 7.4%)
    clock_keys = ["expert", "grouped_expert", "mla"]
    pooled = list({id(c): c for key, fam, _, _, _ in stages if key != "moe_loop" for c in fam}.values())
    issue, dispatch = 20e-6, 10e-6
    for _ in range(3):
        for key, fam_cases, names, also, shared in stages:
            def base_of(k: str) -> FamilyCurve:
                prior = profile.families.get(k)
                if k == "moe_loop":
                    return NEUTRAL
                update = {"dispatch_s": dispatch}
                if k in matmul_led:
                    update["overhead_s"] = issue
                if k == "scatter" and not scatter:
                    update["overhead_s"] = 0.0  # never the first kernel of an operation in these cases
                if k in clock_keys and gemm_keys[0] in profile.families:
                    g = profile.families[gemm_keys[0]]
                    update.update({n: getattr(g, n) for n in CLOCK_PARAMS})
                return (prior or NEUTRAL).model_copy(update=update)
            profile = _fit_family(hw, profile, key, fam_cases, names, base_of(key),
                                  tuple((k, ns, base_of(k)) for k, ns in also), shared)
        issue, dispatch = _fit_host(hw, profile, pooled, kernel_keys, matmul_led)
        profile = profile.model_copy(update={"families": {
            k: v.model_copy(update=({"dispatch_s": dispatch} if k in kernel_keys else {})
                            | ({"overhead_s": issue} if k in matmul_led else {}))
            for k, v in profile.families.items()}})
    for key, fam_cases, _, _, _ in stages:
        if fam_cases:
            err = log_errors(_platform(hw, profile), fam_cases)
            log(f"  {key:16s} {len(fam_cases):4d} cases  median |err| {np.median(np.abs(np.expm1(err))):6.1%}")
    log(f"  host: {issue * 1e6:.1f} us issue latency (cuBLAS-led operations), {dispatch * 1e6:.1f} us per further "
        f"call, {profile.families[gemm_keys[0]].index_call_s * 1e6:.1f} us per further sort/select/index call")
    all_fitted = [c for c in train if c.op() is not None]
    err = np.abs(np.expm1(log_errors(_platform(hw, profile), all_fitted))) if all_fitted else np.zeros(1)
    return profile.model_copy(update={"fit_summary": {
        "train_cases": float(len(all_fitted)), "train_median_abs_err": float(np.median(err)),
        "train_p90_abs_err": float(np.percentile(err, 90))}})
