"""`--system transformers` against H200 measurements of transformers 5.17 generate (our own harness).

Measurements: ``validation/measurements/h200/transformers/*transformers5.17*.json`` written by
``validation/torchbench/hf_generate.py`` (random bf16 weights built from the published configs; some
models built with fewer layers than published, recorded per cell: the prediction uses the same count).

Split, fixed here before any fitting:
  FIT       OLMoE-1B-7B and Qwen1.5-MoE-A2.7B: every cell of theirs may inform the fitted constants
            (host time per torch call, per module call, per forward, per generate step; the
            cpu_offload hook time from OLMoE's offload cells);
  HELD-OUT  DeepSeek-V2-Lite, Qwen3-30B-A3B, Mixtral-8x7B (and Qwen1.5-MoE's cpu_offload cells): only scored.

``python validation/published/transformers_h200.py`` scores the constants in systems_db/transformers.yaml;
``--fit`` fits them on the FIT cells first and prints the values to write there (nothing is written).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from moesim.db.resolve import get_hardware, get_model  # noqa: E402
from moesim.modules import Context, Options  # noqa: E402
from moesim.specs import OfflineWorkload  # noqa: E402
from moesim.systems.transformers import Transformers  # noqa: E402

FIT_MODELS = ("olmoe-1b-7b", "qwen1.5-moe-a2.7b")
FIT_OFFLOAD_MODELS = ("olmoe-1b-7b",)
FITTED = ("torch_call_s", "module_call_s", "forward_host_s", "generate_step_host_s", "offload_module_s")
GEN_STEPS = 16
DECODE_STEPS = 6


def measurement_file() -> Path:
    files = sorted(glob.glob(str(ROOT / "validation/measurements/h200/transformers/*transformers5.17*.json")))
    if not files:
        raise SystemExit("no transformers 5.17 measurements under validation/measurements/h200/transformers/")
    return Path(files[-1])


def cells(path: Path | None = None) -> list[dict]:
    """Measured cells with a time: prefill, decode, generate (per step) and offload_*."""
    data = json.loads((path or measurement_file()).read_text())
    out = []
    for c in data["cells"]:
        t = c.get("median_s", c.get("per_step_s"))
        if t is None or t <= 0:
            continue
        offload = c["kind"].startswith("offload_")
        model = c["model"]
        split = "fit" if model in (FIT_OFFLOAD_MODELS if offload else FIT_MODELS) else "held-out"
        out.append(dict(c, measured_s=t, split=split, offload=offload, phase=c["kind"].removeprefix("offload_")))
    return out


def _ctx(model: str, layers: int, batch: int, prompt: int) -> Context:
    spec = get_model(model)
    if layers != spec.num_layers:
        spec = spec.model_copy(update={"num_layers": layers})
    return Context(spec, get_hardware("h200"), OfflineWorkload(num_requests=batch, prompt_tokens=prompt, gen_tokens=8),
                   Options())


def predict_cell(c: dict, consts: dict[str, float] | None = None) -> float:
    """Predicted seconds of one measured cell with the system's pricing (``consts`` override the YAML)."""
    system = Transformers({"experts_implementation": "grouped_mm", "cpu_offload": c["offload"]})
    if consts:
        system.__dict__.setdefault("_consts", {}).update(consts)
    ctx = _ctx(c["model"], c["layers"], c["batch"], c["prompt"])
    b, p = c["batch"], c["prompt"]
    if c["phase"] == "prefill":
        return system.forward_s(ctx, b, p, p, c["impl"]).now
    if c["phase"] == "decode":  # steps 2..DECODE_STEPS after the prefill: the middle context
        kv = p + 1 + (DECODE_STEPS + 1) // 2
        return system.forward_s(ctx, b, 1, kv, c["impl"]).now
    # whole generate calls: decode steps inside generate (grouped_mm decodes as batched_mm there)
    impl = "batched_mm" if c["impl"] == "grouped_mm" else c["impl"]
    return system.forward_s(ctx, b, 1, p + 1 + GEN_STEPS // 2, impl, generate_step=True).now


def in_generate(c: dict) -> bool:
    """Whether ``generate`` runs this cell's kernels: its decode loop never runs grouped_mm (transformers 5.17
    switches it to batched_mm), so forward-only grouped_mm decode cells are scored apart, not targeted."""
    return not (c["phase"] == "decode" and c["impl"] == "grouped_mm")


def errors(rows: list[dict], consts: dict[str, float] | None = None) -> list[dict]:
    out = []
    for c in rows:
        pred = predict_cell(c, consts)
        out.append(dict(c, predicted_s=pred, error=pred / c["measured_s"] - 1.0))
    return out


def fit(rows: list[dict]) -> dict[str, float]:
    """Fit the host constants on the FIT cells only, by Nelder-Mead in log space on the mean over groups
    (phase x experts backend, so that no backend's count of cells outweighs another's) of the mean
    |log(predicted / measured)|: torch_call_s, module_call_s, forward_host_s and generate_step_host_s on the
    forward and generate cells that generate runs; then offload_module_s on the FIT offload cells. The GPU time
    of the grouped_mm experts forward is not fitted here: its kernel family (grouped_mm_*) is fitted on kernel
    measurements by transformers_grouped_mm_kernels.py."""
    import numpy as np
    from scipy.optimize import minimize

    base = {k: float(Transformers().constants.value(k)) for k in FITTED}
    fit_rows = [c for c in rows if c["split"] == "fit"]
    on_gpu = [c for c in fit_rows if not c["offload"] and in_generate(c)]
    off = [c for c in fit_rows if c["offload"]]

    def loss(rows_, consts):
        groups: dict[tuple, list[float]] = {}
        for c in rows_:
            groups.setdefault((c["phase"], c["impl"]), []).append(abs(math.log(predict_cell(c, consts) / c["measured_s"])))
        return float(np.mean([np.mean(v) for v in groups.values()])) if groups else 0.0

    names = ["torch_call_s", "module_call_s", "forward_host_s", "generate_step_host_s"]
    x0 = np.log([max(base[n], 1e-6) for n in names])
    simplex = np.vstack([x0] + [x0 + np.log(2.0) * np.eye(len(names))[i] for i in range(len(names))])
    res = minimize(lambda x: loss(on_gpu, dict(zip(names, np.exp(x)))), x0, method="Nelder-Mead",
                   options={"maxiter": 400, "xatol": 1e-3, "fatol": 1e-5, "initial_simplex": simplex})
    consts = dict(base, **dict(zip(names, map(float, np.exp(res.x)))))
    if off:
        r = minimize(lambda x: loss(off, dict(consts, offload_module_s=float(np.exp(x[0])))),
                     [math.log(base["offload_module_s"])], method="Nelder-Mead", options={"maxiter": 60})
        consts["offload_module_s"] = float(np.exp(r.x[0]))
    return consts


CITATION = ("moesim's own H200 measurements of Hugging Face transformers 5.17 generate "
            "(validation/torchbench/hf_generate.py; validation/measurements/h200/transformers/)")


def _cell_key(c: dict) -> str:
    return f"{c['model']}|{c['kind']}|{c['impl']}|b{c['batch']}|p{c['prompt']}"


def published_cells() -> list:
    """The published corpus' cells (:mod:`moesim.calibration.published`): each measured prefill (a static batch's
    TTFT) and per-step decode inside ``generate`` (TPOT), split as :func:`cells` says (FIT_MODELS fit)."""
    from moesim.calibration.published import PublishedCell

    try:
        measured = cells()
    except SystemExit:  # no measurement file
        return []
    out, seen = [], set()
    for c in measured:
        if not in_generate(c) or _cell_key(c) in seen:
            continue
        seen.add(_cell_key(c))
        out.append(PublishedCell(
            key=_cell_key(c), citation=CITATION,
            setup=f"1 x H200, transformers 5.17, {c['model']} cut to {c['layers']} layers, random bf16 weights, "
                  f"batch {c['batch']}, prompt {c['prompt']}, experts {c['impl']}"
                  + (", accelerate cpu_offload" if c["offload"] else ""),
            row=f"generate, experts {c['impl']}" + (" + cpu_offload" if c["offload"] else ""),
            model=c["model"], hardware="h200", system="transformers",
            figure="ttft_s" if c["phase"] == "prefill" else "tpot_s", published=float(c["measured_s"]),
            split=c["split"], workload={"batch_size": c["batch"], "num_requests": c["batch"],
                                        "prompt_tokens": c["prompt"], "gen_tokens": GEN_STEPS},
            params={"experts_implementation": c["impl"], "cpu_offload": bool(c["offload"])},
            table=f"{c['phase']} {c['impl']}"))
    return out


_MEASURED: dict[str, dict] = {}


def evaluate(cell):
    """The corpus' Result of one cell: :func:`predict_cell` on the measured configuration (the model cut to the
    measured layers), with the band ``moesim.predict`` puts around the same figure of the whole model."""
    import moesim
    from moesim.calibration.published import Result, band_of
    from moesim.errors import MoesimError

    if not _MEASURED:
        _MEASURED.update((_cell_key(m), m) for m in cells())
    value = predict_cell(_MEASURED[cell.key])
    try:
        p = moesim.predict(cell.model, cell.hardware, cell.system, dict(cell.workload), system_params=dict(cell.params))
    except MoesimError as exc:
        return Result(cell, reason=str(exc).splitlines()[0][:200])
    low, high = band_of(p, cell.figure, value)
    return Result(cell, predicted=value, low=low, high=high, uncertainty=p.uncertainty)


def summary(rows: list[dict]) -> list[tuple]:
    """(split, phase, impl, offload, n, median |error|) groups."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        phase = r["phase"] if in_generate(r) else "decode (forward only, outside generate)"
        key = (r["split"], phase, r["impl"], r["offload"])
        groups.setdefault(key, []).append(abs(r["error"]))
    return [(k[0], k[1], k[2], k[3], len(v), statistics.median(v)) for k, v in sorted(groups.items())]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", action="store_true", help="fit the host constants on the FIT cells, then score")
    ap.add_argument("--cells", action="store_true", help="print every cell")
    ap.add_argument("--by-model", action="store_true", help="also print the median error per model, phase and backend")
    args = ap.parse_args()
    rows = cells()
    consts = None
    if args.fit:
        consts = fit(rows)
        print("fitted (write these into systems_db/transformers.yaml):")
        for k, v in consts.items():
            print(f"  {k}: {v:.4g}")
    scored = errors(rows, consts)
    if args.cells:
        for r in scored:
            print(f"{r['split']:8s} {r['model']:18s} {r['kind']:16s} {r['impl']:10s} b={r['batch']:3d} p={r['prompt']:3d} "
                  f"measured {r['measured_s'] * 1e3:9.2f} ms  predicted {r['predicted_s'] * 1e3:9.2f} ms  "
                  f"{r['error'] * 100:+6.1f}%")
    if args.by_model:
        groups: dict[tuple, list[float]] = {}
        for r in scored:
            if in_generate(r):
                key = (r["split"], r["model"], "offload_" + r["phase"] if r["offload"] else r["phase"], r["impl"])
                groups.setdefault(key, []).append(r["error"])
        print(f"{'split':8s} {'model':18s} {'phase':16s} {'impl':10s} {'n':>3s} {'median err':>10s} {'median |err|':>12s}")
        for (split, model, phase, impl), v in sorted(groups.items()):
            print(f"{split:8s} {model:18s} {phase:16s} {impl:10s} {len(v):3d} {statistics.median(v) * 100:+9.1f}% "
                  f"{statistics.median(map(abs, v)) * 100:11.1f}%")
        print()
    print(f"{'split':8s} {'phase':40s} {'impl':10s} {'offload':7s} {'n':>3s} {'median |err|':>12s}")
    for split, phase, impl, off, n, m in summary(scored):
        print(f"{split:8s} {phase:40s} {impl:10s} {str(off):7s} {n:3d} {m * 100:11.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
