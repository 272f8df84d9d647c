"""Op-level accuracy of kernel pricing (issue 12: fused MoE, fp8 GEMM of both kinds, decode-size all-reduce).

    python -m moesim.analysis.kernel_accuracy [--json]

Three comparisons, each printed as median and p90 of |predicted / measured - 1| per family:

(a) **table interpolation, held out** (:func:`table_holdout`): for every table of
    ``hardware_db/kernels`` (H100 SXM and H200; vLLM, SGLang, TensorRT-LLM), the points are split
    *before anything is looked up*, by this rule and no other: within each series (same categorical key
    and same values of every numeric axis but the split axis, ordered along the split axis: GEMM m, MoE
    tokens, all-reduce bytes), the points at odd positions except the last are **held out**, the rest
    **fit** (inform). A Grid built from the fit points alone prices each held-out point by the lookup
    rule of :mod:`moesim.costs.kernels`; held-out points it does not cover are counted, not scored.
    Holding out every other point doubles the gap interpolation bridges, so these errors bound those of
    the full tables from above.
(b) **moesim's roofline/calibrated pricing** (as of this branch, the H200's calibrated efficiency) against
    our own H200 measurements (``validation/measurements/h200/engine_kernels/*.json``: torch's fp8 GEMMs,
    our Triton block-scaled GEMM and fused MoE, all replayed in CUDA graphs) and, for all-reduce (one GPU
    there), against AIConfigurator's H200 vLLM custom all-reduce table. Nothing in (b) was fitted on
    these measurements: all of it is held out. Two prices: ``eager`` (``gpu_time_s``: what moesim charges
    today, host issue included) and ``roof`` (the parts' GPU rooflines alone, what a graph replay pays).
(c) **cross-source check**: AIConfigurator's H200 vLLM tables (vLLM's own tuned kernels) against our
    H200 measurements of the same shapes (our own, untuned-by-engine Triton kernels; torch's cuBLAS fp8
    GEMM): how far an engine's kernels are from what torch/Triton can do on the same silicon.

Families: ``moe <quant>`` (decode: tokens <= 256, prefill: above), ``gemm <quant>``, ``allreduce <n>gpu``
(messages up to :data:`DECODE_ALLREDUCE_MAX_BYTES`); in (a) also ``attention prefill <kv dtype>`` (the GQA/MHA prefill
attention the engines are priced from, held out along the batch axis). The MLA prefill tables are not in (a): every
batch size they hold is kept by some sequence length's series, so a held-out point's bracket is always its own,
held-out, value and nothing is covered.
"""

from __future__ import annotations

import argparse
import json
import statistics
import math
from pathlib import Path
from types import SimpleNamespace

from ..costs import kernels as K
from ..paths import validation_root

#: decode-size all-reduce: up to 256 tokens of a 16384-wide bf16 hidden state
DECODE_ALLREDUCE_MAX_BYTES = 256 * 16384 * 2
DECODE_MAX_TOKENS = 256
#: which numeric axis (index among a table's axes) the held-out split runs along
SPLIT_AXIS = {"gemm": 0, "moe": 0, "allreduce": 0, "attention_decode": 1, "attention_prefill": 1, "mla_decode": 1, "mla_prefill": 1}
FAMILIES = ("moe", "gemm", "allreduce", "attention_prefill")
MEASURED = validation_root() / "measurements" / "h200" / "engine_kernels"


def stats(errors: list[float]) -> dict:
    """n, median and p90 of |error| (errors as predicted / measured - 1)."""
    a = sorted(abs(e) for e in errors)
    if not a:
        return {"n": 0, "median": None, "p90": None}
    p90 = a[min(len(a) - 1, int(round(0.9 * (len(a) - 1))))]
    return {"n": len(a), "median": statistics.median(a), "p90": p90, "bias": statistics.median(errors)}


def split_points(grid: K.Grid, axis: int) -> tuple[list, list]:
    """(fit rows, held-out rows) of a Grid by the rule in the module docstring; rows are
    [*cat, *axes, seconds]."""
    fit, held = [], []
    for cat, pts in grid.points.items():
        series: dict[tuple, list] = {}
        for pt, logv in pts.items():
            other = pt[:axis] + pt[axis + 1:]
            series.setdefault(other, []).append((pt[axis], pt, math.exp(logv)))
        for members in series.values():
            members.sort()
            for i, (_, pt, v) in enumerate(members):
                row = [*cat, *pt, v]
                (held if i % 2 == 1 and i != len(members) - 1 else fit).append(row)
    return fit, held


def family_of(fam: str, cat: tuple, pt: tuple) -> str | None:
    """The reported family of a table point (``cat``: its categorical key, quantisation first; ``pt``: its numeric
    axes, MoE tokens / all-reduce bytes first) or of a measured case given the same way; None: not reported."""
    if fam == "moe":
        return f"moe {cat[0]} {'decode' if pt[0] <= DECODE_MAX_TOKENS else 'prefill'}"
    if fam == "gemm":
        return f"gemm {cat[0]}"
    if fam == "allreduce":
        return f"allreduce {cat[1]}gpu" if pt[0] <= DECODE_ALLREDUCE_MAX_BYTES else None
    if fam == "attention_prefill":
        return f"attention prefill {cat[0]}"  # by the KV cache's dtype
    return None


def table_holdout(gpus=("h100-sxm", "h200"), backends=K.BACKEND_ORDER) -> dict:
    """(a): {gpu: {backend: {family: stats + uncovered}}}."""
    out: dict = {}
    for gpu in gpus:
        for backend in backends:
            t = K.kernel_tables(gpu, backend)
            if t is None:
                continue
            part = t.parts[0]
            for fam in FAMILIES:
                path = part.path(fam)
                if path is None:
                    continue
                ncat = K.CATEGORICAL[fam]
                fit, held = split_points(K.Grid(K.read_rows(path), ncat), SPLIT_AXIS[fam])  # as measured
                fitted = K.Grid(fit, ncat, K.MONOTONE_AXIS.get(fam))  # the lookup moesim uses
                errs: dict[str, list] = {}
                uncovered: dict[str, int] = {}
                for row in held:
                    cat, pt, v = tuple(row[:ncat]), tuple(row[ncat:-1]), row[-1]
                    name = family_of(fam, cat, pt)
                    if name is None:
                        continue
                    p = fitted.lookup(cat, pt)
                    if p is None:
                        uncovered[name] = uncovered.get(name, 0) + 1
                        continue
                    errs.setdefault(name, []).append(p / v - 1.0)
                for name in sorted(set(errs) | set(uncovered)):
                    s = stats(errs.get(name, []))
                    s["uncovered"] = uncovered.get(name, 0)
                    out.setdefault(gpu, {}).setdefault(f"{backend} {part.version}", {})[name] = s
    return out


def load_measured(path: Path | None = None) -> list[dict]:
    files = [path] if path else sorted(MEASURED.glob("*.json"))
    cases = []
    for f in files:
        cases += [c for c in json.loads(Path(f).read_text())["cases"] if c.get("graph_s") and "error" not in c]
    return cases


def moesim_prices(cases: list[dict]) -> dict:
    """(b): moesim's eager and roof prices of our H200 cases, and of AIConfigurator's H200 vLLM
    all-reduce table at decode sizes. {family: {"eager": stats, "roof": stats}}."""
    from ..costs.efficiency import efficiency_for
    from ..costs.ffn import harness_routing, moe_layer
    from ..costs.gemm import gemm
    from ..costs.roofline import _roof_s, gpu_time_s
    from ..db.resolve import get_hardware
    from ..systems.shared.tensor_parallel import allreduce_s

    hw = get_hardware("H200")
    gpu, eff = hw.gpu, efficiency_for(hw.empirical, hw.calibration)
    errs: dict[str, dict[str, list]] = {}

    def add(name, kind, pred, meas):
        errs.setdefault(name, {}).setdefault(kind, []).append(pred / meas - 1.0)

    for c in cases:
        dtype = "bf16" if c["quant"] == "bf16" else "fp8"  # moesim prices both fp8 kinds alike
        if c["family"] == "gemm":
            cost = gemm(c["m"], c["n"], c["k"], dtype)
            name = family_of("gemm", (c["quant"],), ())
            add(name, "eager", gpu_time_s(cost, gpu, eff), c["graph_s"])
            add(name, "roof", sum(_roof_s(p, gpu, eff) for p in cost.pieces()), c["graph_s"])
        elif c["family"] == "moe" and c.get("impl") == "triton_fused":
            cost = moe_layer(c["hidden"], c["inter"], c["experts"], c["topk"], c["tokens"], weight_dtype=dtype)
            route = harness_routing(c["hidden"], c["experts"], c["tokens"])
            roof = sum(_roof_s(p, gpu, eff) for p in cost.pieces()) - sum(_roof_s(p, gpu, eff) for p in route.pieces())
            name = family_of("moe", (c["quant"],), (c["tokens"],))
            add(name, "eager", gpu_time_s(cost, gpu, eff) - gpu_time_s(route, gpu, eff), c["graph_s"])
            add(name, "roof", roof, c["graph_s"])
    t = K.kernel_tables("h200", "vllm")
    path = t.parts[0].path("allreduce") if t else None
    if path is not None:
        grid = K.Grid(K.read_rows(path), K.CATEGORICAL["allreduce"])
        for (dtype, n), pts in grid.points.items():
            plat = get_hardware("hgx-h200", num_gpus=n)
            for (nbytes,), logv in pts.items():
                name = family_of("allreduce", (dtype, n), (nbytes,))
                if name is None:  # above decode size
                    continue
                ctx = SimpleNamespace(platform=plat, hidden_state_bytes=lambda tokens, b=nbytes: b)
                pred = allreduce_s(ctx, 1)
                add(name, "eager", pred, math.exp(logv))
                add(name, "roof", pred, math.exp(logv))
    return {name: {kind: stats(v) for kind, v in kinds.items()} for name, kinds in sorted(errs.items())}


def cross_source(cases: list[dict]) -> dict:
    """(c): AIConfigurator's H200 vLLM table / our H200 measurement - 1, per family."""
    t = K.kernel_tables("h200", "vllm")
    errs: dict[str, list] = {}
    for c in cases:
        if c["family"] == "gemm":
            p, name = t.gemm_s(c["m"], c["n"], c["k"], c["quant"]), family_of("gemm", (c["quant"],), ())
        elif c["family"] == "moe" and c.get("impl") == "triton_fused":
            p = t.moe_s(c["tokens"], c["hidden"], c["inter"], c["experts"], c["topk"], c["quant"])
            name = family_of("moe", (c["quant"],), (c["tokens"],))
        else:
            continue
        if p is not None:
            errs.setdefault(name, []).append(p / c["graph_s"] - 1.0)
    return {name: stats(v) for name, v in sorted(errs.items())}


def report(gpus=("h100-sxm", "h200"), backends=K.BACKEND_ORDER) -> dict:
    cases = load_measured()
    return {"table_holdout": table_holdout(gpus, backends), "moesim_vs_h200": moesim_prices(cases),
            "aic_vllm_vs_ours_h200": cross_source(cases)}


def _fmt(s: dict) -> str:
    if not s or not s.get("n"):
        return "n=0"
    return f"n={s['n']:<4} median {100 * s['median']:5.1f}%  p90 {100 * s['p90']:6.1f}%  bias {100 * s['bias']:+6.1f}%"


def render(r: dict) -> str:
    lines = ["(a) table interpolation, held-out points (every other point along m / tokens / bytes):"]
    for gpu, backends in r["table_holdout"].items():
        for backend, fams in backends.items():
            for name, s in fams.items():
                lines.append(f"  {gpu:9} {backend:17} {name:24} {_fmt(s)}  uncovered {s['uncovered']}")
    lines.append("(b) moesim's pricing (H200 calibrated) vs measurements (all held out):")
    for name, kinds in r["moesim_vs_h200"].items():
        for kind, s in kinds.items():
            lines.append(f"  {name:24} {kind:5} {_fmt(s)}")
    lines.append("(c) AIConfigurator H200 vLLM tables vs our H200 measurements (table / ours - 1):")
    for name, s in r["aic_vllm_vs_ours_h200"].items():
        lines.append(f"  {name:24} {_fmt(s)}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m moesim.analysis.kernel_accuracy", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--gpus", default="h100-sxm,h200", help="GPUs whose tables (a) scores, comma-separated")
    ap.add_argument("--backends", default=",".join(K.BACKEND_ORDER), help="engines whose tables (a) scores")
    a = ap.parse_args(argv)
    r = report(tuple(a.gpus.split(",")), tuple(a.backends.split(",")))
    print(json.dumps(r, indent=1) if a.json else render(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
