"""Kernel family of transformers 5.17's grouped_mm experts forward, against H200 kernel measurements.

Measurements: ``validation/measurements/h200/transformers/*hf-grouped-mm-kernels*.json`` written by
``validation/torchbench/hf_grouped_mm.py``: per expert shape (hidden, expert width, experts, top_k) and
token count (1-32768, random routing, bf16), the CUDA-graph time of transformers'
``grouped_mm_experts_forward`` (``hf_graph``) and of its two grouped GEMMs alone (``gemm_graph``).

The family is :func:`moesim.systems.transformers.grouped_mm_layer_s` (equation in its docstring), with the
dense bf16 peak and HBM bandwidth of hardware_db/gpus/h200.yaml.

Split: the system's (``transformers_h200.FIT_MODELS``), so no model the end-to-end cells hold out informs a kernel
constant:
  FIT       the OLMoE-1B-7B (2048 x 1024, 64 experts, top-8) and Qwen1.5-MoE-A2.7B (2048 x 1408, 60, top-4) shapes,
            every token count;
  HELD-OUT  the DeepSeek-V2-Lite (2048 x 1408, 64, top-6), Qwen3-30B-A3B (2048 x 768, 128, top-8) and Mixtral-8x7B
            (4096 x 14336, 8, top-2) shapes: only scored. (Until 2026-12-03 Qwen3-30B-A3B was a FIT shape here while
            the end-to-end cells held it out; refitted without it.)

Fit: first the four GEMM parameters (flop_efficiency, rows_per_group, weight_bw_efficiency, call_s) on the
FIT ``gemm_graph`` times, then the two glue parameters (glue_bw_efficiency, glue_s) on the FIT ``hf_graph``
times with the GEMM part fixed; least squares on log(predicted / measured). The pass counts are read from
the 5.17 code (systems_db/transformers.yaml), not fitted. The host side: ``grouped_mm_host_s``, the host
time of one ``grouped_mm_experts_forward`` call, is the median eager burst time per call of the FIT shapes
at 1-16 tokens (HOST_BOUND_TOKENS), where the GPU's work (100-430 us in graphs) is shorter than the host's.

``python validation/published/transformers_grouped_mm_kernels.py`` scores the YAML's constants;
``--fit`` fits them first and prints the values to write there (nothing is written).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from moesim.db.resolve import get_hardware  # noqa: E402
from moesim.systems.transformers import GroupedMMKernels, Transformers, grouped_mm_layer_s  # noqa: E402

from transformers_h200 import FIT_MODELS  # noqa: E402  (this folder is on sys.path when run as a script)
GEMM_PARAMS = ("flop_efficiency", "rows_per_group", "weight_bw_efficiency", "call_s")
GLUE_PARAMS = ("glue_bw_efficiency", "glue_s")
HOST_BOUND_TOKENS = (1, 4, 16)


def measurement_file() -> Path:
    files = sorted(glob.glob(str(ROOT / "validation/measurements/h200/transformers/*hf-grouped-mm-kernels*.json")))
    if not files:
        raise SystemExit("no grouped_mm kernel measurements under validation/measurements/h200/transformers/")
    return Path(files[-1])


def points(path: Path | None = None) -> list[dict]:
    """Measured points with both graph times, each with its split."""
    data = json.loads((path or measurement_file()).read_text())
    out = []
    for p in data["points"]:
        if "hf_graph" not in p or "gemm_graph" not in p:
            continue
        out.append(dict(p, split="fit" if p["model"] in FIT_MODELS else "held-out",
                        gemm_s=p["gemm_graph"]["median_s"], layer_s=p["hf_graph"]["median_s"]))
    return out


def kernels(consts: dict[str, float] | None = None) -> GroupedMMKernels:
    """The system's kernel family at the YAML's constants, with ``consts`` in their place where given."""
    return dataclasses.replace(Transformers().grouped_mm_kernels(), **(consts or {}))


def predict(p: dict, k: GroupedMMKernels) -> tuple[float, float]:
    """(GEMM seconds, whole layer seconds) of one measured point."""
    gpu = get_hardware("h200").gpu
    peak, _ = gpu.peak_for("bf16")
    gemm, glue = grouped_mm_layer_s(p["hidden"], p["expert_ffn"], p["tokens"], p["routed_rows"], p["active_experts"],
                                    True, 2.0, 2.0, peak, gpu.memory_bandwidth_bytes_per_s, k)
    return gemm, gemm + glue


def fit(rows: list[dict]) -> dict[str, float]:
    import numpy as np
    from scipy.optimize import least_squares

    base = kernels()
    fit_rows = [p for p in rows if p["split"] == "fit"]

    def res_gemm(x):
        k = GroupedMMKernels(**dict(base.__dict__, **dict(zip(GEMM_PARAMS, np.exp(x)))))
        return [math.log(predict(p, k)[0] / p["gemm_s"]) for p in fit_rows]

    x0 = np.log([getattr(base, n) for n in GEMM_PARAMS])
    r1 = least_squares(res_gemm, x0, method="lm" if len(fit_rows) > len(x0) else "trf")
    consts = dict(zip(GEMM_PARAMS, map(float, np.exp(r1.x))))

    def res_layer(x):
        k = GroupedMMKernels(**dict(base.__dict__, **consts, **dict(zip(GLUE_PARAMS, np.exp(x)))))
        return [math.log(predict(p, k)[1] / p["layer_s"]) for p in fit_rows]

    r2 = least_squares(res_layer, np.log([getattr(base, n) for n in GLUE_PARAMS]))
    consts.update(zip(GLUE_PARAMS, map(float, np.exp(r2.x))))
    return consts


def host_s(rows: list[dict], split: str = "fit") -> float:
    """Median eager burst seconds per call of ``split``'s points at HOST_BOUND_TOKENS."""
    v = [p["hf_eager"]["burst_s"] for p in rows
         if p["split"] == split and p["tokens"] in HOST_BOUND_TOKENS and "hf_eager" in p]
    return statistics.median(v) if v else float("nan")


def scored(rows: list[dict], k: GroupedMMKernels) -> list[dict]:
    out = []
    for p in rows:
        g, layer = predict(p, k)
        out.append(dict(p, gemm_pred_s=g, layer_pred_s=layer, gemm_err=g / p["gemm_s"] - 1, layer_err=layer / p["layer_s"] - 1))
    return out


def summary(rows: list[dict]) -> list[tuple]:
    """(split, model, n, median |GEMM error|, max |GEMM error|, median |layer error|, max |layer error|)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["split"], r["model"]), []).append(r)
        groups.setdefault((r["split"], "(all)"), []).append(r)
    out = []
    for (split, model), v in sorted(groups.items()):
        ge, le = [abs(r["gemm_err"]) for r in v], [abs(r["layer_err"]) for r in v]
        out.append((split, model, len(v), statistics.median(ge), max(ge), statistics.median(le), max(le)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", action="store_true", help="fit the kernel family on the FIT shapes, then score")
    ap.add_argument("--points", action="store_true", help="print every point")
    args = ap.parse_args()
    rows = points()
    consts = None
    if args.fit:
        consts = fit(rows)
        print("fitted (write these into systems_db/transformers.yaml as grouped_mm_<name>):")
        for n, v in consts.items():
            print(f"  {n}: {v:.4g}")
        print(f"  host_s: {host_s(rows):.4g}   (median eager burst per call, FIT shapes, {HOST_BOUND_TOKENS} tokens)")
    yaml_host = float(Transformers().constants.value("grouped_mm_host_s"))
    print(f"host time per call: YAML {yaml_host * 1e6:.0f} us; held-out shapes' median eager burst at "
          f"{HOST_BOUND_TOKENS} tokens {host_s(rows, 'held-out') * 1e6:.0f} us "
          f"({(yaml_host / host_s(rows, 'held-out') - 1) * 100:+.1f}%)")
    res = scored(rows, kernels(consts))
    if args.points:
        for r in res:
            print(f"{r['split']:8s} {r['model']:18s} T={r['tokens']:6d} gemm {r['gemm_s'] * 1e6:9.1f} us pred "
                  f"{r['gemm_pred_s'] * 1e6:9.1f} ({r['gemm_err'] * 100:+6.1f}%)  layer {r['layer_s'] * 1e6:9.1f} us pred "
                  f"{r['layer_pred_s'] * 1e6:9.1f} ({r['layer_err'] * 100:+6.1f}%)")
    print(f"{'split':8s} {'model':18s} {'n':>3s} {'GEMM med|err|':>13s} {'max':>7s} {'layer med|err|':>14s} {'max':>7s}")
    for split, model, n, gm, gx, lm, lx in summary(res):
        print(f"{split:8s} {model:18s} {n:3d} {gm * 100:12.1f}% {gx * 100:6.1f}% {lm * 100:13.1f}% {lx * 100:6.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
