"""Fit collective-communication latency and bandwidth to the multi-GPU campaign's measurements
(``validation/torchbench/multi_gpu.py``, one JSON per GPU count), score them on held-out cases, and
write the profile (``hardware_db/collectives/<platform>.yaml``, :class:`moesim.specs.collectives.CollectiveProfile`).

Model per family f and GPU count n (nccl-tests' bus-bandwidth convention, doc/PERFORMANCE.md):

    t = alpha_f(n) + A_f(n) * bytes / beta_f(n),   A: all-reduce 2 (n-1)/n, others (n-1)/n

fitted as weighted non-negative least squares on relative error (each case's row divided by its
measured time, so a 1 KiB case weighs as much as a 1 GiB one). Across counts:
alpha(n) = a0 + a1 (n - 1), one beta.

The split is fixed here, before any fit (``SPLIT``):

* sizes: within each (timing, family, GPU count) series sorted by ``bytes``, every third size starting
  with the second (index % 3 == 1) is held out, so held-out sizes lie between fitted ones;
* GPU counts: the cross-count model is fitted on the counts not in ``HELD_OUT_GPU_COUNTS`` (4) and
  scored on those (all their sizes); it needs two fitted counts (2 and 8), else it is not fitted.

Timings: ``eager`` (single calls after a barrier, ``median_s``: includes the host's launch and the
ranks' skew after the barrier), ``burst`` (calls back to back, ``burst_s``: the steady state of eager
calls issued while the GPU is busy) and ``graph`` (CUDA-graph replays, ``graph_s``: GPU time alone, as
CUDA-graph decode runs them). The EP and TP layers of the campaign are not fitted here; :func:`score_ep` predicts the
EP layer's dispatch and combine from the all-to-all fits and scores them.

    python -m moesim.calibration.collectives validation/measurements/hgx-h200/*.json --platform "HGX H200"
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from scipy.optimize import nnls

from ..errors import MoesimError
from ..specs.collectives import (CollectiveFamilyProfile, CollectiveFit, CollectiveProfile, CrossCountFit,
                                 ErrorSummary, algorithm_factor)
from .store import gpu_slug

FAMILIES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "all_to_all_uneven")
TIMINGS = {"eager": "median_s", "burst": "burst_s", "graph": "graph_s"}
HELD_OUT_EVERY = 3  # within a series sorted by size: index % 3 == 1 held out
HELD_OUT_GPU_COUNTS = (4,)
SPLIT = (f"sizes: within each (timing, family, GPU count) series sorted by bytes, every {HELD_OUT_EVERY}rd size "
         f"starting with the second is held out; GPU counts {list(HELD_OUT_GPU_COUNTS)} are held out of the "
         "cross-count model (fitted on the other counts' fitted sizes)")


class CollectiveDataError(MoesimError):
    """A measurement file the collective fit cannot use."""

    exit_code = 2


@dataclass(frozen=True)
class Point:
    timing: str
    family: str
    gpus: int
    nbytes: float  # each rank's largest buffer (all-to-all: the most any rank sends or receives)
    time_s: float
    held_out_size: bool = False


def load(paths: list[str | Path]) -> tuple[list[Point], list[dict], bool]:
    """(points, environments, synthetic?) from multi_gpu.py JSON files."""
    points, envs, synthetic = [], [], False
    for p in paths:
        try:
            data = json.loads(Path(p).read_text())
        except (OSError, ValueError) as exc:
            raise CollectiveDataError(f"cannot read {p}: {exc}") from None
        if not isinstance(data, dict) or data.get("harness") != "multi_gpu" or not isinstance(data.get("cases"), list):
            raise CollectiveDataError(f"{p}: not a multi_gpu.py measurement file (no 'harness: multi_gpu' and cases)")
        env = data.get("env", {})
        envs.append(env)
        synthetic |= bool(data.get("synthetic") or env.get("synthetic"))
        n = env.get("world_size")
        for c in data["cases"]:
            if c.get("family") not in FAMILIES or "error" in c or "skipped" in c:
                continue
            gpus = int(c.get("gpus", n))
            nbytes = float(c.get("extra", {}).get("max_rank_bytes", c["params"]["nbytes"]))
            for timing, key in TIMINGS.items():
                t = c.get(key)
                if isinstance(t, (int, float)) and t > 0 and np.isfinite(t):
                    points.append(Point(timing, c["family"], gpus, nbytes, float(t)))
    if not points:
        raise CollectiveDataError("no collective cases with times in " + ", ".join(map(str, paths)))
    return assign_split(points), envs, synthetic


def assign_split(points: list[Point]) -> list[Point]:
    """Mark held-out sizes (fixed rule above; it reads only sizes, never times)."""
    series: dict[tuple, list[float]] = {}
    for p in points:
        series.setdefault((p.timing, p.family, p.gpus), []).append(p.nbytes)
    held = {k: set(sorted(set(v))[1::HELD_OUT_EVERY]) for k, v in series.items()}
    return [Point(p.timing, p.family, p.gpus, p.nbytes, p.time_s, p.nbytes in held[(p.timing, p.family, p.gpus)])
            for p in points]


def _nnls_fit(points: list[Point], hops: bool) -> list[float]:
    """Coefficients of t = alpha [+ alpha_per_peer (n - 1)] + (A b) / beta, as (alpha, [alpha_per_peer,] 1 / beta),
    minimising sum (predicted / t - 1)^2 with every coefficient >= 0 (non-negative least squares)."""
    t = np.array([p.time_s for p in points])
    x = np.array([algorithm_factor(p.family, p.gpus) * p.nbytes for p in points])
    cols = [1.0 / t] + ([np.array([p.gpus - 1.0 for p in points]) / t] if hops else []) + [x / t]
    coef, _ = nnls(np.column_stack(cols), np.ones_like(t))
    return [float(c) for c in coef]


def _bandwidth(inv_beta: float) -> float:
    return 1.0 / inv_beta if inv_beta > 0 else float("inf")


def fit_alpha_beta(points: list[Point]) -> tuple[float, float]:
    """(alpha_s, bus_bytes_per_s) minimising sum ((alpha + A b / beta) / t - 1)^2 with alpha, 1/beta >= 0."""
    alpha, inv_beta = _nnls_fit(points, hops=False)
    return alpha, _bandwidth(inv_beta)


def fit_cross(points: list[Point]) -> tuple[float, float, float]:
    """(a0, a1, beta) of alpha(n) = a0 + a1 (n - 1), same weighting."""
    a0, a1, inv_beta = _nnls_fit(points, hops=True)
    return a0, a1, _bandwidth(inv_beta)


def error_summary(errors: list[float]) -> ErrorSummary:
    """Count, median and p90 (numpy's linear percentile) of |relative error|s."""
    if not errors:
        return ErrorSummary(cases=0)
    e = np.abs(np.array(errors))
    return ErrorSummary(cases=len(e), median_rel_err=float(np.median(e)), p90_rel_err=float(np.percentile(e, 90)))


def summary(points: list[Point], predict) -> ErrorSummary:
    return error_summary([predict(p) / p.time_s - 1.0 for p in points])


def fit_profile(paths: list[str | Path], platform: str) -> CollectiveProfile:
    points, envs, synthetic = load(paths)
    timings: dict[str, dict[str, CollectiveFamilyProfile]] = {}
    for timing in TIMINGS:
        fams = {}
        for fam in FAMILIES:
            pts = [p for p in points if p.timing == timing and p.family == fam]
            if not pts:
                continue
            by_gpus = {}
            for n in sorted({p.gpus for p in pts}):
                mine = [p for p in pts if p.gpus == n]
                fit = [p for p in mine if not p.held_out_size]
                if len(fit) < 2:
                    continue
                alpha, beta = fit_alpha_beta(fit)
                if not np.isfinite(beta):
                    continue
                model = CollectiveFit(alpha_s=alpha, bus_bytes_per_s=beta, fit=ErrorSummary(cases=0),
                                      held_out=ErrorSummary(cases=0))
                pred = lambda p, m=model: m.time_s(p.family, p.nbytes, p.gpus)  # noqa: E731
                by_gpus[n] = model.model_copy(update={"fit": summary(fit, pred), "held_out": summary(
                    [p for p in mine if p.held_out_size], pred)})
            cross = None
            fit_counts = sorted({p.gpus for p in pts} - set(HELD_OUT_GPU_COUNTS))
            if len(fit_counts) >= 2:
                fit = [p for p in pts if p.gpus in fit_counts and not p.held_out_size]
                a0, a1, beta = fit_cross(fit)
                if np.isfinite(beta):
                    held_counts = sorted({p.gpus for p in pts} & set(HELD_OUT_GPU_COUNTS))
                    cross = CrossCountFit(alpha_s=a0, alpha_per_peer_s=a1, bus_bytes_per_s=beta,
                                          fit_gpu_counts=fit_counts, held_out_gpu_counts=held_counts,
                                          fit=ErrorSummary(cases=0), held_out=ErrorSummary(cases=0))
                    pred = lambda p, m=cross: m.time_s(p.family, p.nbytes, p.gpus)  # noqa: E731
                    cross = cross.model_copy(update={"fit": summary(fit, pred), "held_out": summary(
                        [p for p in pts if p.gpus in held_counts], pred)})
            if by_gpus or cross:
                fams[fam] = CollectiveFamilyProfile(by_gpus=by_gpus, across_counts=cross)
        if fams:
            timings[timing] = fams
    env = envs[0] if envs else {}
    environment = {k: str(env[k]) for k in ("torch", "nccl", "cuda", "hostname", "timestamp") if k in env}
    environment["gpus"] = ", ".join(sorted({str(g) for e in envs for g in e.get("gpus", [])}))
    environment["world_sizes"] = ", ".join(str(e.get("world_size")) for e in envs)
    mc = {k: v for e in envs for k, v in e.get("env_vars", {}).items() if "NVLS" in k or "MULTICAST" in k}
    if mc:
        environment["multicast_env"] = ", ".join(f"{k}={v}" for k, v in sorted(mc.items()))
    return CollectiveProfile(platform=platform, measurements=[str(p) for p in paths], synthetic=synthetic,
                             environment=environment, split=SPLIT, timings=timings)


def report(profile: CollectiveProfile) -> str:
    """One line per (timing, family, GPU count): alpha, beta, and fit vs held-out errors, apart."""
    def pct(s: ErrorSummary) -> str:
        if not s.cases:
            return "      -      "
        return f"{100 * s.median_rel_err:5.1f}/{100 * s.p90_rel_err:5.1f}% ({s.cases})"

    lines = [f"collectives on {profile.platform}{' (SYNTHETIC)' if profile.synthetic else ''}: "
             "median/p90 |pred/meas - 1| (cases)",
             f"{'timing':7s}{'family':19s}{'GPUs':>5s}{'alpha_us':>10s}{'busbw_GB/s':>12s}   "
             f"{'fit':18s}{'held out':18s}"]
    for timing, fams in profile.timings.items():
        for fam, fp in fams.items():
            for n, f in fp.by_gpus.items():
                lines.append(f"{timing:7s}{fam:19s}{n:5d}{f.alpha_s * 1e6:10.2f}{f.bus_bytes_per_s / 1e9:12.1f}   "
                             f"{pct(f.fit):18s}{pct(f.held_out):18s}")
            c = fp.across_counts
            if c is not None:
                lines.append(f"{timing:7s}{fam:19s}{'all':>5s}{c.alpha_s * 1e6:10.2f}{c.bus_bytes_per_s / 1e9:12.1f}   "
                             f"{pct(c.fit):18s}{pct(c.held_out):18s} alpha/peer {c.alpha_per_peer_s * 1e6:.2f} us; "
                             f"fit on {c.fit_gpu_counts} GPUs, held out {c.held_out_gpu_counts}")
    return "\n".join(lines)


def score_ep(profile: CollectiveProfile, paths: list[str | Path], timing: str = "eager") -> dict[str, ErrorSummary]:
    """The expert-parallel layer's communication phases predicted from the fitted all-to-all models and
    scored against the ``ep_moe`` cases (never fitted on them):

        dispatch = t_all_to_all(experts x 8 bytes of counts) + t_all_to_all_uneven(B)
        combine  = t_all_to_all_uneven(B)

    with B = the most rows any rank sends or receives (tokens x top-k sent; received rows as measured)
    x hidden x element bytes. Dispatch also holds the host sync for the split sizes, which the
    collective fits leave out: its error says how much that costs. Keys ``<phase>:<routing>``."""
    errs: dict[str, list[float]] = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        for c in data.get("cases", []):
            if c.get("family") != "ep_moe" or "dispatch_s" not in c:
                continue
            p, n = c["params"], int(c.get("gpus", data.get("env", {}).get("world_size", 1)))
            esize = 4 if p.get("dtype") == "fp32" else 2
            rows = max([p["tokens"] * p["top_k"], *c.get("extra", {}).get("received_rows_per_rank", [])])
            nbytes = rows * p["hidden"] * esize
            counts = profile.time_s("all_to_all", p["experts"] * 8, n, timing)
            data_s = profile.time_s("all_to_all_uneven", nbytes, n, timing)
            if counts is None or data_s is None:
                continue
            for phase, pred in (("dispatch", counts + data_s), ("combine", data_s)):
                errs.setdefault(f"{phase}:{p['routing']}", []).append(pred / c[f"{phase}_s"] - 1.0)
    return {k: error_summary(v) for k, v in errs.items()}


def profile_path(platform: str, root: Path | None = None) -> Path:
    from ..db import data_root

    return (root or data_root("hardware_db") / "collectives") / f"{gpu_slug(platform)}.yaml"


def save(profile: CollectiveProfile, path: Path) -> None:
    """Write the profile; a synthetic one never goes into the repository's hardware_db."""
    from ..db import data_root

    if profile.synthetic:
        try:
            inside = path.resolve().is_relative_to(data_root("hardware_db").resolve())
        except FileNotFoundError:
            inside = False
        if inside:
            raise CollectiveDataError(f"refusing to write a profile fitted on synthetic data into {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ("# Fitted by `python -m moesim.calibration.collectives` from the measurements named below; "
              "do not edit.\n"
              "# t = alpha + A(n) bytes / bus_bytes_per_s, A: all-reduce 2(n-1)/n, others (n-1)/n; bytes = each rank's "
              "largest buffer.\n"
              "# Errors are |pred/meas - 1|: 'fit' on fitted cases, 'held_out' on cases the fit never saw "
              "(see split).\n")
    path.write_text(header + yaml.safe_dump(profile.model_dump(mode="json"), sort_keys=False))


def load_profile(path: Path) -> CollectiveProfile:
    from ..db import load_spec_file

    return load_spec_file(CollectiveProfile, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Fit collective latency/bandwidth to multi_gpu.py measurements.")
    ap.add_argument("files", nargs="+", help="multi_gpu.py JSON files (one per GPU count)")
    ap.add_argument("--platform", required=True, help="the platform measured, e.g. 'HGX H200'")
    ap.add_argument("--out", help="profile YAML (default hardware_db/collectives/<platform>.yaml)")
    ap.add_argument("--dry-run", action="store_true", help="report only, write nothing")
    args = ap.parse_args(argv)
    try:
        prof = fit_profile(args.files, args.platform)
        print(report(prof))
        ep = score_ep(prof, args.files)
        if ep:
            print("expert-parallel layer, communication predicted from the all-to-all fits "
                  "(scored only, never fitted):")
            for key, e in ep.items():
                print(f"  {key:22s} median {100 * e.median_rel_err:5.1f}%  p90 {100 * e.p90_rel_err:5.1f}%  "
                      f"({e.cases} cases)")
        if not args.dry_run:
            path = Path(args.out) if args.out else profile_path(args.platform)
            save(prof, path)
            print(f"wrote {path}")
    except MoesimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
