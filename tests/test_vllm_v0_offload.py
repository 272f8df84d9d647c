"""vLLM V0 with CPU weight offload (MoE-Gen's baseline, issue 13): V0's default step budget and its refills.

- ``max_num_batched_tokens`` without chunked prefill defaults to max(max_model_len, 2048) (vLLM SchedulerConfig), and
  max_model_len to the model's context when vLLM can start with it, else the workload's (vLLM refuses to start when
  the KV pool cannot hold one max_model_len sequence).
- V0 refills: the fixed-length offline workload keeps waves in lockstep, so a wave's G decode steps are followed by
  the next wave's burst prefill, ceil(B P / N) passes, not by one prefill step per finishing sequence; checked
  against a small simulation of V0's scheduler (prefills first, preemption by recompute) written here.
"""

from __future__ import annotations

import math
from collections import deque

import pytest

import moesim
from moesim.errors import InfeasibleError
from moesim.modules import Context, Options
from moesim.specs import OfflineWorkload
from moesim.systems.vllm import VLLM, VLLMParams

OFFLOAD_V0 = {"cpu_offload_gb": 10_000, "chunked_prefill": False}


def _ctx(model: str, prompt: int = 512, gen: int = 256, requests: int = 4000) -> Context:
    work = OfflineWorkload(num_requests=requests, prompt_tokens=prompt, gen_tokens=gen)
    return Context(moesim.get_model(model), moesim.get_hardware("c2"), work, Options())


def test_v0_budget_is_the_model_context_when_it_fits():
    """Mixtral-8x7B (32768-token context) on C2 with every weight offloaded: the pool, sized after a 32768-token
    profiling pass, holds more than 32768 tokens, so vLLM starts with its defaults: max_model_len 32768, budget
    max(32768, 2048) = 32768."""
    ctx, eng = _ctx("mixtral-8x7b"), VLLM(VLLMParams(**OFFLOAD_V0))
    assert eng._memory(ctx, 32768)[1] >= 32768
    assert eng.max_model_len(ctx) == 32768 and eng.token_budget(ctx) == 32768
    assert eng.knobs_for(ctx).token_budget == 32768


def test_v0_budget_falls_to_2048_when_the_model_context_does_not_fit():
    """Mixtral-8x22B (65536-token context): at a 65536-token budget the pool holds fewer than 65536 tokens, so vLLM
    would refuse to start; max_model_len is then the workload's 512 + 256 = 768 and the budget max(768, 2048)."""
    ctx, eng = _ctx("mixtral-8x22b"), VLLM(VLLMParams(**OFFLOAD_V0))
    assert eng._memory(ctx, 65536)[1] < 65536
    assert eng.max_model_len(ctx) == 768 and eng.token_budget(ctx) == 2048
    plan = eng.plan(ctx)
    assert plan.config["prefill_tokens_per_pass"] == 2048  # 4 prompts of 512 per prefill pass


def test_budget_parameter_and_chunked_default_are_kept():
    ctx = _ctx("mixtral-8x22b")
    assert VLLM(VLLMParams(**OFFLOAD_V0, max_num_batched_tokens=4096)).token_budget(ctx) == 4096
    assert VLLM(VLLMParams(cpu_offload_gb=10_000)).token_budget(ctx) == 2048  # V1 on a 24 GB A5000: vLLM's small-GPU budget
    assert VLLM(VLLMParams(**OFFLOAD_V0, max_model_len=3000)).token_budget(ctx) == 3000


def test_max_model_len_shorter_than_the_workload_or_longer_than_the_pool_is_refused():
    ctx = _ctx("mixtral-8x22b")
    with pytest.raises(InfeasibleError, match="shorter than the workload"):
        VLLM(VLLMParams(**OFFLOAD_V0, max_model_len=700)).plan(ctx)
    with pytest.raises(InfeasibleError):  # one 65536-token sequence does not fit the pool (vLLM refuses to start)
        VLLM(VLLMParams(**OFFLOAD_V0, max_model_len=65536)).plan(ctx)


def test_v0_wave_pays_its_burst_prefill_once():
    """T_decode per batch = G pure decode steps + the next wave's burst prefill ((passes - 1) full passes + the
    last), which with offload is passes weight copies per G steps, not B / G per step."""
    ctx = _ctx("mixtral-8x7b")
    plan = VLLM(VLLMParams(**OFFLOAD_V0)).plan(ctx)
    b, g = plan.config["batch_size"], 256
    passes = math.ceil(b * 512 / 32768)
    assert plan.prefill_passes_per_batch == passes
    assert plan.decode_time_per_batch_s == pytest.approx(plan.drain_s + plan.prefill_time_per_batch_s, rel=1e-9)
    copy_s = plan.config["offloaded_bytes_per_gpu"] / ctx.platform.host_link.h2d_pinned_bytes_per_s
    # every pass copies every weight: G + passes copies per batch at least, far fewer than G (1 + B / G)
    assert plan.decode_time_per_batch_s >= (g + passes) * copy_s
    assert plan.decode_time_per_batch_s < g * (1 + b / g) * copy_s * 0.8


# ---- a small simulation of vLLM V0's scheduler, to check the lockstep refill model against -------------------------
def _simulate_v0(blocks: int, prompt: int, gen: int, requests: int, budget: int, max_seqs: int = 256,
                 block_size: int = 16, watermark: float = 0.01) -> tuple[int, int]:
    """(decode steps, prefill steps) of V0's ``_schedule_default`` on equal requests all waiting at the start:
    waiting prompts first (while the budget, max_num_seqs and free blocks above the watermark allow), else one
    decode step of every running sequence, preempting the latest admitted (recompute: back to the head of the
    queue, its generated tokens prefilled again) when a sequence needs a block and none is free."""
    free, floor = blocks, int(watermark * blocks)
    waiting = deque(0 for _ in range(requests))  # generated tokens so far
    running: list[list[int]] = []  # [generated, blocks held]
    decode_steps = prefill_steps = done = 0
    while done < requests:
        admitted, tokens = [], 0
        while waiting and len(running) + len(admitted) < max_seqs:
            g = waiting[0]
            need = math.ceil((prompt + g) / block_size)
            if tokens + prompt + g > budget or free - need < floor:
                break
            waiting.popleft()
            free -= need
            tokens += prompt + g
            admitted.append([g + 1, need])
        if admitted:
            prefill_steps += 1
            for s in admitted:
                if s[0] >= gen:
                    free += s[1]
                    done += 1
                else:
                    running.append(s)
            continue
        k = 0
        while k < len(running):
            s = running[k]
            if math.ceil((prompt + s[0] + 1) / block_size) > s[1]:
                while free < 1 and len(running) - 1 > k:
                    v = running.pop()
                    free += v[1]
                    waiting.appendleft(v[0])
                if free < 1:
                    running.pop(k)
                    free += s[1]
                    waiting.appendleft(s[0])
                    continue
                free -= 1
                s[1] += 1
            k += 1
        decode_steps += 1
        still = []
        for s in running:
            s[0] += 1
            if s[0] >= gen:
                free += s[1]
                done += 1
            else:
                still.append(s)
        running = still
    return decode_steps, prefill_steps


@pytest.mark.parametrize("model,gen,requests", [("mixtral-8x7b", 256, 3000), ("mixtral-8x22b", 256, 3000),
                                                ("mixtral-8x22b", 1024, 1500)])
def test_lockstep_refills_match_a_simulation_of_the_v0_scheduler(model, gen, requests):
    """Generated tokens per pass over the weights (what sets an offload-bound decode rate): the lockstep model,
    B G / (G + passes), within 8% of the simulated scheduler (about 20 waves, so the first burst and the last drain
    weigh little); at G = 256, where refills matter, much closer than one prefill step per finishing sequence,
    B / (1 + max(min(1, B / G), B P / (G N))), which undercounts by 17-33%."""
    ctx = _ctx(model, gen=gen)
    eng = VLLM(VLLMParams(**OFFLOAD_V0))
    plan = eng.plan(ctx)
    b, n, blocks = plan.config["batch_size"], eng.token_budget(ctx), plan.config["kv_blocks"]
    dec, pre = _simulate_v0(blocks, 512, gen, requests, n)
    simulated = requests * gen / (dec + pre)
    lockstep = b * gen / (gen + plan.prefill_passes_per_batch)
    staggered = b / (1 + max(min(1.0, b / gen), b * 512 / (gen * n)))
    assert lockstep == pytest.approx(simulated, rel=0.08)
    if b / gen > 0.2:
        assert abs(lockstep - simulated) < 0.5 * abs(staggered - simulated)


def test_cli_default_budget_and_refused_max_model_len():
    """Through the CLI: Mixtral-8x22B's V0 default budget is 2048 tokens; a max_model_len shorter than the workload's
    sequences is one line on stderr and a non-zero exit, no traceback."""
    import json
    import subprocess
    import sys

    args = [sys.executable, "-m", "moesim", "predict", "--model", "mixtral-8x22b", "--hw", "c2", "--system", "vllm",
            "--cpu-offload-gb", "10000", "--chunked-prefill", "false", "--prompt", "512", "--gen", "256",
            "--requests", "100"]
    ok = subprocess.run(args + ["--json"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and json.loads(ok.stdout)["config"]["prefill_tokens_per_pass"] == 2048
    bad = subprocess.run(args + ["--max-model-len", "700"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "max_model_len=700 is shorter" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
