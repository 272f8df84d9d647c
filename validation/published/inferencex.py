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

Run: ``python validation/published/inferencex.py`` (matched rows per pipeline, GPU and engine).
"""

from __future__ import annotations

import collections
import csv
import statistics
import sys
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
    print("\nheld-out TTFT of the expressible rows InferenceX also records (median |error|; its median TTFT is the "
          "typical request's):")
    print(f"{'GPU':<11}{'engine':<8}{'client':<12}{'rows':>5}{'mean TTFT':>11}{'median TTFT':>13}")
    for k, v in sorted(ttft_scores().items()):
        n, mean = v["mean"]
        print(f"{k[0]:<11}{k[1]:<8}{k[2]:<12}{n:>5}{mean * 100:>10.1f}%{v['median'][1] * 100:>12.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
