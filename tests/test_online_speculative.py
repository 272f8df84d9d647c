"""Speculative decoding (MTP, a draft model) served online: the engines' step table prices a decode step as the
verification of k + 1 tokens a sequence after k draft steps, and the callers schedule 1 + ceil((g - 1) / tau)
decode steps for g generated tokens (tau the expected tokens a step), reporting TPOT over the real g."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import moesim
from moesim.modules import expected_tokens_per_step
from moesim.predict import plan_scenario
from moesim.serving.closed_loop import Client, simulated_run
from moesim.serving.model import decode_steps, tokens_per_step_of
from moesim.systems import get_system


def test_decode_steps_by_hand():
    model = SimpleNamespace(tokens_per_step=1.85)
    # g = 1: the prefill's token only; g = 2: one more step; g = 1024: 1 + ceil(1023 / 1.85) = 1 + 553
    assert decode_steps(model, [1, 2, 1024]).tolist() == [1, 2, 554]
    assert decode_steps(SimpleNamespace(), np.array([7, 9])).tolist() == [7, 9]  # no speculation: unchanged
    assert tokens_per_step_of(SimpleNamespace()) == 1.0
    assert expected_tokens_per_step([0.85]) == pytest.approx(1.85)


def _scenario(k: int, **kw) -> moesim.Scenario:
    base = dict(model="deepseek-v3", hardware="hgx-h200", num_gpus=8, system="sglang", prompt_tokens=512,
                gen_tokens=256, batch_size=1, num_requests=1, system_params={"speculative_num_steps": k})
    base.update(kw)
    return moesim.Scenario(**base)


def test_one_request_in_flight_matches_the_offline_speculative_tpot():
    """C = 1: no other request interferes, so the simulated run's TPOT is the offline plan's (the same verify +
    draft step over tau), up to the scheduler rounding g - 1 tokens to whole steps."""
    for k in (1, 2):
        sc = _scenario(k)
        ctx, plan, _, _ = plan_scenario(sc)
        engine = get_system("sglang")(sc.system_params)
        run = simulated_run(engine, ctx, plan, 512, 256, 1, Client(2))
        offline = moesim.predict(sc).tpot_s
        assert run.mean_tpot_s == pytest.approx(offline, rel=0.1), k


def test_online_mtp_decodes_faster_than_without_and_says_how():
    kw = dict(system="sglang", num_gpus=8, arrival_rate_per_s=0.5, num_requests=30, prompt_tokens=512,
              gen_tokens=256)
    plain = moesim.predict_online("deepseek-v3", "hgx-h200", system_params={}, **kw)
    mtp = moesim.predict_online("deepseek-v3", "hgx-h200", system_params={"speculative_num_steps": 1}, **kw)
    assert 0 < mtp.tpot_s.p50 < plain.tpot_s.p50
    # the MTP step costs more than a plain decode step, so the gain is below tau = 1.85
    assert plain.tpot_s.p50 / mtp.tpot_s.p50 < expected_tokens_per_step([0.85])
    assert any("speculative decoding (MTP" in a for a in mtp.assumptions)
    assert not any("speculative decoding" in a for a in plain.assumptions)


def test_steps_with_prompt_chunks_price_the_decodes_verified_tokens():
    """TensorRT-LLM mixes context and generation requests in one iteration: there each decoding sequence verifies
    k + 1 tokens, so such a step costs more with MTP than without."""
    from moesim.serving.model import Chunk, Step

    # piecewise graphs: no eager-context host floor (which bounds both such steps alike for DeepSeek's MLA)
    graphed = {"enable_piecewise_cuda_graph": True}
    sc = _scenario(2, system="trtllm", system_params={"num_nextn_predict_layers": 2, **graphed})
    ctx, plan, _, _ = plan_scenario(sc)
    mtp = get_system("trtllm")(sc.system_params).online_model(ctx, plan, 1024)
    sc0 = _scenario(0, system="trtllm", system_params=graphed)
    ctx0, plan0, _, _ = plan_scenario(sc0)
    plain = get_system("trtllm")(graphed).online_model(ctx0, plan0, 1024)
    step = Step(prefills=(Chunk(256, 0, True),), decode_contexts=tuple([600] * 32))
    assert mtp.step_time_s(step) > plain.step_time_s(step)
    sce = _scenario(0, system="trtllm", system_params={})  # the default eager context phase: the host floor
    ctxe, plane, _, _ = plan_scenario(sce)
    eager = get_system("trtllm")().online_model(ctxe, plane, 1024)
    floor = get_system("trtllm")().runtime(ctxe).prefill_host_s
    assert floor > 0 and eager.step_time_s(step) == pytest.approx(max(plain.step_time_s(step), floor))


def test_cli_serves_mtp_online_and_still_refuses_disaggregation():
    import json
    import subprocess
    import sys

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "moesim", "predict", "--rate", "1", "--requests", "20", *args],
                              capture_output=True, text=True, timeout=120)

    mtp = cli("--model", "deepseek-r1", "--hw", "hgx-h200", "--system", "trtllm", "--num-nextn-predict-layers", "2",
              "--json")
    assert mtp.returncode == 0, mtp.stderr
    out = json.loads(mtp.stdout)
    assert 0 < out["tpot_s"]["p50"] <= out["tpot_s"]["p99"]
    assert any("speculative decoding (MTP, 2 draft" in a for a in out["assumptions"])
    dis = cli("--model", "qwen3-30b-a3b", "--hw", "hgx-h100", "--gpus", "2", "--system", "sglang", "--disaggregate",
              "--prefill-gpus", "1", "--decode-gpus", "1")
    assert dis.returncode != 0 and "priced offline only" in dis.stderr and "Traceback" not in dis.stderr


def test_a_generation_step_holds_the_kv_of_its_tokens():
    """tau = 2 tokens a decode step: 16 prompt tokens and 8 generation steps past them hold 16 + 8 x 2 = 32 KV tokens;
    a request of 16 prompt tokens and 9 decode steps needs ceil((16 + 9 x 2) / 16) = 3 blocks of 16, so a pool of 2
    refuses it and one of 3 serves it, while without speculation (16 + 9 = 25 tokens) 2 blocks suffice."""
    from dataclasses import dataclass

    from moesim.errors import InfeasibleError
    from moesim.serving.arrivals import Requests
    from moesim.serving.model import Capacity
    from moesim.serving.scheduler import _Batcher, run

    @dataclass
    class _M:
        capacity: Capacity
        tokens_per_step: float = 1.0

        def step_time_s(self, step):
            return 0.01

    reqs = Requests(np.array([0.0]), np.array([16]), np.array([9]))

    def cap(blocks):
        return Capacity(kv_blocks=blocks, block_size=16, max_num_seqs=4, max_num_batched_tokens=64)

    b = _Batcher(reqs, cap(3), tau=2.0)
    assert b.kv_tokens(0, 16) == 16 and b.kv_tokens(0, 24) == 32
    with pytest.raises(InfeasibleError, match="needs 3 KV blocks"):
        run(reqs, _M(cap(2), 2.0))
    assert run(reqs, _M(cap(3), 2.0)).finish_s[0] == pytest.approx(0.09)  # prefill + 8 decode steps
    assert run(reqs, _M(cap(2), 1.0)).finish_s[0] == pytest.approx(0.09)
