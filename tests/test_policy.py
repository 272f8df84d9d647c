"""--policy: each system's as-deployed choice (what its released software picks) and moesim's best (issue 13).

The as-deployed cases are worked by hand from the systems' sources, cited in ``systems_db/*.yaml``:
MoE-Gen's initializers (``*_initializer.py::_default_engine_config``), DeepSpeed's config default and the
ZeRO-Inference README, llama-server's ``-np`` auto and ``--fit`` (PRs #16736 / #16653), KTransformers'
``local_chat`` and balance_serve defaults.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

import moesim
from moesim.errors import InfeasibleError, MoesimError
from moesim.modules import Context, Options
from moesim.predict import _system
from moesim.specs import OfflineWorkload
from moesim.systems import get_system
from moesim.systems.base import ServingSystem

GIB = 2.0 ** 30


def _ctx(model: str, hw: str, prompt: int = 512, gen: int = 256, requests: int = 1000, **hw_over) -> Context:
    return Context(moesim.get_model(model), moesim.get_hardware(hw, **hw_over),
                   OfflineWorkload(num_requests=requests, prompt_tokens=prompt, gen_tokens=gen), Options())


# ---- the contract between the scenario and a system ---------------------------------------------------------
class _WithPolicyParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    policy: Literal["as-deployed", "best"] = "as-deployed"


class _WithPolicy(ServingSystem):
    """A system declaring a Param named ``policy`` (as flexgen and moe-lightning do)."""

    name = "test-with-policy"
    summary = "test"
    Params = _WithPolicyParams

    def plan(self, ctx):  # pragma: no cover - never planned
        raise NotImplementedError


def test_a_system_param_named_policy_receives_the_scenario_policy_unless_set():
    assert _system(_WithPolicy, None, "best").params.policy == "best"
    assert _system(_WithPolicy, None, "best").policy == "best"
    assert _system(_WithPolicy, {"policy": "as-deployed"}, "best").policy == "as-deployed"  # --param wins
    assert _system(_WithPolicy, None).policy_differs
    assert get_system("gpu-resident")(policy="best").policy == "best"
    assert not get_system("gpu-resident")().policy_differs  # nothing to search: best is never run beside it
    with pytest.raises(MoesimError, match="policy takes one of"):
        get_system("moe-gen")(policy="fastest")


# ---- as deployed, case by case ------------------------------------------------------------------------------
def test_moe_gen_as_deployed_takes_the_initializer_defaults():
    """Mixtral-8x7B initializer: attention decode micro-batch 400 and MoE prefill micro-batch 400 for a context
    of at most 544 tokens, floor(400 x 544 / C) above; C = 512 + 256 = 768 -> floor(283.3) = 283. GPU of 23.6 GiB:
    no scaling. CPU share 0.6 (attention mode 2's SPLIT_RATIO_W fallback)."""
    plan = get_system("moe-gen")().plan(_ctx("mixtral-8x7b", "c2", requests=8500))
    assert plan.config["attention_micro_batch"] == math.floor(400 * 544 / 768) == 283
    assert plan.config["prefill_batch"] == 283
    assert plan.config["cpu_attention_fraction"] == 0.6
    gpu = get_system("moe-gen-gpu")().plan(_ctx("mixtral-8x7b", "c2", requests=8500))
    assert gpu.config["cpu_attention_fraction"] == 0.0 and gpu.config["attention_micro_batch"] == 283


def test_moe_gen_initializer_scales_with_gpu_memory_and_context():
    """DeepSeek-V2 initializer: attention decode 60, MoE prefill 30 up to a context of 768; x2 on a GPU of 47-49
    GiB (torch's total_memory / 1024**3): the RTX A6000 reports 51040485376 B = 47.5 GiB. At C = 2048: floor(60 x
    768 / 2048) = 22 and floor(30 x 768 / 2048) = 11, doubled. MLA: all attention on the GPU."""
    system = get_system("moe-gen")()
    assert system.released_defaults(_ctx("deepseek-v2", "rtx-a6000")) == {
        "prefill_batch": 60, "attention_micro_batch": 120, "cpu_attention_fraction": 0.0}
    assert system.released_defaults(_ctx("deepseek-v2", "rtx-a6000", prompt=1024, gen=1024)) == {
        "prefill_batch": 22, "attention_micro_batch": 44, "cpu_attention_fraction": 0.0}
    assert system.released_defaults(_ctx("deepseek-v2", "h100-sxm"))["attention_micro_batch"] == 180  # x3 >= 78 GiB
    assert system.released_defaults(_ctx("qwen3-30b-a3b", "c2")) is None  # no MoE-Gen initializer: searched


def test_moe_gen_default_host_kv_fails_where_the_weights_fill_host_memory():
    """host_kv_cache_size unset: free host memory minus the parameter server (moe_gen/engine.py); DeepSeek-R1's
    671 GB on C2's 512 GiB leaves nothing, so MoE-Gen fails; a reservation (host_kv_bytes) or --policy best pages
    weights from disk."""
    ctx = _ctx("deepseek-r1", "c2", requests=64)
    with pytest.raises(InfeasibleError, match="host_kv_bytes"):
        get_system("moe-gen")().plan(ctx)
    assert "disk" in get_system("moe-gen")({"host_kv_bytes": 50 * GIB}).plan(ctx).placement["weights"]
    assert "disk" in get_system("moe-gen")(policy="best").plan(ctx).placement["weights"]


def test_deepspeed_as_deployed_is_deepspeed_defaults():
    """offload_param.pin_memory is off by default (ZeRO-Inference README: "By default, pinned memory is not
    enabled"); current transformers: SDPA, last-position logits. transformers=4.42 (MoE-Gen's pin): DeepSeek's
    remote code runs eager attention, logits at every prompt position."""
    ctx = _ctx("mixtral-8x7b", "c2", requests=200)
    plan = get_system("deepspeed")().plan(ctx)
    assert (plan.config["pin_memory"], plan.config["attention"], plan.config["logits_all_positions"]) == \
        (False, "sdpa", False)
    assert plan.placement["weights"].startswith("host (pageable)")
    best = get_system("deepspeed")(policy="best").plan(ctx)
    assert best.config["pin_memory"] and best.batch_size == plan.batch_size
    # decode streams every layer's weights: pageable / pinned time is the link's pinned / pageable bandwidth
    link = ctx._host_link
    ratio = plan.decode_time_per_batch_s / best.decode_time_per_batch_s
    assert 1.5 < ratio <= link.h2d_pinned_bytes_per_s / link.h2d_pageable_bytes_per_s * 1.01
    old = get_system("deepspeed")({"transformers": "4.42"}).plan(_ctx("deepseek-v2", "c2", requests=200))
    assert old.config["attention"] == "eager" and old.config["logits_all_positions"]
    assert get_system("deepspeed")({"transformers": "4.42"}).plan(ctx).config["attention"] == "sdpa"  # Mixtral


def test_llama_cpp_as_deployed_is_llama_server_with_fit():
    """llama-server: -np auto = 4 slots; -c 0 = Mixtral's 32768 tokens; --fit: the whole model does not fit a
    24 GB A5000, so the context drops to 4096 and every layer goes to the GPU dense-only (attention, router; its 8
    experts, 8 x 3 x 4096 x 14336 x 2 B = 2.82 GB, in host memory), then layers are made whole front to back while
    they fit in the GPU less the 1 GiB margin."""
    ctx = _ctx("mixtral-8x7b", "c2", requests=100)
    plan = get_system("llama-cpp")().plan(ctx)
    c = plan.config
    assert (c["n_parallel"], c["batch_size"], c["fit"], c["ctx_tokens"], c["n_gpu_layers"]) == (4, 4, True, 4096, 32)
    L, m = 32, ctx.model
    full = L - c["dense_only_layers"]
    experts = 8 * 3 * 4096 * 14336 * 2.0
    assert experts == pytest.approx(m.moe.num_experts * ctx.expert_weight_bytes)
    system = get_system("llama-cpp")()
    layer = system._layer_bytes(ctx, 0)
    kv = 4096 * 32 * 2 * 8 * 128 * 2.0  # 4096 tokens x 32 layers x (K, V) x 8 heads x 128 x bf16
    rest = plan.prefill.peak_memory_bytes["gpu"] - (L * layer - (L - full) * experts) - kv  # buffers, head, staging
    room = ctx.platform.usable_gpu_memory_bytes_per_gpu - GIB
    assert L * layer - (L - full) * experts + kv + rest <= room < L * layer - (L - full - 1) * experts + kv + rest
    assert 0 < full < L


def test_ktransformers_as_deployed_defaults():
    plan = get_system("ktransformers")().plan(_ctx("qwen3-30b-a3b", "rtx4090", requests=64))
    assert (plan.config["batch_size"], plan.config["micro_batches"], plan.config["cpu_infer"]) == (4, 1, 32)
    assert plan.config["prefill_chunk_tokens"] == 4 * 512  # the whole batch's prompts, under local_chat's 8192


# ---- best is never slower -------------------------------------------------------------------------------------
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(system=st.sampled_from(["moe-gen", "moe-gen-gpu", "deepspeed", "llama-cpp", "ktransformers"]),
       case=st.sampled_from([("mixtral-8x7b", "c2"), ("qwen3-30b-a3b", "rtx4090"), ("deepseek-v2-lite", "l4")]),
       prompt=st.sampled_from([128, 512]), gen=st.sampled_from([32, 256]))
def test_best_is_never_slower_than_as_deployed(system, case, prompt, gen):
    ctx = _ctx(*case, prompt=prompt, gen=gen, requests=256)
    try:
        deployed = get_system(system)().plan(ctx)
    except InfeasibleError:
        return
    best = get_system(system)(policy="best").plan(ctx)
    assert best.total_time_s <= deployed.total_time_s * (1 + 1e-9)


# ---- what predict and the CLI show -----------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moesim", "predict", *args], capture_output=True, text=True,
                          timeout=120)


def test_cli_shows_both_policies_when_they_differ_by_more_than_10_percent():
    args = ("--model", "mixtral-8x7b", "--hw", "c2", "--system", "deepspeed", "--requests", "200")
    text = _cli(*args)
    assert text.returncode == 0, text.stderr
    line = next(l for l in text.stdout.splitlines() if l.startswith("with --policy best"))
    assert "vs as-deployed" in line and "pin_memory=True" in line
    data = json.loads(_cli(*args, "--json").stdout)
    assert data["policy"] == "as-deployed" and data["best_policy"]["speedup"] > 1.1
    assert data["best_policy"]["throughput_tok_s"] == pytest.approx(data["throughput_tok_s"]
                                                                    * data["best_policy"]["speedup"], rel=1e-9)
    best = json.loads(_cli(*args, "--json", "--policy", "best").stdout)
    assert best["policy"] == "best" and best["best_policy"] is None
    assert best["throughput_tok_s"] == pytest.approx(data["best_policy"]["throughput_tok_s"], rel=1e-9)
    shown = _cli(*args, "--policy", "best").stdout
    assert "(policy best)" in shown and "with --policy best" not in shown


def test_no_best_line_where_the_policies_agree():
    pred = moesim.predict("qwen3-30b-a3b", "h100-sxm", "gpu-resident", {"num_requests": 64})
    assert pred.best_policy is None and pred.policy == "as-deployed"


def test_policy_flag_in_help_with_its_default():
    text = subprocess.run([sys.executable, "-m", "moesim", "predict", "--help"], capture_output=True, text=True,
                          timeout=60).stdout
    flat = " ".join(text.split())
    assert "--policy POLICY" in text and "(default as-deployed)" in flat and "best" in flat


def test_bad_policy_is_one_clear_line():
    out = _cli("--model", "mixtral-8x7b", "--hw", "c2", "--policy", "fastest")
    assert out.returncode != 0 and "Traceback" not in out.stderr and "--policy" in out.stderr


def test_moe_gen_released_settings_that_do_not_fit_are_refused_not_shrunk():
    """MoE-Gen's release sizes its buffers from its initializer's settings and has nothing that shrinks them:
    Mixtral-8x7B on a T4 with 8192-token prompts (prefill batch 23 = 400 x 544 / 9216) is an InfeasibleError
    naming the settings; --policy best searches ones that fit."""
    wl = {"num_requests": 500, "prompt_tokens": 8192, "gen_tokens": 1024}
    with pytest.raises(InfeasibleError, match=r"released settings for Mixtral-8x7B \(prefill_batch 23, "
                                              r"attention_micro_batch 23.*a prefill pass of 23 prompts"):
        moesim.predict("mixtral-8x7b", "t4", "moe-gen", wl)
    best = moesim.predict("mixtral-8x7b", "t4", "moe-gen", wl, policy="best")
    assert best.config["prefill_batch"] < 23
