"""Blackwell: the engines' fused MoE run through TensorRT-LLM-Gen (FlashInfer trtllm_fused_moe) where no measured table
covers it, priced with that kernel's structure (systems_db/engines.yaml trtllm_gen_moe*)."""

from __future__ import annotations

import pytest

import moesim
from moesim import db
from moesim.predict import plan_scenario
from moesim.systems import get_system
from moesim.systems.shared import engine_step as ES

GAP_S = float(db.system_constants("engines").value("graph_kernel_gap_s"))


def _ctx(model: str, system: str, hw: str = "hgx-b200", gpus: int = 1):
    sc = moesim.Scenario(model=model, hardware=hw, num_gpus=gpus, system=system, prompt_tokens=512, gen_tokens=16,
                         batch_size=4, num_requests=4)
    ctx, _, _, _ = plan_scenario(sc)
    return ctx, get_system(system)(None).runtime(ctx)


def test_which_engine_runs_trtllm_gen_on_which_gpu():
    """vLLM's MXFP4 MoE on SM100 is FlashInfer's TRTLLM-Gen (4 kernels in FP4); the H200 runs no such kernel; TRT-LLM's
    fp8 block-scaled DeepSeek MoE on SM100 is DeepGEMM's (not listed); SGLang's fp8 block MoE is (5 kernels, and one
    quantising its fp8 input); its NVFP4 MoE 4 + 1 (fp4 input)."""
    assert ES.trtllm_gen_moe_kernels(_ctx("gpt-oss-120b", "vllm")[0], "vllm") == 4
    assert ES.trtllm_gen_moe_kernels(_ctx("gpt-oss-120b", "trtllm")[0], "trtllm") == 4
    assert ES.trtllm_gen_moe_kernels(_ctx("gpt-oss-120b", "vllm", "hgx-h200")[0], "vllm") == 0
    assert ES.trtllm_gen_moe_kernels(_ctx("deepseek-r1", "trtllm", gpus=8)[0], "trtllm") == 0
    assert ES.trtllm_gen_moe_kernels(_ctx("deepseek-r1", "sglang", gpus=8)[0], "sglang") == 6
    nv = moesim.Scenario(model="deepseek-r1", hardware="hgx-b200", num_gpus=8, system="sglang", prompt_tokens=512,
                         gen_tokens=16, batch_size=4, num_requests=4, dtype="nvfp4")
    assert ES.trtllm_gen_moe_kernels(plan_scenario(nv)[0], "sglang") == 5


def test_trtllm_gen_moe_by_hand():
    """gpt-oss-120b on one B200, 4 decode rows: the router is its logits GEMM (128 x 2880 bf16 = 0.74 MB, ~0.1 us at
    8 TB/s) plus one graph gap; the call streams a MXFP4 experts (3 x 2880^2 elements, 0.53125 byte each) at
    fused_moe_memory_efficiency x 8 TB/s, in 4 kernels (4 gaps); one more kernel costs exactly one more gap."""
    ctx, rt = _ctx("gpt-oss-120b", "vllm")
    router, experts = ES.trtllm_gen_moe_s(ctx, 4, rt.decode, 4)
    assert GAP_S < router < GAP_S + 0.5e-6
    eff = float(db.system_constants("engines").value("fused_moe_memory_efficiency"))
    a = ctx.active_experts(4)
    assert 15.0 < a <= 16.0  # 4 tokens x top-4 of 128 experts: almost never the same expert twice
    weights_s = a * 3 * 2880 * 2880 * 0.53125 / (8.0e12 * eff)
    assert experts == pytest.approx(weights_s + 4 * GAP_S, rel=0.03)
    _, five = ES.trtllm_gen_moe_s(ctx, 4, rt.decode, 5)
    assert five - experts == pytest.approx(GAP_S, rel=1e-9)


def test_blackwell_layer_uses_it_and_hopper_does_not_change():
    """On the B200 the layer's router + experts is the TRTLLM-Gen price (no table covers gpt-oss's MXFP4 there); on the
    H200 the router still carries softmax/top-k (3 launches) because its MXFP4 table prices the call."""
    ctx, rt = _ctx("gpt-oss-120b", "vllm")
    ex, rows = rt.decode_execution(4)
    lt = ES._engine_layer_times(ctx, 4, [(4, 1, 600)], ex, rt.backend, rows)
    assert (lt.router, lt.experts) == pytest.approx(ES.trtllm_gen_moe_s(ctx, rows, ex, 4))
    hctx, hrt = _ctx("gpt-oss-120b", "vllm", "hgx-h200")
    hex_, hrows = hrt.decode_execution(4)
    hlt = ES._engine_layer_times(hctx, 4, [(4, 1, 600)], hex_, hrt.backend, hrows)
    assert hlt.router > 3 * GAP_S


def test_finalize_traffic_by_hand_and_not_split():
    """4096 tokens of gpt-oss (top-4: 16384 routed rows, hidden 2880) on a B200: finalize reads each routed output once
    and writes each token once, 16384 x 2880 x 2 B x (1 + 1/4) = 118 MB at the uncalibrated 0.80 x 8 TB/s = 18.4 us,
    the same whether the experts are split over 1 or 8 GPUs (every GPU combines all its rows)."""
    ctx, rt = _ctx("gpt-oss-120b", "vllm")
    slots, active = 16384.0, 128.0
    for split in (1, 8):
        experts_only = ctx.gpu_s(ctx.experts(active, slots).scaled(1.0 / split).with_(launches=4), rt.prefill)
        call = ES.trtllm_gen_call_s(ctx, rt.prefill, 4, active, slots, split)
        assert call - experts_only == pytest.approx(16384 * 2880 * 2 * 1.25 / (8.0e12 * 0.80), rel=0.02)


def test_expert_parallel_layer_prices_the_same_kernel_on_the_busiest_rank():
    """SGLang DeepSeek-R1 on 8 B200 with EP8 (no SGLang MoE table on B200): the parallel layer's router is the logits
    GEMM of the rank's rows and its experts the TRTLLM-Gen call (6 kernels, fp8 block) over the busiest EP rank's
    experts and slots, as the tensor-parallel layer prices it - not the roofline's separate permute/combine."""
    from moesim.systems.shared.parallel import ep_load_factor, parallel_layer_times

    sc = moesim.Scenario(model="deepseek-r1", hardware="hgx-b200", num_gpus=8, system="sglang", prompt_tokens=512,
                         gen_tokens=16, batch_size=32, num_requests=32, system_params={"expert_parallel_size": 8})
    ctx, _, _, _ = plan_scenario(sc)
    eng = get_system("sglang")({"expert_parallel_size": 8})
    rt, lay = eng.runtime(ctx), eng._parallel(ctx)
    ex, rows = rt.decode_execution(32)
    got = parallel_layer_times(ctx, lay, 32, [(32, 1, 600)], ex, rt.backend, rows,
                               lambda c, t, att, g: ES._engine_layer_times(c, t, att, ex, rt.backend, g))
    m = ctx.model
    f = ep_load_factor(m.moe.num_experts, m.moe.top_k, rows, lay.moe_ep, ctx.options.zipf_s,
                       ctx.options.expert_popularity, lay.eplb)
    active = min(m.moe.num_experts / lay.moe_ep, ctx.active_experts(rows) / lay.moe_ep * f)
    want = ES.trtllm_gen_call_s(ctx, ex, 6, active, rows * m.moe.top_k / lay.moe_ep * f, lay.moe_tp)
    assert got.rank.experts == pytest.approx(want, rel=1e-12)
