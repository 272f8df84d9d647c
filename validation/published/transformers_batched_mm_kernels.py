"""Kernel family of transformers 5.17's batched_mm experts forward, against H200 kernel measurements.

Measurements: ``validation/measurements/h200/transformers/*hf-batched-mm-host*.json`` written by
``validation/torchbench/hf_batched_mm.py`` (part ``bmm``): per expert shape (hidden, expert width, experts,
top_k) and token count (1-512, random routing, bf16), the GPU time of transformers' own
``batched_mm_experts_forward`` (CUDA events around an eager call; a CUDA graph's replay for the small
ones) and of its four big kernels alone: the two index gathers of the stacked expert weights by expert id
(``gate_up_proj[expert_ids]``, ``down_proj[expert_ids]``) and the two bmm's on the gathered weights. Part
``copy`` of the same file gives the device-to-device copy rate (``copy_bw_efficiency``, measured, not fitted).

The family is :func:`moesim.systems.transformers.batched_mm_layer_s` (equation in its docstring), with the
HBM bandwidth of hardware_db/gpus/h200.yaml.

Split, fixed here before any fitting (the same models as the system's split in transformers_h200.py):
  FIT       the OLMoE-1B-7B (2048 x 1024, 64 experts, top-8) and Qwen1.5-MoE-A2.7B (2048 x 1408, 60, top-4)
            shapes, every token count, random (uniform) routing;
  HELD-OUT  the DeepSeek-V2-Lite (2048 x 1408, 64, top-6), Qwen3-30B-A3B (2048 x 768, 128, top-8) and
            Mixtral-8x7B (4096 x 14336, 8, top-2) shapes, and every "same_experts" routing point: only scored.

Fit, least squares on log(predicted / measured): gather_passes on the FIT gathers' times and
bmm_bw_efficiency on the FIT bmm's, both where at least BANDWIDTH_BOUND_BYTES are gathered (smaller ones
are timed around one eager launch: latency, not bandwidth); then glue_s, the fixed GPU time of the whole
call, on the FIT whole-layer times (graph replay where measured, else events) with the rest fixed. The glue pass counts are read from the 5.17 code
(systems_db/transformers.yaml), not fitted.

``python validation/published/transformers_batched_mm_kernels.py`` scores the YAML's constants;
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
from moesim.specs.common import BYTES_PER_ELEMENT  # noqa: E402
from moesim.systems.transformers import BatchedMMKernels, Transformers, batched_mm_layer_s  # noqa: E402

from transformers_h200 import FIT_MODELS  # noqa: E402  (the system's split; this folder is on sys.path as a script)
BF16_BYTES = BYTES_PER_ELEMENT["bf16"]  # the harness' weights and activations (hf_batched_mm.py runs bf16)
BANDWIDTH_BOUND_BYTES = 4e9  # gathered bytes from which the gathers and bmm's are fitted (smaller: launch-bound)


def measurement_file() -> Path:
    files = sorted(glob.glob(str(ROOT / "validation/measurements/h200/transformers/*hf-batched-mm-host*.json")))
    if not files:
        raise SystemExit("no batched_mm kernel measurements under validation/measurements/h200/transformers/")
    return Path(files[-1])


def _bw() -> float:
    return get_hardware("h200").gpu.memory_bandwidth_bytes_per_s


def copy_efficiency(path: Path | None = None) -> float:
    """Measured device-to-device copy rate (read + write bytes per second, the largest copy) over HBM bandwidth."""
    data = json.loads((path or measurement_file()).read_text())
    big = max(data["copy"], key=lambda c: c["bytes"])
    return big["read_write_bytes_per_s"] / _bw()


def points(path: Path | None = None) -> list[dict]:
    """Measured points with the whole-layer time and its four kernels, each with its split."""
    data = json.loads((path or measurement_file()).read_text())
    out = []
    for p in data["bmm"]:
        if "hf" not in p or "bmm_down" not in p:
            continue
        split = "fit" if p["model"] in FIT_MODELS and p["routing"] == "uniform" else "held-out"
        layer = p.get("hf_graph", p["hf"])["median_s"]
        out.append(dict(p, split=split, layer_s=layer, gather_s=(p["gather_up"]["median_s"], p["gather_down"]["median_s"]),
                        bmm_s=(p["bmm_up"]["median_s"], p["bmm_down"]["median_s"])))
    return out


def kernels(consts: dict[str, float] | None = None) -> BatchedMMKernels:
    """The system's kernel family at the YAML's constants, with ``consts`` in their place where given."""
    return dataclasses.replace(Transformers().batched_mm_kernels(), **(consts or {}))


def _one(p: dict, k: BatchedMMKernels, n: int, kk: int) -> tuple[float, float]:
    """(gather, bmm) seconds of one projection of N x K weights per routed row, from the system's own
    :func:`batched_mm_layer_s`: an ungated FFN of hidden N and width K has two projections of N x K weights each
    (up: K x N, down: N x K), so one projection is half of its gathers and half of its bmm's."""
    gathers, bmms, _ = batched_mm_layer_s(n, kk, p["routed_rows"], False, BF16_BYTES, BF16_BYTES, _bw(), k)
    return gathers / 2, bmms / 2


def predict(p: dict, k: BatchedMMKernels) -> dict:
    """Predicted seconds of one point: each projection's gather and bmm, and the whole layer."""
    h, i = p["hidden"], p["expert_ffn"]
    up, down = _one(p, k, 2 * i, h), _one(p, k, h, i)
    layer = sum(batched_mm_layer_s(h, i, p["routed_rows"], True, BF16_BYTES, BF16_BYTES, _bw(), k))
    return {"gather": (up[0], down[0]), "bmm": (up[1], down[1]), "layer": layer}


def fit(rows: list[dict]) -> dict[str, float]:
    import numpy as np
    from scipy.optimize import least_squares

    base = kernels({"copy_bw_efficiency": copy_efficiency()})
    fit_rows = [p for p in rows if p["split"] == "fit"]

    def stage(params, key, consts):
        rows_ = fit_rows if key == "layer" else [p for p in fit_rows if p["gathered_bytes"] >= BANDWIDTH_BOUND_BYTES]

        def res(x):
            k = BatchedMMKernels(**dict(base.__dict__, **consts, **dict(zip(params, np.exp(x)))))
            out = []
            for p in rows_:
                pred = predict(p, k)[key]
                meas = p[key + "_s"]
                if isinstance(meas, tuple):
                    out += [math.log(a / b) for a, b in zip(pred, meas)]
                else:
                    out.append(math.log(pred / meas))
            return out
        r = least_squares(res, np.log([getattr(base, n) for n in params]))
        return dict(zip(params, map(float, np.exp(r.x))))

    consts = {"copy_bw_efficiency": base.copy_bw_efficiency}
    consts.update(stage(("gather_passes",), "gather", consts))
    consts.update(stage(("bmm_bw_efficiency",), "bmm", consts))
    consts.update(stage(("glue_s",), "layer", consts))
    return consts


def scored(rows: list[dict], k: BatchedMMKernels) -> list[dict]:
    out = []
    for p in rows:
        pr = predict(p, k)
        out.append(dict(p, layer_pred_s=pr["layer"], layer_err=pr["layer"] / p["layer_s"] - 1,
                        gather_err=sum(pr["gather"]) / sum(p["gather_s"]) - 1, bmm_err=sum(pr["bmm"]) / sum(p["bmm_s"]) - 1))
    return out


def summary(rows: list[dict]) -> list[tuple]:
    """(split, model, n, median |layer error|, max |layer error|, median |gather error|, median |bmm error|)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        name = r["model"] + ("" if r["routing"] == "uniform" else " (same experts)")
        groups.setdefault((r["split"], name), []).append(r)
        groups.setdefault((r["split"], "(all)"), []).append(r)
    out = []
    for (split, model), v in sorted(groups.items()):
        le = [abs(r["layer_err"]) for r in v]
        out.append((split, model, len(v), statistics.median(le), max(le),
                    statistics.median(abs(r["gather_err"]) for r in v), statistics.median(abs(r["bmm_err"]) for r in v)))
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
        print("fitted (write these into systems_db/transformers.yaml as batched_mm_<name>):")
        for n, v in consts.items():
            print(f"  {n}: {v:.4g}")
    res = scored(rows, kernels(consts))
    if args.points:
        for r in res:
            print(f"{r['split']:8s} {r['model']:18s} T={r['tokens']:4d} {r['routing']:12s} layer {r['layer_s'] * 1e3:8.3f} ms "
                  f"pred {r['layer_pred_s'] * 1e3:8.3f} ({r['layer_err'] * 100:+6.1f}%)  gathers {r['gather_err'] * 100:+6.1f}% "
                  f"bmm {r['bmm_err'] * 100:+6.1f}%")
    print(f"{'split':8s} {'model':32s} {'n':>3s} {'layer med|err|':>14s} {'max':>7s} {'gathers':>8s} {'bmm':>7s}")
    for split, model, n, lm, lx, gm, bm in summary(res):
        print(f"{split:8s} {model:32s} {n:3d} {lm * 100:13.1f}% {lx * 100:6.1f}% {gm * 100:7.1f}% {bm * 100:6.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
