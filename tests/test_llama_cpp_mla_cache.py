"""llama.cpp's DeepSeek KV cache before and after its MLA implementation (PR #12801, April 2025): the latent
(kv_lora_rank + qk_rope = 576 elements a layer) since, K and V of every head before (the deepseek2 graph
up-projected the new tokens' K and V with wkv_b and cached them; MoE-Gen's comparison ran that llama.cpp)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import moesim

WORK = {"num_requests": 1, "prompt_tokens": 512, "gen_tokens": 64}


def _predict(latent: bool, gen: int = 64):
    return moesim.predict("deepseek-v2", "c2", "llama-cpp", {**WORK, "gen_tokens": gen},
                          system_params={"fit": False, "n_parallel": 1, "mla_latent_cache": latent})


def test_kv_bytes_per_token_hand_computed():
    """DeepSeek-V2, 60 layers, f16 cache: latent 60 x (512 + 64) x 2 B = 69,120 B; per head
    60 x 128 heads x (qk 128 + 64, v 128) x 2 B = 4,915,200 B (4.9 MB) a token."""
    assert _predict(True).config["kv_bytes_per_token"] == 60 * 576 * 2
    assert _predict(False).config["kv_bytes_per_token"] == 60 * 128 * (192 + 128) * 2


def test_per_head_cache_costs_more_the_longer_the_context():
    """Decode reads 4.9 MB a context token instead of the latent's 69 KB: the per-head cache is slower, and its
    lead grows with the context (the step at the last context point minus the first)."""
    lat, head = _predict(True, 1024), _predict(False, 1024)
    assert head.decode_tok_s < lat.decode_tok_s
    assert head.tpot_s - lat.tpot_s > 0
    short = _predict(False, 64).tpot_s - _predict(True, 64).tpot_s
    assert head.tpot_s - lat.tpot_s > short
    assert any("MLA cached per head" in a for a in head.assumptions)
    assert not any("MLA cached per head" in a for a in lat.assumptions)


def test_gqa_model_ignores_the_setting():
    w = {**WORK, "gen_tokens": 16}
    a = moesim.predict("mixtral-8x7b", "c2", "llama-cpp", w, system_params={"mla_latent_cache": False})
    b = moesim.predict("mixtral-8x7b", "c2", "llama-cpp", w, system_params={"mla_latent_cache": True})
    assert a.decode_tok_s == pytest.approx(b.decode_tok_s, rel=1e-12)
    assert a.config["kv_bytes_per_token"] == 32 * 2 * 8 * 128 * 2


def test_cli_flag():
    out = subprocess.run([sys.executable, "-m", "moesim", "predict", "--model", "deepseek-v2", "--hw", "c2",
                          "--system", "llama-cpp", "--mla-latent-cache", "false", "--fit", "false", "--n-parallel",
                          "1", "--prompt", "512", "--gen", "16", "--requests", "1", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["config"]["kv_bytes_per_token"] == 4915200


def test_dense_only_layers_routed_experts_count_as_the_hosts_in_s_mbu():
    """llama.cpp's --fit puts most Mixtral layers on an L4 dense-only (routed experts in host memory, read by the
    CPU) and a few whole: the CPU's reads of those experts count against the host's DRAM bandwidth in S-MBU (metrics
    HostShare.routed_expert_layers), so S-MBU stays a fraction of the GPU's and the host's bandwidth together. Before,
    only an all-dense-only layout counted them and this case read 1.003 (a fuzz case found it)."""
    from moesim.metrics import host_part
    from moesim.predict import plan_scenario

    sc = moesim.Scenario(model="mixtral-8x7b", hardware="l4", system="llama-cpp", prompt_tokens=667, gen_tokens=1024,
                         num_requests=4)
    ctx, plan, _, _ = plan_scenario(sc)
    assert 0 < plan.config["dense_only_layers"] < ctx.model.num_layers  # the mixed layout this test is about
    share = plan.host_decode
    assert len(share.routed_expert_layers) == plan.config["dense_only_layers"] and not share.layers
    cpu_bytes, _ = host_part(ctx, share, 4, 1000)
    assert cpu_bytes == pytest.approx(len(share.routed_expert_layers) * ctx.active_experts(4) * ctx.expert_weight_bytes)
    p = moesim.predict(**{k: v for k, v in sc.model_dump().items() if k in ("model", "hardware", "system")},
                       workload={"prompt_tokens": 667, "gen_tokens": 1024, "num_requests": 4})
    assert 0 < p.s_mbu <= 1.0
