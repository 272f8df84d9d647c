"""Where AIConfigurator's silicon-CI rows come from: SemiAnalysis InferenceX's published runs.

InferenceX (github.com/SemiAnalysisAI/InferenceX, Apache-2.0) benchmarks DeepSeek-R1, gpt-oss and other models on
SGLang, TensorRT-LLM, vLLM and Dynamo every night, each run's launch flags and client in its scripts
(``benchmarks/*.sh``, ``benchmarks/benchmark_lib.sh``). ``validation/data/inferencex/benchmarks_dsr1.csv`` holds the
DeepSeek-R1 rows of the results its dashboard served as a test fixture (``packages/app/cypress/fixtures/api/
benchmarks.json`` of github.com/vngcloud/InferenceX-app at 528c414 and cac6246, the union of both, de-duplicated;
figures only: hardware, engine, precision, spec method, layout, ISL / OSL, concurrency, image, date, run URL, mean /
median / p99 TTFT, mean / median TPOT, mean end-to-end latency, throughput per GPU).

:func:`matches` pairs AIConfigurator's silicon rows (``aiconfigurator.load_rows``) with InferenceX rows that report
the same mean TTFT and mean TPOT to the microsecond: the evidence for ``aiconfigurator.STATED_CLIENTS`` (the
silicon-CI rows are InferenceX's runs, so their client is InferenceX's, ``moesim.serving.closed_loop.STATED``).
Nothing here is fitted.

As a source of the published corpus (:func:`published_cells`, :func:`evaluate`): the aggregated, single-node,
non-speculative InferenceX runs that no silicon row reports (newer engine versions on H200 and B200, and AMD
MI300X under SGLang's ROCm build, which moesim prices uncalibrated: no kernel tables or calibration of that GPU),
each predicted exactly as a silicon-CI row of the same run would be (:func:`as_silicon_row`: the same pipeline and
client, the fitted harness of ``aiconfigurator_harness.yaml``), mean TTFT and mean TPOT. All held-out: nothing is
fitted on InferenceX's results. Kept out of the bands (``moesim.calibration.sources.BAND_SOURCES``), so its
coverage is out of sample.

Run: ``python validation/published/inferencex.py`` (matched rows per pipeline, GPU and engine; the scores).
"""

from __future__ import annotations

import collections
import csv
import statistics
import sys
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import aiconfigurator as A  # noqa: E402

DATA = A.INFERENCEX_CSV
CITATION = ("SemiAnalysis InferenceX results (github.com/SemiAnalysisAI/InferenceX, Apache-2.0), DeepSeek-R1 rows of "
            "the dashboard's test fixture (github.com/vngcloud/InferenceX-app, packages/app/cypress/fixtures/api/"
            "benchmarks.json at 528c414 and cac6246)")


def load() -> list[dict]:
    """The committed InferenceX rows (one dict per row, numbers as strings as in the CSV)."""
    with DATA.open(newline="") as f:
        return list(csv.DictReader(f))


def matches(silicon_rows: list[dict] | None = None) -> list[tuple[dict, dict]]:
    """(silicon row, InferenceX row) pairs whose mean TTFT and TPOT agree to the microsecond
    (:func:`aiconfigurator.inferencex_record`)."""
    rows = silicon_rows if silicon_rows is not None else A.load_rows()
    return [(row, rec) for row in rows for rec in [A.inferencex_record(row)] if rec is not None]


#: InferenceX's hardware -> the silicon file's ``system`` (:data:`aiconfigurator.PLATFORMS` maps it to a platform)
HARDWARE = {"h100": "h100_sxm", "h200": "h200_sxm", "b200": "b200_sxm", "mi300x": "mi300x"}
#: InferenceX's single-node engines -> the silicon file's ``backend``
ENGINES = A.IX_ENGINES
#: InferenceX's precision of DeepSeek-R1 -> (gemm_quant_mode, moe_quant_mode) as the silicon file writes them
QUANT = {"fp8": ("fp8", "fp8_block"), "fp4": ("nvfp4", "nvfp4")}


def as_silicon_row(rec: dict) -> dict | None:
    """A silicon-file row for InferenceX record ``rec`` (aggregated, single node), written as the silicon file
    writes the same runs (attention DP as ``tp 1, attention_dp N``; MoE TP = TP / EP), or None where the record is
    not such a run (disaggregated, multi-node, another engine or GPU)."""
    if rec["disagg"] == "True" or rec["is_multinode"] == "True" or rec["hardware"] not in HARDWARE \
            or rec["framework"] not in ENGINES or rec["model"] != "dsr1" or rec["precision"] not in QUANT:
        return None
    tp, ep, dpa = int(rec["decode_tp"]), int(rec["decode_ep"]), rec["decode_dp_attention"] == "True"
    gemm, moe = QUANT[rec["precision"]]
    return {"id": f"inferencex|{rec['hardware']}|{rec['framework']}|{rec['precision']}|{rec['spec_method']}|"
                  f"{rec['isl']}x{rec['osl']}|tp{tp}ep{ep}{'dpa' if dpa else ''}|c{rec['conc']}|{rec['date']}",
            "silicon_data_source": f"inferencex; silicon_concurrency={rec['conc']}; measured={rec['date']}; "
                                   f"{rec['run_url']}",
            "backend": ENGINES[rec["framework"]], "backend_version": (rec["image"] or "").rsplit(":", 1)[-1],
            "model_path": "deepseek-ai/DeepSeek-R1", "system": HARDWARE[rec["hardware"]], "precision": rec["precision"],
            "mode": "agg", "isl": rec["isl"], "osl": rec["osl"], "gemm_quant_mode": gemm, "moe_quant_mode": moe,
            "batch_size": rec["conc"], "tp_size": "1" if dpa else str(tp), "pp_size": "1",
            "attention_dp_size": str(tp) if dpa else "1", "moe_tp_size": str(max(tp // ep, 1)), "moe_ep_size": str(ep),
            "silicon_ttft_ms": str(float(rec["mean_ttft"]) * 1e3), "silicon_tpot_ms": str(float(rec["mean_tpot"]) * 1e3)}


@lru_cache(maxsize=1)
def _unpaired() -> tuple[dict, ...]:
    paired = {(rec["mean_ttft"], rec["mean_tpot"]) for _, rec in matches()}
    rows: dict[str, dict] = {}
    for rec in load():
        if (rec["mean_ttft"], rec["mean_tpot"]) in paired or rec["spec_method"] != "none":
            continue
        row = as_silicon_row(rec)
        if row is not None:
            rows.setdefault(row["id"], row)
    return tuple(rows.values())


def unpaired_rows() -> list[dict]:
    """Silicon-format rows of the aggregated single-node non-speculative InferenceX runs no silicon row reports (a
    run the fixture lists twice with the same figures counts once)."""
    return [dict(r) for r in _unpaired()]


def published_cells() -> list:
    """The corpus cells of :func:`unpaired_rows` (``aiconfigurator.row_cells``: a mean TTFT and a mean TPOT cell per
    expressible row), every one held out."""
    return [cell for row in _unpaired() if A.expressible(row, layouts=True) is None
            for cell in A.row_cells(row, CITATION, split="held-out",
                                    note="InferenceX mean TTFT / TPOT of its closed-loop client at this concurrency")]


def evaluate(cell):
    """The corpus' Result of one cell: ``aiconfigurator.evaluate_row`` of the run's silicon-format row (the same
    prediction path and band as a silicon row's)."""
    return A.evaluate_row(cell, {r["id"]: r for r in _unpaired()}[cell.fold])


def ttft_scores(models: tuple[str, ...] | None = None) -> dict:
    """Held-out TTFT of the expressible, non-speculative silicon rows InferenceX also records, where InferenceX gives
    the median TTFT as well as the mean (the silicon file has the mean only): per (GPU, engine) and client model
    (default: the row's harness client and InferenceX's stated client, ``closed_loop.STATED``), the median |error| of
    the mean TTFT and of the median TTFT (the typical request, which the first wave's burst does not reach)."""
    groups: dict = collections.defaultdict(lambda: collections.defaultdict(list))
    for row, rec in matches():
        if A.expressible(row, layouts=True) is not None or A.split_of(row) != "held-out":
            continue
        for model in models or (A.harness_of(row)[0], "inferencex"):
            mean, _, _ = A.predict_row(row, model=model)
            median = A.predicted_median_ttft_s(row, model)
            if mean is None or median is None:
                continue
            g = groups[(row["system"], row["backend"], "harness" if model == A.harness_of(row)[0] else model)]
            g["mean"].append(abs(mean / float(rec["mean_ttft"]) - 1.0))
            g["median"].append(abs(median / float(rec["median_ttft"]) - 1.0))
    return {k: {m: (len(v), statistics.median(v)) for m, v in g.items()} for k, g in groups.items()}


#: the concurrency up to which a run's first wave queues only a few prefills, so that its extra time per request
#: shows as the mean's excess over the median (:func:`run_start_s`)
RUN_START_MAX_CONCURRENCY = 8


def run_start_s(rec: dict) -> float:
    """The extra time per request of a run's first wave, from InferenceX's mean and median TTFT: with N = 10 C
    requests of which the first C form the first wave, and every other request near the median,
    ``mean - median = (C / N) x extra``, so ``extra = 10 (mean - median)`` (a run's p99 - median estimates it too)."""
    return 10.0 * (float(rec["mean_ttft"]) - float(rec["median_ttft"]))


def run_start_table(records: list[dict] | None = None) -> dict:
    """Per (GPU, engine, client era) over InferenceX's plain single-node runs at concurrency up to
    :data:`RUN_START_MAX_CONCURRENCY`: (runs, median :func:`run_start_s`, median p99 - median TTFT, median share of
    the mean TTFT that the first wave's extra makes, (mean - median) / mean). Era: "warm" from the client's warm-up
    (``aiconfigurator.WARMUP_FROM``), else "cold". Scored against nothing: what the mean TTFT of such a benchmark
    carries beyond the typical request (README, "the run-start share")."""
    groups: dict = collections.defaultdict(list)
    for rec in records if records is not None else load():
        if rec["disagg"] != "False" or rec["spec_method"] not in ("none", "") \
                or int(rec["conc"]) > RUN_START_MAX_CONCURRENCY:
            continue
        mean, median, p99 = float(rec["mean_ttft"]), float(rec["median_ttft"]), float(rec["p99_ttft"])
        era = "warm" if rec["date"] >= A.WARMUP_FROM else "cold"
        groups[(rec["hardware"], rec["framework"], era)].append((run_start_s(rec), p99 - median, (mean - median) / mean))
    return {k: (len(v), statistics.median(x[0] for x in v), statistics.median(x[1] for x in v),
                statistics.median(x[2] for x in v)) for k, v in sorted(groups.items())}


def main() -> int:
    rows = A.load_rows()
    pairs = matches(rows)
    total = collections.Counter((A.pipeline_of(r), r["system"], r["backend"]) for r in rows
                                if "DeepSeek" in r["model_path"])
    hit = collections.Counter((A.pipeline_of(r), r["system"], r["backend"]) for r, _ in pairs)
    print(f"{len(load())} InferenceX DeepSeek-R1 rows; {len(pairs)} AIConfigurator silicon rows carry the mean TTFT "
          f"and TPOT of one of them")
    spec = collections.Counter((A.pipeline_of(r), r["system"], r["backend"]) for r, rec in pairs
                               if A.stated_speculation(r))
    print(f"{'pipeline':<14}{'GPU':<11}{'engine':<8}{'DeepSeek rows':>14}{'matched':>9}{'of them MTP':>13}")
    for k in sorted(total):
        print(f"{k[0]:<14}{k[1]:<11}{k[2]:<8}{total[k]:>14}{hit.get(k, 0):>9}{spec.get(k, 0):>13}")
    extra = [r for r in unpaired_rows() if A.expressible(r, layouts=True) is None]
    print(f"\n{len(extra)} InferenceX runs no silicon row reports, expressible (held-out; corpus source "
          f"'inferencex'), median |error| of mean TTFT / mean TPOT:")
    groups = collections.defaultdict(list)
    for row in extra:
        ttft, tpot, _ = A.predict_row(row)
        if ttft is not None:
            groups[(row["system"], row["backend"])].append(
                (abs(ttft * 1e3 / float(row["silicon_ttft_ms"]) - 1), abs(tpot * 1e3 / float(row["silicon_tpot_ms"]) - 1)))
    for k, v in sorted(groups.items()):
        print(f"  {k[0]:<10}{k[1]:<8}{len(v):>4} rows  TTFT {statistics.median(e for e, _ in v):6.1%}  "
              f"TPOT {statistics.median(e for _, e in v):6.1%}")
    print("\nheld-out TTFT of the expressible rows InferenceX also records (median |error|; its median TTFT is the "
          "typical request's):")
    print(f"{'GPU':<11}{'engine':<8}{'client':<12}{'rows':>5}{'mean TTFT':>11}{'median TTFT':>13}")
    for k, v in sorted(ttft_scores().items()):
        n, mean = v["mean"]
        print(f"{k[0]:<11}{k[1]:<8}{k[2]:<12}{n:>5}{mean * 100:>10.1f}%{v['median'][1] * 100:>12.1f}%")
    print(f"\nthe run's start: plain single-node runs at concurrency <= {RUN_START_MAX_CONCURRENCY}, extra time per "
          f"first-wave request 10 (mean - median) TTFT against p99 - median, and its share of the mean (medians):")
    print(f"{'GPU':<8}{'engine':<13}{'era':<6}{'runs':>5}{'10(mean-med)':>14}{'p99-med':>9}{'share':>7}")
    for (gpu, engine, era), (n, extra, tail, share) in run_start_table().items():
        print(f"{gpu:<8}{engine:<13}{era:<6}{n:>5}{extra:>12.2f} s{tail:>7.2f} s{share:>7.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
