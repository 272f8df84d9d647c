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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
