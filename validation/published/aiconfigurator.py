"""Score moesim against AIConfigurator's measured serving runs (vLLM, SGLang, TensorRT-LLM on H100 ... GB300).

Data: ``shared/data/aiconfigurator/silicon_sample.csv`` (5,221 measured runs; github.com/ai-dynamo/aiconfigurator,
``aic-core/src/aiconfigurator_core/systems/silicon_sample.csv`` at commit 095f58a51, Apache License 2.0): TTFT
and TPOT in ms with the engine, its version, precision, input/output lengths, concurrency and parallel layout.
The figures are facts measured by others; nothing here copies AIConfigurator's code.

Rows moesim can express (:func:`expressible`): aggregated serving (``mode == agg``) on a GPU of :data:`PLATFORMS`,
tensor parallel only (pp 1, attention DP 1, expert parallel 1, MoE TP = TP, a consistent GPU count), a backend
moesim has (vllm, sglang, trtllm), and an MoE model moesim lists, matched through the ``hf_id`` of
``models_db`` (an ``-FP8`` checkpoint maps to its base model in fp8).

With ``--layouts`` (:func:`expressible` with ``layouts=True``) also the aggregated attention-DP / expert-parallel
rows on one node (8 GPUs), each mapped to its engine's own flags by :func:`layout_of`; the split rule is the same
(H100 fit, H200 held-out). The corpus (:func:`published_cells`) holds the TP-only and layout rows (:data:`CORPUS_LAYOUTS`).
Two of the file's sources (``2026-04-06.csv``, ``db-dump``) write an EP layout on G GPUs as moe_tp = moe_ep = G with
the attention factor times G (tp8 ep8 as tp 64, attention DP 8 as dp 64); :func:`_undouble` reads them back (the
file's own duplicate rows are the evidence).

With ``--disagg`` (``disagg=True``) also the disaggregated rows (``mode == disagg``) whose pools are stated
(prefill_num_workers / decode_num_workers; :func:`disagg_of`): the engine's ``--disaggregate`` with each pool's
layout and batch in its own flags, on as many 8-GPU nodes as the pools take; TTFT and TPOT are the disaggregated
plan's (prefill pass + KV transfer + queueing; the decode pool's TPOT). Same split rule; kept out of the corpus
(:data:`CORPUS_DISAGG`).

Scenario of a row (:func:`scenario_of`):

- platform ``hgx-h100`` / ``hgx-h200`` with ``--gpus tp_size``; system = the backend; prompt = isl, gen = osl;
- the launch flags the run's source states (:func:`stated_launch_flags`): the silicon-CI rows are InferenceX's
  runs, whose scripts set each engine's flags; the script version in effect on the row's measured date gives every
  flag moesim models (``validation/data/inferencex/launch_flags.yaml``: SGLang and TensorRT-LLM DeepSeek-R1 runs, vLLM MiniMax-M2.5 runs),
  else the engine's defaults; speculative decoding as InferenceX's record, or its run batch, says
  (:func:`stated_speculation`, :func:`speculative_params`);
- concurrency C = ``silicon_concurrency=N`` of ``silicon_data_source`` (requests kept in flight by the
  benchmark client), else ``batch_size``; predicted as C requests run together as one batch (``--batch C
  --requests C``). With fixed ISL/OSL a closed-loop client at concurrency C sends its C requests together and
  they finish together, so the run is a sequence of such waves;
- quantisation: the model's released format (``gemm_quant_mode`` / ``moe_quant_mode`` name the released one for
  every row scored here: fp8 / fp8_block for the FP8 DeepSeek and Qwen checkpoints, gpt-oss's "nvfp4" label
  stands for its MXFP4 experts, which H100/H200 run dequantised); a ``-FP8`` checkpoint of a bf16 model runs
  ``--dtype fp8``; an MoE row stating ``nvfp4`` for a model released in another format ran NVIDIA's NVFP4 checkpoint
  (B200 DeepSeek rows): ``--dtype nvfp4``.

What is compared (:func:`benchmark_latency`, :mod:`moesim.serving.closed_loop`):

- TPOT: the measured TPOT excludes the first token (the README beside the CSV); predicted as the plan's decode
  time per batch over its G steps (pure decode of the C sequences, which is what the lockstep waves do).
- TTFT: the benchmark's TTFT is the mean over requests of the time from sending to the first token. In a wave
  of C prompts under chunked prefill, request j (1-based) gets its first token at the end of pass
  ceil(j P / N) (N = tokens per prefill pass), so the mean over the wave is
  ``mean_j [ (idx_j - 1) t_full + (t_last if idx_j is the last pass else t_full) ]``. When C exceeds the
  running batch B the system holds, a closed-loop client's requests wait for a slot: with W = ceil(C / B)
  groups served one after another, the mean wait is (W - 1) / 2 x (prefill + decode time of one group).

Fit vs held-out (fixed here, before anything was fitted; :func:`split_of`): rows on H100 SXM may inform
constants ("fit"); rows on H200 SXM are only scored ("held-out"). Why by GPU: every backend and model that is
expressible runs on the H200, and the H100 rows (gpt-oss-120b on vLLM and TensorRT-LLM) are the smaller share;
a constant fitted on one GPU is then scored on the other GPU, whose HBM bandwidth differs (3.35 vs 4.8 TB/s),
which tests that what was fitted is not the GPU's roofline in disguise. SGLang has no expressible H100 row, so
nothing of SGLang's may be fitted on this file. B200, GB200, GB300 and B300 rows were added later, held-out too
(:data:`HELD_OUT_GPUS` says when): GB200 / GB300 rows run on the NVL72 rack platforms (``gb200-nvl72``,
``gb300-nvl72``: 72 GPUs in one NVLink domain, so a layout of up to 72 GPUs is one node there, :func:`node_gpus`),
B300 rows on ``hgx-b300``. Until 2026-12-04 moesim had no kernel tables of these three GPUs (the GB200's GPU is the
B200 die at 1,200 W instead of the HGX B200's 1,000 W, with other clocks and peak rates in ``hardware_db/gpus``, so
the B200's measured tables were not borrowed): the roofline priced them, their band said "uncalibrated" and their
rows stayed out of the corpus. Since then each has AIConfigurator's tables measured on that GPU
(``validation/published/aic_kernel_tables.py``), and its rows are in the corpus like B200's
(:data:`CORPUS_EXCLUDED_GPUS` is empty).

Run: ``python validation/published/aiconfigurator.py [--json] [--split held-out|fit|all] [--limit N] [--gpu SYSTEM]``
(``--gpu gb200 --gpu gb300 --gpu b300_sxm --layouts --disagg``: the rows of the GPUs added last, per GPU, backend,
model, mode and layout).
Import: :func:`records` returns one :class:`Record` per expressible row (source, row id, split, measured,
predicted), for tests and for a ``moesim validate --published`` runner.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from moesim.analysis.layouts import CAP_FLAG  # (the engines' caps on running requests: one map)
# the closed-loop benchmark rule lives in the library (the layout search prices concurrency with it too)
from moesim.serving.closed_loop import (  # noqa: F401  (re-exported: aiconfigurator_fit.py reads A.MODELS)
    BENCHMARK_MODEL, MODELS, SIMULATED, STAGGERED, STATED, benchmark_latency, request_overhead_s, simulated_client,
    simulated_run)

#: the closed-loop client models the harness fit chooses among: the analytic ones and the engine's scheduler
#: simulated over W waves (``simW``, :func:`moesim.serving.closed_loop.simulated_latency`); a plan the scheduler
#: cannot serve online (attention-DP / expert-parallel layouts, disaggregated pools) takes :data:`BENCHMARK_MODEL`
#: instead (a rule fixed before the simulated client was first scored)
HARNESS_MODELS = MODELS + tuple(SIMULATED) + tuple(STAGGERED)

SOURCE = "aiconfigurator-silicon"
ROOT = Path(__file__).resolve().parents[2]
CSV_CANDIDATES = (ROOT / "validation" / "data" / "aiconfigurator" / "silicon_sample.csv",
                  ROOT.parent / "shared" / "data" / "aiconfigurator" / "silicon_sample.csv",
                  Path("/work/shared/data/aiconfigurator/silicon_sample.csv"))
#: the CSV's ``system`` -> moesim platform. GB200 / GB300 rows ran on NVL72 racks (72 GPUs in one NVLink domain: a
#: "node" of that platform is the whole rack, :func:`node_gpus`); B300 rows on 8-GPU HGX B300 boards
PLATFORMS = {"h100_sxm": "hgx-h100", "h200_sxm": "hgx-h200", "b200_sxm": "hgx-b200",
             "gb200": "gb200-nvl72", "gb300": "gb300-nvl72", "b300_sxm": "hgx-b300",
             "mi300x": "mi300x-8gpu-server"}  # (no silicon row runs an MI300X: InferenceX's do, inferencex.py)
BACKENDS = ("vllm", "sglang", "trtllm")
#: the split rule (see the module docstring): fixed before fitting; never changed to suit a score
FIT_GPUS = ("h100_sxm",)
#: B200 added 2026-12-03; GB200, GB300 and B300 added 2026-12-03 (a later session), when moesim had platforms for them but no kernel
#: tables or calibration of those GPUs (their rows are priced by the roofline, band "uncalibrated"): scored only, to
#: see how far the uncalibrated path is from measurements on new GPUs; nothing is fitted on any of them
HELD_OUT_GPUS = ("h200_sxm", "b200_sxm", "gb200", "gb300", "b300_sxm", "mi300x")
#: GPUs whose rows stay out of the corpus and the bands (:func:`published_cells`; scored by this script only). GB200,
#: GB300 and B300 were here while the roofline priced them (no kernel tables of those GPUs, band "uncalibrated");
#: since 2026-12-04 they have AIConfigurator's tables measured on each and their rows are scored like B200's
CORPUS_EXCLUDED_GPUS: tuple[str, ...] = ()
#: checkpoints whose name says their precision: hf id -> (moesim hf id, --dtype)
FP8_SUFFIX = "-FP8"


def csv_path() -> Path:
    for p in CSV_CANDIDATES:
        if p.exists():
            return p
    raise FileNotFoundError("silicon_sample.csv not found in " + ", ".join(str(p) for p in CSV_CANDIDATES))


def split_of(row: dict) -> str:
    """'fit' for H100 SXM rows, 'held-out' for H200 SXM rows (the fixed rule of this module)."""
    if row["system"] in FIT_GPUS:
        return "fit"
    if row["system"] in HELD_OUT_GPUS:
        return "held-out"
    raise ValueError(f"row {row['id']}: GPU {row['system']!r} is in neither split")


@lru_cache(maxsize=2)
def _hf_models(dense: bool = False) -> dict[str, str]:
    """hf id (lower case) -> moesim model name, for MoE models (and the dense reference models with ``dense``)."""
    from moesim import db

    out = {}
    for spec in db.models().entries.values():
        if (spec.moe or dense) and getattr(spec, "hf_id", None):
            out[spec.hf_id.lower()] = spec.name
    return out


def model_of(hf_id: str, dense: bool = False) -> tuple[str, str | None] | None:
    """(moesim model, --dtype or None for the released one), or None when moesim does not list it (``dense``: the
    dense reference models count as listed)."""
    models = _hf_models(dense)
    key = hf_id.lower()
    if key in models:
        return models[key], None
    if key.endswith(FP8_SUFFIX.lower()) and key[: -len(FP8_SUFFIX)] in models:
        return models[key[: -len(FP8_SUFFIX)]], "fp8"
    return None


#: the two collection pipelines of the silicon file (``silicon_data_source``): AIConfigurator's silicon CI (dated
#: CSVs and database dumps) and an "auto gap analysis" project's runs (``.../aic-auto-gap-analysis/...`` or
#: ``*-gap-analysis.csv``). Each has its own benchmark client, so how its closed loop behaves (lockstep waves or
#: staggered requests) and the time a request spends outside the engine are properties of the pipeline and the engine,
#: fitted per pipeline (:func:`harness_of`).
PIPELINES = ("silicon-ci", "gap-analysis")
#: the silicon-CI rows are SemiAnalysis InferenceX's runs: 599 of its DeepSeek-R1 rows (H100, H200, B200, B300,
#: GB200, GB300; SGLang and TensorRT-LLM) carry the very mean TTFT and TPOT, to the microsecond, of rows in
#: InferenceX's published results (``validation/data/inferencex/``; ``python validation/published/inferencex.py``),
#: and none of the gap-analysis rows does. InferenceX's scripts state its client (``closed_loop.STATED``
#: "inferencex": 10 C requests, lengths uniform over [0.8 L, L]); simulated, it is one more candidate of this
#: pipeline's harness fit (:data:`STATED_CLIENTS`), scored on the fit rows like the others (2026-12-03: TTFT median |log ratio| 0.438
#: with 83 ms, against sim4's 0.127: on the H100 vLLM gpt-oss rows the stated client, simulated, gives first tokens
#: 2-3x earlier than measured, so moesim's steady-state prefill path misses what the fixed-length sim4 happens to
#: absorb; not chosen). What InferenceX's record of the same run states and the silicon row does not is used:
#: :func:`stated_speculation`.
#: a client a pipeline's source states is a candidate of that pipeline's harness fit only (:func:`harness_models`)
STATED_CLIENTS = {"silicon-ci": ("inferencex",)}
HARNESS_FILE = Path(__file__).resolve().with_name("aiconfigurator_harness.yaml")


def harness_models(pipeline: str) -> tuple[str, ...]:
    """The client models the harness fit of ``pipeline`` chooses among: the generic ones (:data:`HARNESS_MODELS`)
    and the client its source states, if any (:data:`STATED_CLIENTS`; another pipeline's stated client is not its)."""
    return HARNESS_MODELS + STATED_CLIENTS.get(pipeline, ())


def client_applies(client: str | None, row: dict) -> bool:
    """Whether client model ``client`` may stand for the benchmark client of ``row``'s pipeline: a stated client
    (:data:`STATED_CLIENTS`) only on the pipeline whose source states it, a generic one (:data:`HARNESS_MODELS`) on
    any; False for None."""
    if client is None:
        return False
    stated_on = [p for p, names in STATED_CLIENTS.items() if client in names]
    return pipeline_of(row) in stated_on if stated_on else client in HARNESS_MODELS


def pipeline_of(row: dict) -> str:
    """The collection pipeline a row was measured by (:data:`PIPELINES`), as its ``silicon_data_source`` states."""
    return "gap-analysis" if "gap-analysis" in row.get("silicon_data_source", "") else "silicon-ci"


@lru_cache(maxsize=1)
def _harness() -> dict:
    import yaml

    try:
        return yaml.safe_load(HARNESS_FILE.read_text()) or {}
    except FileNotFoundError:
        return {}


def harness_of(row: dict) -> tuple[str, float]:
    """(closed-loop benchmark model, request overhead s) of the row's pipeline and engine, as
    ``aiconfigurator_fit.py --harness`` fitted them on the FIT split (``aiconfigurator_harness.yaml``): the engine's
    own fit in that pipeline where it had fit rows, else the pipeline's pooled fit, else the engine's defaults."""
    entry = harness_entry(row)
    if entry:
        return str(entry["benchmark_model"]), float(entry["request_overhead_s"])
    return BENCHMARK_MODEL, request_overhead_s(row["backend"])


def harness_entry(row: dict) -> dict | None:
    """The fitted harness entry :func:`harness_of` reads for ``row`` (None where none was fitted)."""
    fitted = _harness().get("pipelines", {}).get(pipeline_of(row), {})
    return fitted.get(row["backend"]) or fitted.get("pooled")


def is_dense(row: dict) -> bool:
    """Whether the row's model is one of the dense reference models (not an MoE model moesim lists)."""
    return model_of(row["model_path"]) is None and model_of(row["model_path"], dense=True) is not None


def row_model(row: dict) -> tuple[str, str | None]:
    """(moesim model, --dtype) of an expressible row: MoE rows run the released format (module docstring); a dense
    reference row runs its ``precision`` (fp8 = per-tensor fp8 of the bf16 checkpoint, as AIConfigurator's runs
    quantise it; empty = the released bf16)."""
    model, dtype = model_of(row["model_path"], dense=True)
    if is_dense(row) and dtype is None and row.get("precision") == "fp8":
        dtype = "fp8"
    if not is_dense(row) and row.get("moe_quant_mode") == "nvfp4" and _released_expert_dtype(model) != "mxfp4":
        dtype = "nvfp4"  # NVIDIA's NVFP4 checkpoint of the model (gpt-oss's "nvfp4" label is its released MXFP4)
    return model, dtype


@lru_cache(maxsize=None)
def _released_expert_dtype(model: str) -> str | None:
    from moesim.db.resolve import get_model

    spec = get_model(model)
    return getattr(spec, "expert_dtype", None) or getattr(spec, "default_dtype", None)


def _int(s: str, default: int = 1) -> int:
    return int(s) if s not in ("", None) else default


def concurrency_of(row: dict, batch: int | None = None) -> int:
    """The benchmark's ``silicon_concurrency`` where the row states it, else ``batch`` (default: the row's
    ``batch_size``)."""
    m = re.search(r"silicon_concurrency=(\d+)", row["silicon_data_source"])
    if m:
        return int(m.group(1))
    return int(row["batch_size"]) if batch is None else batch


def expressible(row: dict, layouts: bool = False, disagg: bool = False, dense: bool = False) -> str | None:
    """None when moesim can express the row, else why not (a short reason). ``layouts``: also the aggregated rows
    with attention data parallelism and expert parallelism on one node (:func:`layout_of`); without it, the
    tensor-parallel rows only (the set this module scored before layouts existed). ``disagg``: also the
    disaggregated rows whose pools are stated (:func:`disagg_of`). ``dense``: the rows of the dense reference
    models too (:data:`DENSE_NOTE`): they may inform the engines' own constants on the fit split and are scored
    apart from the MoE rows, never in the corpus. A row whose own run InferenceX records as speculative
    (:func:`stated_speculation`) is expressed with the draft depth InferenceX's scripts set (:func:`speculative_params`)
    where they say it (aggregated TensorRT-LLM and SGLang runs), else refused."""
    spec = stated_speculation(row)
    if spec is not None and (row["mode"] != "agg" or _speculative_rule(row) is None):
        return (f"ran {spec.upper()} speculative decoding (InferenceX's record of the same run), with no setting "
                f"of InferenceX's scripts for it here")
    if row["mode"] != "agg":
        if not disagg or row["mode"] != "disagg":
            return "disaggregated"
        if row["system"] not in PLATFORMS:
            return f"GPU {row['system']}"
        if row["backend"] not in BACKENDS:
            return f"backend {row['backend']}"
        d = disagg_of(row)
        if isinstance(d, str):
            return d
        if model_of(row["model_path"], dense) is None:
            return "model not an MoE model moesim lists"
        return None
    if row["system"] not in PLATFORMS:
        return f"GPU {row['system']}"
    if row["backend"] not in BACKENDS:
        return f"backend {row['backend']}"
    tp, pp = _int(row["tp_size"]), _int(row["pp_size"])
    adp, mtp, mep = _int(row["attention_dp_size"]), _int(row["moe_tp_size"]), _int(row["moe_ep_size"])
    if pp != 1:
        return "pipeline parallel"
    if not layouts:
        if adp != 1 or mep != 1:
            return "not tensor parallel only"
        if (mtp != tp and not is_dense(row)) or tp > 8:  # a dense model has no MoE layout to be consistent with
            return "inconsistent layout"
    else:
        lay = layout_of(row)
        if isinstance(lay, str):
            return lay
    if model_of(row["model_path"], dense) is None:
        return "model not an MoE model moesim lists"
    return None


#: InferenceX's published DeepSeek-R1 results (``validation/published/inferencex.py`` says where from)
INFERENCEX_CSV = ROOT / "validation" / "data" / "inferencex" / "benchmarks_dsr1.csv"
#: ... and the dashboard's history fixture (more run dates; medians and p99s but no means, so no row pairs with it)
INFERENCEX_HISTORY_CSV = ROOT / "validation" / "data" / "inferencex" / "benchmarks_history_dsr1.csv"


def _ms_key(ttft_s: float, tpot_s: float) -> tuple[float, float]:
    """Mean TTFT and TPOT in ms, rounded to the microsecond: how a silicon row is paired with InferenceX's record."""
    return round(ttft_s * 1e3, 3), round(tpot_s * 1e3, 3)


@lru_cache(maxsize=None)
def _read_csv(path: Path) -> tuple[dict, ...]:
    """The rows of a committed CSV (none where the file is absent)."""
    try:
        with path.open(newline="") as f:
            return tuple(csv.DictReader(f))
    except FileNotFoundError:
        return ()


def _inferencex_rows() -> tuple[dict, ...]:
    return _read_csv(INFERENCEX_CSV)


@lru_cache(maxsize=1)
def _inferencex_by_key() -> dict:
    out: dict = {}
    for r in _inferencex_rows():
        out.setdefault(_ms_key(float(r["mean_ttft"]), float(r["mean_tpot"])), r)
    return out


#: InferenceX's single-node engines -> the silicon file's ``backend`` (run batches, :func:`run_batch_of`; the
#: InferenceX corpus source, ``inferencex.py``)
IX_ENGINES = {"sglang": "sglang", "trt": "trtllm"}


def _version(tag: str) -> str:
    """An engine version as the silicon file writes it, from an image tag or a version ("v0.5.9-cu130" -> "0.5.9")."""
    return (tag or "").rsplit(":", 1)[-1].lstrip("v").split("-")[0]


@lru_cache(maxsize=1)
def _batch_spec_methods() -> dict:
    """The speculative methods InferenceX's aggregated records show per run batch (:func:`run_batch_of`), keyed
    (GPU, engine, precision, date, version) from the records that name their image, and (GPU, engine, precision,
    date, None) from every record of that day (the history fixture names no image)."""
    out: dict = {}
    hw = {v: k for k, v in _IX_HARDWARE.items()}
    for r, versioned in [(r, True) for r in _inferencex_rows()] + [(r, False) for r in _read_csv(INFERENCEX_HISTORY_CSV)]:
        if r["disagg"] == "True" or r["framework"] not in IX_ENGINES or r["hardware"] not in hw:
            continue
        day = (hw[r["hardware"]], IX_ENGINES[r["framework"]], r["precision"], r["date"])
        method = r["spec_method"] or "none"
        if versioned:
            out.setdefault((*day, _version(r["image"])), set()).add(method)
        out.setdefault((*day, None), set()).add(method)
    return out


def batch_spec_methods(batch: tuple | None) -> set:
    """What InferenceX's records say of a run batch's speculative decoding: the records of its engine version where
    there are any, else every record of its day (GPU, engine, precision, date)."""
    if batch is None:
        return set()
    table = _batch_spec_methods()
    return table.get(batch) or table.get((*batch[:4], None), set())


def run_batch_of(row: dict) -> tuple | None:
    """The InferenceX run batch a silicon-CI row belongs to: (GPU, engine, precision, measured date, engine version).
    InferenceX runs one benchmark script (one launch configuration: with or without MTP) per such batch
    (``.github/workflows``: a nightly job per script, the image pinned in it), so the runs of one batch share their
    speculative decoding."""
    prec, date = _IX_PRECISION.get(row.get("gemm_quant_mode", "")), measured_date(row)
    if pipeline_of(row) != "silicon-ci" or row.get("mode") != "agg" or prec is None or date is None:
        return None
    return row["system"], row["backend"], prec, date, _version(row["backend_version"])


def inferencex_record(row: dict) -> dict | None:
    """InferenceX's record of the run a silicon row reports: the InferenceX row with the same mean TTFT and mean TPOT
    to the microsecond (None where there is none)."""
    if not row.get("silicon_ttft_ms") or not row.get("silicon_tpot_ms"):
        return None
    return _inferencex_by_key().get(_ms_key(float(row["silicon_ttft_ms"]) / 1e3, float(row["silicon_tpot_ms"]) / 1e3))


INFERENCEX_SPECULATIVE = ROOT / "validation" / "data" / "inferencex" / "speculative.yaml"


@lru_cache(maxsize=1)
def _speculative_rules() -> dict:
    import yaml

    return yaml.safe_load(INFERENCEX_SPECULATIVE.read_text()) or {}


def _speculative_rule(row: dict) -> dict | None:
    return _speculative_rules().get(row["backend"]) if stated_speculation(row) == "mtp" else None


def speculative_params(row: dict) -> dict:
    """The engine flags of the MTP a row's run used, as InferenceX's scripts set them
    (``validation/data/inferencex/speculative.yaml``: TensorRT-LLM ``num_nextn_predict_layers`` 1 with attention DP,
    else 3; SGLang EAGLE ``speculative_num_steps`` 2); {} for a row whose run was not speculative. The acceptance is
    moesim's sourced default (``systems_db/engines.yaml``): nothing states it."""
    rule = _speculative_rule(row)
    if rule is None:
        return {}
    depth = rule["attention_dp"] if _int(row["attention_dp_size"]) > 1 else rule["otherwise"]
    return {rule["param"]: int(depth)}


def stated_speculation(row: dict) -> str | None:
    """The speculative decoding InferenceX's record of the row's run states (``spec_method``, e.g. "mtp"), None for
    none or no record. Rule fixed 2026-12-03 from the provenance alone (:data:`PIPELINES`): the silicon file has no
    column for it; 147 of its DeepSeek-R1 rows (aggregated and disaggregated; H100, H200, B200, B300, GB200, GB300)
    are records of MTP runs. They were refused at first, then (the same day) predicted with InferenceX's depth and
    moesim's default acceptance, so that they measure that default (``speculation.assumed`` of the bands).

    A row whose own run InferenceX's fixture does not hold takes the method of its run batch (:func:`run_batch_of`,
    :func:`batch_spec_methods`) where the fixtures hold records of that batch and all of them state one method (rule
    fixed 2026-12-03 from the provenance: 116 more rows, B200 and H200 TensorRT-LLM batches of 2026-01-14, 2026-02-05
    and 2026-02-06 whose only records are MTP runs; a batch with both kinds, e.g. B200 SGLang fp8 of 2026-03-25, stays
    unstated). A batch whose engine version no record names falls back to every record of its day, the dashboard's
    history fixture included (``INFERENCEX_HISTORY_CSV``, added the same day: its 9 B200 TensorRT-LLM NVFP4 records of
    2026-01-14 are all MTP, so are that day's 17 silicon rows)."""
    rec = inferencex_record(row)
    if rec is None:  # the run's own record missing: its run batch's, where every record of the batch agrees
        methods = batch_spec_methods(run_batch_of(row))
        return next(iter(methods)) if len(methods) == 1 and methods != {"none"} else None
    if rec.get("spec_method") in (None, "", "none"):
        return None
    return rec["spec_method"]


INFERENCEX_LAUNCH_FLAGS = ROOT / "validation" / "data" / "inferencex" / "launch_flags.yaml"
#: the silicon file's GPU names -> InferenceX's hardware names (the launch-flag rules are in InferenceX's words)
_IX_HARDWARE = {"h100_sxm": "h100", "h200_sxm": "h200", "b200_sxm": "b200", "b300_sxm": "b300", "mi300x": "mi300x"}
#: the silicon file's GEMM quantisation -> InferenceX's precision (int4_wo: Kimi-K2.5's released INT4 experts)
_IX_PRECISION = {"fp8": "fp8", "nvfp4": "fp4", "int4_wo": "int4"}


@lru_cache(maxsize=1)
def _launch_flag_rules() -> dict:
    import yaml

    return yaml.safe_load(INFERENCEX_LAUNCH_FLAGS.read_text()) or {}


def measured_date(row: dict) -> str | None:
    """The date the row's run was measured (``measured=YYYY-MM-DD`` in its ``silicon_data_source``), None if unstated."""
    import re

    m = re.search(r"measured=(\d{4}-\d{2}-\d{2})", row.get("silicon_data_source", ""))
    return m.group(1) if m else None


def _case_matches(case: dict, tp: int, conc: int, isl: int, osl: int, adp: bool, ep: int = 1) -> bool:
    """Whether a rule's case (its shell condition) holds for a run: the row's GPUs (``tp``), expert-parallel size
    of the MoE (``ep``: the script's EP_SIZE, 1 where the row states none), concurrency range, ISL / OSL and
    attention DP."""
    return (case.get("tp", tp) == tp and case.get("ep", ep) == ep
            and conc >= case.get("conc_from", 0) and conc < case.get("conc_below", 1 << 62)
            and case.get("isl", isl) == isl and case.get("osl", osl) == osl
            and list(case.get("not_isl_osl", [None, None])) != [isl, osl]
            and case.get("attention_dp", adp) == adp)


def _flag_value(value, conc: int, isl: int, tp: int = 1):
    """A rule's flag value: a number or word as written, or (a string of the script's arithmetic over the run's
    concurrency, ISL and GPUs) its value, e.g. "max(8192, (conc + isl + 127) // 64 * 64)" or "conc // tp"."""
    if not isinstance(value, str) or value in ("TRTLLM", "CUTLASS", "DEEPGEMM"):
        return value
    return int(eval(value, {"__builtins__": {}, "max": max, "min": min}, {"conc": conc, "isl": isl, "tp": tp}))  # noqa: S307


def stated_launch_flags(row: dict) -> dict | None:
    """The launch flags InferenceX's script set for the row's run, as moesim's parameters: ``{"params": {...},
    "kv_dtype": ..., "source": ...}`` (``validation/data/inferencex/launch_flags.yaml``), or None where no rule covers
    the run (another pipeline, engine, model or date). A speculative run (:func:`stated_speculation`) is covered only by
    a rule of its method's scripts (the rule's ``speculative``, e.g. "mtp": InferenceX's ``*_mtp.sh``), any other run
    only by a rule without one. A rule covers the rows whose model path contains its ``model`` ("DeepSeek" where it
    names none: the file writes InferenceX's DeepSeek-R1 runs as DeepSeek-R1 or -V3) and, where it lists
    ``versions``, only runs of those images (the row's ``backend_version``). Every flag of the rule moesim models is applied, none picked (module docstring of the
    YAML: the flags it does not model)."""
    if pipeline_of(row) != "silicon-ci" or row["mode"] != "agg":
        return None
    spec = stated_speculation(row)
    date = measured_date(row)
    hw, prec = _IX_HARDWARE.get(row["system"]), _IX_PRECISION.get(row.get("gemm_quant_mode", ""))
    if date is None or hw is None or prec is None:
        return None
    lay = layout_of(row)
    tp = lay["gpus"] if isinstance(lay, dict) else _int(row["tp_size"])
    lay_params = lay.get("params", {}) if isinstance(lay, dict) else {}
    adp = bool(lay_params.get("enable_attention_dp") or lay_params.get("enable_dp_attention"))
    ep = int(lay_params.get("moe_expert_parallel_size") or lay_params.get("expert_parallel_size")
             or (tp if lay_params.get("enable_expert_parallel") else 1))
    conc, isl, osl = concurrency_of(row), int(row["isl"]), int(row["osl"])
    for rule in _launch_flag_rules().get(row["backend"], []):
        if rule["hardware"] != hw or rule["precision"] != prec or rule.get("speculative") != spec \
                or rule.get("model", "DeepSeek") not in row["model_path"] \
                or ("versions" in rule and row.get("backend_version") not in rule["versions"]) \
                or not str(rule["measured_from"]) <= date < str(rule["measured_to"]):
            continue
        params = dict(rule.get("params") or {})
        for case in rule.get("cases") or []:
            if _case_matches(case, tp, conc, isl, osl, adp, ep):
                if case.get("uncovered"):
                    return None
                params.update(case["params"])
        return {"params": {k: _flag_value(v, conc, isl, tp) for k, v in params.items()}, "kv_dtype": rule.get("kv_dtype"),
                "source": rule["source"]}
    return None


#: why dense rows are here at all (``expressible(..., dense=True)``)
DENSE_NOTE = ("SGLang and TensorRT-LLM measured no MoE model in tensor parallel on H100 (the fit split), only dense "
              "ones (Qwen3-32B, Llama-3.1-8B/70B); their rows, on moesim's dense reference models, may inform an "
              "engine's own constants (request overhead, benchmark behaviour), which do not depend on the model; "
              "they are scored apart from the MoE rows and kept out of the corpus")


#: GPUs of one node of the HGX platforms (H100 / H200 / B200 / B300); a larger layout needs several nodes.
#: Per row: :func:`node_gpus` (an NVL72 rack is one node of 72)
NODE_GPUS = 8


def node_gpus(row: dict) -> int:
    """GPUs of one NVLink domain ("node") of the row's platform, as its ``hardware_db/platforms`` entry states
    (``num_gpus``: 8 on an HGX board, 72 on a GB200 / GB300 NVL72 rack, whose 72 GPUs share one NVLink switch
    fabric); :data:`NODE_GPUS` for a GPU this module does not map."""
    from moesim import db

    name = PLATFORMS.get(row["system"])
    return int(db.platforms().get(name).num_gpus) if name else NODE_GPUS


def _undouble(tp: int, adp: int, mtp: int, mep: int) -> tuple[int, int, int, int]:
    """The real layout of a row written in the CSV's second convention, else the columns unchanged.

    Rows of the ``2026-04-06.csv`` and ``db-dump`` sources (attention_dp_size stated) write an expert-parallel
    layout on G GPUs as moe_tp = moe_ep = G with the attention factor multiplied by G: tp8 ep8 on 8 GPUs is
    (tp 64, dp 1, moe_tp 8, moe_ep 8), attention DP 8 x EP 8 is (tp 1, dp 64, 8, 8), tp2 ep2 is (4, 1, 2, 2). The
    evidence is in the file: every H200 / B200 TensorRT-LLM DeepSeek-R1 row (1, 64, 8, 8) repeats, to the last
    digit of TTFT and TPOT, a (1, 8, 1, 8) row of the ``2026-03-25.csv`` source (same ISL, OSL, concurrency,
    version); (64, 1, 8, 8) SGLang rows repeat (8, 1, 1, 8) ones; gpt-oss-120b's (4, 1, 2, 2) / (16, 1, 4, 4) /
    (64, 1, 8, 8) TensorRT-LLM rows measure the TPOT of its 2- / 4- / 8-GPU rows at every concurrency; and
    (tp 1, moe_ep G) or (tp G, moe_tp 1, moe_ep G), the usual EP layouts, never occur in those two sources. Read
    literally they were 16- and 64-GPU layouts across nodes. Rule: attention DP stated, moe_tp = moe_ep = m > 1,
    tp x dp = m^2 with one of them 1: G = m, the other divided by m, moe_tp 1, moe_ep m.

    The same sources write vLLM's ``--tensor-parallel-size m --enable-expert-parallel`` (EP over the m TP GPUs) as
    (tp m, dp m, moe_tp 1, moe_ep m^2): the ``2026-04-06.csv`` rows so written are named ``..._tp2_ep2_...`` and
    ``..._tp4_ep4_...``, their ``db-dump`` copies repeat them to the last digit, and the H100 MiniMax-M2.5
    (4, 4, 1, 16) rows measure the TTFT and TPOT of the ``2026-03-25.csv`` source's TP4 EP4 rows (4, dp 1, 1, 4) at
    every concurrency, within 1% (1k/1k, concurrency 4-64: TPOT 10.09 / 10.12 ms ... 25.69 / 25.66 ms). Read literally
    they were attention-DP layouts on m^2 GPUs (16 on two H100 nodes). Rule: attention DP stated, tp = dp = m > 1,
    moe_tp 1, moe_ep m^2: tp m, dp 1, moe_tp 1, moe_ep m."""
    m = mtp
    if m > 1 and mep == m and tp * adp == m * m and min(tp, adp) == 1:
        return (tp // m, 1, 1, m) if adp == 1 else (1, adp // m, 1, m)
    if tp > 1 and adp == tp and mtp == 1 and mep == tp * tp:
        return tp, 1, 1, tp
    return tp, adp, mtp, mep


def layout_of(row: dict, prefix: str = "", max_gpus: int | None = None) -> dict | str:
    """The row's layout as the engine's own flags, or why moesim cannot express it.

    The CSV's columns (AIConfigurator's convention): tp_size = attention TP per DP rank, attention_dp_size = DP
    ranks (empty = 1 where moe_tp x moe_ep = tp; else the GPUs the MoE columns use over tp), moe_tp_size x
    moe_ep_size = the MoE layout; GPUs G = tp x attention_dp = moe_tp x moe_ep. Engine flags:

    - vLLM: --gpus G --data-parallel-size dp, --enable-expert-parallel when moe_ep = G (vLLM's MoE group spans
      all TP x DP GPUs, wholly EP or wholly TP: other splits are not vLLM layouts);
    - SGLang: --gpus G (its --tp), --dp-size dp --enable-dp-attention when dp > 1, --ep-size moe_ep;
    - TensorRT-LLM: --gpus G (its tp_size), enable_attention_dp when dp > 1 (attention TP 1 then: dp = G),
      moe_expert_parallel_size / moe_tensor_parallel_size as given.

    A layout of up to ``max_gpus`` GPUs (default: one node of the row's platform, :func:`node_gpus`: 8 on HGX, 72
    on an NVL72 rack, where tensor parallelism over e.g. 36 GPUs stays inside the NVLink domain) runs on one node;
    a larger one on whole nodes joined by the scale-out network (``--nodes``), tensor parallel groups inside one."""
    node = node_gpus(row)
    max_gpus = node if max_gpus is None else max_gpus
    tp, mtp, mep = _int(row[prefix + "tp_size"]), _int(row[prefix + "moe_tp_size"]), _int(row[prefix + "moe_ep_size"])
    moe = mtp * mep
    if row[prefix + "attention_dp_size"] in ("", None):
        if not moe or moe % tp:
            return "inconsistent layout"
        adp = moe // tp
    else:
        adp = _int(row[prefix + "attention_dp_size"])
        tp, adp, mtp, mep = _undouble(tp, adp, mtp, mep)
        moe = mtp * mep
    g = tp * adp
    if g != moe:
        return "inconsistent layout"
    nodes = 1
    if g > max_gpus:  # several nodes joined by their network (--nodes): DP / EP span them, TP stays inside
        if g % node:
            return f"{g} GPUs: not whole nodes of {node}"
        if tp > node or mtp > node:
            return (f"tensor parallel across nodes (attention TP {tp}, MoE TP {mtp} over {g // node} nodes of "
                    f"{node}): not modelled")
        nodes = g // node
    backend = row["backend"]
    params: dict = {}
    if backend == "vllm":
        if mep not in (1, g) or (mep == 1 and mtp != g):
            return "MoE layout vLLM cannot run (its MoE group is all TP x DP GPUs, EP or TP)"
        if adp > 1:
            params["data_parallel_size"] = adp
        if mep > 1:
            params["enable_expert_parallel"] = True
    elif backend == "sglang":
        if adp > 1:
            params.update(data_parallel_size=adp, enable_dp_attention=True)
        if mep > 1:
            params["expert_parallel_size"] = mep
    else:
        if adp > 1:
            if tp != 1:
                return "TensorRT-LLM attention DP runs attention TP 1"
            params["enable_attention_dp"] = True
        if mep > 1:
            params.update(moe_expert_parallel_size=mep, moe_tensor_parallel_size=mtp)
    words = f"tp{tp}" + (f" dp{adp}" if adp > 1 else "") + (f" ep{mep}" if mep > 1 else "") + (
        f" moe-tp{mtp}" if mtp not in (g,) and mep > 1 and mtp > 1 else "")
    return {"gpus": g // nodes, "nodes": nodes, "params": params,
            "layout": (words if (adp > 1 or mep > 1) else "tp") + (f" x{nodes} nodes" if nodes > 1 else "")}


def attention_tp_of(row: dict) -> int:
    """The row's attention tensor-parallel size (tp_size, read through :func:`_undouble` where attention DP is
    stated)."""
    tp = _int(row["tp_size"])
    if row["attention_dp_size"] in ("", None):
        return tp
    return _undouble(tp, _int(row["attention_dp_size"]), _int(row["moe_tp_size"]), _int(row["moe_ep_size"]))[0]


def disagg_of(row: dict) -> dict | str:
    """A disaggregated row (``mode == disagg``) as moesim's pools, or why not: prefill_num_workers workers of the
    prefill_* layout and decode_num_workers of the decode_* layout (each mapped to the engine's own flags by
    :func:`layout_of`), on as many nodes of the platform as they take together (``--nodes``; a node is 8 GPUs of
    an HGX board, 72 of an NVL72 rack: :func:`node_gpus`). Concurrency: the benchmark's
    ``silicon_concurrency`` (else decode_batch_size x decode_num_workers x decode attention DP, AIConfigurator's
    convention: the batch is per attention-DP rank). Rows without the pools' sizes are not expressed."""
    if row["prefill_num_workers"] in ("", None) or row["decode_num_workers"] in ("", None):
        return "pool sizes not stated"
    if _int(row["prefill_pp_size"]) != 1 or _int(row["decode_pp_size"]) != 1:
        return "pipeline parallel"
    pools = {}
    for role in ("prefill", "decode"):
        lay = layout_of(row, role + "_", max_gpus=10**6)
        if isinstance(lay, str):
            return f"{role} pool: {lay}"
        pools[role] = lay
    n_p, n_d = _int(row["prefill_num_workers"]), _int(row["decode_num_workers"])
    total = n_p * pools["prefill"]["gpus"] + n_d * pools["decode"]["gpus"]

    def text(params: dict) -> str:
        return ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in params.items())

    # each pool's batch as the row states it (per attention-DP rank): the engine's own cap on running requests, in
    # the engine's unit (vLLM's max_num_seqs and TensorRT-LLM's max_batch_size are per DP rank; SGLang's
    # --max-running-requests is the server's, split over its DP workers: the rank's batch x DP)
    cap = CAP_FLAG[row["backend"]][0]
    for role in ("prefill", "decode"):
        if row[role + "_batch_size"] not in ("", None):
            per_rank = _int(row[role + "_batch_size"])
            dp = _int(row[role + "_attention_dp_size"]) if row["backend"] == "sglang" else 1
            pools[role]["params"] = {**pools[role]["params"], cap: per_rank * max(dp, 1)}
    params = {"disaggregate": True, "prefill_gpus": pools["prefill"]["gpus"], "decode_gpus": pools["decode"]["gpus"],
              "prefill_workers": n_p, "decode_workers": n_d}
    for role in ("prefill", "decode"):
        if pools[role]["params"]:
            params[f"{role}_params"] = text(pools[role]["params"])
    c = concurrency_of(row, _int(row["decode_batch_size"]) * n_d * _int(row["decode_attention_dp_size"]))
    words = (f"disagg {n_p}x({pools['prefill']['gpus']} {pools['prefill']['layout']}) + "
             f"{n_d}x({pools['decode']['gpus']} {pools['decode']['layout']})")
    node = node_gpus(row)
    return {"gpus": node, "nodes": math.ceil(total / node), "params": params, "layout": words,
            "concurrency": c}


def load_rows(path: Path | None = None) -> list[dict]:
    with open(path or csv_path(), newline="") as f:
        return list(csv.DictReader(f))


@dataclass(frozen=True)
class Record:
    source: str
    row_id: str
    split: str  # "fit" | "held-out"
    backend: str
    model: str
    gpu: str
    tp: int
    isl: int
    osl: int
    concurrency: int
    measured_ttft_s: float
    measured_tpot_s: float
    predicted_ttft_s: float | None  # None = moesim refused (its reason in ``note``)
    predicted_tpot_s: float | None
    note: str = ""
    layout: str = "tp"  # "tp", or the row's attention DP / EP layout ("tp1 dp8 ep8")
    mode: str = "agg"  # "agg" or "disagg"
    dense: bool = False  # a dense reference model's row (scored apart from the MoE rows)
    speculative: str = ""  # the speculative decoding InferenceX's record of the run states ("mtp"), else ""

    @property
    def ttft_error(self) -> float | None:
        return None if self.predicted_ttft_s is None else self.predicted_ttft_s / self.measured_ttft_s - 1.0

    @property
    def tpot_error(self) -> float | None:
        return None if self.predicted_tpot_s is None else self.predicted_tpot_s / self.measured_tpot_s - 1.0


def scenario_of(row: dict, system: str | None = None):
    """The moesim Scenario of an expressible row (``system`` overrides the row's backend)."""
    import moesim

    model, dtype = row_model(row)
    nodes = 1
    if row["mode"] == "disagg":
        lay = disagg_of(row)
        c, nodes = lay["concurrency"], lay["nodes"]
    else:
        c = concurrency_of(row)
        lay = layout_of(row)
    gpus, params = (lay["gpus"], lay["params"]) if isinstance(lay, dict) else (_int(row["tp_size"]), {})
    nodes = lay.get("nodes", 1) if isinstance(lay, dict) else 1
    if row["mode"] == "agg" and speculative_params(row):
        params = {**params, **speculative_params(row)}
    flags = stated_launch_flags(row)
    kv = {}
    if flags is not None:
        params = {**params, **flags["params"]}
        kv = {"kv_dtype": flags["kv_dtype"]} if flags.get("kv_dtype") else {}
    if system is not None and system != row["backend"]:
        params, kv = {}, {}  # another system's flags are not this row's
    return moesim.Scenario(model=model, hardware=PLATFORMS[row["system"]], num_gpus=gpus, **kv,
                           **({"num_nodes": nodes} if nodes > 1 else {}),
                           system=system or row["backend"], prompt_tokens=int(row["isl"]), gen_tokens=int(row["osl"]),
                           batch_size=c, num_requests=c, dtype=dtype,
                           **({"system_params": params} if params else {}))


_CACHE: dict = {}


def predict_row(row: dict, system: str | None = None, model: str | None = None) -> tuple[float | None, float | None, str]:
    """(mean TTFT, TPOT, note) predicted for ``row`` (None, None, why when moesim refuses it)."""
    from moesim.errors import MoesimError
    from moesim.predict import plan_scenario

    sc = scenario_of(row, system)
    harness_model, extra = harness_of(row)
    key = sc.model_dump_json()
    model = model or harness_model
    if key not in _CACHE:  # the engine's times without the request overhead, per client model
        try:
            ctx, plan, _, _ = plan_scenario(sc)
            _CACHE[key] = {m: (t, p, "") for m in MODELS
                           for t, p in [benchmark_latency(plan, sc.prompt_tokens, sc.gen_tokens, sc.batch_size, m)]}
            _CACHE[key]["_plan"] = (ctx, plan, sc)
        except MoesimError as e:
            _CACHE[key] = {m: (None, None, str(e).splitlines()[0][:200]) for m in HARNESS_MODELS + tuple(STATED)}
    entry = _CACHE[key]
    if model not in entry:  # a simulated client, computed when first asked for
        from moesim.systems import get_system

        ctx, plan, sc = entry["_plan"]
        try:
            engine = get_system(plan.system)(sc.system_params or None)
            sim = simulated_run(engine, ctx, plan, sc.prompt_tokens, sc.gen_tokens, sc.batch_size,
                                simulated_client(model))
            entry[model] = (sim.mean_ttft_s, sim.mean_tpot_s, "")
            entry[model + ":median_ttft_s"] = sim.median_ttft_s
        except MoesimError:  # a layout or pool the online scheduler does not serve: the analytic default
            entry[model] = None
    t, p, note = entry[model] or entry[BENCHMARK_MODEL]
    if entry[model] is None:  # ... with the overhead the fit found for that client on the same rows
        fitted = harness_entry(row) or {}
        extra = float(fitted.get("default_model_overhead_s", extra)) if model == harness_model else extra
    return (None if t is None else t + extra), p, note


def predicted_median_ttft_s(row: dict, model: str | None = None) -> float | None:
    """The median TTFT over the requests of the simulated client ``model`` (default: the row's harness client) for
    ``row``, with the same request overhead as its mean (:func:`predict_row`); None for an analytic client or a plan
    the scheduler does not serve online."""
    harness_model, extra = harness_of(row)
    model = model or harness_model
    if simulated_client(model) is None:
        return None
    predict_row(row, model=model)
    entry = _CACHE.get(scenario_of(row).model_dump_json(), {})
    median = entry.get(model + ":median_ttft_s")
    return None if median is None or entry.get(model) is None else median + extra


CITATION = ("AIConfigurator silicon measurements (github.com/ai-dynamo/aiconfigurator, "
            "aic-core/src/aiconfigurator_core/systems/silicon_sample.csv at 095f58a51, Apache-2.0)")


def _row_setup(row: dict) -> str:
    version = row["backend_version"] or "version not stated"
    if row["mode"] == "disagg":
        d = disagg_of(row)
        return (f"{row['system']} {d['layout']}, {row['backend']} {version}, {row['model_path']} "
                f"({row['gemm_quant_mode']}/{row['moe_quant_mode']}), ISL {row['isl']}, OSL {row['osl']}, "
                f"concurrency {d['concurrency']}")
    lay = layout_of(row)
    where = f"{lay['gpus']} ({lay['layout']})" if isinstance(lay, dict) and lay["layout"] != "tp" else \
        f"{row['tp_size']} (TP)"
    return (f"{row['system']} x {where}, {row['backend']} {version}, {row['model_path']} "
            f"({row['gemm_quant_mode']}/{row['moe_quant_mode']}), ISL {row['isl']}, OSL {row['osl']}, "
            f"concurrency {concurrency_of(row)}")


@lru_cache(maxsize=1)
def _rows_by_id() -> dict[str, dict]:
    return {row["id"]: row for row in load_rows()}


#: whether the corpus (``moesim validate --published``, the bands) holds the attention-DP / EP rows too (it does;
#: the bands are derived with them; rows whose tensor-parallel groups span nodes are not expressed);
#: ``python aiconfigurator.py --layouts`` scores them alone
CORPUS_LAYOUTS = True
#: the disaggregated rows (:func:`disagg_of`) stay out of the corpus and the bands: their TTFT is a steady-state
#: figure without the benchmark's ramp and the servers' KV handshake (held-out median 81% under), which would widen
#: every aggregated prediction's prefill band; ``python aiconfigurator.py --disagg`` scores them (TPOT 4.9%)
CORPUS_DISAGG = False


def refused_layout(row: dict) -> str | None:
    """Why a tensor-parallel row's stated layout cannot be what ran, or None: every engine here splits the attention
    heads H evenly over the tensor-parallel GPUs n (H mod n = 0, ``tensor_parallel.require_tensor_parallel``), so a
    row stating n GPUs of attention TP that do not divide H records another layout (the GB200 DeepSeek-R1 rows of TP
    12-72 with EP 1 of one source). Such a row is expressible (``python aiconfigurator.py`` shows the engine's
    refusal) but not a cell of the corpus: nothing can be predicted for a setup that was not run."""
    from moesim import get_model

    lay = layout_of(row)
    if not isinstance(lay, dict) or lay.get("params"):
        return None
    heads = get_model(row_model(row)[0]).attention.num_heads
    n = lay["gpus"]
    if n > 1 and heads % n:
        return (f"the stated layout, attention TP {n} over {heads} heads, is one {row['backend']} refuses (heads "
                f"mod TP must be 0): the row records another layout")
    return None


def published_cells() -> list:
    """The published corpus' cells (:mod:`moesim.calibration.published`): a TTFT and a TPOT cell per expressible
    row, split as :func:`split_of` says; a row's two cells share a fold of the band's cross-fit. A row whose stated
    layout its engine refuses (:func:`refused_layout`) gives cells marked not expressible, never scored."""
    try:
        rows = load_rows()
    except FileNotFoundError:
        return []
    out = []
    for row in rows:
        if row["system"] in CORPUS_EXCLUDED_GPUS or expressible(row, CORPUS_LAYOUTS, CORPUS_DISAGG) is not None:
            continue
        why = refused_layout(row)
        out += [replace(c, not_expressible=why) if why else c for c in row_cells(row)]
    return out


def row_cells(row: dict, citation: str = CITATION, split: str | None = None,
              note: str = "benchmark mean TTFT / TPOT of a closed-loop client at this concurrency (benchmark_latency)"
              ) -> list:
    """The mean-TTFT and mean-TPOT corpus cells of an expressible silicon-format row (``split``: the row's own by
    default, :func:`split_of`); the cell's ``fold`` is the row's id, which :func:`evaluate_row` is handed back."""
    from moesim.calibration.published import PublishedCell

    model, dtype = row_model(row)  # the dtype scenario_of runs (NVIDIA's NVFP4 checkpoint where the row says nvfp4)
    disagg = row["mode"] == "disagg"
    lay = disagg_of(row) if disagg else layout_of(row)
    c = lay["concurrency"] if disagg else concurrency_of(row)
    knobs = {"num_gpus": lay["gpus"] if isinstance(lay, dict) else _int(row["tp_size"]),
             **({"num_nodes": lay["nodes"]} if disagg and lay["nodes"] > 1 else {}),
             **({"dtype": dtype} if dtype else {})}
    params = {**(lay["params"] if isinstance(lay, dict) else {}), **({} if disagg else speculative_params(row))}
    return [PublishedCell(
        key=f"{row['id']}|{figure}", citation=citation, setup=_row_setup(row),
        row=f"{row['backend']} {row['backend_version'] or '(version not stated)'}", model=model,
        hardware=PLATFORMS[row["system"]], system=row["backend"], figure=figure,
        published=float(row[column]) / 1e3, split=split or split_of(row),
        workload={"prompt_tokens": int(row["isl"]), "gen_tokens": int(row["osl"]), "num_requests": c,
                  "batch_size": c}, knobs=knobs, params=params, table=f"{row['system']} {row['backend']}",
        fold=row["id"], note=note)
        for figure, column in (("ttft_s", "silicon_ttft_ms"), ("tpot_s", "silicon_tpot_ms"))]


_PREDICTIONS: dict = {}


def evaluate(cell):
    """The corpus' Result of one cell (:func:`evaluate_row` of the silicon row it came from)."""
    return evaluate_row(cell, _rows_by_id()[cell.fold])


def evaluate_row(cell, row: dict):
    """The corpus' Result of a cell of ``row``: the benchmark's figure from :func:`predict_row`, with the band
    ``moesim.predict`` puts around the same figure of the same scenario."""
    import moesim
    from moesim.calibration.published import Result, band_of
    from moesim.errors import MoesimError

    ttft, tpot, note = predict_row(row)
    if ttft is None:
        return Result(cell, reason=note)
    value = ttft if cell.figure == "ttft_s" else tpot
    sc = scenario_of(row)
    key = sc.model_dump_json()
    if key not in _PREDICTIONS:
        try:
            _PREDICTIONS[key] = moesim.predict(sc)
        except MoesimError as exc:
            return Result(cell, reason=str(exc).splitlines()[0][:200])
    p = _PREDICTIONS[key]
    low, high = band_of(p, cell.figure, value)
    return Result(cell, predicted=value, low=low, high=high, uncertainty=p.uncertainty)


def records(rows: Iterable[dict] | None = None, split: str = "all", limit: int | None = None,
            system: str | None = None, model: str | None = None, layouts: bool = False,
            disagg: bool = False, dense: bool = False, client: str | None = None) -> list[Record]:
    """One Record per expressible row (``split``: 'fit', 'held-out' or 'all'; ``system`` predicts every row with
    that moesim system instead of the row's backend, e.g. to compare with ``vllm`` standing in; ``layouts``: the
    attention-DP / expert-parallel rows too, :func:`layout_of`; ``model``: every row under that client model;
    ``client``: the rows of the pipelines that client may serve (:func:`client_applies`) under it, with the request
    overhead their harness fit found, the others under their fitted client)."""
    out = []
    for row in rows if rows is not None else load_rows():
        if expressible(row, layouts, disagg, dense) is not None:
            continue
        lay = disagg_of(row) if row["mode"] == "disagg" else layout_of(row)
        s = split_of(row)
        if split != "all" and s != split:
            continue
        ttft, tpot, note = predict_row(row, system, model or (client if client_applies(client, row) else None))
        out.append(Record(SOURCE, row["id"], s, row["backend"], row_model(row)[0], row["system"],
                          attention_tp_of(row), int(row["isl"]), int(row["osl"]),
                          lay["concurrency"] if row["mode"] == "disagg" else concurrency_of(row),
                          float(row["silicon_ttft_ms"]) / 1e3, float(row["silicon_tpot_ms"]) / 1e3, ttft, tpot, note,
                          lay["layout"] if isinstance(lay, dict) else "tp", row["mode"], is_dense(row),
                          stated_speculation(row) or ""))
        if limit and len(out) >= limit:
            break
    return out


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(recs: list[Record], by: tuple[str, ...]) -> list[dict]:
    """Median / p90 |error| of TTFT and TPOT, and the median signed error, per group of ``by`` fields."""
    groups: dict[tuple, list[Record]] = {}
    for r in recs:
        groups.setdefault(tuple(getattr(r, f) for f in by), []).append(r)
    out = []
    for key, rs in sorted(groups.items(), key=lambda kv: tuple(str(k) for k in kv[0])):
        ok = [r for r in rs if r.predicted_tpot_s is not None]
        tt = [abs(r.ttft_error) for r in ok]
        tp = [abs(r.tpot_error) for r in ok]
        out.append({**dict(zip(by, key)), "rows": len(rs), "refused": len(rs) - len(ok),
                    "ttft_median_abs": _pct(tt, 0.5), "ttft_p90_abs": _pct(tt, 0.9),
                    "ttft_median_signed": _pct([r.ttft_error for r in ok], 0.5),
                    "tpot_median_abs": _pct(tp, 0.5), "tpot_p90_abs": _pct(tp, 0.9),
                    "tpot_median_signed": _pct([r.tpot_error for r in ok], 0.5)})
    return out


#: The issues' "Done when" targets this file scores (median |error| on held-out rows): issue 12 for the TP-only
#: aggregated rows per engine, issue 14 for the aggregated EP / attention-DP rows and the disaggregated rows.
GATE_GPUS = ("h100_sxm", "h200_sxm", "b200_sxm")


def gates(recs: list[Record]) -> list[dict]:
    """The issue targets over held-out MoE rows (:data:`GATE_GPUS`): per gate the rows, the median |TPOT| and
    |TTFT| error and the target each must meet (None: no TTFT target). TP-only rows per engine and GPU (issue 12,
    TPOT 15% / TTFT 25%, speculative runs apart since their acceptance is assumed); EP / attention-DP aggregated
    rows (issue 14, 15% / 25%); disaggregated rows (issue 14, TPOT 25%)."""
    held = [r for r in recs if r.split == "held-out" and not r.dense and r.gpu in GATE_GPUS
            and r.predicted_tpot_s is not None]
    specs: list[tuple[str, list[Record], float, float | None]] = []
    for gpu in GATE_GPUS:
        for backend in ("vllm", "sglang", "trtllm"):
            rs = [r for r in held if r.gpu == gpu and r.backend == backend and r.mode == "agg" and r.layout == "tp"]
            specs.append((f"12 tp {gpu} {backend} no-spec", [r for r in rs if not r.speculative], 0.15, 0.25))
            specs.append((f"12 tp {gpu} {backend} spec", [r for r in rs if r.speculative], 0.15, 0.25))
    agg = [r for r in held if r.mode == "agg" and r.layout != "tp"]
    specs.append(("14 ep/dp agg", agg, 0.15, 0.25))
    specs.append(("14 ep/dp agg no-spec", [r for r in agg if not r.speculative], 0.15, 0.25))
    for backend in ("vllm", "sglang", "trtllm"):
        specs.append((f"14 ep/dp agg {backend}", [r for r in agg if r.backend == backend], 0.15, 0.25))
    specs.append(("14 disagg", [r for r in held if r.mode == "disagg"], 0.25, None))
    out = []
    for name, rs, tpot_target, ttft_target in specs:
        if not rs:
            continue
        tp = _pct([abs(r.tpot_error) for r in rs], 0.5)
        tt = _pct([abs(r.ttft_error) for r in rs], 0.5)
        out.append({"gate": name, "rows": len(rs), "tpot_median_abs": tp, "tpot_target": tpot_target,
                    "ttft_median_abs": tt, "ttft_target": ttft_target,
                    "ttft_median_signed": _pct([r.ttft_error for r in rs], 0.5),
                    "met": tp <= tpot_target and (ttft_target is None or tt <= ttft_target)})
    return out


#: InferenceX's client awaits 2 C warm-up requests before the timed ones from d053ae24e (2026-01-21,
#: ``utils/bench_serving/benchmark_serving.py`` --num-warmups in ``benchmarks/benchmark_lib.sh``); silicon-CI runs
#: measured earlier timed their first C requests on a cold engine
WARMUP_FROM = "2026-01-21"


def client_era(row: dict) -> str:
    """How the run's benchmark client started (a diagnostic split of the gates, never a fit): "cold" for a silicon-CI
    (InferenceX) run measured before :data:`WARMUP_FROM` (its first wave timed on a cold engine), "warm" for one
    measured since, "own client" for the gap-analysis pipeline's rows (another client) and "unstated" for a
    silicon-CI row without a measured date."""
    if pipeline_of(row) != "silicon-ci":
        return "own client"
    date = measured_date(row)
    return "unstated" if date is None else ("cold" if date < WARMUP_FROM else "warm")


def _gate_table(rows: list[dict]) -> str:
    lines = [f"{'gate (held-out, median |error|)':<36} rows |  TPOT (target) |  TTFT (target) signed | met"]
    for g in rows:
        ttft_t = "   -" if g["ttft_target"] is None else f"{g['ttft_target']:4.0%}"
        lines.append(f"{g['gate']:<36} {g['rows']:4d} | {g['tpot_median_abs']:5.1%} ({g['tpot_target']:4.0%}) | "
                     f"{g['ttft_median_abs']:6.1%} ({ttft_t}) {g['ttft_median_signed']:+6.0%} | "
                     f"{'yes' if g['met'] else 'no'}")
    return "\n".join(lines)


def _table(rows: list[dict], by: tuple[str, ...]) -> str:
    head = " ".join(f"{b:>16}" for b in by) + "   rows refused |  TPOT med   p90  (signed) |  TTFT med   p90  (signed)"
    lines = [head]
    for r in rows:
        lines.append(" ".join(f"{str(r[b]):>16}" for b in by)
                     + f"   {r['rows']:4d} {r['refused']:7d} | {r['tpot_median_abs']:8.0%} {r['tpot_p90_abs']:5.0%} "
                       f"({r['tpot_median_signed']:+6.0%}) | {r['ttft_median_abs']:8.0%} {r['ttft_p90_abs']:5.0%} "
                       f"({r['ttft_median_signed']:+6.0%})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print per-row records and summaries as JSON")
    ap.add_argument("--split", choices=("fit", "held-out", "all"), default="all")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--as-system", default=None, help="predict every row with this moesim system")
    ap.add_argument("--layouts", action="store_true",
                    help="also the attention-DP / expert-parallel rows on one node (grouped by layout)")
    ap.add_argument("--disagg", action="store_true",
                    help="also the disaggregated rows whose pools are stated (grouped by mode)")
    ap.add_argument("--dense", action="store_true",
                    help="also the dense reference models' rows (grouped apart: dense True/False)")
    ap.add_argument("--gpu", action="append", choices=sorted(PLATFORMS), default=None,
                    help="only the rows of this GPU (the CSV's system column; repeatable)")
    ap.add_argument("--client", default=None, choices=sorted(set(HARNESS_MODELS) | set(STATED)),
                    help="predict the rows of the pipelines this benchmark client may serve under it (a stated "
                         "client: its source's pipeline only), with their fitted request overhead; a diagnostic: "
                         "the harness fit chooses each pipeline's client")
    ap.add_argument("--gates", action="store_true",
                    help="only the issue targets (held-out TP, EP / attention-DP and disaggregated rows on "
                         "H100/H200/B200); implies --split held-out --layouts --disagg")
    args = ap.parse_args(argv)
    if args.gates:
        args.split, args.layouts, args.disagg = "held-out", True, True
    rows = [r for r in load_rows() if (args.gpu is None or r["system"] in args.gpu)
            and (not args.gates or r["system"] in GATE_GPUS)]
    recs = records(rows, split=args.split, limit=args.limit, system=args.as_system, layouts=args.layouts,
                   disagg=args.disagg, dense=args.dense, client=args.client)
    if args.gates:
        g = gates(recs)
        if args.json:
            print(json.dumps(g, indent=1))
            return 0
        print(_gate_table(g))
        era = {r["id"]: client_era(r) for r in rows}
        for label, keep in ((f"InferenceX runs with the client's warm-up (measured from {WARMUP_FROM}) and the "
                             "gap-analysis rows", ("warm", "own client")),
                            (f"InferenceX runs before {WARMUP_FROM} (first wave timed on a cold engine)", ("cold",))):
            print(f"\nthe same gates over {label} (a diagnostic: the scored gates are the table above)")
            print(_gate_table(gates([r for r in recs if era.get(r.row_id) in keep])))
        return 0
    groupings = [("split", "backend"), ("split", "backend", "model"), ("split", "gpu", "backend", "tp")]
    if args.dense:
        groupings = [tuple(g[:1]) + ("dense",) + tuple(g[1:]) for g in groupings]
    if args.disagg:
        groupings.append(("split", "mode", "backend"))
    if args.layouts:
        groupings.append(("split", "backend", "model", "layout"))
    groupings.append(("split", "gpu", "backend", "model", "mode"))  # per GPU (uncalibrated GPUs apart)
    if args.layouts or args.disagg:
        groupings.append(("split", "gpu", "backend", "model", "mode", "layout"))
    if args.json:
        print(json.dumps({"source": SOURCE, "split_rule": f"fit: {FIT_GPUS}; held-out: {HELD_OUT_GPUS}",
                          "records": [asdict(r) | {"ttft_error": r.ttft_error, "tpot_error": r.tpot_error}
                                      for r in recs],
                          "summaries": {"/".join(g): summary(recs, g) for g in groupings}}, indent=1))
        return 0
    print(f"AIConfigurator silicon rows moesim expresses: {len(recs)} (split rule: fit = {FIT_GPUS}, "
          f"held-out = {HELD_OUT_GPUS})")
    for g in groupings:
        print()
        print(_table(summary(recs, g), g))
    refused = [r for r in recs if r.predicted_tpot_s is None]
    if refused:
        print(f"\n{len(refused)} rows refused by moesim, e.g. {refused[0].row_id}: {refused[0].note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
