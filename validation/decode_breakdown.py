"""Per-component decode step of a datacenter engine (vLLM, SGLang, TensorRT-LLM) on two GPUs, side by side.

    python validation/decode_breakdown.py gpt-oss-120b vllm --gpus 1 --batch 16 --context 1536
    python validation/decode_breakdown.py deepseek-r1 trtllm --gpus 8 --batch 4 --dtypes=-,nvfp4
    python validation/decode_breakdown.py --ratios held_out.json     # from aiconfigurator.py --json

The first form prices one tensor-parallel decode step of ``batch`` sequences over ``context`` cached tokens as the
engine's graph runs it (``systems/shared/engine_step.py``): per layer the attention projections (GEMM table), the
attention core (decode table), one all-reduce, the router, the routed experts (fused-MoE table, else the roofline;
the notes say which), shared experts and a dense FFN; per step the LM head and the engine's CPU work (overlapped
with the GPU where the engine overlaps it). ``--dtypes`` gives each platform's ``--dtype`` in order (``-``: the released
format; one value: every platform). ``--ratios`` reads AIConfigurator records and prints, per engine and
model, the median over matched rows (same engine, model, layout, TP, ISL, OSL, concurrency) of measured and predicted
B200 / H200 TPOT: which GPU's prediction moves away from the measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict


def breakdown(model: str, hardware: str, gpus: int, system: str, batch: int, context: int,
              dtype: str | None = None) -> dict:
    """Seconds of each module of one decode step (per layer) and per step, as the engine prices it."""
    import moesim
    from moesim.predict import plan_scenario
    from moesim.systems import get_system
    from moesim.systems.shared import engine_step as es

    sc = moesim.Scenario(model=model, hardware=hardware, num_gpus=gpus, system=system, prompt_tokens=context,
                         gen_tokens=2, batch_size=batch, num_requests=batch, dtype=dtype)
    ctx, _, _, _ = plan_scenario(sc)
    rt = get_system(system)(None).runtime(ctx)
    execution, rows = rt.decode_execution(batch)
    lt = es._engine_layer_times(ctx, batch, [(batch, 1, context)], execution, rt.backend, rows)
    tables = es._kernel_tables(ctx, rt.backend)
    table_moe = (es.routed_table_moe_s(ctx, tables, rows) if tables is not None and ctx.model.moe else None)
    gen = es.trtllm_gen_moe_kernels(ctx, rt.backend) if execution.engine_kernels else 0
    moe = "table" if table_moe is not None else f"TRTLLM-Gen roofline ({gen} kernels)" if gen else "roofline"
    return {"attn proj": lt.attn_proj, "attn core": lt.core[False], "attn core (window)": lt.core[True],
            "all-reduce": lt.allreduce, "router": lt.router, "experts": lt.experts, "shared experts": lt.shared,
            "dense ffn": lt.dense, "head (per step)": ctx.gpu_s(ctx.head(rows, batch).scaled(1.0 / gpus), execution),
            "engine cpu (per step)": rt.cpu_s(batch),
            "_notes": f"rows {rows:g}, weights {ctx.wdtype}, experts {ctx.edtype}, moe "
                      f"{moe}, "
                      f"{'overlapped' if rt.overlap_scheduler else 'serial'} cpu"}


def ratios(path: str) -> list[str]:
    """Per (engine, model): median measured and predicted B200 / H200 TPOT over matched rows."""
    recs = [r for r in json.load(open(path))["records"] if r["tpot_error"] is not None]
    by: dict = defaultdict(lambda: defaultdict(list))
    for r in recs:
        key = (r["backend"], r["model"], r.get("layout", "tp"), r["tp"], r["isl"], r["osl"], r["concurrency"])
        by[key][r["gpu"]].append(r)
    out: dict = defaultdict(list)
    for key, g in by.items():
        if "b200_sxm" in g and "h200_sxm" in g:
            med = {gpu: (statistics.median(r["measured_tpot_s"] for r in g[gpu]),
                         statistics.median(r["predicted_tpot_s"] for r in g[gpu])) for gpu in ("b200_sxm", "h200_sxm")}
            out[key[:2]].append((med["b200_sxm"][0] / med["h200_sxm"][0], med["b200_sxm"][1] / med["h200_sxm"][1]))
    return [f"{b:8s} {m:22s} {len(v):4d} matched rows: B200/H200 TPOT measured {statistics.median(x[0] for x in v):.2f}"
            f", predicted {statistics.median(x[1] for x in v):.2f}" for (b, m), v in sorted(out.items())]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("system", nargs="?", choices=("vllm", "sglang", "trtllm"))
    ap.add_argument("--gpus", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--context", type=int, default=1536)
    ap.add_argument("--dtypes", default="-")
    ap.add_argument("--platforms", default="hgx-h200,hgx-b200")
    ap.add_argument("--ratios", metavar="RECORDS_JSON")
    args = ap.parse_args(argv)
    if args.ratios:
        print("\n".join(ratios(args.ratios)))
        return 0
    if not args.model or not args.system:
        ap.error("give a model and a system, or --ratios")
    from moesim.errors import MoesimError

    plats = args.platforms.split(",")
    dtypes = args.dtypes.split(",")
    dtypes = dtypes * len(plats) if len(dtypes) == 1 else dtypes
    res = {}
    for hw, dtype in zip(plats, dtypes):
        try:
            res[hw] = breakdown(args.model, hw, args.gpus, args.system, args.batch, args.context,
                                None if dtype == "-" else dtype)
        except MoesimError as exc:
            res[hw] = str(exc).splitlines()[0]
    print(f"{args.model} on {args.system}, TP {args.gpus}, {args.batch} sequences over {args.context} tokens (us)")
    print(f"{'':24s}" + "".join(f"{hw:>14s}" for hw in plats) + (f"{'ratio':>8s}" if len(plats) == 2 else ""))
    for key in next(v for v in res.values() if isinstance(v, dict)):
        if key.startswith("_"):
            continue
        vals = [res[hw][key] if isinstance(res[hw], dict) else float("nan") for hw in plats]
        ratio = f"{vals[1] / vals[0]:8.2f}" if len(vals) == 2 and vals[0] else ""
        print(f"{key:24s}" + "".join(f"{v * 1e6:14.1f}" for v in vals) + ratio)
    for hw in plats:
        print(f"  {hw}: {res[hw]['_notes'] if isinstance(res[hw], dict) else res[hw]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
