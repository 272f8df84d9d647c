"""End-to-end predictions: physical bounds, monotonicity, memory, metric ranges."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import moesim
from moesim import metrics
from moesim.errors import InfeasibleError, MoesimError
from moesim.modules import Context, Options
from moesim.predict import plan_for
from moesim.specs import OfflineWorkload

SYSTEMS = ["gpu-resident", "moe-gen"]
SMALL = {"num_requests": 64, "prompt_tokens": 128, "gen_tokens": 32}


@pytest.fixture(scope="module")
def workstation():
    return moesim.get_hardware("rtx4090")


def _plan(model, platform, system, workload=SMALL):
    return plan_for(moesim.get_model(model), platform, system, OfflineWorkload(**workload), Options())


def test_headline_prediction_runs(workstation):
    p = moesim.predict("deepseek-r1", workstation)
    assert p.system == "moe-gen" and p.throughput_tok_s > 0
    assert "gpu-resident" in p.systems_compared and p.systems_compared["gpu-resident"].startswith("infeasible")
    assert any("no calibration measurements; conservative profile" in a for a in p.assumptions)


@given(factor=st.floats(1.0, 8.0), resource=st.sampled_from(["pcie", "hbm", "gpu_flops", "host_bw"]))
@settings(max_examples=12, deadline=None)
def test_more_bandwidth_or_flops_never_lowers_throughput(workstation, factor, resource):
    base = moesim.predict("mixtral-8x7b", workstation, "moe-gen", SMALL)
    better = moesim.predict("mixtral-8x7b", workstation.scaled(**{resource: factor}), "moe-gen", SMALL)
    assert better.throughput_tok_s >= base.throughput_tok_s * (1 - 1e-9)


@pytest.mark.parametrize("model", ["mixtral-8x7b", "deepseek-r1"])
def test_metrics_in_unit_interval_and_memory_within_capacity(workstation, model):
    p = moesim.predict(model, workstation, "moe-gen", SMALL)
    assert 0 < p.s_mbu <= 1 and 0 < p.s_mfu <= 1 and 0 < p.prefill_s_mfu <= 1
    assert p.gpu_mem_bytes <= workstation.usable_gpu_memory_bytes_per_gpu
    assert p.host_mem_bytes <= workstation.usable_host_memory_bytes
    assert all(0 <= u <= 1 for u in p.utilization.values())


def test_moe_gen_decode_bounded_by_pcie(workstation):
    """Each decode step must stream every activated expert over PCIe at least once."""
    ctx, plan, _ = _plan("mixtral-8x7b", workstation, "moe-gen")
    _, step = plan.mid_decode
    m = ctx.model
    streamed = m.num_moe_layers * ctx.active_experts(plan.batch_size) * ctx.expert_weight_bytes
    assert step.time_s >= streamed / workstation.host_link.h2d_pinned_bytes_per_s


def test_moe_gen_overlaps_expert_copies_with_compute(workstation):
    ctx, plan, _ = _plan("mixtral-8x7b", workstation, "moe-gen")
    tasks = plan.mid_decode[1].engine.tasks
    copies = [t for t in tasks if t.resource == "h2d" and "experts" in t.name]
    computes = [t for t in tasks if t.resource == "gpu" and t.category == "experts"]
    overlapped = any(c.start_s < k.end_s and k.start_s < c.end_s for c in copies for k in computes)
    assert overlapped


def test_s_mbu_consistent_with_tpot(workstation):
    p = moesim.predict("mixtral-8x7b", workstation, "moe-gen", SMALL)
    ctx = Context(moesim.get_model("mixtral-8x7b"), workstation, OfflineWorkload(**SMALL), Options())
    # S-MBU * step time * bandwidth = bytes moved; recompute the bytes independently of the prediction
    batch = p.config["batch_size"]
    mid_ctx = SMALL["prompt_tokens"] + SMALL["gen_tokens"] // 2
    moved = metrics.activated_weight_bytes(ctx, batch) + metrics.kv_read_bytes(ctx, batch, mid_ctx)
    # the peak is that of the devices that read: the GPU, plus host DRAM when the CPU attends over some KV (omega)
    cpu_reads = round(p.config["cpu_attention_fraction"] * batch) > 0
    peak = workstation.gpu.memory_bandwidth_bytes_per_s + (workstation.host_memory_bandwidth_bytes_per_s
                                                          if cpu_reads else 0.0)
    implied_step = moved / (p.s_mbu * peak)
    assert implied_step == pytest.approx(p.tpot_s, rel=0.25)  # mid-step vs Simpson mean


def test_gpu_resident_infeasible_says_by_how_much(workstation):
    with pytest.raises(InfeasibleError, match=r"short by \d"):
        moesim.predict("mixtral-8x7b", workstation, "gpu-resident", SMALL)


def test_fixed_batch_respected(workstation):
    p = moesim.predict("mixtral-8x7b", workstation, "moe-gen", {**SMALL, "batch_size": 16})
    assert p.config["batch_size"] == 16


def test_prompt_longer_than_context_rejected(workstation):
    with pytest.raises(InfeasibleError, match="exceeds"):
        moesim.predict("mixtral-8x7b", workstation, "moe-gen", {"prompt_tokens": 40000, "gen_tokens": 10})


def test_larger_decode_batch_amortizes_expert_streaming(workstation):
    small = moesim.predict("mixtral-8x7b", workstation, "moe-gen", {**SMALL, "batch_size": 8})
    large = moesim.predict("mixtral-8x7b", workstation, "moe-gen", {**SMALL, "batch_size": 64})
    assert large.decode_tok_s > 4 * small.decode_tok_s


def test_trace_written(tmp_path, workstation):
    path = tmp_path / "step.json"
    moesim.predict("mixtral-8x7b", workstation, "moe-gen", SMALL, trace_path=path)
    assert path.stat().st_size > 1000


def test_speculative_decoding_pays_at_small_batch_and_is_bounded():
    base = moesim.predict("mixtral-8x7b", "h100-sxm", "gpu-resident", {"num_requests": 8, "batch_size": 8},
                          num_gpus=2)
    spec = moesim.predict("mixtral-8x7b", "h100-sxm", "gpu-resident", {"num_requests": 8, "batch_size": 8},
                          num_gpus=2, speculative={"draft_model": "olmoe-1b-7b", "num_tokens": 3,
                                                   "acceptance_rate": 0.7})
    tau = (1 - 0.7 ** 4) / (1 - 0.7)
    assert base.decode_tok_s < spec.decode_tok_s < tau * base.decode_tok_s


def test_speculative_decoding_on_a_system_without_it_is_a_clear_error():
    with pytest.raises(MoesimError, match="not modelled for moe-gen"):
        moesim.predict("mixtral-8x7b", "c2", "moe-gen", {"num_requests": 64},
                       speculative={"draft_model": "olmoe-1b-7b"})


def test_pruning_experts_and_top_k_never_slow_gpu_resident_decode():
    full = moesim.predict("mixtral-8x7b", "h100-sxm", "gpu-resident", {"num_requests": 64}, num_gpus=2)
    top1 = moesim.predict("mixtral-8x7b", "h100-sxm", "gpu-resident", {"num_requests": 64}, num_gpus=2, top_k=1)
    fewer = moesim.predict("mixtral-8x7b", "h100-sxm", "gpu-resident", {"num_requests": 64}, num_gpus=2,
                           num_experts=4)
    assert top1.decode_tok_s > full.decode_tok_s and fewer.decode_tok_s >= full.decode_tok_s


def test_measured_histogram_skew_activates_fewer_experts(tmp_path):
    hist = tmp_path / "hist.json"
    hist.write_text(json.dumps({"counts": [1000, 500, 50, 10, 5, 2, 1, 1]}))
    uniform = moesim.predict("mixtral-8x7b", "c2", "moe-gen", {"num_requests": 4, "batch_size": 4})
    skewed = moesim.predict("mixtral-8x7b", "c2", "moe-gen", {"num_requests": 4, "batch_size": 4},
                            expert_popularity=str(hist))
    assert skewed.decode_tok_s > uniform.decode_tok_s
    with pytest.raises(MoesimError, match="8 non-negative counts"):
        moesim.predict("mixtral-8x7b", "c2", "moe-gen", expert_popularity=[1, 2, 3])


@pytest.mark.parametrize("kv_copy", ["context", "reserved"])
def test_moe_gen_kv_copies_hold_the_context_or_the_reserved_slot(kv_copy):
    """GPU attention copies each micro-batch's KV H2D per layer: seqs x tokens x kv bytes per token per layer,
    with tokens = the current context ("context") or prompt + max decode ("reserved")."""
    from moesim.modules import Context, Options
    from moesim.specs import OfflineWorkload
    from moesim.systems import get_system

    model, hw = moesim.get_model("mixtral-8x7b"), moesim.get_hardware("c2")
    work = OfflineWorkload(num_requests=256, prompt_tokens=512, gen_tokens=256)
    ctx = Context(model, hw, work, Options())
    plan = get_system("moe-gen-gpu")({"kv_copy": kv_copy, "attention_micro_batch": 64}).plan(ctx)
    per_token_layer = 2 * 8 * 128 * 2.0  # K and V, 8 KV heads x 128 x bf16
    for context, step in plan.decode_points:
        copies = [t for t in step.engine.tasks if t.name.startswith("L0 KV H2D")]
        tokens = context if kv_copy == "context" else 512 + 256
        assert copies and sum(t.bytes for t in copies) == pytest.approx(plan.batch_size * tokens * per_token_layer)


def test_moe_gen_host_kv_reservation_spills_weights_to_disk_read_synchronously():
    """host_kv_bytes reserves host memory for KV; weights that no longer fit are paged in from disk by the
    copy engine: each disk read starts only after the previous weight copy (the faulting copy thread)."""
    from moesim.modules import Context, Options
    from moesim.specs import OfflineWorkload
    from moesim.systems import get_system

    hw, model = moesim.get_hardware("c2"), moesim.get_model("deepseek-r1")
    ctx = Context(model, hw, OfflineWorkload(num_requests=64, prompt_tokens=512, gen_tokens=16), Options())
    kv = 50 * 2**30
    system = get_system("moe-gen")({"host_kv_bytes": kv, "attention_micro_batch": 32})
    in_host, on_disk, kv_room = system._host_layout(ctx)
    assert in_host == pytest.approx(hw.usable_host_memory_bytes - kv)
    assert on_disk == pytest.approx(ctx.weight_bytes - in_host) and kv_room == pytest.approx(kv)
    plan = system.plan(ctx)
    tasks = plan.mid_decode[1].engine.tasks
    weight_copy_ids = {t.id for t in tasks if t.resource == "h2d" and "KV" not in t.name}
    disk = [t for t in tasks if t.resource == "disk"]
    assert len(disk) > 1 and not disk[0].deps  # only the very first read has no weight copy before it
    for d in disk[1:]:
        (dep,) = d.deps
        assert dep in weight_copy_ids and d.start_s >= tasks[dep].end_s - 1e-12


def test_moe_gen_resident_shared_experts_are_held_not_copied():
    """resident_shared_experts: each layer copies only its attention weights, the shared experts of
    every MoE layer are held on the GPU for the whole pass, and the step is no slower."""
    from moesim.systems import get_system

    model, hw = moesim.get_model("deepseek-v2-lite"), moesim.get_hardware("h200")
    ctx = Context(model, hw, OfflineWorkload(num_requests=256, prompt_tokens=512, gen_tokens=16), Options())
    streamed, resident = (get_system("moe-gen")({"resident_shared_experts": r}) for r in (False, True))
    a, b = (s.simulate_pass(ctx, 256, 1, 512, 64) for s in (streamed, resident))
    copied = lambda sim: {t.bytes for t in sim.engine.tasks if t.name.endswith("attention weights H2D")
                          and t.name.startswith("L1 ")}
    assert copied(a) == {ctx.attention_weight_bytes + ctx.shared_weight_bytes}
    assert copied(b) == {ctx.attention_weight_bytes}
    held = [buf for buf in b.engine.buffers if buf.label == "shared experts (resident)"]
    assert len(held) == 1 and held[0].nbytes == model.num_moe_layers * ctx.shared_weight_bytes
    assert not [buf for buf in a.engine.buffers if buf.label == "shared experts (resident)"]
    assert b.time_s <= a.time_s
    # both are planned, with their own memoised passes
    assert streamed.plan(ctx).gpu_mem_bytes < resident.plan(ctx).gpu_mem_bytes


def test_moe_gen_moe_layer_alone_is_the_moe_part_of_its_pass():
    """simulate_moe_layer submits the tasks a pass submits after each layer's attention: the same
    router, copies and expert chunks, durations and bytes (the calibration's offloaded-layer cases)."""
    from moesim.systems import get_system

    model, hw = moesim.get_model("mixtral-8x7b"), moesim.get_hardware("h200")
    ctx = Context(model, hw, OfflineWorkload(num_requests=1024, prompt_tokens=512, gen_tokens=16), Options())
    system = get_system("moe-gen")({"max_tasks_per_module": 8})
    alone = system.simulate_moe_layer(ctx, 1024)
    sim = system.simulate_pass(ctx, 1024, 1, 1, 1024)
    in_pass = [t for t in sim.engine.tasks if t.name.startswith("L0 router") or t.name.startswith("L0 experts")]
    assert [(t.name, t.resource, t.duration_s, t.bytes) for t in alone.tasks] == \
        [(t.name, t.resource, t.duration_s, t.bytes) for t in in_pass]
    # the router's kernels, a copy and a compute per chunk; the host's Python around them (MoE-Gen's driver)
    by_resource = {r: sum(t.resource == r for t in alone.tasks) for r in ("gpu", "h2d", "host")}
    assert by_resource == {"gpu": 1 + 8, "h2d": 8, "host": 2 + 8}
    assert alone.makespan_s > 8 * ctx.h2d_s(ctx.expert_weight_bytes)


@pytest.mark.parametrize("n,expect", [
    (12, "12 requests in 3 equal batches of 4; one batch simulated"),
    (10, "10 requests in 2 batches of 4 (one simulated) and a last of 2, simulated at its own size"),
])
def test_batches_note_follows_how_the_plan_priced_the_last_batch(n, expect):
    """transformers prices a last, partial batch at its own size (Plan.last_batch_partial): the note says so, and
    says equal batches only when they are."""
    p = moesim.predict("qwen3-30b-a3b", "h200", "transformers", {"num_requests": n, "gen_tokens": 8, "batch_size": 4})
    assert expect in p.assumptions
    assert not any("equal batches" in a for a in p.assumptions if a != expect)


def test_batches_note_says_when_the_last_batch_is_charged_full():
    """The continuous-batching engines price R requests as waves of the running batch (the last wave a full one);
    every static-batch system prices a partial last batch at its own size (tests/test_partial_last_batch.py)."""
    p = moesim.predict("mixtral-8x7b", "h200", "vllm", {"num_requests": 10, "gen_tokens": 8, "batch_size": 4})
    assert any("priced as 3 full batches of 4 (12 sequence slots" in a for a in p.assumptions)
