"""Hand-computed FLOPs and bytes of each operation family, and routing against Monte Carlo."""

import numpy as np
import pytest

from moesim import costs
from moesim.db import models


def test_gemm_flops_and_bytes():
    c = costs.gemm(4, 8, 16, "bf16")
    assert c.flop == 2 * 4 * 8 * 16
    assert c.bytes == 16 * 8 * 2 + (4 * 16 + 4 * 8) * 2


def test_gemm_int4_weights_halve_weight_bytes():
    assert costs.gemm(1, 4096, 4096, "int4").bytes == 4096 * 4096 * 0.5 + (4096 + 4096) * 2


def test_expert_ffn_flops():
    h, f, t = 4096, 14336, 10
    c = costs.expert_ffn(h, f, t)
    assert c.flop == pytest.approx(2 * t * h * 2 * f + 2 * t * f * h + t * f * 4)
    assert c.weight_elements == 3 * h * f


def test_moe_layer_loop_has_more_launches_and_a_sync_per_expert():
    fused = costs.moe_layer(4096, 14336, 8, 2, 64, impl="fused")
    loop = costs.moe_layer(4096, 14336, 8, 2, 64, impl="loop")
    gemms = {c.family: c for c in loop.pieces() + fused.pieces() if c.family in ("expert", "grouped_expert")}
    assert gemms["expert"].flop == gemms["grouped_expert"].flop == 2 * 3 * 4096 * 14336 * 64 * 2
    assert gemms["expert"].bytes == gemms["grouped_expert"].bytes
    # the fused combine is one index_add_ of all 128 routed rows (colliding atomics); the loop's
    # per-expert index_add_ never lands two rows on one output row: a plain read-modify-write pass
    assert fused.pieces()[-1].family == "scatter" and fused.pieces()[-1].bytes == 128 * 4096 * 3 * 2
    assert loop.pieces()[-1].family == "vector" and loop.pieces()[-1].launches == 0
    assert loop.launches + loop.loop_launches > fused.launches + fused.loop_launches
    # 64 tokens hit all 8 experts (1 - (6/8)^64 ~ 1): one sync to list them, one torch.where each
    # the fused path reads bincount's maximum on the host (one sync)
    assert loop.loop_launches == 8 * 7 and loop.syncs == 1 + 8 and fused.syncs == 1


def test_serial_parts_keep_totals_and_price_each_roof():
    """A GEMM then an elementwise pass: totals add up, and the time is the sum of the two roofs."""
    from moesim.costs.efficiency import ProfileEfficiency
    from moesim.db.resolve import get_hardware

    hw = get_hardware("h100-sxm")
    eff = ProfileEfficiency(hw.empirical)
    g, v = costs.gemm(4096, 4096, 4096), costs.vector_op(2**26)
    both = g.then(v)
    assert both.flop == g.flop + v.flop and both.bytes == g.bytes + v.bytes and both.launches == 2
    assert [p.family for p in both.pieces()] == ["gemm", "vector"]
    t = costs.gpu_time_s(both, hw.gpu, eff)
    assert t == pytest.approx(costs.gpu_time_s(g, hw.gpu, eff) + costs.gpu_time_s(v, hw.gpu, eff))
    assert t > costs.gpu_time_s(g + v, hw.gpu, eff)  # merged, the pass would hide under the GEMM's roof
    assert both.scaled(0.5).pieces()[1].bytes == v.bytes / 2


def test_decode_attention_reads_whole_kv_gqa():
    m = models().get("mixtral-8x7b")
    c = costs.attention_core(m.attention, batch=2, q_len=1, kv_len=1000)
    kv = 2 * 1000 * 2 * 8 * 128 * 2  # batch * ctx * (K,V) * kv_heads * head_dim * bf16
    assert c.bytes >= kv
    assert c.flop == 2 * 2 * 32 * 1000 * (128 + 128)


def test_mla_absorbed_decode_reads_only_latent():
    m = models().get("deepseek-r1")
    absorbed = costs.attention_core(m.attention, 1, 1, 4096, mla_absorbed=True)
    expanded = costs.attention_core(m.attention, 1, 1, 4096, mla_absorbed=False)
    assert absorbed.bytes < expanded.bytes
    # absorbed: scores and values over the 512-wide latent (+64 rope) for 128 heads x 4096 positions
    assert absorbed.flop == pytest.approx(2 * 128 * 4096 * ((512 + 64) + 512))
    # without absorption: re-expand the 4096 cached latents (512) to per-head K-nope and V (128 + 128),
    # then attend with head dims 192 (128 + 64 rope) and 128
    up_projection = 2 * 4096 * 512 * 128 * (128 + 128)
    assert expanded.flop == pytest.approx(up_projection + 2 * 128 * 4096 * (192 + 128))


def test_causal_prefill_span_is_half():
    assert costs.effective_span(1000, 1000, True) == pytest.approx(500.5)
    assert costs.effective_span(1, 1000, True) == 1000
    assert costs.effective_span(1, 1000, True, "sliding", 128) == 128


@pytest.mark.parametrize("e,k,t", [(8, 2, 1), (8, 2, 4), (64, 6, 10), (256, 8, 32)])
def test_expected_active_experts_matches_monte_carlo(e, k, t):
    rng = np.random.default_rng(0)
    trials = 4000
    distinct = [len(np.unique(np.concatenate([rng.choice(e, k, replace=False) for _ in range(t)])))
                for _ in range(trials)]
    assert costs.expected_active_experts(e, k, t) == pytest.approx(np.mean(distinct), rel=0.02)


def test_zipf_router_activates_fewer_experts_and_is_imbalanced():
    uniform = costs.expected_active_experts(64, 4, 32)
    skewed = costs.expected_active_experts(64, 4, 32, zipf_s=1.2)
    assert skewed < uniform
    assert costs.load_imbalance(64, 4, 32, 1.2) > costs.load_imbalance(64, 4, 32, 0.0)
    q = costs.inclusion_probabilities(64, 4, 1.2)
    assert q.sum() == pytest.approx(4) and q.max() <= 1.0


def test_copy_time_uses_link_bandwidth():
    from moesim.db import links

    link = links().get("gen4")
    assert costs.copy_time_s(25e9, "h2d_pinned", link) == pytest.approx(link.latency_s + 25e9 / link.h2d_pinned_bytes_per_s)
    assert costs.copy_time_s(1e9, "h2d_pageable", link) > costs.copy_time_s(1e9, "h2d_pinned", link)


def test_quantized_weights_dequantize_where_not_native():
    from moesim.costs import compute_dtype, needs_dequant
    from moesim.db import gpus

    g = gpus().get("rtx4090")
    assert compute_dtype("fp8", g) == "fp8" and not needs_dequant("fp8", g)
    assert compute_dtype("int4", g) == "bf16" and needs_dequant("int4", g)


def test_eager_mla_decode_bytes_by_hand():
    """8 kernels; twice the latent plus 36 bytes per score (2+2 GEMM writes, add 6, scale 4,
    float 6, softmax 8, cast 6, final GEMM reads 2) plus the queries and outputs."""
    b, h, L, r, dr = 2, 16, 1000, 512, 64
    c = costs.mla_decode_unfused(b, h, L, r, dr)
    scores = b * h * L
    assert c.launches == 10  # eight kernels and two transposes, each a torch call the host issues
    assert c.bytes == 2 * b * L * (r + dr) * 2 + 36 * scores + b * h * (2 * r + dr) * 2


def test_a_host_sync_inside_an_operation_exposes_a_second_issue_latency():
    """Two segments around a sync, each issue + max(GPU, (launches-1) x dispatch), plus the sync."""
    from moesim.costs.efficiency import CalibratedEfficiency
    from moesim.db.resolve import get_hardware
    from moesim.specs import CalibrationProfile, FamilyCurve

    hw = get_hardware("h100-sxm")
    curve = FamilyCurve(compute_max=1.0, rows_half=0, memory_max=1.0, bytes_half=0, overhead_s=20e-6, dispatch_s=10e-6)
    prof = CalibrationProfile(gpu="H100 SXM", measurements="x", kernel_launch_s=5e-6, host_sync_s=15e-6,
                              families={"vector": curve})
    eff = CalibratedEfficiency(hw.empirical, prof)
    tiny = lambda n: costs.vector_op(1.0, 0.0, 1.0, launches=n)  # noqa: E731  (2 bytes: GPU time ~0)
    from dataclasses import replace

    op = replace(tiny(4), syncs=1).then(tiny(3))
    t = costs.gpu_time_s(op, hw.gpu, eff)
    assert t == pytest.approx((20e-6 + 3 * 10e-6) + 15e-6 + (20e-6 + 2 * 10e-6), rel=1e-6)
    no_sync = costs.gpu_time_s(tiny(4).then(tiny(3)), hw.gpu, eff)
    assert no_sync == pytest.approx(20e-6 + 6 * 10e-6, rel=1e-6)


def test_sustained_clock_stretch_by_hand():
    """T = T0 / (r + (1 - r) (tau / T0) (1 - exp(-T0 / tau))): r = 0.8, tau = 1 ms."""
    from moesim.specs import FamilyCurve

    curve = FamilyCurve(compute_max=1.0, rows_half=0, memory_max=1.0, bytes_half=0, overhead_s=0.0,
                        sustained_clock=0.8, clock_tau_s=1e-3)
    assert curve.sustained_compute_s(1e-3) == pytest.approx(1e-3 / (0.8 + 0.2 * 0.6321205588), rel=1e-9)
    assert curve.sustained_compute_s(1e-6) == pytest.approx(1e-6, rel=2e-4)  # short: boost clock kept
    assert curve.sustained_compute_s(0.1) == pytest.approx(0.1 / (0.8 + 0.2 * 0.01), rel=1e-6)  # long: -> T0 / r
    flat = curve.model_copy(update={"sustained_clock": 1.0})
    assert flat.sustained_compute_s(0.1) == 0.1


def test_clock_drop_stretches_tensor_core_math_only():
    """bf16 GEMM compute time halves its clock at r = 0.5 (tau = 0); fp32 (SIMT) is untouched."""
    from moesim.costs.efficiency import CalibratedEfficiency
    from moesim.db.resolve import get_hardware
    from moesim.specs import CalibrationProfile, FamilyCurve

    hw = get_hardware("h100-sxm")

    def t(dtype: str, r: float) -> float:
        curve = FamilyCurve(compute_max=1.0, rows_half=0, memory_max=1.0, bytes_half=0, overhead_s=0.0,
                            sustained_clock=r, clock_tau_s=0.0)
        prof = CalibrationProfile(gpu="H100 SXM", measurements="x", kernel_launch_s=0.0, host_sync_s=0.0,
                                  families={"gemm": curve})
        return costs.gpu_time_s(costs.gemm(8192, 8192, 8192, dtype), hw.gpu, CalibratedEfficiency(hw.empirical, prof))

    peak_bf16, _ = hw.gpu.peak_for("bf16")
    assert t("bf16", 1.0) == pytest.approx(2 * 8192 ** 3 / peak_bf16, rel=1e-9)
    assert t("bf16", 0.5) == pytest.approx(2 * t("bf16", 1.0), rel=1e-9)
    assert t("fp32", 0.5) == t("fp32", 1.0)


def test_indexing_calls_cost_their_own_host_time_by_hand():
    """Further calls: ordinary ones dispatch_s (10 us), indexing ones index_call_s (30 us); the first
    call (issue, 20 us) is an ordinary one unless every call indexes."""
    from moesim.costs.efficiency import CalibratedEfficiency
    from moesim.db.resolve import get_hardware
    from moesim.specs import CalibrationProfile, FamilyCurve

    hw = get_hardware("h100-sxm")
    curve = FamilyCurve(compute_max=1.0, rows_half=0, memory_max=1.0, bytes_half=0, overhead_s=20e-6,
                        dispatch_s=10e-6, index_call_s=30e-6)
    prof = CalibrationProfile(gpu="H100 SXM", measurements="x", kernel_launch_s=5e-6, host_sync_s=15e-6,
                              families={"vector": curve})
    eff = CalibratedEfficiency(hw.empirical, prof)
    mixed = costs.vector_op(1.0, 0.0, 1.0, launches=4, indexed=2)  # 2 bytes: GPU time ~0
    assert costs.gpu_time_s(mixed, hw.gpu, eff) == pytest.approx(20e-6 + 1 * 10e-6 + 2 * 30e-6, rel=1e-6)
    all_indexed = costs.vector_op(1.0, 0.0, 1.0, launches=3, indexed=3)
    assert costs.gpu_time_s(all_indexed, hw.gpu, eff) == pytest.approx(20e-6 + 2 * 30e-6, rel=1e-6)


def test_moe_layer_indexing_calls_counted_from_the_harness():
    """kernels.moe_fused: topk, argsort, bincount, x[token], weights.flatten()[order, None], index_add_;
    kernels.moe_loop outside its per-expert loop: topk only (nonzero's cost is its sync)."""
    fused = costs.moe_layer(2048, 1408, 64, 6, 16, impl="fused")
    loop = costs.moe_layer(2048, 1408, 64, 6, 16, impl="loop")
    assert fused.indexed_launches == 6
    assert loop.indexed_launches == 1
