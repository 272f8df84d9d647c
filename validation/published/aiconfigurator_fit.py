"""Fit the engines' empirical constants on the FIT split of AIConfigurator's silicon rows only.

The split is :func:`aiconfigurator.split_of` (H100 SXM rows fit, H200 SXM rows held out), fixed before this
script existed. What is fitted (``systems_db/engines.yaml``, each value says it was fitted here):

- ``graph_kernel_gap_s``: GPU time each kernel of a replayed CUDA graph adds beyond its roofline (launch of the
  next grid, ramp and tail of small kernels);
- ``fused_moe_memory_efficiency``: fraction of HBM peak at which the engines' fused MoE kernels stream expert
  weights;
- the closed-loop benchmark model (``BENCHMARK_MODEL`` of :mod:`moesim.serving.closed_loop`, which ``aiconfigurator.py``
  imports: lockstep waves, steady state, or half of each);
- ``request_overhead_s`` (``systems_db/vllm.yaml``): time a request spends outside the engine steps before its
  first token (HTTP, tokenising, handing it to the engine, streaming), the median of measured minus predicted
  TTFT at the chosen values.

The first three jointly, on a grid, minimising median |log ratio| of TPOT + that of TTFT over the fit rows of
vLLM (the only engine with MoE fit rows other than 3 TensorRT-LLM rows at concurrency 320, queueing-bound). Result
(2026-12-03, after the engines' dense GEMMs moved to their kernel tables): see the YAML entries, which quote it.
Run: ``python validation/published/aiconfigurator_fit.py``; it prints the grid and the chosen values, which
are then written into the YAML by hand with this script named as their source.

``--harness``: per collection pipeline of the file (``aiconfigurator.PIPELINES``: AIConfigurator's silicon CI and
an "auto gap analysis" project, each with its own benchmark client) and engine, the closed-loop benchmark model and
the request overhead, written to ``aiconfigurator_harness.yaml`` (read by ``aiconfigurator.harness_of``): on that
pipeline's fit rows of the engine, MoE where there are 20, else the dense reference models (``DENSE_NOTE``: SGLang
and TensorRT-LLM measured only dense models in tensor parallel on H100; what is fitted is the client's and the
engine's, not the model's), and pooled over the pipeline's engines for an engine without fit rows there. At the
other constants as they are.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
import sys
from pathlib import Path
from unittest import mock

from moesim.calibration.published import load_module
from moesim.costs import Execution
from moesim.systems.shared import engine_step

A = load_module("aiconfigurator", Path(__file__).resolve().parents[1])  # the corpus' copy of the module

GAPS_S = (1e-6, 2e-6, 3e-6, 4e-6, 5e-6, 5.5e-6, 6e-6, 6.5e-6, 7e-6, 7.5e-6, 8e-6, 9e-6, 10e-6)
MOE_EFFS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, None)


def fit_rows() -> list[dict]:
    return [r for r in A.load_rows() if A.expressible(r) is None and A.split_of(r) == "fit" and r["backend"] == "vllm"]


def _median_abs_log(recs: list[A.Record], attr: str) -> float:
    return statistics.median(abs(math.log(getattr(r, f"predicted_{attr}_s") / getattr(r, f"measured_{attr}_s")))
                             for r in recs if r.predicted_tpot_s)


def score(rows: list[dict], gap: float, eff: float | None) -> dict[str, list[A.Record]]:
    """Records of the fit rows under each benchmark model, with these constants and no request overhead (the
    overhead is what is left at the chosen constants, :func:`main`)."""
    base = engine_step.engine_execution

    def execution(mode: str = "graph") -> Execution:
        return dataclasses.replace(base(mode), kernel_gap_s=gap, moe_memory_efficiency=eff)

    A._CACHE.clear()
    with mock.patch.object(engine_step, "engine_execution", execution), \
            mock.patch("moesim.systems.vllm.engine_execution", execution), \
            mock.patch.object(A, "harness_of", lambda row: (A.BENCHMARK_MODEL, 0.0)):
        out = {model: A.records(rows, model=model) for model in A.MODELS}
    A._CACHE.clear()
    return out


#: a (pipeline, engine) with at least this many MoE fit rows is fitted on them alone; else on its dense ones
MIN_ROWS = 20


def harness_rows(pipeline: str, backend: str | None) -> list[dict]:
    """The fit split's tensor-parallel rows of one collection pipeline (``A.pipeline_of``) and engine (None: every
    engine, pooled): the MoE rows where there are :data:`MIN_ROWS` of them (the data closest to what is scored), else
    the rows of the dense reference models (``A.DENSE_NOTE``). Rule fixed before the dense rows were first scored."""
    rows = [r for r in A.load_rows() if A.expressible(r, dense=True) is None and A.split_of(r) == "fit"
            and A.pipeline_of(r) == pipeline and (backend is None or r["backend"] == backend)]
    moe = [r for r in rows if not A.is_dense(r)]
    return moe if len(moe) >= MIN_ROWS else [r for r in rows if A.is_dense(r)]


def fit_harness(rows: list[dict], label: str, models: tuple[str, ...] | None = None) -> dict | None:
    """The closed-loop benchmark model and request overhead of ``rows`` (all fit rows): for each model (default
    ``A.HARNESS_MODELS``: the analytic clients and the simulated ones) the overhead is the median of measured minus
    predicted TTFT without overhead (floored at 0); the model whose TTFT with that overhead has the least median
    |log ratio| is chosen."""
    if len(rows) < MIN_ROWS:
        return None
    assert all(A.split_of(r) == "fit" for r in rows)
    best, default_overhead = None, None
    with mock.patch.object(A, "harness_of", lambda row: ("half", 0.0)):
        A._CACHE.clear()
        for model in models or A.HARNESS_MODELS:
            recs = [r for r in A.records(rows, model=model, dense=True) if r.predicted_ttft_s]
            overhead = max(statistics.median(r.measured_ttft_s - r.predicted_ttft_s for r in recs), 0.0)
            err = statistics.median(abs(math.log((r.predicted_ttft_s + overhead) / r.measured_ttft_s)) for r in recs)
            print(f"{label:>28} {model:>8}: {len(recs)} fit rows, overhead {overhead * 1e3:7.1f} ms, TTFT median "
                  f"|log ratio| {err:.3f}")
            if model == A.BENCHMARK_MODEL:
                default_overhead = round(overhead, 4)
            if best is None or err < best["ttft_median_abs_log"]:
                best = {"benchmark_model": model, "request_overhead_s": round(overhead, 4),
                        "ttft_median_abs_log": round(err, 3), "fit_rows": len(recs),
                        "models": sorted({r.model for r in recs})}
    A._CACHE.clear()
    if best is not None and default_overhead is not None:  # what the library's analytic client adds on these rows
        best["default_model_overhead_s"] = default_overhead
    return best


def harness() -> dict:
    """Every pipeline's pooled fit and each engine's own where it has fit rows."""
    import yaml

    out: dict = {"pipelines": {}}
    for pipe in A.PIPELINES:
        models = A.harness_models(pipe)
        fits = {"pooled": fit_harness(harness_rows(pipe, None), f"{pipe} pooled", models)}
        for backend in A.BACKENDS:
            fits[backend] = fit_harness(harness_rows(pipe, backend), f"{pipe} {backend}", models)
        out["pipelines"][pipe] = {k: v for k, v in fits.items() if v}
    header = ("# FITTED by validation/published/aiconfigurator_fit.py --harness on the FIT split (H100 SXM rows) of\n"
              "# AIConfigurator's silicon_sample.csv only; read by aiconfigurator.harness_of. Per collection pipeline\n"
              "# (aiconfigurator.PIPELINES) and engine: the closed-loop benchmark model and the request overhead.\n"
              "# Do not edit by hand: re-run the script.\n")
    A.HARNESS_FILE.write_text(header + yaml.safe_dump(out, sort_keys=True))
    return out


def main() -> int:
    if "--harness" in sys.argv:
        out = harness()
        for pipe, fits in out["pipelines"].items():
            for who, f in fits.items():
                print(f"chosen for {pipe} / {who}: {f}")
        return 0
    rows = fit_rows()
    assert all(A.split_of(r) == "fit" for r in rows)
    print(f"{len(rows)} fit rows (vLLM, H100 SXM)")
    best = None
    for gap, eff in itertools.product(GAPS_S, MOE_EFFS):
        by_model = score(rows, gap, eff)
        for model, recs in by_model.items():
            tp, tt = _median_abs_log(recs, "tpot"), _median_abs_log(recs, "ttft")
            print(f"gap {gap * 1e6:4.1f} us  moe_eff {eff or 'gemm':>5}  {model:>8}: median |log ratio| TPOT {tp:.3f} "
                  f"TTFT {tt:.3f}")
            if best is None or tp + tt < best[0]:
                best = (tp + tt, gap, eff, model, recs)
    _, gap, eff, model, recs = best
    print(f"\nchosen: graph_kernel_gap_s = {gap:g}, fused_moe_memory_efficiency = {eff}, benchmark model {model}: "
          f"TPOT {_median_abs_log(recs, 'tpot'):.3f}, TTFT {_median_abs_log(recs, 'ttft'):.3f}")
    diffs = sorted(r.measured_ttft_s - r.predicted_ttft_s for r in recs if r.predicted_ttft_s)
    print(f"request overhead (measured - predicted TTFT) over {len(diffs)} fit rows: median "
          f"{statistics.median(diffs) * 1e3:.1f} ms (p25 {diffs[len(diffs) // 4] * 1e3:.1f}, "
          f"p75 {diffs[3 * len(diffs) // 4] * 1e3:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
