"""Disaggregated prefill/decode (systems/shared/disaggregation.py) and MTP speculative decoding
(systems/shared/speculative.py) of the datacenter engines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import moesim
from moesim.errors import InfeasibleError
from moesim.modules import Speculative, expected_tokens_per_step
from moesim.predict import plan_scenario
from moesim.systems.shared.disaggregation import best_split, closed_loop_prefill, kv_transfer_s
from moesim.systems.shared.speculative import acceptance_rates
from moesim.calibration.published import load_module

ROOT = Path(__file__).resolve().parents[1]


# ---- KV transfer ---------------------------------------------------------------------------------------------
def test_kv_transfer_time_by_hand():
    """t = latency + bytes / bandwidth: 72 MB over 50 GB/s after 10 us is 1.44 ms + 10 us."""
    assert kv_transfer_s(72e6, 50e9, 10e-6) == pytest.approx(10e-6 + 1.44e-3, rel=1e-12)
    assert kv_transfer_s(0.0, 50e9, 10e-6) == 0.0


def test_deepseek_kv_crosses_the_network_between_two_nodes_by_hand():
    """DeepSeek-V3, prompt 1024, bf16 KV: the MLA latent (kv_lora_rank 512 + rope 64 elements) x 61 layers x 2 bytes
    = 70,272 bytes a token, 71,958,528 bytes a prompt, whole on every GPU of a rank (MLA): a GPU moves all of it.
    A prefill worker and a decode worker of 8 GPUs on 2 nodes: over the scale-out network, per GPU."""
    sc = moesim.Scenario(model="deepseek-v3", hardware="hgx-h200", system="sglang", num_nodes=2, prompt_tokens=1024,
                         gen_tokens=64, num_requests=64, system_params={"disaggregate": True})
    ctx, plan, _, _ = plan_scenario(sc)
    a = ctx.model.attention
    per_token = (a.kv_lora_rank + a.qk_rope_head_dim) * ctx.model.num_layers * 2
    assert per_token == 70272
    nbytes = per_token * 1024
    so = ctx.platform.scale_out
    assert plan.kv_transfer_s == pytest.approx(so.latency_s + nbytes / so.per_gpu_bytes_per_s, rel=1e-9)
    assert "between nodes" in plan.config["pools"]["kv_transfer"]["link"]


def test_gqa_kv_crosses_nvlink_within_one_node_by_hand():
    """Qwen3-30B-A3B, prompt 1024, bf16 KV: K and V of 4 heads x 128 x 48 layers x 2 bytes = 98,304 bytes a token;
    a worker of 4 GPUs (TP 4) holds 1 of the 4 K/V heads per GPU: 98,304 x 1024 / 4 = 25,165,824 bytes a GPU moves.
    One prefill and one decode worker of 4 GPUs fit one node: over its GPU link (NVLink)."""
    sc = moesim.Scenario(model="qwen3-30b-a3b", hardware="hgx-h100", system="vllm", num_gpus=8, prompt_tokens=1024,
                         gen_tokens=64, num_requests=64,
                         system_params={"disaggregate": True, "prefill_gpus": 4, "decode_gpus": 4,
                                        "prefill_workers": 1, "decode_workers": 1})
    ctx, plan, _, _ = plan_scenario(sc)
    nbytes = 2 * 4 * 128 * 48 * 2 * 1024 / 4
    assert plan.config["pools"]["kv_transfer"]["bytes_per_gpu"] == pytest.approx(25_165_824)
    link = ctx.platform.gpu_link
    assert plan.kv_transfer_s == pytest.approx(link.latency_s + nbytes / link.h2d_pinned_bytes_per_s, rel=1e-9)
    assert "within one node" in plan.config["pools"]["kv_transfer"]["link"]


# ---- pool ratio ----------------------------------------------------------------------------------------------
def test_pool_ratio_search_picks_the_balanced_split():
    """1-GPU workers on 8 GPUs, a prefill worker does 3 req/s and a decode worker 1: 2 prefill + 6 decode give
    min(6, 6) = 6 req/s (0.75 a GPU); 1 + 7 gives min(3, 7) = 3, 3 + 5 gives min(9, 5) = 5."""
    n_p, n_d, rate = best_split(8, 1, 1, lambda n: 3.0 * n, lambda n: 1.0 * n)
    assert (n_p, n_d, rate) == (2, 6, 6.0)
    # equal rates: half and half; 2-GPU workers: 2 + 2 of them
    assert best_split(8, 1, 1, lambda n: 1.0 * n, lambda n: 1.0 * n) == (4, 4, 4.0)
    assert best_split(8, 2, 2, lambda n: 1.0 * n, lambda n: 1.0 * n) == (2, 2, 2.0)
    # a given count is kept, the other searched: 1 prefill worker at 3 req/s needs 3 decode workers
    assert best_split(8, 1, 1, lambda n: 3.0 * n, lambda n: 1.0 * n, prefill_workers=1) == (1, 3, 3.0)
    # the KV links can bind: then fewer decode workers suffice
    assert best_split(8, 1, 1, lambda n: 3.0 * n, lambda n: 1.0 * n, link_rate=lambda p, d: 2.0)[2] == 2.0


@settings(max_examples=60, deadline=None)
@given(total=st.integers(2, 24), gp=st.integers(1, 4), gd=st.integers(1, 4), rp=st.floats(0.1, 10), rd=st.floats(0.1, 10))
def test_pool_ratio_search_is_the_best_feasible_split(total, gp, gd, rp, rd):
    """Against brute force: no split of the GPUs delivers more requests/s than the one chosen, and it fits."""
    if gp + gd > total:
        with pytest.raises(InfeasibleError):
            best_split(total, gp, gd, lambda n: rp * n, lambda n: rd * n)
        return
    n_p, n_d, rate = best_split(total, gp, gd, lambda n: rp * n, lambda n: rd * n)
    assert n_p * gp + n_d * gd <= total and rate == pytest.approx(min(rp * n_p, rd * n_d))
    for a in range(1, total // gp + 1):
        for b in range(1, (total - a * gp) // gd + 1):
            assert min(rp * a, rd * b) <= rate * (1 + 1e-9)


def test_pool_split_refusals_say_the_rule():
    with pytest.raises(InfeasibleError, match=r"= 12 GPUs, the platform has 8"):
        best_split(8, 4, 4, lambda n: 1.0, lambda n: 1.0, prefill_workers=2, decode_workers=1)
    with pytest.raises(InfeasibleError, match="at least one prefill worker"):
        best_split(8, 8, 8, lambda n: 1.0, lambda n: 1.0)


def test_disaggregated_plan_combines_the_pools():
    """throughput = min(pool rates) x G; TTFT = a prompt's prefill pass + KV transfer (no queue offline); TPOT = the
    decode pool's; the searched split is no worse than any other split of the 8 GPUs."""
    sc = moesim.Scenario(model="qwen3-30b-a3b", hardware="hgx-h100", system="vllm", num_gpus=8, prompt_tokens=2048,
                         gen_tokens=128, num_requests=256,
                         system_params={"disaggregate": True, "prefill_gpus": 1, "decode_gpus": 1})
    ctx, plan, _, _ = plan_scenario(sc)
    pools = plan.config["pools"]
    rate = min(pools["prefill"]["requests_per_second"], pools["decode"]["requests_per_second"],
               pools["kv_transfer"]["requests_per_second"])
    p = moesim.predict(sc)
    assert p.throughput_tok_s == pytest.approx(rate * 128, rel=1e-9)
    assert p.ttft_s == pytest.approx(pools["prefill"]["pass_s"] + pools["kv_transfer"]["time_s"], rel=1e-9)
    assert p.tpot_s == pytest.approx(pools["decode"]["tpot_s"], rel=1e-9)
    used = pools["prefill"]["workers"] + pools["decode"]["workers"]
    assert used <= 8
    for n_p in range(1, 8):
        other = moesim.predict(sc.replace(system_params={**sc.system_params, "prefill_workers": n_p,
                                                         "decode_workers": 8 - n_p}))
        assert other.throughput_tok_s <= p.throughput_tok_s * (1 + 1e-9)


def test_closed_loop_prefill_by_hand():
    """MVA of C requests cycling prefill (one slot, pass S = 0.3 s) -> KV (0.01 s) -> decode (T = 10 s, a delay):
    C = 1: S and 1 / (S + t_kv + T); C = 2: R = S (1 + Q(1) - U(1) / 2) with X(1) = 1 / 10.31, Q(1) = U(1) =
    X(1) S, so R = S (1 + X(1) S / 2)."""
    r1, x1 = closed_loop_prefill(1, 0.3, 1, 0.01, 10.0, 64)
    assert r1 == pytest.approx(0.3) and x1 == pytest.approx(1 / 10.31)
    r2, x2 = closed_loop_prefill(2, 0.3, 1, 0.01, 10.0, 64)
    expect = 0.3 * (1 + 0.5 * 0.3 / 10.31)
    assert r2 == pytest.approx(expect) and x2 == pytest.approx(2 / (expect + 10.01))
    # two slots: a queue of demand S / 2 plus a delay of S / 2
    r, _ = closed_loop_prefill(1, 0.3, 2, 0.01, 10.0, 64)
    assert r == pytest.approx(0.3)


@settings(max_examples=40, deadline=None)
@given(c=st.integers(1, 400), s=st.floats(0.01, 2.0), m=st.integers(1, 8), t=st.floats(0.5, 60.0),
       slots=st.integers(1, 512))
def test_closed_loop_prefill_bounds(c, s, m, t, slots):
    """Waiting never makes a pass shorter; the loop runs no faster than its pools (m / S, m_d / T) nor than C
    requests each taking S + T; past the prefill pool's saturation the waiting grows with C."""
    r, x = closed_loop_prefill(c, s, m, 0.0, t, slots)
    assert r >= s * (1 - 1e-9)
    assert x <= min(m / s, max(slots, 1) / t if c > slots else float("inf"), c / (s + t)) * (1 + 1e-6)
    r_more, _ = closed_loop_prefill(c + 50, s, m, 0.0, t, slots)
    assert r_more >= r * (1 - 1e-9)


def test_near_saturated_prefill_pool_queues():
    """SGLang DeepSeek-V3 (AIConfigurator's disaggregated row: 1 prefill worker TP8 of one 8192-token prompt a pass,
    1 decode worker DP8 x EP8 of 128): the prefill pool runs at 80% or more of its rate, so a request waits for
    passes ahead of it (the fluid rule waited nothing below saturation): more than a pass, TTFT more than 2 passes."""
    sc = moesim.Scenario(model="deepseek-v3", hardware="hgx-h200", system="sglang", num_gpus=8, num_nodes=2,
                         prompt_tokens=8192, gen_tokens=1024, num_requests=128, batch_size=128,
                         system_params={"disaggregate": True, "prefill_gpus": 8, "decode_gpus": 8,
                                        "prefill_workers": 1, "decode_workers": 1,
                                        "prefill_params": "max_running_requests=1",
                                        "decode_params": "data_parallel_size=8,enable_dp_attention=true,"
                                                         "expert_parallel_size=8,max_running_requests=128"})
    _, plan, _, _ = plan_scenario(sc)
    pass_s = plan.config["pools"]["prefill"]["pass_s"]
    assert plan.rate_per_s >= 0.8 * plan.prefill_rate_per_s
    assert plan.queue_s > pass_s and plan.ttft_s > 2 * pass_s
    assert plan.rate_per_s <= min(plan.prefill_rate_per_s, plan.decode_rate_per_s)


# ---- MTP -----------------------------------------------------------------------------------------------------
def test_mtp_expected_tokens_by_hand():
    """1 + a1 + a1 a2 (+ a1 a2 a3): 0.8, 0.6 -> 2.28; 0.9, 0.5, 0.5 -> 1 + 0.9 + 0.45 + 0.225 = 2.575."""
    assert expected_tokens_per_step((0.8, 0.6)) == pytest.approx(2.28)
    assert expected_tokens_per_step((0.9, 0.5, 0.5)) == pytest.approx(2.575)
    assert expected_tokens_per_step(()) == 1.0
    assert acceptance_rates(3, (0.7,)) == (0.7, 0.7, 0.7)
    with pytest.raises(InfeasibleError, match="2 rates for 3 draft steps"):
        acceptance_rates(3, (0.7, 0.5))


@settings(max_examples=40, deadline=None)
@given(a=st.floats(0.0, 0.999), k=st.integers(1, 8))
def test_equal_rates_give_leviathans_closed_form(a, k):
    """With every a_i = a the sum is (1 - a^(k+1)) / (1 - a), what gpu-resident's Speculative uses."""
    assert expected_tokens_per_step((a,) * k) == pytest.approx((1 - a ** (k + 1)) / (1 - a), rel=1e-9)
    assert Speculative("x", k, a).tokens_per_step == pytest.approx(expected_tokens_per_step((a,) * k), rel=1e-12)


def test_mtp_divides_the_step_by_the_tokens_it_yields():
    """TPOT with MTP = (verification of k + 1 tokens + k draft layers) / tau: below the plain TPOT at small batch,
    and the decode pool reports tau."""
    base = dict(model="deepseek-v3", hardware="hgx-h200", system="trtllm", num_gpus=8, prompt_tokens=1024,
                gen_tokens=64, num_requests=8, batch_size=8)
    plain = moesim.predict(**base)
    mtp = moesim.predict(**base, system_params={"num_nextn_predict_layers": 2, "speculative_acceptance": "0.8,0.6"})
    assert mtp.tpot_s < plain.tpot_s
    assert any("2.28 tokens per step" in a for a in mtp.assumptions)
    sc = moesim.Scenario(**base, system_params={"disaggregate": True, "num_nextn_predict_layers": 1,
                                                "speculative_acceptance": 0.85}).replace(num_nodes=2)
    _, plan, _, _ = plan_scenario(sc)
    assert plan.config["pools"]["decode"]["tokens_per_step"] == pytest.approx(1.85)


# ---- refusals through the CLI ----------------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moesim", "predict", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


@pytest.mark.parametrize("args, words", [
    (("--model", "qwen3-30b-a3b", "--hw", "hgx-h100", "--system", "vllm", "--prefill-workers", "2"),
     "add --disaggregate"),
    (("--model", "qwen3-30b-a3b", "--hw", "hgx-h100", "--system", "vllm", "--gpus", "8", "--disaggregate",
      "--prefill-gpus", "4", "--decode-gpus", "4", "--prefill-workers", "2", "--decode-workers", "1"),
     "= 12 GPUs, the platform has 8"),
    (("--model", "deepseek-v3", "--hw", "hgx-h200", "--system", "sglang", "--nodes", "3", "--disaggregate",
      "--prefill-gpus", "12"), "must fit in one node"),
    (("--model", "qwen3-30b-a3b", "--hw", "hgx-h100", "--system", "vllm", "--gpus", "2", "--disaggregate",
      "--prefill-gpus", "1", "--decode-gpus", "1", "--prefill-params", "no_such_knob=1"), "not a vllm worker"),
    (("--model", "mixtral-8x7b", "--hw", "hgx-h100", "--system", "vllm", "--gpus", "2",
      "--num-speculative-tokens", "2"), "multi-token-prediction module"),
])
def test_invalid_disaggregation_and_mtp_are_refused_in_one_line(args, words):
    out = _cli(*args)
    assert out.returncode != 0
    assert words in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


# ---- the aggregated predictions are unchanged ------------------------------------------------------------------
def test_aggregated_predictions_unchanged_by_disaggregation():
    """Golden: the figures recorded before disaggregation and MTP existed (tests/data/aggregated_before_disagg.json).
    SGLang's DeepSeek-R1 case re-recorded 2026-12-04: its 1000-sequence decode batch is above cuda_graph_max_bs (512)
    and SGLang runs it eagerly, now priced at least the host's issue of an eager forward (TPOT 70.0 -> 82.7 ms).
    All three cases' prefill re-recorded 2026-12-04 (session 30), when prefill attention came from the engines'
    measured kernel tables (TTFT: SGLang DeepSeek-R1 13.70 -> 14.01 s, vLLM Mixtral 3.19 -> 3.20 s, TensorRT-LLM gpt-oss
    3.35 -> 3.41 s; TPOT unchanged)."""
    before = json.loads((ROOT / "tests" / "data" / "aggregated_before_disagg.json").read_text())
    cases = {"sglang-dsr1-8": dict(model="deepseek-r1", hardware="hgx-h200", system="sglang", num_gpus=8),
             # vLLM's running cap as it was when recorded (256; `vllm serve` on an H100 defaults to 1024 since)
             "vllm-mixtral-2": dict(model="mixtral-8x7b", hardware="hgx-h100", system="vllm", num_gpus=2,
                                    system_params={"max_num_seqs": 256}),
             "trtllm-gptoss-4-dp": dict(model="gpt-oss-120b", hardware="hgx-h200", system="trtllm", num_gpus=4,
                                        system_params={"enable_attention_dp": True, "moe_expert_parallel_size": 4})}
    for name, kw in cases.items():
        p = moesim.predict(**kw)
        for key, value in before[name].items():
            assert getattr(p, key) == pytest.approx(value, rel=1e-12), (name, key)


# ---- validation: AIConfigurator's disaggregated rows -------------------------------------------------------------
def _aic():
    return load_module("aiconfigurator")


def test_aiconfigurator_disaggregated_rows_map_to_pools_and_stay_out_of_the_corpus():
    """Four committed disaggregated rows (tests/data/aiconfigurator_disagg_rows.csv): off by default; with disagg,
    the rows whose pools are stated map to the engines' flags on as many nodes as the pools take; the held-out
    (H200) rows' TPOT within 25% of what was measured (the issue's bar); the fit (H100) row's TP-16 decode worker
    spans two nodes and is refused with the rule; the row without pool sizes is not expressed."""
    import csv

    mod = _aic()
    assert mod.CORPUS_DISAGG is False
    with open(ROOT / "tests" / "data" / "aiconfigurator_disagg_rows.csv", newline="") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    assert all(mod.expressible(r) == "disaggregated" for r in rows.values())
    trt = rows["dsr1_h200_trtllm_fp8_disagg_1024x1024_c1152_cfg321"]
    d = mod.disagg_of(trt)
    assert (d["nodes"], d["concurrency"]) == (10, 1152)  # 1 x 8 + 9 x 8 GPUs; 16 a DP rank x 8 ranks x 9 workers
    assert d["params"]["prefill_workers"] == 1 and d["params"]["decode_workers"] == 9
    assert "enable_attention_dp=true" in d["params"]["prefill_params"]
    assert "max_batch_size=1" in d["params"]["prefill_params"]
    assert mod.expressible(rows["2026_03_25_deepseek_r1_h200_sxm_sglang_fp8_disagg_1024x1024_c64_tp8_0_ep1_0_893"],
                           disagg=True) == "pool sizes not stated"
    recs = {r.row_id: r for r in mod.records(list(rows.values()), disagg=True)}
    assert len(recs) == 3
    for r in recs.values():
        if r.split == "held-out":
            assert abs(r.tpot_error) < 0.25, (r.row_id, r.tpot_error)
        else:
            assert r.predicted_tpot_s is None and "inside one node" in r.note


def test_engines_price_a_draft_model_with_the_same_tau():
    """--draft on an engine: k decode steps of the draft model and one verification of k + 1 tokens a step, over
    tau = (1 - a^(k+1)) / (1 - a) tokens: faster than plain decoding for Qwen3-235B at batch 1 (a 1B-active draft),
    never by more than tau; MTP and a draft model together are refused."""
    base = dict(model="qwen3-235b-a22b", hardware="hgx-h100", num_gpus=8, prompt_tokens=512, gen_tokens=64,
                num_requests=1, batch_size=1)
    tau = (1 - 0.7 ** 4) / (1 - 0.7)
    for system in ("vllm", "sglang", "trtllm"):
        plain = moesim.predict(**base, system=system)
        spec = moesim.predict(**base, system=system, draft_model="olmoe-1b-7b", spec_tokens=3, spec_accept=0.7)
        assert plain.tpot_s / tau < spec.tpot_s < plain.tpot_s, system
    with pytest.raises(InfeasibleError, match="give one"):
        moesim.predict(model="deepseek-v3", hardware="hgx-h200", num_gpus=8, system="sglang",
                       draft_model="olmoe-1b-7b", system_params={"speculative_num_steps": 1})
