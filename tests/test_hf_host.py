"""The host Python of Hugging Face / PyTorch eager code per decoder layer and micro-batch (systems/shared/hf_host.py):
its equation by hand, the counts of the code each system runs, the host thread's scheduling on the engine, and each
offloader charging it where its code runs that Python."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import moesim
from moesim.db import system_constants
from moesim.db.resolve import get_hardware, get_model
from moesim.engine import Engine
from moesim.modules import Context, Options
from moesim.specs import OfflineWorkload
from moesim.systems.deepspeed import DeepSpeed
from moesim.systems.flexgen import FlexGen, FlexGenPolicy
from moesim.systems.moe_gen import MoEGen
from moesim.systems.moe_lightning import MoELightning
from moesim.systems.shared.hf_host import (NONE, HostRates, Python, PythonThread, decoder_python, head_python,
                                           host_rates, transformers_517)
from moesim.systems.transformers import Transformers

ROOT = Path(__file__).resolve().parents[1]
RATES = HostRates(torch_call_s=1e-5, module_call_s=2e-6, host_read_s=1.2e-5, decoder_layer_host_s=2e-4,
                  forward_host_s=2e-3)


def _ctx(model: str, hw: str = "c2", seqs: int = 8, prompt: int = 128, gen: int = 8, **options) -> Context:
    return Context(get_model(model), get_hardware(hw),
                   OfflineWorkload(num_requests=seqs, prompt_tokens=prompt, gen_tokens=gen), Options(**options))


def _tf(key: str) -> float:
    return float(system_constants("transformers").value(key))


def _sh(key: str) -> float:
    return float(system_constants("shared").value(key))


# ---- the equation ------------------------------------------------------------------------------------------------
def test_host_seconds_by_hand():
    """t = fixed + layers L + forwards F + calls c + modules m + reads r."""
    py = Python(calls=10, modules=2, reads=3, layers=1, forwards=1, fixed_s=0.5)
    assert RATES.seconds(py) == pytest.approx(0.5 + 2e-4 + 2e-3 + 10e-5 + 4e-6 + 3.6e-5, rel=1e-12)
    assert RATES.seconds(NONE) == 0.0


def test_rates_are_the_transformers_systems_measured_constants():
    """One measured price: the shared module reads transformers.yaml (not a copy), and a getter with a fit's
    candidate values (the transformers system's overrides) changes them."""
    r = host_rates()
    assert (r.torch_call_s, r.module_call_s, r.host_read_s, r.decoder_layer_host_s, r.forward_host_s) == \
        tuple(_tf(k) for k in ("torch_call_s", "module_call_s", "host_read_s", "decoder_layer_host_s", "forward_host_s"))
    assert host_rates(lambda k: 1e-3 if k == "torch_call_s" else _tf(k)).torch_call_s == 1e-3


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1e4), min_size=6, max_size=6), st.lists(st.floats(0, 1e4), min_size=6, max_size=6),
       st.floats(0, 100))
def test_host_seconds_add_and_scale(a, b, k):
    pa, pb = Python(*a), Python(*b)
    assert RATES.seconds(pa + pb) == pytest.approx(RATES.seconds(pa) + RATES.seconds(pb), rel=1e-9, abs=1e-12)
    assert RATES.seconds(k * pa) == pytest.approx(k * RATES.seconds(pa), rel=1e-9, abs=1e-12)
    assert RATES.seconds(pa) >= 0


# ---- the counts of the code each system runs --------------------------------------------------------------------
def test_mixtral_on_transformers_4_42_loops_over_every_expert():
    """transformers 4.42's Mixtral layer: RMSNorm 8 calls x2, residual adds 2, SDPA attention 48, router 7, the block
    4, and per expert - every one of the 8, whatever the routing - 8 loop calls + the MLP's 5 and one read."""
    py = decoder_python(get_model("mixtral-8x7b"), "4.42")
    assert py.loop_all_experts and py.loop_reads
    layer = py.layer(True, 2.0, 8)  # two experts hit: the loop still runs all eight
    assert layer.calls == 8 + 48 + (8 + 2) + 7 + 4 + 8 * (8 + 5)
    assert layer.reads == 8 and layer.layers == 1
    assert (_sh("hf442_attention_calls"), _sh("hf442_expert_loop_calls")) == (48, 8)


def test_deepseek_remote_code_reads_once_and_runs_the_experts_hit():
    """DeepSeek-V2 (q_lora): MLA attention 68 + 9, group-limited gate 18, moe_infer's 24 calls and one read, per
    expert hit a slice and its MLP, the shared MLP and its add."""
    m = get_model("deepseek-v2")
    assert m.attention.q_lora_rank
    py = decoder_python(m, "4.42")
    assert not py.loop_all_experts and not py.loop_reads
    layer = py.layer(True, 10.0, m.moe.num_experts)
    assert layer.calls == 8 + (68 + 9) + (8 + 2) + 18 + 24 + 10 * (1 + 5) + (5 + 1)
    assert layer.reads == 1


def test_transformers_517_counts_are_the_transformers_systems():
    """The transformers system charges exactly these counts: a batched_mm decode step of OLMoE by hand (the same
    figure as tests/test_transformers_system.py's, through the shared module)."""
    m = get_model("olmoe-1b-7b")
    sys_ = Transformers()
    r, py = host_rates(), transformers_517(m, "batched_mm", _tf, system_constants("transformers").names)
    layer = (py.pre_norm + py.attention + py.post_norm + py.router + py.experts(0.0, m.moe.num_experts)
             + py.shared + py.shared_gate)
    expected = (r.seconds(Python(forwards=1)) + 16 * r.seconds(layer) + r.seconds(head_python())
                + _tf("generate_step_calls") * r.torch_call_s + _tf("generate_step_host_s"))
    clk = sys_.forward_s(_ctx("olmoe-1b-7b", "h200"), 4, 1, 200, "batched_mm", generate_step=True)
    assert clk.host_busy_s == pytest.approx(expected, rel=1e-9)


# ---- the host thread on the engine -----------------------------------------------------------------------------
def test_a_module_starts_its_kernels_after_the_first_call_and_a_read_waits_for_them():
    eng = Engine()
    host = PythonThread(eng, RATES)
    g = host.module("attention", 1e-3, "gpu", 5e-3, category="attention", read_after=True)
    assert eng.tasks[g].start_s == pytest.approx(RATES.torch_call_s)  # issued by the first call
    assert eng.end_of(host.last_host) == pytest.approx(1e-3)  # the rest of the Python beside the kernels
    nxt = host.python("after the read", 1e-4)
    assert eng.tasks[nxt].start_s == pytest.approx(RATES.torch_call_s + 5e-3)  # waited for the GPU
    assert eng.makespan_s == pytest.approx(RATES.torch_call_s + 5e-3 + 1e-4)


def test_a_loop_reading_the_gpu_every_iteration_overlaps_nothing():
    """Python then kernels then the host waits: host + GPU, after the GPU work issued before (and its copy)."""
    eng = Engine()
    host = PythonThread(eng, RATES)
    first = host.module("router", 1e-5, "gpu", 2e-3, category="router")
    copy = eng.add("weights H2D", "h2d", 4e-3)
    g = host.serial("experts", 3e-3, 1e-3, [first], category="experts", host_deps=(copy,))
    assert eng.tasks[g].end_s == pytest.approx(4e-3 + 3e-3 + 1e-3)  # the copy, the loop's Python, its kernels
    assert host.block == g


# ---- each offloader charges it where its code runs it -------------------------------------------------------------
def _host_tasks(sim) -> list:
    return [t for t in sim.engine.tasks if t.resource == "host"]


def test_deepspeed_charges_the_hf_layer_once_per_pass_and_loop_turns_with_its_kernels():
    """ZeRO-Inference with transformers 4.42 on Mixtral: per layer the HF layer's Python (every expert looped over,
    a read each), so the experts' kernels start when their Python ends; per decode pass generate's loop around the
    forward. The host's busy time over the pass is that Python (extrapolated over the layers)."""
    ctx = _ctx("mixtral-8x7b", seqs=16, prompt=64, gen=4)
    ds = DeepSpeed({"transformers": "4.42"})
    sim = ds._pass(ctx, 16, 1, 65)
    r, py = host_rates(), decoder_python(ctx.model, "4.42")
    per_layer = r.seconds(py.layer(True, ctx.active_experts(16), 8))
    per_pass = (r.seconds(Python(forwards=1, reads=1) + Python(calls=_tf("generate_step_calls"),
                                                                fixed_s=_tf("generate_step_host_s")))
                + r.seconds(head_python()))
    assert sim.busy_s["host"] == pytest.approx(per_pass + ctx.model.num_layers * per_layer, rel=1e-9)
    tasks = sim.engine.tasks
    for t in tasks:
        if t.resource == "gpu" and t.name.endswith(" experts"):
            python = next(p for p in tasks if p.name == t.name + " (Python)")
            assert t.start_s >= python.end_s - 1e-12
    # the current code (5.17 batched_mm in decode) has no read per expert: less host time
    assert DeepSpeed()._pass(ctx, 16, 1, 65).busy_s["host"] < sim.busy_s["host"]


def test_moe_gen_pays_its_wrappers_per_expert_and_the_calibration_harness_does_not():
    """MoE-Gen's Expert_Wrapper per expert called (its copy awaited, a stream sync after): each expert chunk's
    kernels start after its Python, which starts after its copy; host_python=false leaves no host task (the
    calibration's plain-PyTorch harness) and prices each GPU operation with the generic eager issue cost."""
    ctx = _ctx("mixtral-8x7b", seqs=256, prompt=64, gen=4)
    on, off = MoEGen().simulate_pass(ctx, 256, 1, 65, 64), MoEGen({"host_python": False}).simulate_pass(ctx, 256, 1, 65, 64)
    assert not _host_tasks(off) and _host_tasks(on)
    tasks = on.engine.tasks
    k = system_constants("moe-gen").value
    r, py = host_rates(), decoder_python(ctx.model, "4.42")
    chunks = [t for t in tasks if t.resource == "gpu" and t.name.startswith("L0 experts ")]
    wrapper = Python(calls=k("expert_wrapper_calls"), modules=1) + Python(calls=k("expert_wrapper_chunk_calls"), reads=1)
    per_chunk = r.seconds((8 / len(chunks)) * (py.expert + wrapper))  # Mixtral's loop: all 8 experts
    for t in chunks:
        python = next(p for p in tasks if p.name == t.name + " (Python)")
        copy = next(p for p in tasks if p.name == t.name + " H2D")
        assert python.duration_s == pytest.approx(per_chunk, rel=1e-12)
        assert python.start_s >= copy.end_s - 1e-12 and t.start_s >= python.end_s - 1e-12
    # decode: the MoE-Gen step's per-sequence bookkeeping grows with the batch
    small = MoEGen().simulate_pass(ctx, 64, 1, 65, 64)
    assert small.busy_s["host"] < on.busy_s["host"]


def test_flexgen_charges_its_own_or_the_hf_code_per_step():
    """Every (sub-layer, GPU batch) step's Python: FlexGen's own mha_gen (34 calls) or, as MoE-Gen's FlexGen*, the HF
    layer's attention block; four GPU batches pay it four times a layer."""
    ctx = _ctx("mixtral-8x7b", seqs=32, prompt=64, gen=4)
    frac = {"wg": 0.0, "wc": 1.0, "wd": 0.0, "cg": 1.0, "cc": 0.0, "cd": 0.0, "hg": 1.0, "hc": 0.0, "hd": 0.0}
    pol = FlexGenPolicy(8, 4, False, frac, 0.0)
    r = host_rates()
    own = FlexGen()._pass(ctx, pol, 1, 65)
    hf = FlexGen({"model_code": "hf"})._pass(ctx, pol, 1, 65)
    att_own = [t for t in own.engine.tasks if t.resource == "host" and "L0 attn" in t.name]
    assert sum(t.duration_s for t in att_own) == pytest.approx(4 * 34 * r.torch_call_s, rel=1e-9)
    att_hf = [t for t in hf.engine.tasks if t.resource == "host" and "L0 attn" in t.name]
    py = decoder_python(ctx.model, "4.42")
    assert sum(t.duration_s for t in att_hf) == pytest.approx(4 * r.seconds(py.attention_block()), rel=1e-9)
    assert hf.busy_s["host"] > own.busy_s["host"]


def test_moe_lightning_star_pays_the_hf_layer_per_micro_batch():
    """model_code=hf: per (layer, micro-batch) the HF attention block before its pre-attention kernels and the MoE
    block (Mixtral's loop, a read per expert) before its post-attention kernels, which then start after it."""
    ctx = _ctx("mixtral-8x7b", seqs=64, prompt=64, gen=4)
    ml = MoELightning({"model_code": "hf", "micro_batch_size": 16, "num_micro_batches": 4})
    cand = ml._cand(ctx, 16, 4)
    sim = ml._decode(ctx, cand, 65)
    r, py = host_rates(), decoder_python(ctx.model, "4.42")
    tasks = sim.engine.tasks
    posts = [t for t in tasks if t.resource == "gpu" and t.name.startswith("L0 post-attention + FFN")]
    assert len(posts) == 4
    for t in posts:
        python = next(p for p in tasks if p.name == t.name + " (Python)")
        assert python.duration_s == pytest.approx(r.seconds(py.ffn_block(True, ctx.active_experts(16), 8)), rel=1e-12)
        assert t.start_s >= python.end_s - 1e-12
    assert not _host_tasks(MoELightning({"micro_batch_size": 16, "num_micro_batches": 4})._decode(ctx, cand, 65))


def test_model_code_is_a_cli_parameter_with_a_clear_refusal():
    ok = subprocess.run([sys.executable, "-m", "moesim", "predict", "--model", "mixtral-8x7b", "--hw", "c2",
                         "--system", "flexgen", "--param", "model_code=hf", "--requests", "64", "--gen", "8",
                         "--json"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["utilization"]["host"] > 0
    bad = subprocess.run([sys.executable, "-m", "moesim", "predict", "--model", "mixtral-8x7b", "--hw", "c2",
                          "--system", "moe-lightning", "--param", "model_code=hf5"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "model_code" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_moe_gen_reproduction_uses_the_hf_code_for_the_reimplementations():
    """FlexGen* and MoE-Lightning* run on MoE-Gen's Hugging Face pipeline: their reproduction sets model_code=hf."""
    sys.path.insert(0, str(ROOT / "validation" / "published"))
    try:
        import moe_gen as repro
    finally:
        sys.path.pop(0)
    for system in ("flexgen", "moe-lightning"):
        assert repro.system_params(system, "8x7B")["model_code"] == "hf"
    p = moesim.predict("mixtral-8x7b", "c2", "moe-lightning", {"num_requests": 64, "gen_tokens": 8},
                       system_params=repro.system_params("moe-lightning", "8x7B"))
    assert p.utilization["host"] > 0
