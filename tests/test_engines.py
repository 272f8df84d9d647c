"""Execution modes, the datacenter engines (vllm, sglang, trtllm) and the AIConfigurator validation module."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import moesim
from moesim import costs
from moesim.costs import EAGER, Execution, OpCost, efficiency_in
from moesim.db import default_profile
from moesim.errors import InfeasibleError
from moesim.modules import Context, Options
from moesim.specs import OfflineWorkload
from moesim.systems import get_system
from moesim.systems.shared.tensor_parallel import kv_share_per_gpu
from moesim.systems.shared.engine_step import EngineRuntime, graph_batch, vllm_capture_sizes
from moesim.systems.shared.memory import activation_bytes
from moesim.calibration.published import load_module

ROOT = Path(__file__).resolve().parents[1]
ROWS = ROOT / "tests" / "data" / "aiconfigurator_silicon_rows.csv"


def _ctx(model: str, hw: str = "hgx-h200", gpus: int = 1, prompt: int = 1024, gen: int = 128) -> Context:
    platform = moesim.get_hardware(hw, num_gpus=gpus)
    return Context(moesim.get_model(model), platform, OfflineWorkload(num_requests=16, prompt_tokens=prompt,
                                                                      gen_tokens=gen), Options())


# ---- execution modes ------------------------------------------------------------------------------------
def test_graph_mode_time_is_the_roofline_plus_a_gap_per_kernel():
    """Default (uncalibrated) profile on an H200: eta_compute 0.70 (rows >= 128), eta_memory 0.80, 5 us launch.
    A 3-kernel GEMM of 2 TFLOP and 1 GB: graph = max(2e12 / (989.4e12 x 0.7), 1e9 / (4.8e12 x 0.8)) + 3 x 2 us;
    eager adds 3 x 5 us of launches instead."""
    gpu = moesim.get_hardware("hgx-h200").gpu
    base = costs.ProfileEfficiency(default_profile())
    cost = OpCost("gemm", flop=2e12, bytes=1e9, rows=4096, launches=3)
    roof = max(2e12 / (gpu.peak_flop_per_s["bf16"] * 0.70), 1e9 / (gpu.memory_bandwidth_bytes_per_s * 0.80))
    graph = costs.gpu_time_s(cost, gpu, efficiency_in(base, Execution("graph", 2e-6)))
    eager = costs.gpu_time_s(cost, gpu, base)
    assert graph == pytest.approx(roof + 3 * 2e-6)
    assert eager == pytest.approx(roof + 3 * 5e-6)
    assert efficiency_in(base, EAGER) is base  # eager is the fitted model itself


def test_engine_kernels_fused_moe_tile_fill_streaming_and_in_kernel_dequant():
    """Engine kernels: an MXFP4 grouped-expert GEMM of 2 rows per expert runs its tiles 2/16 full; its weights
    stream at the given fraction of HBM; dequantisation is hidden in the kernel (eager pays 4 flop per weight
    at the fp32 vector rate)."""
    gpu = moesim.get_hardware("hgx-h200").gpu
    base = costs.ProfileEfficiency(default_profile())
    ex = Execution("graph", 0.0, engine_kernels=True, moe_tile_rows=16, moe_memory_efficiency=0.5)
    eff = efficiency_in(base, ex)
    cost = OpCost("grouped_expert", flop=1e9, bytes=2e9, dtype="mxfp4", weight_elements=3e9, rows=2.0, launches=0)
    assert eff.compute_efficiency(cost) == pytest.approx(0.70 * 2 / 16)
    assert eff.memory_efficiency(cost) == 0.5
    t = costs.gpu_time_s(cost, gpu, eff)
    compute = 1e9 / (gpu.peak_flop_per_s["bf16"] * 0.70 * 2 / 16)
    assert t == pytest.approx(max(compute, 2e9 / (gpu.memory_bandwidth_bytes_per_s * 0.5)))
    eager = costs.gpu_time_s(cost, gpu, base)
    dequant = 3e9 * 4.0 / (gpu.peak_flop_per_s["fp32"] * 0.5)
    assert eager == pytest.approx(max(1e9 / (gpu.peak_flop_per_s["bf16"] * 0.70 / 64), 2e9 / (4.8e12 * 0.8))
                                  + dequant, rel=1e-6)


def test_context_prices_each_mode_apart_in_any_order():
    """auto shares one Context across systems: a graph-mode time must never be served for an eager call."""
    cost = OpCost("gemm", flop=1e9, bytes=1e8, rows=64, launches=4)
    ex = Execution("graph", 1e-6, engine_kernels=True)
    a = _ctx("gpt-oss-120b")
    graph_first = (a.gpu_s(cost, ex), a.gpu_s(cost))
    b = _ctx("gpt-oss-120b")
    eager_first = (b.gpu_s(cost), b.gpu_s(cost, ex))
    assert graph_first == eager_first[::-1]
    assert graph_first[0] < graph_first[1]
    with pytest.raises(ValueError):
        Execution("jit")  # type: ignore[arg-type]


def test_engine_step_overlaps_cpu_work_and_pads_to_captured_graphs():
    rt = EngineRuntime("vllm", EAGER, EAGER, 1e-3, 1e-5, True)
    assert rt.step_s(0.5e-3, 10) == pytest.approx(1.1e-3)  # max(GPU, CPU) with the overlap scheduler
    assert rt.step_s(2e-3, 10) == pytest.approx(2e-3)
    serial = EngineRuntime("vllm", EAGER, EAGER, 1e-3, 1e-5, False)
    assert serial.step_s(0.5e-3, 10) == pytest.approx(1.6e-3)
    sizes = vllm_capture_sizes(256)
    assert sizes[:4] == (1, 2, 4, 8) and sizes[-1] == 512 and vllm_capture_sizes(64)[-1] == 128
    assert [graph_batch(b, sizes) for b in (1, 3, 5, 250, 300, 600)] == [1, 4, 8, 256, 304, 600]
    unpadded = EngineRuntime("trtllm", Execution("graph"), EAGER, 0, 0, True, (1, 2, 4, 8), pad_to_graph=False,
                             uncaptured=Execution("eager", engine_kernels=True))
    assert unpadded.decode_execution(4) == (Execution("graph"), 4)
    assert unpadded.decode_execution(5)[0] == Execution("eager", engine_kernels=True)


# ---- KV per GPU under tensor parallelism ---------------------------------------------------------------------
def test_kv_heads_are_replicated_beyond_their_count_and_mla_latent_on_every_rank():
    """Qwen3-235B-A22B: 94 layers x 2 (K, V) x 4 KV heads x 128 x 2 bytes = 192,512 B per token. TP 2 holds 2 of
    the 4 heads per GPU (half), TP 8 one head per GPU, replicated (a quarter, not an eighth). DeepSeek-R1 MLA: 61
    layers x (512 + 64) x 2 B = 70,272 B per token, whole on every GPU."""
    vllm = get_system("vllm")()
    for gpus, share in ((2, 0.5), (8, 0.25)):
        ctx = _ctx("qwen3-235b-a22b", gpus=gpus)
        m = ctx.model
        assert (m.num_layers, m.attention.num_kv_heads, m.attention.head_dim) == (94, 4, 128)
        assert kv_share_per_gpu(ctx) == share
        assert vllm._block_bytes(ctx, 2048) == pytest.approx(16 * 192_512 * share)
    ds = _ctx("deepseek-r1", gpus=8)
    assert kv_share_per_gpu(ds) == 1.0
    assert vllm._block_bytes(ds, 2048) == pytest.approx(16 * 61 * 576 * 2)
    assert kv_share_per_gpu(_ctx("gpt-oss-120b", gpus=8)) == pytest.approx(1 / 8)


# ---- sglang and trtllm -----------------------------------------------------------------------------------
def test_sglang_pool_is_mem_fraction_static_of_memory_less_weights():
    """SGLang's rule on an H200 (M = 143,156 MiB): TP 8 reserves 512 + 1.5 x 8192 + 2 x 512 (cuda_graph_max_bs at
    TP >= 4) + 128 x 8 = 14,848 MiB, f = round(128,308 / 143,156, 3) = 0.896; TP 2 reserves 512 + 12,288 + 512 +
    256 = 13,568 MiB, f = 0.905. KV pool per GPU = f M - W / n, in pages of 1 token."""
    ctx = _ctx("deepseek-r1", gpus=8)
    sg = get_system("sglang")()
    assert round(ctx.platform.gpu.memory_bytes / 2**20) == 143_156
    assert sg.mem_fraction(ctx) == 0.896 and sg.graph_max_bs(ctx) == 512 and sg.chunk(ctx) == 8192
    assert sg.capture_sizes(ctx)[:7] == (1, 2, 4, 8, 12, 16, 24) and sg.capture_sizes(ctx)[-1] == 512
    plan = sg.plan(ctx)
    expected = 0.896 * ctx.platform.gpu.memory_bytes - ctx.weight_bytes / 8
    block = 61 * 576 * 2  # one token of MLA latent, whole on every GPU
    assert plan.config["block_size"] == 1
    assert expected - block < plan.config["kv_pool_bytes_per_gpu"] <= expected
    assert get_system("sglang")().mem_fraction(_ctx("gpt-oss-120b", gpus=2)) == 0.905
    ours = get_system("sglang")({"mem_fraction_static": 0.7}).plan(ctx)
    assert ours.config["kv_pool_bytes_per_gpu"] < plan.config["kv_pool_bytes_per_gpu"]


def test_sglang_running_request_cap_is_its_request_pool():
    """SGLang's ModelRunner: cap = min(clip(T / L x 512, 2048, 4096), T // 2) per DP worker, T its KV tokens, L the
    model's context. DeepSeek-R1 on 8 H200 (L = 163,840): T ~ 720k tokens, T / L x 512 ~ 2251, within the clip;
    Qwen3-30B-A3B on one H200 (L = 40,960, T ~ 762k): ~9500 -> 4096. A pool of 3000 tokens caps at 1500 (T // 2);
    --max-running-requests 100 over 4 DP workers is 25 a worker."""
    import dataclasses

    ctx = _ctx("deepseek-r1", gpus=8)
    sg = get_system("sglang")()
    lay = sg._layout(ctx)
    tokens = lay.blocks  # page_size 1
    assert ctx.model.max_context_tokens == 163_840 and 700_000 < tokens < 740_000
    assert sg.rank_max_seqs(ctx, lay) == int(tokens / 163_840 * 512) and 2048 < sg.rank_max_seqs(ctx, lay) < 2400
    assert sg.rank_max_seqs(ctx, dataclasses.replace(lay, blocks=3000)) == 1500
    q = _ctx("qwen3-30b-a3b", gpus=1)
    qlay = sg._layout(q)
    assert qlay.blocks / q.model.max_context_tokens * 512 > 4096 and sg.rank_max_seqs(q, qlay) == 4096
    dp = get_system("sglang")({"max_running_requests": 100, "data_parallel_size": 4, "enable_dp_attention": True,
                               "expert_parallel_size": 4})
    dctx = _ctx("deepseek-v2-lite", gpus=4)
    assert dp.rank_max_seqs(dctx, dp._layout(dctx)) == 25
    many = Context(dctx.model, dctx.platform, OfflineWorkload(num_requests=1000, prompt_tokens=256, gen_tokens=64),
                   Options())
    assert dp.plan(many).config["batch_size"] == 100  # 25 a worker x 4, not 100 a worker


def test_trtllm_pool_is_its_fraction_of_the_memory_left_free():
    ctx = _ctx("gpt-oss-120b", gpus=2)
    plan = get_system("trtllm")().plan(ctx)
    p = ctx.platform
    free = p.gpu.memory_bytes - p.empirical.gpu_memory_reserved_bytes - ctx.weight_bytes / 2 - activation_bytes(ctx, 8192)
    block = plan.config["kv_pool_bytes_per_gpu"] / plan.config["kv_blocks"]
    assert plan.config["block_size"] == 32
    assert 0.9 * free - block < plan.config["kv_pool_bytes_per_gpu"] <= 0.9 * free
    defaults = get_system("trtllm").Params()
    assert (defaults.max_num_tokens, defaults.max_batch_size, defaults.free_gpu_memory_fraction) == (8192, 2048, 0.9)
    sizes = get_system("trtllm")().runtime(ctx).graph_sizes
    assert sizes == tuple(range(1, 32)) + (32, 64, 128)  # no padding: batch 40 runs eagerly


def test_engines_refuse_what_they_refuse():
    with pytest.raises(InfeasibleError, match="max_num_tokens"):
        get_system("trtllm")().plan(_ctx("gpt-oss-120b", gpus=2, prompt=16384))
    with pytest.raises(InfeasibleError, match="short by"):
        get_system("sglang")().plan(_ctx("deepseek-r1", hw="hgx-h100", gpus=4))
    with pytest.raises(InfeasibleError, match="divisible"):
        get_system("trtllm")().plan(_ctx("gpt-oss-120b", gpus=3))


def test_engine_params_are_cli_flags():
    out = subprocess.run([sys.executable, "-m", "moesim", "predict", "--model", "gpt-oss-120b", "--hw", "hgx-h200",
                          "--gpus", "2", "--system", "sglang", "--param", "mem_fraction_static=0.8", "--prompt",
                          "512", "--gen", "64", "--requests", "8", "--json"], capture_output=True, text=True,
                         timeout=120, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["system"] == "sglang" and data["config"]["params"]["mem_fraction_static"] == 0.8
    bad = subprocess.run([sys.executable, "-m", "moesim", "predict", "--model", "gpt-oss-120b", "--hw", "hgx-h200",
                          "--gpus", "2", "--system", "trtllm", "--prompt", "20000"], capture_output=True, text=True,
                         timeout=120, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert bad.returncode != 0 and "Traceback" not in bad.stderr


def test_vllm_enforce_eager_prices_as_before_and_graph_is_faster_at_small_batch():
    ctx = _ctx("gpt-oss-120b", gpus=2, gen=64)
    eager = get_system("vllm")({"enforce_eager": True}).plan(ctx)
    graph = get_system("vllm")().plan(ctx)
    assert graph.decode_time_per_batch_s < 0.7 * eager.decode_time_per_batch_s


# ---- the AIConfigurator validation module ------------------------------------------------------------------
def _module():
    return load_module("aiconfigurator")


def test_the_split_rule_is_fixed_by_gpu():
    mod = _module()
    held = ("h200_sxm", "b200_sxm", "gb200", "gb300", "b300_sxm", "mi300x")  # mi300x: InferenceX's runs only
    assert (mod.FIT_GPUS, mod.HELD_OUT_GPUS) == (("h100_sxm",), held)
    assert mod.split_of({"id": "a", "system": "h100_sxm"}) == "fit"
    for system in held:
        assert mod.split_of({"id": "b", "system": system}) == "held-out"
    with pytest.raises(ValueError):
        mod.split_of({"id": "d", "system": "mi355x"})


def test_aiconfigurator_golden_rows():
    """Four committed rows (tests/data): each maps to its scenario, carries its split, and is predicted within
    35% (TPOT) and 60% (TTFT) of what AIConfigurator measured; the disaggregated and expert-parallel rows are
    not expressed."""
    mod = _module()
    with open(ROWS, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [mod.expressible(r) is None for r in rows].count(True) == 4
    recs = mod.records(rows)
    assert {r.backend for r in recs} == {"vllm", "sglang", "trtllm"}
    assert {(r.gpu, r.split) for r in recs} == {("h100_sxm", "fit"), ("h200_sxm", "held-out")}
    by_id = {r.row_id: r for r in recs}
    sg = next(r for r in recs if r.backend == "sglang")
    assert (sg.model, sg.tp, sg.concurrency, sg.isl, sg.osl) == ("DeepSeek-R1", 8, 16, 1024, 1024)
    assert len(by_id) == 4
    for r in recs:
        assert abs(r.tpot_error) < 0.35, (r.row_id, r.tpot_error)
        assert abs(r.ttft_error) < 0.60, (r.row_id, r.ttft_error)
    assert all(math.isfinite(x["tpot_median_abs"]) for x in mod.summary(recs, ("backend",)))


def test_fp4_kinds_run_natively_only_on_fp4_tensor_cores():
    from moesim.costs import compute_dtype, needs_dequant
    from moesim.specs.common import BYTES_PER_ELEMENT

    h200 = moesim.get_hardware("hgx-h200").gpu
    b200 = moesim.get_hardware("hgx-b200").gpu
    assert BYTES_PER_ELEMENT["nvfp4"] == 0.5 + 1 / 16  # e2m1 + an e4m3 scale per 16 elements
    for kind in ("mxfp4", "nvfp4"):
        assert needs_dequant(kind, h200) and compute_dtype(kind, h200) == "bf16"
        assert compute_dtype(kind, b200) == "fp4" and not needs_dequant(kind, b200)
    assert moesim.get_model("deepseek-r1").quant_kind == "fp8_block"
    assert moesim.get_model("gpt-oss-120b").quant_kind == "mxfp4"


def test_trtllm_moe_backend_trtllm_runs_trtllm_gen_on_blackwell_only():
    """moe_config.backend TRTLLM (TensorRT-LLM-Gen's fused MoE) replaces the CUTLASS table's MoE on a B200 (its other
    kernels still from TensorRT-LLM's tables) and decodes NVFP4 DeepSeek-R1 faster at batch 4 (the table's CUTLASS
    grouped GEMM is launch- and tile-bound there); TensorRT-LLM refuses it on Hopper, and DEEPGEMM for non-fp8-block
    experts, each with its rule."""
    from moesim.errors import InfeasibleError
    from moesim.predict import plan_scenario

    def tpot(hw: str, dtype: str, backend: str) -> float:
        sc = moesim.Scenario(model="deepseek-r1", hardware=hw, system="trtllm", dtype=dtype, batch_size=4,
                             num_requests=4, prompt_tokens=1024, gen_tokens=64, system_params={"moe_backend": backend})
        _, plan, _, _ = plan_scenario(sc)
        return plan.decode_time_per_batch_s

    assert tpot("hgx-b200", "nvfp4", "TRTLLM") < tpot("hgx-b200", "nvfp4", "CUTLASS")
    with pytest.raises(InfeasibleError, match="Blackwell"):
        tpot("hgx-h200", "fp8", "TRTLLM")
    with pytest.raises(InfeasibleError, match="fp8 block-scaled experts only"):
        tpot("hgx-b200", "nvfp4", "DEEPGEMM")


def test_vllm_serving_defaults_follow_the_gpu_as_vllm_sets_them():
    """vLLM V1's `vllm serve` defaults (EngineArgs batch defaults): on a GPU of 70 GiB or more whose name is not an
    A100's, max_num_seqs 1024 and max_num_batched_tokens 8192; elsewhere 256 and 2048; V0 (no chunked prefill) 256
    sequences everywhere. Given values win. The CUDA graphs follow: up to min(2 max_num_seqs, 512)."""
    from moesim.systems.vllm import VLLM, VLLMParams

    v1, v0 = VLLM(VLLMParams()), VLLM(VLLMParams(chunked_prefill=False))
    for hw in ("hgx-h200", "hgx-h100", "hgx-b200"):
        ctx = _ctx("olmoe-1b-7b", hw)
        assert v1.large_gpu(ctx) and (v1.max_seqs(ctx), v1.token_budget(ctx)) == (1024, 8192)
        assert v1.knobs_for(ctx).max_seqs == 1024 and max(v1.runtime(ctx).graph_sizes) == 512
        assert v0.max_seqs(ctx) == 256
    for hw in ("dgx-a100-80gb", "rtx-4090-workstation"):  # an 80 GB A100 is excluded by name; a 24 GB GPU by memory
        ctx = _ctx("olmoe-1b-7b", hw)
        assert not v1.large_gpu(ctx) and (v1.max_seqs(ctx), v1.token_budget(ctx)) == (256, 2048)
    ctx = _ctx("olmoe-1b-7b")
    given = VLLM(VLLMParams(max_num_seqs=64, max_num_batched_tokens=4096))
    assert (given.max_seqs(ctx), given.token_budget(ctx)) == (64, 4096)
    assert max(given.runtime(ctx).graph_sizes) == 128


def test_sglang_defaults_follow_its_gpu_memory_tiers_and_dp_attention():
    """SGLang 0.5's ``_handle_gpu_memory_settings``: chunked_prefill_size and cuda_graph_max_bs by memory.total
    (RTX 4090: 2048 and 24 at TP 1; L40S: 4096 and 32; H200: 8192 and 256 at TP 2, 512 at TP 8; B200: 16384 and 512
    at any TP). With --enable-dp-attention each rank's step takes chunked_prefill_size // dp prompt tokens (a given
    size too), and the reserve grows by 3 MiB x cuda_graph_max_bs x dp (x 1.5 more above 300): H200 TP 8, dp 8,
    512 graph batches: 14848 + 12288 + 6144 MiB = 33280 MiB, f = (M - 33280) / M (M = 143156 MiB here)."""
    from moesim.systems.sglang import SGLang, SGLangParams

    eng = SGLang(SGLangParams())
    cases = {("rtx-4090-workstation", 1): (2048, 24), ("l40s-8gpu-server", 1): (4096, 32),
             ("hgx-h200", 2): (8192, 256), ("hgx-h200", 8): (8192, 512), ("hgx-b200", 2): (16384, 512)}
    for (hw, gpus), want in cases.items():
        ctx = _ctx("olmoe-1b-7b", hw, gpus=gpus)
        assert (eng.chunk(ctx), eng.graph_max_bs(ctx)) == want, hw
        assert eng.knobs_for(ctx).token_budget == want[0]
    ctx = _ctx("deepseek-r1", "hgx-h200", gpus=8)
    dpa = SGLang(SGLangParams(data_parallel_size=8, enable_dp_attention=True))
    assert dpa.rank_chunk(ctx) == 8192 // 8 and dpa.knobs_for(ctx).token_budget == 1024
    given = SGLang(SGLangParams(data_parallel_size=8, enable_dp_attention=True, chunked_prefill_size=32768))
    assert given.knobs_for(ctx).token_budget == 4096
    m = ctx.platform.gpu.memory_bytes / 2**20
    assert eng.mem_fraction(ctx) == round((m - 14848) / m, 3)
    assert dpa.mem_fraction(ctx) == round((m - 14848 - 3 * 512 * 8 - 1.5 * 512 * 8) / m, 3)


def test_sglang_with_mtp_runs_48_requests_unless_told():
    """SGLang's ServerArgs sets max_running_requests = 48 under EAGLE / NEXTN speculative decoding when it is not
    given; a given value (InferenceX's MTP script: 512) wins."""
    from moesim.systems.sglang import SGLang, SGLangParams

    ctx = _ctx("deepseek-r1", "hgx-h200", gpus=8)
    mtp = SGLang(SGLangParams(speculative_num_steps=2))
    lay = mtp._layout(ctx)
    assert mtp.rank_max_seqs(ctx, lay) == 48
    assert SGLang(SGLangParams(speculative_num_steps=2, max_running_requests=512)).rank_max_seqs(ctx, lay) == 512
    assert SGLang(SGLangParams()).rank_max_seqs(ctx, lay) >= 2048 // 2


def test_a_batch_above_the_engines_own_cap_says_it_overrides_it():
    """--batch acts as the engine's running cap; above the engine's own (SGLang under MTP: 48) the prediction says
    so, and runs the batch asked."""
    p = moesim.predict(model="deepseek-r1", hardware="hgx-h200", system="sglang", num_gpus=8, batch_size=128,
                       num_requests=512, system_params={"speculative_num_steps": 2})
    assert any("batch 128 asked: taken as max_running_requests, above SGLang's own 48" in a for a in p.assumptions)
    assert p.config["batch_size"] == 128
