"""TensorRT-LLM's attention-DP balance (``attention_dp_config`` enable_balance, timeout_iters): online, a waiting
prompt is released only when ``timeout_iters`` iterations have passed since the last release, or at once when
nothing runs (TensorRT-LLM ``_balance_adp_requests``; InferenceX's scripts set timeout_iters 60)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import moesim
from moesim.serving.arrivals import Requests
from moesim.serving.model import Capacity, Step
from moesim.serving.scheduler import run
from moesim.systems import get_system
from moesim.modules import Context, Options
from moesim.specs import OfflineWorkload


@dataclass
class _Constant:
    """Every step 10 ms, whatever it holds."""

    capacity: Capacity

    def step_time_s(self, step: Step) -> float:
        return 0.010


def _run(release: int):
    cap = Capacity(kv_blocks=10_000, block_size=16, max_num_seqs=8, max_num_batched_tokens=4096,
                   ctx_release_iters=release)
    # r0 at 0 decodes 100 tokens; r1 arrives at 12 ms, while r0 decodes; r2 arrives at 5 s, when nothing runs
    reqs = Requests(np.array([0.0, 0.012, 5.0]), np.array([64, 64, 64]), np.array([100, 4, 4]))
    return run(reqs, _Constant(cap))


def test_release_gate_by_hand():
    free, gated = _run(1), _run(5)
    # r1 without the gate: admitted at the 20 ms boundary, its first token at the end of that step (30 ms)
    assert free.first_token_s[1] - 0.012 == pytest.approx(0.018)
    # with T = 5: r0's admission (step 1, 0-10 ms) restarts the counter; the boundary at 50 ms is the fifth step
    # after it, so r1 is admitted there and samples its first token at 60 ms
    assert gated.first_token_s[1] - 0.012 == pytest.approx(0.048)
    # r2 arrives with nothing running: released at once, gate or not (one step to its first token)
    assert gated.first_token_s[2] - 5.0 == pytest.approx(0.010) == free.first_token_s[2] - 5.0
    assert gated.first_token_s[0] == pytest.approx(free.first_token_s[0])


def _ctx() -> Context:
    return Context(moesim.get_model("deepseek-r1"), moesim.get_hardware("hgx-b200", num_gpus=8),
                   OfflineWorkload(num_requests=8, prompt_tokens=1024, gen_tokens=256), Options())


def test_trtllm_releases_every_timeout_iters_only_with_attention_dp_balance():
    ctx = _ctx()
    adp = {"enable_attention_dp": True, "moe_expert_parallel_size": 8}
    assert get_system("trtllm")({**adp, "attention_dp_balance": True}).ctx_release_iters(ctx) == 50  # its default
    assert get_system("trtllm")({**adp, "attention_dp_balance": True,
                                 "attention_dp_timeout_iters": 60}).ctx_release_iters(ctx) == 60
    assert get_system("trtllm")(adp).ctx_release_iters(ctx) == 1  # balance off (TensorRT-LLM's default)
    assert get_system("trtllm")({"attention_dp_balance": True}).ctx_release_iters(ctx) == 1  # no attention DP
    assert get_system("sglang")().ctx_release_iters(ctx) == 1


def test_online_ttft_waits_for_the_release_with_balance_on():
    kw = dict(system="trtllm", num_gpus=8, arrival_rate_per_s=4.0, num_requests=120, prompt_tokens=1024,
              gen_tokens=256)
    adp = {"enable_attention_dp": True, "moe_expert_parallel_size": 8}
    off = moesim.predict_online("deepseek-r1", "hgx-b200", system_params=adp, **kw)
    on = moesim.predict_online("deepseek-r1", "hgx-b200", system_params={**adp, "attention_dp_balance": True,
                                                                       "attention_dp_timeout_iters": 60}, **kw)
    assert on.ttft_s.p50 > off.ttft_s.p50
    assert any("released every 60 iterations" in a for a in on.assumptions)
    assert not any("attention-DP balance" in a for a in off.assumptions)


def test_ranks_alike_never_hold_a_prompt():
    """A client of fixed-length waves: every DP rank holds a prompt whenever the simulated one does, which
    TensorRT-LLM releases at once, so the caller turns the gate off and the run is the ungated one."""
    reqs = Requests(np.array([0.0, 0.012, 5.0]), np.array([64, 64, 64]), np.array([100, 4, 4]))
    cap = Capacity(kv_blocks=10_000, block_size=16, max_num_seqs=8, max_num_batched_tokens=4096, ctx_release_iters=5)
    alike = run(reqs, _Constant(cap), ranks_alike=True)
    np.testing.assert_allclose(alike.first_token_s, _run(1).first_token_s)


def test_what_a_release_leaves_waiting_goes_at_once():
    """Three prompts arrive during r0's decode and wait for the release (boundary 50 ms); the step budget (4096 -
    1 decode) takes two of 2000 tokens, and the third, which waited on every rank too, goes at the next boundary
    rather than five steps later."""
    cap = Capacity(kv_blocks=10_000, block_size=16, max_num_seqs=8, max_num_batched_tokens=4096, ctx_release_iters=5)
    reqs = Requests(np.array([0.0, 0.012, 0.013, 0.014]), np.array([64, 2000, 2000, 2000]),
                    np.array([100, 4, 4, 4]))
    trace = run(reqs, _Constant(cap))
    # released at the 50 ms boundary: two whole prompts (first tokens at 60 ms) and a 95-token chunk of the third,
    # whose rest runs in the next step (first token at 70 ms), not held until the 100 ms boundary
    assert trace.first_token_s[1:].round(6).tolist() == [0.06, 0.06, 0.07]


def test_the_counter_runs_whether_prompts_wait_or_not():
    """TensorRT-LLM's counter counts every iteration that does not release and restarts at timeout_iters, prompts
    waiting or not: releases fall on a fixed beat. r1 arriving at 62 ms waits for the beat at 100 ms (the counter
    restarted at 50 ms with nothing waiting), not for 5 steps after r0's admission (which had passed by 50 ms)."""
    cap = Capacity(kv_blocks=10_000, block_size=16, max_num_seqs=8, max_num_batched_tokens=4096, ctx_release_iters=5)
    reqs = Requests(np.array([0.0, 0.062]), np.array([64, 64]), np.array([100, 4]))
    trace = run(reqs, _Constant(cap))
    assert trace.first_token_s[1] - 0.062 == pytest.approx(0.048)
    # the same in a closed loop, where runs of decode steps are priced in one go: two in flight, r0 (100 tokens) and
    # r1 (7 tokens) sent at 0; r1 finishes at 70 ms and r2 is sent then; beats at 50 and 100 ms: r2's first token at
    # 110 ms
    loop = Requests(np.zeros(3), np.array([64, 64, 64]), np.array([100, 7, 4]))
    closed = run(loop, _Constant(cap), concurrency=2)
    assert closed.first_token_s[1] == pytest.approx(0.010) and closed.finish_s[1] == pytest.approx(0.070)
    assert closed.arrival_s[2] == pytest.approx(0.070) and closed.first_token_s[2] == pytest.approx(0.110)
