"""AIConfigurator's silicon-CI rows are SemiAnalysis InferenceX's runs (validation/published/inferencex.py): a row is
paired with InferenceX's record of the same run by its mean TTFT and TPOT to the microsecond, and a row whose run
InferenceX records as speculative (MTP) runs with the draft depth InferenceX's scripts set (the silicon row states
neither)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from moesim.calibration.published import load_module

ROOT = Path(__file__).resolve().parents[1]
SILICON = ROOT / "validation" / "data" / "aiconfigurator" / "silicon_sample.csv"
IX = ROOT / "validation" / "data" / "inferencex" / "benchmarks_dsr1.csv"


@pytest.fixture(scope="module")
def aic():
    return load_module("aiconfigurator")


def _row_like(rec: dict) -> dict:
    """A silicon-file row of InferenceX record ``rec`` (the columns the pairing and the refusal read)."""
    return {"id": "synthetic", "mode": "agg", "system": f"{rec['hardware']}_sxm", "backend": "trtllm",
            "silicon_data_source": "db-dump/2026-04-27", "isl": rec["isl"], "osl": rec["osl"],
            "batch_size": rec["conc"], "backend_version": "", "precision": rec["precision"],
            "model_path": "deepseek-ai/DeepSeek-R1", "silicon_ttft_ms": str(float(rec["mean_ttft"]) * 1e3),
            "silicon_tpot_ms": str(float(rec["mean_tpot"]) * 1e3), "tp_size": "8", "pp_size": "1",
            "attention_dp_size": "1", "moe_tp_size": "8", "moe_ep_size": "1"}


def test_mtp_run_takes_inferencex_depth_and_a_plain_run_none(aic):
    """An aggregated run InferenceX records as MTP is predicted with the draft depth its scripts set
    (validation/data/inferencex/speculative.yaml: TensorRT-LLM 3, or 1 with attention DP; SGLang 2 EAGLE steps); a
    disaggregated one, whose pools' flags no script here states, is refused with that reason; a plain run takes none."""
    with IX.open(newline="") as f:
        recs = list(csv.DictReader(f))
    mtp = next(r for r in recs if r["spec_method"] == "mtp" and r["hardware"] == "h200")
    plain = next(r for r in recs if r["spec_method"] == "none" and r["hardware"] == "h200")
    row = _row_like(mtp)
    assert aic.stated_speculation(row) == "mtp"
    assert aic.speculative_params(row) == {"num_nextn_predict_layers": 3}
    assert aic.speculative_params(dict(row, attention_dp_size="8")) == {"num_nextn_predict_layers": 1}
    assert aic.speculative_params(dict(row, backend="sglang")) == {"speculative_num_steps": 2}
    assert aic.expressible(row) is None
    assert aic.scenario_of(row).system_params["num_nextn_predict_layers"] == 3
    assert "MTP speculative decoding" in aic.expressible(dict(row, mode="disagg"), disagg=True)
    assert aic.stated_speculation(_row_like(plain)) is None and aic.speculative_params(_row_like(plain)) == {}
    off = dict(row, silicon_ttft_ms=str(float(mtp["mean_ttft"]) * 1e3 + 0.01))  # 10 us off: no pairing
    assert aic.inferencex_record(off) is None and aic.stated_speculation(off) is None


def test_silicon_ci_deepseek_rows_are_inferencex_runs_and_gap_analysis_rows_are_not(aic):
    rows = aic.load_rows(SILICON)
    paired = [r for r in rows if aic.inferencex_record(r) is not None]
    assert len(paired) >= 500
    assert all(aic.pipeline_of(r) == "silicon-ci" for r in paired)
    engines = {"trtllm": ("trt", "dynamo-trt"), "sglang": ("sglang", "dynamo-sglang")}
    for r in paired:  # the pairing agrees on everything both sides state
        rec = aic.inferencex_record(r)
        assert int(r["isl"]) == int(rec["isl"]) and int(r["osl"]) == int(rec["osl"])
        assert r["system"].startswith(rec["hardware"]) and rec["framework"] in engines[r["backend"]]
        assert aic.concurrency_of(r) == int(rec["conc"]) and (r["mode"] == "disagg") == (rec["disagg"] == "True")


def test_predicted_median_ttft_needs_a_simulated_client(aic):
    """The median TTFT comes from a simulated client only (an analytic one has no per-request spread) and carries
    the same request overhead as the mean; for a run in lockstep (SGLang, fixed lengths) it sits near the mean."""
    rows = [r for r in aic.load_rows(SILICON) if aic.inferencex_record(r) is not None
            and aic.expressible(r) is None and r["system"] == "h200_sxm" and r["backend"] == "sglang"]
    row = min(rows, key=lambda r: (int(r["isl"]), aic.concurrency_of(r)))
    assert aic.predicted_median_ttft_s(row, "half") is None
    mean, _, _ = aic.predict_row(row, model="sim4")
    median = aic.predicted_median_ttft_s(row, "sim4")
    assert median is not None and 0 < median <= mean * 1.5


def test_unpaired_inferencex_runs_are_held_out_corpus_cells_written_as_silicon_rows():
    """The 'inferencex' corpus source: InferenceX runs no silicon row reports, each written as the silicon file
    writes such a run (attention DP as tp 1 with attention_dp N; MoE TP = TP / EP) and predicted through the same
    path; every cell held out (nothing is fitted on InferenceX), a TTFT and a TPOT cell per run, MI300X among them."""
    ix = load_module("inferencex")
    rec = {"disagg": "False", "is_multinode": "False", "hardware": "b200", "framework": "trt", "model": "dsr1",
           "precision": "fp4", "spec_method": "none", "isl": "1024", "osl": "1024", "decode_tp": "8",
           "decode_ep": "8", "decode_dp_attention": "True", "conc": "128", "date": "2026-05-19",
           "run_url": "u", "image": "nvcr.io/nvidia/tensorrt-llm/release:1.3.0rc14", "mean_ttft": "0.7",
           "mean_tpot": "0.02"}
    row = ix.as_silicon_row(rec)
    assert (row["tp_size"], row["attention_dp_size"], row["moe_tp_size"], row["moe_ep_size"]) == ("1", "8", "1", "8")
    assert (row["backend"], row["system"], row["moe_quant_mode"], row["backend_version"]) == \
        ("trtllm", "b200_sxm", "nvfp4", "1.3.0rc14")
    plain = ix.as_silicon_row(dict(rec, decode_dp_attention="False", decode_ep="1"))
    assert (plain["tp_size"], plain["attention_dp_size"], plain["moe_tp_size"]) == ("8", "1", "8")
    assert ix.as_silicon_row(dict(rec, disagg="True")) is None and ix.as_silicon_row(dict(rec, hardware="tpu")) is None
    cells = ix.published_cells()
    assert cells and all(c.split == "held-out" for c in cells)
    assert {c.figure for c in cells} == {"ttft_s", "tpot_s"} and len(cells) == 2 * len({c.fold for c in cells})
    assert any(c.hardware == "mi300x-8gpu-server" for c in cells)
    silicon = {(round(float(r["silicon_ttft_ms"]), 3), round(float(r["silicon_tpot_ms"]), 3))
               for r in ix.A.load_rows(SILICON) if r["silicon_ttft_ms"] and r["silicon_tpot_ms"]}
    unpaired = ix.unpaired_rows()
    assert unpaired and all((round(float(r["silicon_ttft_ms"]), 3), round(float(r["silicon_tpot_ms"]), 3))
                            not in silicon for r in unpaired)  # no run the silicon file already reports


def _silicon_row(aic, **over) -> dict:
    """A silicon-CI row of a DeepSeek-R1 run InferenceX's fixture does not hold (its mean TTFT / TPOT invented)."""
    row = {"id": "synthetic", "mode": "agg", "system": "b200_sxm", "backend": "trtllm", "isl": "1024", "osl": "1024",
           "silicon_data_source": "db-dump/2026-04-27; config_id=0; silicon_concurrency=4; "
                                  "measured=2026-02-05T00:00:00.000Z",
           "batch_size": "4", "backend_version": "1.2.0rc6.post3", "precision": "fp8", "gemm_quant_mode": "fp8",
           "moe_quant_mode": "fp8_block", "model_path": "deepseek-ai/DeepSeek-R1", "silicon_ttft_ms": "123.456789",
           "silicon_tpot_ms": "9.87654321", "tp_size": "8", "pp_size": "1", "attention_dp_size": "1",
           "moe_tp_size": "8", "moe_ep_size": "1"}
    row.update(over)
    assert aic.inferencex_record(row) is None
    return row


def test_a_run_without_its_own_record_takes_its_run_batch_speculation(aic):
    """InferenceX runs one script per (GPU, engine, precision, date, image): B200 TensorRT-LLM fp8 of 2026-02-05 under
    1.2.0rc6.post3 has only MTP records in the fixture, so an unpaired row of that batch is MTP, as is one of another
    version that day (no record names it: the day's records decide); a day without records, and a batch with both
    kinds of records (B200 SGLang fp8 0.5.9 of 2026-03-25), stay unstated; a non-MTP batch (1.2.0rc6.post2 of
    2026-01-29) is plain."""
    assert aic.stated_speculation(_silicon_row(aic)) == "mtp"
    assert aic.speculative_params(_silicon_row(aic)) == {"num_nextn_predict_layers": 3}
    # another version that day: no record names it, so the day's records decide (all MTP)
    assert aic.stated_speculation(_silicon_row(aic, backend_version="9.9.9")) == "mtp"
    assert aic.stated_speculation(_silicon_row(  # a day without any record stays unstated
        aic, silicon_data_source="db-dump/2026-04-27; measured=2026-02-07T00:00:00.000Z")) is None
    assert aic.stated_speculation(_silicon_row(
        aic, backend="sglang", backend_version="0.5.9",
        silicon_data_source="source_file=2026-03-25.csv; measured=2026-03-25T00:00:00.000Z")) is None
    assert aic.stated_speculation(_silicon_row(
        aic, backend_version="1.2.0rc6.post2",
        silicon_data_source="db-dump/2026-04-27; measured=2026-01-29T00:00:00.000Z")) is None


def test_stated_sglang_launch_flags_by_script_version(aic):
    """InferenceX's B200 SGLang fp8 script from 2026-01-13 sets, at TP 4, --max-running-requests 32 --cuda-graph-max-bs
    32 --mem-fraction-static 0.95 --chunked-prefill-size 8192 --scheduler-recv-interval 10 and fp8 KV; at TP 8, 128 /
    128 / 0.82 / 32768 and a receive interval of 10 below concurrency 16, 30 from it. The scenario carries them; a
    row of another engine's pipeline, or one before any rule, gets none."""
    base = dict(backend="sglang", backend_version="0.5.9",
                silicon_data_source="source_file=2026-03-25.csv; measured=2026-03-25T00:00:00.000Z")
    tp4 = _silicon_row(aic, **base, tp_size="4", moe_tp_size="4", isl="8192")
    flags = aic.stated_launch_flags(tp4)
    assert flags["kv_dtype"] == "fp8" and flags["params"] == {
        "cuda_graph_max_bs": 32, "max_running_requests": 32, "mem_fraction_static": 0.95,
        "chunked_prefill_size": 8192, "scheduler_recv_interval": 10}
    sc = aic.scenario_of(tp4)
    assert sc.kv_dtype == "fp8" and sc.system_params["mem_fraction_static"] == 0.95
    tp8 = aic.stated_launch_flags(_silicon_row(aic, **base, batch_size="16"))["params"]
    assert (tp8["max_running_requests"], tp8["scheduler_recv_interval"]) == (128, 30)
    assert aic.stated_launch_flags(_silicon_row(aic, **base, batch_size="8"))["params"]["scheduler_recv_interval"] == 10
    gap = "s3://aic-auto-gap-analysis/run.csv; measured=2026-03-25T00:00:00.000Z"
    assert aic.stated_launch_flags(_silicon_row(aic, **dict(base, silicon_data_source=gap))) is None  # another pipeline
    early = dict(base, silicon_data_source="measured=2025-01-01T00:00:00.000Z")
    assert aic.stated_launch_flags(_silicon_row(aic, **early)) is None
    assert aic.scenario_of(_silicon_row(aic, **early)).kv_dtype == "auto"


def test_stated_flags_make_the_b200_tp4_fp8_cells_fit(aic):
    """DeepSeek-R1 fp8 on 4 B200 needs 167.8 GB of weights a GPU: under SGLang's default memory fraction it does not
    fit; InferenceX's script runs it at --mem-fraction-static 0.95 with fp8 KV, and moesim then predicts it."""
    row = _silicon_row(aic, backend="sglang", backend_version="0.5.9", tp_size="4", moe_tp_size="4", isl="8192",
                       silicon_data_source="source_file=2026-03-25.csv; measured=2026-03-25T00:00:00.000Z")
    ttft, tpot, note = aic.predict_row(row)
    assert tpot is not None and ttft is not None, note
    default = aic.predict_row(dict(row, silicon_data_source="measured=2025-01-01T00:00:00.000Z"))
    assert default[1] is None and "weights" in default[2]


def test_stated_trtllm_flags_follow_the_script_version_and_its_arithmetic(aic):
    """InferenceX's B200 TensorRT-LLM fp4 scripts: TRTLLM MoE (TensorRT-LLM-Gen) but CUTLASS at ISL 1024 from
    concurrency 256, fp8 KV at free_gpu_memory_fraction 0.8, max_num_tokens = (conc + isl + 127) // 64 * 64 (floored
    at 8192 from 2026-01-27); on 2026-02-03, when the script changed, a row is covered only where both versions agree."""
    base = dict(backend="trtllm", gemm_quant_mode="nvfp4", moe_quant_mode="nvfp4", backend_version="",
                silicon_data_source="db-dump/2026-04-27; measured=2025-11-02T00:00:00.000Z")
    flags = aic.stated_launch_flags(_silicon_row(aic, **base))
    assert flags["kv_dtype"] == "fp8"
    assert flags["params"]["moe_backend"] == "TRTLLM" and flags["params"]["max_num_tokens"] == (4 + 1024 + 127) // 64 * 64
    assert flags["params"]["free_gpu_memory_fraction"] == 0.8
    big = aic.stated_launch_flags(_silicon_row(aic, **base, batch_size="256"))["params"]
    assert big["moe_backend"] == "CUTLASS" and big["max_num_tokens"] == (256 + 1024 + 127) // 64 * 64
    late = dict(base, silicon_data_source="db-dump/2026-04-27; measured=2026-02-01T00:00:00.000Z")
    assert aic.stated_launch_flags(_silicon_row(aic, **late))["params"]["max_num_tokens"] == 8192
    day = dict(base, silicon_data_source="db-dump/2026-04-27; measured=2026-02-03T00:00:00.000Z")
    assert aic.stated_launch_flags(_silicon_row(aic, **day))["params"]["moe_backend"] == "TRTLLM"  # both: TRTLLM
    dpa = dict(tp_size="1", attention_dp_size="8", moe_tp_size="1", moe_ep_size="8")
    assert aic.stated_launch_flags(_silicon_row(aic, **day, **dpa)) is None  # b30c3398a TRTLLM, 6eecc0e66 CUTLASS


def test_a_batch_no_record_names_the_version_of_falls_back_to_its_day(aic):
    """B200 TensorRT-LLM NVFP4 runs of 2026-01-14 under 1.1.0rc2.post2: no record of benchmarks.json names that batch,
    the dashboard's history fixture holds 9 records of that day, all MTP: the row is an MTP run. A day whose records
    disagree (B200 SGLang fp8 of 2026-03-25) stays unstated."""
    row = _silicon_row(aic, gemm_quant_mode="nvfp4", moe_quant_mode="nvfp4", backend_version="1.1.0rc2.post2",
                       silicon_data_source="db-dump/2026-04-27; measured=2026-01-14T00:00:00.000Z")
    assert aic.batch_spec_methods(aic.run_batch_of(row)) == {"mtp"}
    assert aic.stated_speculation(row) == "mtp"
    mixed = aic.batch_spec_methods(("b200_sxm", "sglang", "fp8", "2026-03-25", "9.9.9"))
    assert mixed == {"mtp", "none"}


def test_mtp_runs_take_the_mtp_scripts_flags_and_plain_runs_do_not(aic):
    """InferenceX's MTP runs use their own scripts. B200 TensorRT-LLM fp8 of 2026-02-05 (dsr1_fp8_b200_trt_mtp.sh at
    5d517074c): TRTLLM MoE, free_gpu_memory_fraction 0.8, CUDA graphs and max_batch_size to the concurrency,
    max_num_tokens = ((3 + 1) conc + isl + 127) // 64 * 64; with attention DP: DEEPGEMM, 0.7, conc // 8 from 8, one
    draft layer. H200 of 2026-01-14 (the slurm script): max_batch_size conc // TP with attention DP. A plain run of the
    same day takes no MTP rule, an MTP run no plain rule."""
    def conc(c: int, date: str = "2026-02-05T00:00:00.000Z") -> dict:
        return {"batch_size": str(c), "silicon_data_source": f"db-dump/2026-04-27; config_id=0; "
                                                             f"silicon_concurrency={c}; measured={date}"}

    mtp = _silicon_row(aic, **conc(32))
    assert aic.stated_speculation(mtp) == "mtp"
    flags = aic.stated_launch_flags(mtp)
    assert flags["kv_dtype"] == "fp8" and flags["params"] == {
        "moe_backend": "TRTLLM", "free_gpu_memory_fraction": 0.8, "cuda_graph_padding": True,
        "cuda_graph_max_batch_size": 32, "max_batch_size": 32, "max_num_tokens": (4 * 32 + 1024 + 127) // 64 * 64,
        "enable_piecewise_cuda_graph": True}
    dpa = dict(tp_size="1", attention_dp_size="8", moe_tp_size="1", moe_ep_size="8")
    adp = aic.stated_launch_flags(_silicon_row(aic, **conc(64), **dpa))["params"]
    assert (adp["moe_backend"], adp["free_gpu_memory_fraction"], adp["max_batch_size"]) == ("DEEPGEMM", 0.7, 8)
    assert adp["max_num_tokens"] == (2 * 8 + 1024 + 127) // 64 * 64 and adp["attention_dp_balance"] is True
    assert aic.scenario_of(_silicon_row(aic, **conc(64), **dpa)).system_params["num_nextn_predict_layers"] == 1
    h200 = dict(system="h200_sxm", backend_version="1.1.0rc2.post2", **conc(64, "2026-01-14T22:26:21Z"))
    h = aic.stated_launch_flags(_silicon_row(aic, **h200, **dpa))["params"]
    assert (h["moe_backend"], h["max_batch_size"], h["cuda_graph_max_batch_size"]) == ("CUTLASS", 64 // 8, 128)
    plain = _silicon_row(aic, **conc(4, "2026-02-01T00:00:00.000Z"), backend_version="1.2.0rc6.post2")
    assert aic.stated_speculation(plain) is None  # the plain script's rule: no max_batch_size, max_num_tokens 8192
    assert aic.stated_launch_flags(plain)["params"]["max_num_tokens"] == 8192
    assert "max_batch_size" not in aic.stated_launch_flags(plain)["params"]
    rules = aic._launch_flag_rules()
    assert all(r.get("speculative") in (None, "mtp") for rules_ in rules.values() for r in rules_)


def test_gates_group_heldout_rows_and_keep_speculative_runs_apart(aic):
    """The issue gates (``aiconfigurator.py --gates``): held-out MoE rows only, TP rows per GPU and engine with MTP
    runs apart, EP / attention-DP rows pooled, disaggregated rows scored on TPOT alone; medians hand-computed."""
    def rec(split="held-out", backend="vllm", gpu="h200_sxm", layout="tp", mode="agg", spec="", tpot=1.1, ttft=1.2,
            dense=False):
        return aic.Record("aiconfigurator", "x", split, backend, "m", gpu, 8, 1024, 1024, 8, 1.0, 1.0, ttft, tpot,
                          layout=layout, mode=mode, dense=dense, speculative=spec)

    recs = [rec(tpot=1.10, ttft=1.20), rec(tpot=0.80, ttft=1.10), rec(tpot=1.05, ttft=0.70),  # |err| 10/20/5, 20/10/30
            rec(spec="mtp", tpot=2.0), rec(split="fit", tpot=5.0), rec(dense=True, tpot=5.0),
            rec(gpu="a100_sxm", tpot=5.0),
            rec(layout="tp1 dp8 ep8", backend="sglang", tpot=1.3, ttft=1.1),
            rec(mode="disagg", layout="tp1 dp8 ep8", tpot=1.2, ttft=3.0)]
    g = {x["gate"]: x for x in aic.gates(recs)}
    plain = g["12 tp h200_sxm vllm no-spec"]
    assert plain["rows"] == 3
    assert plain["tpot_median_abs"] == pytest.approx(0.10) and plain["ttft_median_abs"] == pytest.approx(0.20)
    assert plain["met"] is True
    assert g["12 tp h200_sxm vllm spec"]["rows"] == 1 and g["12 tp h200_sxm vllm spec"]["met"] is False
    assert g["14 ep/dp agg"]["rows"] == 1 and g["14 ep/dp agg"]["tpot_median_abs"] == pytest.approx(0.30)
    assert g["14 ep/dp agg sglang"]["met"] is False
    disagg = g["14 disagg"]
    assert disagg["rows"] == 1 and disagg["ttft_target"] is None and disagg["met"] is True  # TTFT +200% not gated
    assert not any("a100" in k for k in g)


def test_stated_vllm_minimax_flags_by_image_and_the_ep_test(aic):
    """InferenceX's B200 MiniMax-M2.5 fp8 vLLM script: to 2026-04-03 (image v0.17.0) --gpu-memory-utilization 0.95,
    --block-size 32, and `[ "$EP_SIZE" -ge 1 ]`, which turned expert parallelism on for every run; from bddbf4031
    (2026-04-03, image v0.19.0) 0.90, fp8 KV and --max-num-batched-tokens 2 x ISL. On the day of the change the row's
    image says which version ran; a pull request's nightly image is covered by no rule; a DeepSeek rule does not
    cover MiniMax rows, nor a MiniMax rule DeepSeek ones."""
    base = dict(backend="vllm", model_path="MiniMaxAI/MiniMax-M2.5", moe_quant_mode="fp8", tp_size="2",
                moe_tp_size="2", isl="8192")
    day = "db-dump/2026-04-27; measured=2026-04-03T00:00:00.000Z"
    old = aic.stated_launch_flags(_silicon_row(aic, **base, backend_version="0.17.0", silicon_data_source=day))
    assert old["kv_dtype"] is None
    assert old["params"] == {"gpu_memory_utilization": 0.95, "block_size": 32, "enable_expert_parallel": True}
    new = aic.stated_launch_flags(_silicon_row(aic, **base, backend_version="0.19.0", silicon_data_source=day))
    assert new["kv_dtype"] == "fp8"
    assert new["params"] == {"gpu_memory_utilization": 0.90, "block_size": 32, "max_num_batched_tokens": 16384}
    nightly = _silicon_row(aic, **base, backend_version="nightly-5b8c30d62b754b57", silicon_data_source=day)
    assert aic.stated_launch_flags(nightly) is None
    sc = aic.scenario_of(_silicon_row(aic, **base, backend_version="0.19.0", silicon_data_source=day))
    assert sc.kv_dtype == "fp8" and sc.system_params["max_num_batched_tokens"] == 16384
    # the DeepSeek rules (no "model") cover DeepSeek-R1 and -V3 paths, never MiniMax; MiniMax's never DeepSeek
    ds = dict(backend="sglang", backend_version="0.5.9",
              silicon_data_source="source_file=2026-03-25.csv; measured=2026-03-25T00:00:00.000Z")
    assert aic.stated_launch_flags(_silicon_row(aic, **ds, model_path="deepseek-ai/DeepSeek-V3")) is not None
    assert aic.stated_launch_flags(_silicon_row(aic, **ds, model_path="MiniMaxAI/MiniMax-M2.5")) is None
    assert aic.stated_launch_flags(_silicon_row(aic, **dict(base, model_path="deepseek-ai/DeepSeek-R1"),
                                                backend_version="0.19.0", silicon_data_source=day)) is None


def test_stated_trtllm_gptoss_h200_flags_and_the_ep_of_2025_10_29(aic):
    """InferenceX's H200 TensorRT-LLM gpt-oss script of 2025-10-29 passed --ep_size=$TP (experts expert-parallel over
    the TP GPUs whatever the row states); from 2025-11-21 the row's EP. Both: free_gpu_memory_fraction 0.85,
    max_batch_size and CUDA graphs to the concurrency with padding, max_num_tokens 20000."""
    base = dict(backend="trtllm", system="h200_sxm", model_path="openai/gpt-oss-120b", gemm_quant_mode="nvfp4",
                moe_quant_mode="nvfp4", backend_version="", tp_size="4", moe_tp_size="4", batch_size="32")
    early = aic.stated_launch_flags(_silicon_row(
        aic, **base, silicon_data_source="db-dump/2026-04-27; measured=2025-11-02T00:00:00.000Z"))["params"]
    assert early == {"free_gpu_memory_fraction": 0.85, "max_batch_size": 32, "max_num_tokens": 20000,
                     "cuda_graph_padding": True, "cuda_graph_max_batch_size": 32, "moe_expert_parallel_size": 4,
                     "moe_tensor_parallel_size": 1}
    late = aic.stated_launch_flags(_silicon_row(
        aic, **base, silicon_data_source="db-dump/2026-04-27; measured=2025-12-15T00:00:00.000Z"))["params"]
    assert "moe_expert_parallel_size" not in late and late["max_num_tokens"] == 20000
    day = "db-dump/2026-04-27; measured=2025-11-21T00:00:00.000Z"  # the day --ep_size changed: no rule
    assert aic.stated_launch_flags(_silicon_row(aic, **base, silicon_data_source=day)) is None


def test_stated_trtllm_gptoss_b200_attention_dp_from_256_in_the_2025_10_20_script(aic):
    """InferenceX's B200 TensorRT-LLM gpt-oss script of 2025-10-20 turned attention DP (with its balance) and EP over
    the TP GPUs on from concurrency 256, whatever the row states; below, the row's layout. fp8 KV, TRTLLM MoE."""
    base = dict(backend="trtllm", system="b200_sxm", model_path="openai/gpt-oss-120b", gemm_quant_mode="nvfp4",
                moe_quant_mode="nvfp4", backend_version="", tp_size="8", moe_tp_size="8",
                silicon_data_source="db-dump/2026-04-27; measured=2025-11-02T00:00:00.000Z")
    low = aic.stated_launch_flags(_silicon_row(aic, **base, batch_size="64"))
    assert low["kv_dtype"] == "fp8" and low["params"]["moe_backend"] == "TRTLLM"
    assert "enable_attention_dp" not in low["params"] and low["params"]["cuda_graph_max_batch_size"] == 64
    high = aic.stated_launch_flags(_silicon_row(aic, **base, batch_size="256"))["params"]
    assert high["enable_attention_dp"] and high["attention_dp_balance"]
    assert (high["moe_expert_parallel_size"], high["moe_tensor_parallel_size"]) == (8, 1)


def test_client_option_serves_only_the_pipelines_it_may(aic):
    """``--client inferencex`` (records(client=...)) predicts a silicon-CI row under InferenceX's stated client, with
    the harness fit's request overhead, and leaves a gap-analysis row under its fitted client; a generic client
    serves both; none serves none."""
    ci = _silicon_row(aic, backend="sglang", backend_version="0.5.9",
                      silicon_data_source="source_file=2026-03-25.csv; measured=2026-03-25T00:00:00.000Z")
    gap = dict(ci, silicon_data_source="s3://aic-auto-gap-analysis/run.csv; measured=2026-03-25T00:00:00.000Z")
    assert aic.client_applies("inferencex", ci) and not aic.client_applies("inferencex", gap)
    assert aic.client_applies("sim8", gap) and aic.client_applies("sim8", ci) and not aic.client_applies(None, ci)
    stated = aic.records([ci], client="inferencex")[0]
    assert stated.predicted_ttft_s == pytest.approx(aic.predict_row(ci, model="inferencex")[0])
    assert aic.records([gap], client="inferencex")[0].predicted_ttft_s == pytest.approx(aic.predict_row(gap)[0])


def test_stated_trtllm_piecewise_cuda_graphs_follow_each_scripts_condition(aic):
    """InferenceX's B200 TensorRT-LLM DeepSeek-R1 scripts turn torch_compile_config.enable_piecewise_cuda_graph on under
    shell conditions of their own: the fp8 MTP script of 5d517074c everywhere but with attention DP and at 1k/1k up to
    concurrency 4, 1k/8k up to 8, 8k/1k up to 16; the fp4 script of 6eecc0e66 at 1k/1k with TP 8 and EP_SIZE 8 (so the
    day it changed, 2026-02-03, leaves such a run uncovered); the fp8 script of ec7bafaae at 1k/1k and 8k/1k from 64
    and at 1k/8k from 128 below the DEEPGEMM branch of 256."""
    def row(c: int, date: str, **over) -> dict:
        return _silicon_row(aic, batch_size=str(c), **over, silicon_data_source=(
            f"db-dump/2026-04-27; config_id=0; silicon_concurrency={c}; measured={date}T00:00:00.000Z"))

    def piecewise(r: dict):
        flags = aic.stated_launch_flags(r)
        return None if flags is None else flags["params"].get("enable_piecewise_cuda_graph", "unset")

    mtp = [row(4, "2026-02-05"), row(8, "2026-02-05"), row(16, "2026-02-05", isl="8192"),
           row(32, "2026-02-05", isl="8192")]
    assert all(aic.stated_speculation(r) == "mtp" for r in mtp)
    assert [piecewise(r) for r in mtp] == [False, True, False, True]
    dpa = dict(tp_size="1", attention_dp_size="8", moe_tp_size="1", moe_ep_size="8")
    assert piecewise(row(64, "2026-02-05", **dpa)) == "unset"
    fp4 = dict(gemm_quant_mode="nvfp4", moe_quant_mode="nvfp4", backend_version="9.9")
    ep8 = dict(moe_tp_size="1", moe_ep_size="8")
    assert piecewise(row(64, "2026-02-10", **fp4, **ep8)) is True
    assert piecewise(row(64, "2026-02-10", **fp4)) == "unset"  # EP_SIZE 1
    assert piecewise(row(64, "2026-02-10", **fp4, **ep8, isl="8192")) == "unset"
    assert piecewise(row(64, "2026-02-03", **fp4, **ep8)) is None  # b30c3398a off, 6eecc0e66 on: uncovered
    plain = dict(backend_version="9.9")
    assert [piecewise(row(c, "2026-02-10", **plain)) for c in (32, 64)] == ["unset", True]
    assert piecewise(row(128, "2026-02-10", **plain, osl="8192")) is True
    deep = aic.stated_launch_flags(row(256, "2026-02-10", **plain, osl="8192"))["params"]
    assert deep["moe_backend"] == "DEEPGEMM" and "enable_piecewise_cuda_graph" not in deep


def test_client_era_splits_inferencex_runs_at_the_warm_up_change(aic):
    """InferenceX's client awaits 2 C warm-ups only from d053ae24e (2026-01-21): a silicon-CI run measured the day
    before timed a cold first wave, one of that day on is warm; gap-analysis rows have their own client."""
    def at(date: str) -> dict:
        return _silicon_row(aic, silicon_data_source=f"db-dump/2026-04-27; config_id=0; silicon_concurrency=4; "
                                                     f"measured={date}T00:00:00.000Z")

    assert [aic.client_era(at(d)) for d in ("2026-01-20", aic.WARMUP_FROM, "2026-03-25")] == ["cold", "warm", "warm"]
    gap = _silicon_row(aic, silicon_data_source="s3://x/aic-auto-gap-analysis/h200.csv")
    assert aic.pipeline_of(gap) == "gap-analysis" and aic.client_era(gap) == "own client"
    assert aic.client_era(_silicon_row(aic, silicon_data_source="db-dump/2026-04-27; config_id=0")) == "unstated"


def test_run_start_is_ten_times_the_means_excess_over_the_median():
    """A run of 10 C requests whose first C take ``extra`` longer than the rest: mean - median = extra / 10, so
    10 (mean - median) recovers it; the table keeps plain single-node runs at concurrency <= 8, split at the warm-up
    change, and gives the share of the mean that excess makes."""
    ix = load_module("inferencex")
    c, base, extra = 4, 0.1, 1.2
    ttfts = sorted([base + extra] * c + [base] * (9 * c))
    mean, median = sum(ttfts) / len(ttfts), ttfts[len(ttfts) // 2]
    rec = {"disagg": "False", "spec_method": "none", "conc": str(c), "hardware": "h200", "framework": "sglang",
           "date": "2026-03-25", "mean_ttft": str(mean), "median_ttft": str(median), "p99_ttft": str(base + extra)}
    assert ix.run_start_s(rec) == pytest.approx(extra)
    others = [dict(rec, conc="64"), dict(rec, spec_method="mtp"), dict(rec, disagg="True"), dict(rec, date="2025-12-01")]
    table = ix.run_start_table([rec] + others)
    assert set(table) == {("h200", "sglang", "warm"), ("h200", "sglang", "cold")}
    n, got, tail, share = table[("h200", "sglang", "warm")]
    assert n == 1 and got == pytest.approx(extra) and tail == pytest.approx(extra)
    assert share == pytest.approx((mean - median) / mean)
