"""The model-based-batching baselines: deepspeed (ZeRO-Inference), flexgen (LP + zig-zag), moe-lightning (CGOPipe)."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import moesim
from moesim.errors import InfeasibleError
from moesim.modules import Context, Options
from moesim.specs import OfflineWorkload
from moesim.systems import get_system
from moesim.systems.flexgen import FlexGen

SYSTEMS = ("deepspeed", "flexgen", "moe-lightning")
WORK = {"num_requests": 512, "prompt_tokens": 512, "gen_tokens": 64}


@pytest.fixture(scope="module")
def c2():
    return moesim.get_hardware("c2")


@pytest.mark.parametrize("system", SYSTEMS)
def test_runs_end_to_end_on_mixtral_c2_within_memory(system, c2):
    p = moesim.predict("mixtral-8x7b", c2, system, WORK)
    assert p.system == system
    assert p.decode_tok_s > 0 and p.prefill_tok_s > 0 and p.throughput_tok_s > 0
    assert 0 < p.gpu_mem_bytes <= c2.usable_gpu_memory_bytes_per_gpu * (1 + 1e-9)
    assert 0 < p.host_mem_bytes <= c2.usable_host_memory_bytes * (1 + 1e-9)
    assert p.config["batch_size"] >= 1


@pytest.mark.parametrize("system", SYSTEMS)
@given(model=st.sampled_from(["mixtral-8x7b", "olmoe-1b-7b"]),
       requests=st.sampled_from([32, 512, 8500]), gen=st.sampled_from([16, 256]))
@settings(max_examples=5, deadline=None)
def test_doubling_pcie_never_lowers_throughput(system, model, requests, gen, c2):
    work = {"num_requests": requests, "prompt_tokens": 512, "gen_tokens": gen}
    # the oracle of the systems with their own policy search: their as-deployed optimizer sees the faster link
    # too and may pick a policy that moesim's physics runs slower (as the real software may)
    best = {"policy": "best"} if system in ("flexgen", "moe-lightning") else None
    base = moesim.predict(model, c2, system, work, system_params=best)
    faster = moesim.predict(model, c2.scaled(pcie=2.0), system, work, system_params=best)
    assert faster.throughput_tok_s >= base.throughput_tok_s * (1 - 1e-9)


def test_flexgen_lp_fractions_sum_to_one_per_group(c2):
    ctx = Context(moesim.get_model("mixtral-8x7b"), c2, OfflineWorkload(**WORK), Options())
    fg = FlexGen()
    solved = [pol for gbs, nb in ((1, 1), (8, 4), (32, 16)) for deleg in (False, True)
              if (pol := fg.solve_policy(ctx, gbs, nb, deleg)) is not None]
    assert solved
    for pol in solved:
        for group in (("wg", "wc", "wd"), ("cg", "cc", "cd"), ("hg", "hc", "hd")):
            values = [pol.fractions[k] for k in group]
            assert all(0.0 <= v <= 1.0 for v in values)
            assert math.isclose(sum(values), 1.0, abs_tol=1e-9)
        assert pol.fractions["hd"] == 0.0  # FlexGen's runtime keeps no activations on disk
        assert pol.lp_block_time_s > 0


def test_flexgen_reports_its_placement_and_batches(c2):
    p = moesim.predict("mixtral-8x7b", c2, "flexgen", WORK)
    cfg = p.config
    assert cfg["batch_size"] == cfg["gpu_batch_size"] * cfg["num_gpu_batches"]
    for group in ("w", "c", "h"):
        assert math.isclose(sum(cfg[group + t] for t in "gcd"), 1.0, abs_tol=1e-3)


def test_deepspeed_streams_every_expert_and_is_batch_limited_by_gpu_memory(c2):
    """Model-based batching: the batch is set by GPU memory, next to ZeRO-3's live fetched parameters - ZeRO-
    Inference's caps, stage3_max_live_parameters + stage3_prefetch_bucket_size = (2 + 2) h^2 elements, i.e.
    4 x 4096^2 x 2 B = 134,217,728 bytes for Mixtral-8x7B, far below a layer (8 experts x 352 MB)."""
    model = moesim.get_model("mixtral-8x7b")
    p = moesim.predict(model, c2, "deepspeed", {"num_requests": 8500, "prompt_tokens": 512, "gen_tokens": 256})
    assert p.config["live_weight_bytes"] == 134_217_728
    assert p.config["live_weight_bytes"] < model.moe.num_experts * model.expert_params * 2.0
    assert p.config["batch_size"] == p.config["max_batch_that_fits"] < 8500
    # a bf16 softmax materialises smaller score matrices than fp32: never a smaller batch
    bf16 = get_system("deepspeed")({"attention_score_dtype": "bf16"}).plan(
        Context(model, c2, OfflineWorkload(num_requests=8500, prompt_tokens=512, gen_tokens=256), Options()))
    assert bf16.batch_size >= p.config["batch_size"]


def test_deepspeed_deepseek_caches_per_head_kv_and_fetches_only_the_experts_that_run(c2):
    """Hugging Face's DeepSeek code caches per-head K and V: 60 x 128 x (192 + 128) x 2 B = 4,915,200 B per token,
    so a 768-token sequence holds 3.77 GB of KV and only a few fit on a 24 GB GPU; its moe_infer skips experts no
    token was routed to, so ZeRO-3 copies attention + shared + E_active(B) experts per decode layer, not 160."""
    ds = get_system("deepspeed")({"transformers": "4.42"})
    ctx = Context(moesim.get_model("deepseek-v2"), c2, OfflineWorkload(num_requests=8500, prompt_tokens=512,
                                                                       gen_tokens=256), Options(mla_absorbed=False))
    assert ds._kv_bytes_per_token(ctx, 768) == 60 * 128 * (192 + 128) * 2
    plan = ds.plan(ctx)
    assert 1 <= plan.config["batch_size"] <= (25.3e9 - 0.4e9) // (768 * 4_915_200)
    kind = next(k for k in ctx.model.layer_kinds() if k.moe)
    b = plan.config["batch_size"]
    fetched = ds._fetched_layer_bytes(ctx, kind, b)
    active = 160 * (1 - (1 - 6 / 160) ** b)  # uniform routing, top-6 of 160
    expected = ctx.attention_weight_bytes + ctx.shared_weight_bytes + active * ctx.expert_weight_bytes
    assert fetched == pytest.approx(expected, rel=0.02)
    assert fetched < 0.5 * (ctx.attention_weight_bytes + 160 * ctx.expert_weight_bytes)
    # Mixtral's MoE block is treated as calling every expert
    mctx = Context(moesim.get_model("mixtral-8x7b"), c2, ctx.workload, Options())
    mkind = next(k for k in mctx.model.layer_kinds() if k.moe)
    assert ds._fetched_layer_bytes(mctx, mkind, 1) == mctx.attention_weight_bytes + 8 * mctx.expert_weight_bytes


def test_moe_lightning_runs_attention_on_the_cpu_with_kv_in_host_memory(c2):
    p = moesim.predict("mixtral-8x7b", c2, "moe-lightning", WORK)
    assert p.config["attention_on_gpu"] is False and p.config["gpu_kv_fraction"] == 0.0
    assert 0.0 <= p.config["gpu_weight_fraction"] <= 1.0
    assert p.config["batch_size"] == p.config["micro_batch_size"] * p.config["num_micro_batches"]
    assert p.decode_step_breakdown_s.get("cpu", 0.0) > 0


@pytest.mark.parametrize("system", SYSTEMS)
def test_weights_that_do_not_fit_in_host_memory_are_infeasible_or_on_disk(system, c2):
    """DeepSeek-R1's 671 GB of FP8 weights exceed C2's host memory: DeepSpeed and MoE-Lightning keep all
    weights in pinned host memory and fail saying by how much; FlexGen may put the rest on disk."""
    work = {"num_requests": 64, "prompt_tokens": 512, "gen_tokens": 16}
    if system == "flexgen":
        p = moesim.predict("deepseek-r1", c2, system, work, system_params={"policy": "best"})
        assert p.config["wd"] > 0 or p.config["cd"] > 0
        # FlexGen's own search double-buffers two layers (45 GB of R1's experts) on the GPU: it finds nothing
        with pytest.raises(InfeasibleError, match="FlexGen's policy search finds no placement"):
            moesim.predict("deepseek-r1", c2, system, work)
        return
    with pytest.raises(InfeasibleError, match="short by"):
        moesim.predict("deepseek-r1", c2, system, work)


@pytest.mark.parametrize("system", SYSTEMS)
def test_multi_gpu_platforms_are_refused(system):
    with pytest.raises(InfeasibleError, match="one GPU"):
        moesim.predict("mixtral-8x7b", moesim.get_hardware("h100-sxm", num_gpus=2), system, WORK)


def test_moe_lightning_one_prefill_pass_batch_fits_the_gpu_at_prefill(c2):
    """MoE-Lightning* (MoE-Gen's re-implementation): the decode batch is prefilled in one pass, so it is
    bounded by GPU memory at prefill, not by host memory; one more sequence would not fit."""
    work = {"num_requests": 8500, "prompt_tokens": 512, "gen_tokens": 256}
    free = moesim.predict("mixtral-8x7b", c2, "moe-lightning", work)
    one = moesim.predict("mixtral-8x7b", c2, "moe-lightning", work, system_params={"one_prefill_pass": True})
    assert one.config["prefill_prompts_per_pass"] == one.config["batch_size"] < free.config["batch_size"]
    assert one.gpu_mem_bytes <= c2.usable_gpu_memory_bytes_per_gpu * (1 + 1e-9)
    sys_ = get_system("moe-lightning")({"one_prefill_pass": True})
    ctx = Context(moesim.get_model("mixtral-8x7b"), c2, OfflineWorkload(**work), Options())
    n = one.config["batch_size"]
    assert sys_._one_pass_cap(ctx, 10 * n) == n


def test_deepspeed_sdpa_drops_the_score_matrix_from_the_prefill_peak(c2):
    """Eager attention holds heads x P x P scores (bf16 + fp32 softmax = 6 B each) per prompt; SDPA none."""
    work = OfflineWorkload(num_requests=8500, prompt_tokens=512, gen_tokens=256)
    ctx = Context(moesim.get_model("mixtral-8x7b"), c2, work, Options())
    eager = get_system("deepspeed")({"attention": "eager", "logits_all_positions": True})
    sdpa = get_system("deepspeed")({"attention": "sdpa", "logits_all_positions": True})
    from moesim.systems.shared.memory import activation_bytes

    scores = 32 * 512 * 512 * 6.0  # Mixtral: 32 query heads
    kv = 512 * 32 * 2 * 8 * 128 * 2.0  # prompt x layers x (K, V) x 8 KV heads x 128 x bf16
    logits = 512 * 32000 * 6.0  # every prompt position, bf16 then fp32
    act = activation_bytes(ctx, 512)
    assert eager._per_seq_bytes(ctx)[0] == pytest.approx(kv + max(scores + act, logits))
    assert sdpa._per_seq_bytes(ctx)[0] == pytest.approx(kv + max(act, logits))
    assert sdpa._max_batch(ctx) >= eager._max_batch(ctx)
    p_e = moesim.predict("mixtral-8x7b", c2, "deepspeed", work, system_params={"attention": "eager"})
    p_s = moesim.predict("mixtral-8x7b", c2, "deepspeed", work, system_params={"attention": "sdpa"})
    assert p_s.decode_tok_s >= p_e.decode_tok_s


def test_hf_prefill_logits_and_eager_scores_bound_the_reimplementations_batches(c2):
    """FlexGen* / MoE-Lightning* on Hugging Face code: fp32 logits at all P prompt positions (P x vocab x 6 B
    per prompt) and, for DeepSeek, eager fp32 scores (heads x P x P x 6 B) in the prefill working set."""
    work = OfflineWorkload(num_requests=8500, prompt_tokens=512, gen_tokens=256)
    ctx = Context(moesim.get_model("deepseek-v2"), c2, work, Options(mla_absorbed=False))
    logits = 512 * 102400 * 6.0
    fg = get_system("flexgen")({"logits_all_positions": True})
    fg0 = get_system("flexgen")({})
    assert fg._gpu_work_bytes(ctx, 4) == pytest.approx(max(fg0._gpu_work_bytes(ctx, 4), 4 * logits))
    eager = get_system("moe-lightning")({"prefill_attention": "eager"})
    flash = get_system("moe-lightning")({})
    scores = 128 * 512 * 512 * 6.0
    assert eager._chunk_transient_bytes(ctx, 2) - flash._chunk_transient_bytes(ctx, 2) == pytest.approx(2 * scores)
    hf = get_system("moe-lightning")({"logits_all_positions": True})
    assert hf._chunk_transient_bytes(ctx, 2) == pytest.approx(max(flash._chunk_transient_bytes(ctx, 2), 2 * logits))
