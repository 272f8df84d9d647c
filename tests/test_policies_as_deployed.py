"""FlexGen and MoE-Lightning as deployed: each system's own policy search, published policies set exactly from
the CLI, the last partial batch charged for what it holds, and policy=best never slower than as-deployed.

Published policies (shared/reference/offload-systems.md section 4.3 and section 5.3; MoE-Lightning artifact
github.com/caoshiyi/artifacts ``benchmarks/mtbench/mtbench_moel_p_t4.jsonl``: 504 sequences at every generation
length on S1, i.e. Table 5's mu 36, N 504; Table 4's mu / N/mu on S1 and S2).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

import moesim
from moesim import scenario as sc
from moesim.modules import Context
from moesim.predict import resolve
from moesim.systems import _flexgen_cost_model as fcm
from moesim.systems import _moe_lightning_optimizer as hrm
from moesim.systems.flexgen import FlexGen
from moesim.systems.moe_lightning import MoELightning

GIB = 2 ** 30
S1 = dict(hardware="t4", host_memory_bytes=192 * GIB)  # MoE-Lightning's S1: 1x T4, 192 GB host
S2 = dict(hardware="l4", host_memory_bytes=192 * GIB)


def ctx_of(model: str, hardware: str, host_memory_bytes: float, **workload) -> Context:
    r = resolve(sc.build(model, hardware, host_memory_bytes=host_memory_bytes, **workload))
    return Context(r.model, r.platform, r.workload, r.options)


# ---- MoE-Lightning's optimizer -------------------------------------------------------------------------------
def test_moe_lightning_optimizer_sees_the_artifacts_mixtral_sizes_and_t4_constants():
    """The artifact's own formulas for Mixtral-8x7B (fp16): w_other = (4 h1^2 + 4 h1^2 / 4) l, wi = 2 x 3 h1 h2 n_e,
    KV 4 h_kv per token and layer, hidden 2 h1; HardwareConfig T4: 15 GB, 16 GB/s, 300 GB/s (GB = 2^30)."""
    t = MoELightning()._hrm_terms(ctx_of("mixtral-8x7b", **S1, num_requests=1000, prompt_tokens=418,
                                         gen_tokens=128))
    h1, h2, l = 4096, 14336, 32
    assert t.attention_bytes_all_layers == (4 * h1 ** 2 + 4 * h1 ** 2 // 4) * l
    assert t.expert_bytes_per_layer == 2 * 3 * h1 * h2 * 8
    assert (t.kv_bytes_per_token_layer, t.hidden_bytes_per_token) == (4 * 1024, 2 * h1)
    assert (t.gpu_memory_bytes, t.ctog_bytes_per_s, t.gpu_bytes_per_s) == (15 * GIB, 16 * GIB, 300 * GIB)
    assert (t.gpu_cap, t.cpu_cap, t.prefill_working_factor) == (0.86, 0.8, 1.2)


def test_moe_lightning_optimizer_uses_datasheet_figures_for_an_l40s_not_the_l4s_constants():
    """HardwareConfig.init has constants for a T4 and an L4 only; an L40S (whose name contains "L4") gets the
    platform's own memory and bandwidth, as a user would pass them (regression: a substring match gave it the L4's)."""
    ctx = ctx_of("mixtral-8x7b", hardware="l40s", host_memory_bytes=192 * GIB, num_requests=64)
    t = MoELightning()._hrm_terms(ctx)
    gpu = ctx.platform.gpu
    assert gpu.name == "L40S"
    assert (t.gpu_memory_bytes, t.gpu_bytes_per_s) == (gpu.memory_bytes, gpu.memory_bandwidth_bytes_per_s)
    assert t.gpu_memory_bytes != 24 * GIB
    assert MoELightning()._hrm_terms(ctx_of("mixtral-8x7b", **S2, num_requests=64)).gpu_memory_bytes == 24 * GIB


def _artifact_gpu_bytes(mu: int, n_ub: int, s: int = 418) -> float:
    """The artifact's GPU row at w_g = 0 for Mixtral-8x7B, written out by hand (bytes): attention weights, the
    prefill home (hidden + residual of a micro-batch, the batch's prompt hidden states, a micro-batch's KV
    buffer), two layers of expert pages, the fused-MoE prefill working set 2 (mu k s h1 + mu k 3 h2 s) 1.2."""
    h1, h2, l, hkv, k = 4096, 14336, 32, 1024, 2
    n = mu * n_ub
    w_other = (4 * h1 ** 2 + 4 * h1 ** 2 // 4) * l
    home = 2 * h1 * mu * 2 * s + h1 * n * 2 * s + 4 * s * hkv * mu * 2
    pages = 2 * (2 * 3 * h1 * h2 * 8)
    inter = 2 * (mu * k * h1 * s + mu * k * 3 * h2 * s) * 1.2
    return w_other + home + pages + inter


def test_moe_lightning_36x14_is_where_the_artifacts_gpu_row_binds():
    cap = 0.86 * 15 * GIB
    assert _artifact_gpu_bytes(36, 14) <= cap < _artifact_gpu_bytes(36, 15)
    assert _artifact_gpu_bytes(68, 1) > cap  # the next mu of its grid (4 + 32 + 32) does not fit at all
    t = MoELightning()._hrm_terms(ctx_of("mixtral-8x7b", **S1, num_requests=1000, prompt_tokens=418,
                                         gen_tokens=128))
    assert hrm.max_micro_batches(t, 36, 10_000) == 14 and hrm.max_micro_batches(t, 68, 10_000) == 0


@pytest.mark.parametrize("gen", [32, 64, 128, 256])
def test_moe_lightning_as_deployed_picks_its_published_36x14_on_s1(gen):
    """MTBench (padded to 418) on S1: N = 504 = 36 x 14 at every generation length (artifact jsonl; Table 5)."""
    p = moesim.predict("mixtral-8x7b", "t4", "moe-lightning", {"num_requests": 504, "prompt_tokens": 418,
                                                               "gen_tokens": gen}, host_memory_bytes=192 * GIB)
    assert (p.config["micro_batch_size"], p.config["num_micro_batches"]) == (36, 14)
    assert p.config["policy"] == "as-deployed"


@pytest.mark.parametrize("setting, prompt, gen, mu, n_ub", [
    (S1, 1984, 64, 4, 19),  # Table 4 Summarization S1: mu 4, N/mu 19 (exact)
    (S1, 256, 50, 36, None),  # Table 4 SynthReason S1: mu 36, N/mu 26
    (S2, 256, 50, 100, None),  # Table 4 SynthReason S2: mu 100, N/mu 15
])
def test_moe_lightning_as_deployed_reproduces_table_4_micro_batches(setting, prompt, gen, mu, n_ub):
    """mu as published. Where the optimizer's decode estimate is flat in n_ub (GPU-bound: every micro-batch reads
    all experts' weights) the artifact's scan stops where its CBC solution first dips, which is solver noise;
    the number of micro-batches is checked only where memory binds first (Summarization)."""
    ctx = ctx_of("mixtral-8x7b", **setting, num_requests=5000, prompt_tokens=prompt, gen_tokens=gen)
    pol = MoELightning().deployed_policy(ctx, 5000)
    assert pol.micro_batch == mu
    if n_ub is not None:
        assert pol.num_micro_batches == n_ub


# ---- FlexGen's cost model --------------------------------------------------------------------------------------
def _terms(**kw) -> fcm.FlexGenTerms:
    const = {"ctog_bdw": 12.89 * GIB, "gtoc_bdw_cache": 0.97 * GIB, "gtoc_bdw_hidden": 4.82 * GIB,
             "dtoc_bdw": 0.473 * GIB, "ctod_bdw_cache_p": 0.746 * GIB, "ctod_bdw_hidden_p": 2.015 * GIB,
             "ctod_bdw_g": 2.015 * GIB, "mm_flops_p": 21.24e12, "mm_flops_g": 4.3e12, "bmm_flops_p": 9.97e12,
             "bmm_flops_g": 0.079e12, "cpu_flops": 0.0123e12, "c1": 0.0168, "c2": 0.0328, "c3": 0.0621, "alpha": 0.8}
    base = dict(layers=32, prompt_tokens=418, gen_tokens=64, layer_weight_bytes=2.9e9, kv_bytes_per_token_layer=4096,
                hidden_bytes_per_token=8192, act_bytes=2, hidden=4096, ffn_width=28672, num_heads=32,
                linear_flop_per_token=1.5e9, attn_flop_per_token_ctx=2 * 32 * 256, gpu_memory_bytes=16e9,
                cpu_memory_bytes=200e9, disk_bytes=1.5e12, const=const)
    base.update(kw)
    return fcm.FlexGenTerms(**base)


def test_flexgen_lp_block_time_is_the_cost_models_by_hand():
    """All fractions pinned (FlexGen's --percent 5 85 0 100 100 0: weights 10% on disk): the LP's T is the cost
    model's T = l (T_pre + (n - 1) T_gen) with the code's sums of the disk and PCIe legs."""
    t = _terms()
    c = t.const
    gbs, nb = 8, 4
    bls, s, n, l = gbs * nb, 418, 64, 32
    W, K, A, F = 2.9e9, 4096, 2 * 32 * 256, 1.5e9
    fixed = {"wg": 0.05, "wc": 0.85, "cg": 0.0, "cc": 1.0, "hg": 1.0, "hc": 0.0}
    got = fcm.solve(t, gbs, nb, fixed)
    ctog_p = 0.95 * W / c["ctog_bdw"]
    dtoc_p = 0.1 * W / c["dtoc_bdw"]
    gtoc_p = K * (s + 1) * bls / c["gtoc_bdw_cache"]
    comp_p = bls * s * F / c["mm_flops_p"] + bls * s * s * A / c["bmm_flops_p"]
    t_pre = max(ctog_p + dtoc_p, gtoc_p, comp_p)
    cpu = c["cpu_flops"] * (1 - c["c2"] * math.log2(64 / gbs))  # h1 = 4096: no h1 term
    comp_g = bls * F / c["mm_flops_g"] + bls * (s + n / 2) * A / cpu
    t_gen = 0.95 * W / c["ctog_bdw"] + max(0.1 * W / (0.95 * c["dtoc_bdw"]), comp_g)
    T = l * (t_pre + (n - 1) * t_gen)
    assert got.block_time_s == pytest.approx(T, rel=1e-6)
    assert got.throughput_tok_s == pytest.approx(bls * n / T, rel=1e-6)
    assert got.fractions["wn"] == pytest.approx(0.1) and got.fractions["hn"] == 0.0


def test_flexgen_search_is_its_scan():
    """FlexGen's enumeration (gbs 1, 2, 3, 4, 8, 16, ...; the most feasible GPU batches; n_b scanned up to the
    first drop of the estimate, ties to the earlier) done literally, LP by LP, picks what the search picks."""
    t = _terms(gpu_memory_bytes=16e9, cpu_memory_bytes=60e9, prompt_tokens=256, gen_tokens=32)
    max_batch = 300
    best = None
    for gbs in fcm.gpu_batch_sizes():
        feasible = [nb for nb in range(1, max(1, max_batch // gbs) + 1) if fcm.solve(t, gbs, nb) is not None]
        if not feasible:
            break
        prev = 0.0
        for nb in range(1, max(feasible) + 1):
            p = fcm.solve(t, gbs, nb)
            if p.throughput_tok_s < prev:
                break
            prev = p.throughput_tok_s
            if best is None or p.throughput_tok_s > best.throughput_tok_s:
                best = p
        if gbs >= max_batch:
            break
    got = fcm.search(t, max_batch)
    assert (got.gpu_batch, got.num_gpu_batches) == (best.gpu_batch, best.num_gpu_batches)
    assert got.gpu_batch in (1, 2, 3, 4) or math.log2(got.gpu_batch).is_integer()


def test_flexgen_cpu_attention_is_a_flag_not_the_context_length():
    """FlexGen(c) is FlexGen's --cpu-cache-compute: off unless asked, whatever the prompt and generation."""
    work = {"num_requests": 64, "prompt_tokens": 512, "gen_tokens": 1024}
    p = moesim.predict("mixtral-8x7b", "c2", "flexgen", work)
    assert p.config["cpu_attention"] is False
    c = moesim.predict("mixtral-8x7b", "c2", "flexgen", work, system_params={"cpu_attention": True})
    assert c.config["cpu_attention"] is True


# ---- published policies from the CLI -----------------------------------------------------------------------
def cli(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run([sys.executable, "-m", "moesim.cli", "predict", *args, "--json"], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_cli_runs_moe_lightnings_published_36x14():
    d = cli("--model", "mixtral-8x7b", "--hw", "t4", "--host-mem", "192GiB", "--system", "moe-lightning",
            "--prompt", "418", "--gen", "128", "--requests", "1000", "--micro-batch-size", "36",
            "--num-micro-batches", "14", "--policy", "best")
    c = d["config"]
    assert (c["policy"], c["micro_batch_size"], c["num_micro_batches"], c["batch_size"]) == ("explicit", 36, 14, 504)


def test_cli_runs_a_flexgen_generated_policy():
    """The FlexGen policy the MoE-Lightning authors generated for T4, MTBench, gen 128: gbs 8 x 139 GPU batches,
    about 9% of the weights on the GPU, KV and activations on the CPU (offload-systems.md section 5.3)."""
    d = cli("--model", "mixtral-8x7b", "--hw", "t4", "--host-mem", "192GiB", "--system", "flexgen", "--prompt", "418",
            "--gen", "128", "--requests", "1112", "--gpu-batch-size", "8", "--num-gpu-batches", "139",
            "--percent", "9,91,0,100,0,100")
    c = d["config"]
    assert (c["policy"], c["gpu_batch_size"], c["num_gpu_batches"], c["batch_size"]) == ("explicit", 8, 139, 1112)
    assert (c["wg"], c["wc"], c["cc"], c["hc"]) == (0.09, 0.91, 1.0, 1.0)
    assert c["cpu_attention"] is False


def test_batch_sets_n_and_keeps_the_micro_batch():
    """--batch 500 with mu 36: ceil(500 / 36) = 14 micro-batches sharing 500 evenly (36 each at most), not
    mu = ceil(500 / 2^k)."""
    p = moesim.predict("mixtral-8x7b", "t4", "moe-lightning", {"num_requests": 1000, "prompt_tokens": 418,
                                                               "gen_tokens": 32, "batch_size": 500},
                       host_memory_bytes=192 * GIB, system_params={"micro_batch_size": 36})
    assert (p.config["batch_size"], p.config["num_micro_batches"], p.config["micro_batch_size"]) == (500, 14, 36)


# ---- the last batch charged for what it holds --------------------------------------------------------------
@pytest.mark.parametrize("system, params, full, work_kw", [
    ("moe-lightning", {"micro_batch_size": 36, "num_micro_batches": 14}, 504, {}),
    ("flexgen", {"gpu_batch_size": 8, "num_gpu_batches": 63, "percent": (9, 91, 0, 100, 0, 100)}, 504, {}),
])
def test_last_partial_batch_is_charged_as_partial(system, params, full, work_kw):
    """600 requests under a 504-sequence policy: one full batch (its prefill + decode) plus the time of a lone
    batch of the other 96 under the same policy, not two full batches."""
    work = {"prompt_tokens": 418, "gen_tokens": 32}
    kw = dict(host_memory_bytes=192 * GIB, system_params=params)
    both = moesim.predict("mixtral-8x7b", "t4", system, {**work, "num_requests": 600}, **kw)
    rest = moesim.predict("mixtral-8x7b", "t4", system, {**work, "num_requests": 96}, **kw)
    one = moesim.predict("mixtral-8x7b", "t4", system, {**work, "num_requests": full}, **kw)
    assert both.config["batch_size"] == full and rest.config["batch_size"] == 96
    assert both.total_time_s == pytest.approx(one.total_time_s + rest.total_time_s, rel=1e-9)
    assert both.total_time_s < 2 * one.total_time_s * (1 - 1e-3)


# ---- the oracle never loses to the system's own pick -------------------------------------------------------------
@pytest.mark.parametrize("system, model, hw, work", [
    ("moe-lightning", "mixtral-8x7b", S1, {"num_requests": 1000, "prompt_tokens": 418, "gen_tokens": 128}),
    ("moe-lightning", "mixtral-8x7b", S2, {"num_requests": 2000, "prompt_tokens": 256, "gen_tokens": 50}),
    ("flexgen", "mixtral-8x7b", S1, {"num_requests": 1000, "prompt_tokens": 418, "gen_tokens": 64}),
    ("flexgen", "olmoe-1b-7b", dict(hardware="c2", host_memory_bytes=None), {"num_requests": 512,
                                                                             "prompt_tokens": 512, "gen_tokens": 32}),
])
def test_best_is_never_slower_than_as_deployed(system, model, hw, work):
    hw = dict(hw)
    name = hw.pop("hardware")
    deployed = moesim.predict(model, name, system, work, **hw)
    best = moesim.predict(model, name, system, work, **hw, system_params={"policy": "best"})
    assert best.throughput_tok_s >= deployed.throughput_tok_s * (1 - 1e-9)


def test_flexgen_lp_structure_shared_by_a_search_gives_the_lps_own_answers():
    """solve() with the search's prebuilt LP structure returns what it returns building its own, for every
    (gbs, n_b) tried, with and without pinned fractions (--percent)."""
    t = FlexGen()._cost_model_terms(ctx_of("mixtral-8x7b", **S1, num_requests=1000, prompt_tokens=418,
                                           gen_tokens=128))
    for fixed in (None, {"wg": 0.0, "cg": 0.0}):
        st = fcm.structure(t, fixed)
        for gbs, nb in ((1, 1), (4, 3), (16, 7), (64, 2), (512, 40)):
            assert fcm.solve(t, gbs, nb, fixed, st) == fcm.solve(t, gbs, nb, fixed)


def test_flexgen_deployed_search_runs_once_per_context():
    """An as-deployed plan and policy=best's plan on one context share FlexGen's search (ctx.memo)."""
    ctx = ctx_of("mixtral-8x7b", **S1, num_requests=200, prompt_tokens=128, gen_tokens=32)
    calls = []
    real = fcm.search

    def counted(*a, **k):
        calls.append(a)
        return real(*a, **k)

    fcm.search = counted
    try:
        FlexGen().plan(ctx)
        FlexGen(policy="best").plan(ctx)
    finally:
        fcm.search = real
    assert len(calls) == 1


def test_flexgen_fixed_batch_runs_as_its_block_and_says_so():
    """FlexGen runs whole blocks of gpu_batch_size x num_gpu_batches; a fixed batch of 7 on a T4 becomes its
    block of 3 x 3 = 9 (7 shared over ceil(7 / 3) GPU batches of one size), and the notes say so."""
    p = moesim.predict("mixtral-8x7b", "t4", "flexgen", {"num_requests": 5, "batch_size": 7, "gen_tokens": 8})
    assert p.config["policy_batch_size"] == 9
    assert any("batch 7 runs as FlexGen's unit, a block of 3 x 3 = 9" in a for a in p.assumptions)
    assert "5 requests fill 2 GPU batches of 3 (1 slot(s) padded)" in p.assumptions
