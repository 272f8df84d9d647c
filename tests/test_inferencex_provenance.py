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
