"""AIConfigurator's GB200 / GB300 / B300 rows (validation/published/aiconfigurator.py): held-out only, NVL72 racks as
one NVLink domain of 72 GPUs, refusals that say why, and no borrowed B200 kernel tables."""

from __future__ import annotations

from pathlib import Path

import pytest

import moesim
from moesim.calibration.published import load_module
from moesim.costs.kernels import kernel_tables
from moesim.predict import plan_scenario

ROOT = Path(__file__).resolve().parents[1]
CSV = ROOT / "validation" / "data" / "aiconfigurator" / "silicon_sample.csv"


@pytest.fixture(scope="module")
def aic():
    return load_module("aiconfigurator")


@pytest.fixture(scope="module")
def rows(aic):
    return {r["id"]: r for r in aic.load_rows(CSV)}


def test_new_gpus_are_held_out_and_in_the_corpus_since_they_have_tables(aic, rows):
    for system, platform in (("gb200", "gb200-nvl72"), ("gb300", "gb300-nvl72"), ("b300_sxm", "hgx-b300")):
        assert aic.PLATFORMS[system] == platform
        assert system in aic.HELD_OUT_GPUS and system not in aic.FIT_GPUS
        assert aic.split_of({"id": "x", "system": system}) == "held-out"
    assert aic.node_gpus({"system": "gb200"}) == aic.node_gpus({"system": "gb300"}) == 72  # the rack's NVLink domain
    assert aic.node_gpus({"system": "b300_sxm"}) == aic.node_gpus({"system": "h200_sxm"}) == 8
    # their rows join the corpus since each GPU has AIConfigurator's tables measured on it (the roofline priced them
    # before, and they stayed out)
    assert aic.CORPUS_EXCLUDED_GPUS == ()
    folds = {c.fold.split("|")[0] for c in aic.published_cells()}
    for system, gpu in (("b300_sxm", "B300"), ("gb200", "GB200")):
        assert any(rows[i]["system"] == system for i in folds if i in rows)
        assert kernel_tables(gpu, "vllm") is not None and kernel_tables(gpu, "trtllm") is not None


def test_gb200_layout_of_16_gpus_is_one_nvl72_node(aic, rows):
    """An EP-16 layout is one node of a GB200 NVL72 rack (72 GPUs, one NVLink domain) but two HGX H200 nodes; 144
    GPUs are two racks; TP stays inside one NVLink domain."""
    row = rows["deepseek_r1_deepseek_r1_gb200_trtllm_agg_4000x1000_c_tp8_epnone_1"]  # tp8 ep8 on 8 GB200s
    assert aic.expressible(row, layouts=True) is None
    lay = aic.layout_of(row)
    assert (lay["gpus"], lay["nodes"], lay["layout"]) == (8, 1, "tp8 ep8")
    ep16 = {**row, "tp_size": "1", "attention_dp_size": "16", "moe_tp_size": "1", "moe_ep_size": "16"}
    assert aic.layout_of(ep16) == {"gpus": 16, "nodes": 1, "layout": "tp1 dp16 ep16",
                                   "params": {"enable_attention_dp": True, "moe_expert_parallel_size": 16,
                                              "moe_tensor_parallel_size": 1}}
    sc = aic.scenario_of(ep16)
    assert (sc.hardware, sc.num_gpus, sc.num_nodes) == ("gb200-nvl72", 16, 1)
    h200 = aic.layout_of({**ep16, "system": "h200_sxm"})
    assert (h200["gpus"], h200["nodes"]) == (8, 2)
    racks = aic.layout_of({**ep16, "attention_dp_size": "144", "moe_ep_size": "144"})
    assert (racks["gpus"], racks["nodes"]) == (72, 2)
    tp36 = {**row, "tp_size": "36", "attention_dp_size": "1", "moe_tp_size": "36", "moe_ep_size": "1"}
    assert aic.layout_of(tp36)["gpus"] == 36  # one NVLink domain: not "tensor parallel across nodes"
    tp32 = {**tp36, "tp_size": "32", "moe_tp_size": "32"}
    assert (aic.layout_of(tp32)["gpus"], aic.layout_of(tp32)["nodes"]) == (32, 1)
    assert "tensor parallel across nodes" in aic.layout_of({**tp32, "system": "h200_sxm"})


def test_gb200_disaggregated_row_runs_in_one_rack_over_nvlink(aic, rows):
    """A GB200 DeepSeek-V3 row of 1 prefill worker of 4 GPUs (attention DP 4, EP 4) and 4 decode workers of 8 (TP 8,
    EP 8): 36 GPUs, one NVL72 node, so the KV moves over NVLink; its pools priced from TensorRT-LLM's tables measured on
    the GB200, which the band says (it said "uncalibrated" while the roofline priced them)."""
    row = rows["dsr1_gb200_trtllm_fp4_disagg_1024x1024_c48_cfg388"]
    assert aic.expressible(row, disagg=True) is None and aic.split_of(row) == "held-out"
    d = aic.disagg_of(row)
    assert (d["gpus"], d["nodes"], d["concurrency"]) == (72, 1, 48)
    assert d["params"]["prefill_gpus"] == 4 and d["params"]["decode_gpus"] == 8
    assert (d["params"]["prefill_workers"], d["params"]["decode_workers"]) == (1, 4)
    sc = aic.scenario_of(row)
    assert (sc.hardware, sc.num_gpus, sc.dtype) == ("gb200-nvl72", 72, "nvfp4")
    _, plan, _, _ = plan_scenario(sc)
    assert "within one node" in str(plan.config)
    assert kernel_tables("GB200", "trtllm") is not None and plan.config["kernel_tables"] == "trtllm"
    p = moesim.predict(sc)
    said = " ".join(p.assumptions)
    assert p.tpot_s > 0 and "trtllm's kernels from tables measured on the GB200" in said
    assert "GPU GB200 uncalibrated" not in said


def test_inexpressible_new_gpu_rows_say_why(aic, rows):
    no_pools = rows["2026_03_25_deepseek_r1_b300_sxm_trtllm_fp8_disagg_1024x1024_c16384_tp4_0_ep1_0_744"]
    assert aic.expressible(no_pools) == "disaggregated"
    assert aic.expressible(no_pools, layouts=True, disagg=True) == "pool sizes not stated"
    other = {**rows["deepseek_r1_deepseek_r1_gb200_trtllm_agg_4000x1000_c_tp8_epnone_1"], "system": "mi355x"}
    assert aic.expressible(other, layouts=True) == "GPU mi355x"
    # a GB200 row stating TP 36 for DeepSeek-R1's 128 heads: expressible as columns, refused by the engine's rule
    tp36 = rows["2026_04_06_deepseek_r1_gb200_trtllm_fp4_agg_1024x1024_c4_tp36_ep1_18"]
    assert aic.expressible(tp36, layouts=True) is None
    (rec,) = aic.records([tp36], layouts=True)
    assert rec.predicted_tpot_s is None and "divisible by tensor parallel size (36)" in rec.note
    # ... and so not a cell the corpus scores (a setup the engine refuses was not what ran): not expressible, saying so
    assert "attention TP 36 over 128 heads" in aic.refused_layout(tp36)
    assert aic.refused_layout(rows["deepseek_r1_deepseek_r1_gb200_trtllm_agg_4000x1000_c_tp8_epnone_1"]) is None
    cells = [c for c in aic.published_cells() if c.fold == tp36["id"]]
    assert len(cells) == 2 and all("records another layout" in c.not_expressible for c in cells)
