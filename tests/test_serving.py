"""moesim.serving: the generic online scheduler against fake step-time models (hand-computed cases and
properties), arrivals, percentiles, and the errors of serving.simulate."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import moesim
from moesim.errors import InfeasibleError, MoesimError
from moesim.modules import Context, Options
from moesim.serving import (Capacity, Chunk, OnlineResult, Percentiles, Requests, Step, StepTimeModel,
                            online_systems, run, sample_lengths, sample_requests, simulate)
from moesim.serving.result import summarize
from moesim.specs import OfflineWorkload
from moesim.specs.workload import LengthDistribution, OnlineWorkload
from moesim.systems import SYSTEMS
from moesim.systems.base import ServingSystem

BIG = Capacity(kv_blocks=10_000, block_size=16, max_num_seqs=256, max_num_batched_tokens=8192)


class ConstantModel:
    """A step with any prefill chunk takes ``prefill_s``, a decode-only step ``decode_s``; records the steps."""

    def __init__(self, prefill_s: float = 0.05, decode_s: float = 0.01, capacity: Capacity = BIG):
        self.prefill_s, self.decode_s, self.capacity = prefill_s, decode_s, capacity
        self.assumptions = ["constant step times"]
        self.steps: list[Step] = []

    def step_time_s(self, step: Step) -> float:
        self.steps.append(step)
        return self.prefill_s if step.prefills else self.decode_s


class ContractModel:
    """a + b tokens + c (decode contexts + prefill pairs); asserts every step keeps the interface's contract."""

    def __init__(self, capacity: Capacity, max_context: int):
        self.capacity, self.max_context = capacity, max_context
        self.assumptions: list[str] = []

    def step_time_s(self, step: Step) -> float:
        cap = self.capacity
        assert 0 < step.tokens <= cap.max_num_batched_tokens
        assert 0 < step.sequences <= cap.max_num_seqs
        blocks = 0
        for c in step.prefills:
            assert c.tokens >= 1 and c.cached >= 0 and c.cached + c.tokens <= self.max_context
            blocks += math.ceil((c.cached + c.tokens) / cap.block_size)
        for ctx in step.decode_contexts:
            assert 1 <= ctx <= self.max_context
            blocks += math.ceil(ctx / cap.block_size)
        assert blocks <= cap.kv_blocks
        pairs = sum(c.tokens * (c.cached + (c.tokens + 1) / 2) for c in step.prefills)
        return 1e-3 + 1e-5 * step.tokens + 1e-8 * (sum(step.decode_contexts) + pairs)


def _requests(arrivals, prompts, gens) -> Requests:
    return Requests(np.asarray(arrivals, dtype=float), np.asarray(prompts), np.asarray(gens))


def _result(reqs: Requests, model) -> OnlineResult:
    trace = run(reqs, model, "fake")
    return summarize(reqs, trace, system="fake", arrival_rate_per_s=1.0, kv_blocks=model.capacity.kv_blocks,
                     assumptions=[])


def test_fakes_satisfy_the_protocol():
    assert isinstance(ConstantModel(), StepTimeModel)
    assert isinstance(ContractModel(BIG, 100), StepTimeModel)


# ---- hand-computed cases ------------------------------------------------------------------------------
def test_one_request_alone_ttft_is_its_prefill_step_and_tpot_its_decode_step():
    model = ConstantModel(prefill_s=0.05, decode_s=0.01)
    r = _result(_requests([2.0], [100], [11]), model)
    assert r.ttft_s.p50 == pytest.approx(0.05) and r.ttft_s.p99 == pytest.approx(0.05)
    assert r.tpot_s.p50 == pytest.approx(0.01)
    assert r.e2e_s.p50 == pytest.approx(0.05 + 10 * 0.01)
    assert r.makespan_s == pytest.approx(0.15)
    assert r.throughput_tok_s == pytest.approx(11 / 0.15)
    assert r.steps == 11 and r.preemptions == 0 and r.mean_scheduled_per_step == 1
    assert model.steps[0] == Step(prefills=(Chunk(100, 0, True),))
    assert [s.decode_contexts for s in model.steps[1:]] == [(101 + g,) for g in range(10)]


def test_requests_arriving_together_share_steps():
    model = ConstantModel(prefill_s=0.05, decode_s=0.01)
    r = _result(_requests([1.0, 1.0], [100, 50], [5, 5]), model)
    assert r.steps == 5 and r.mean_scheduled_per_step == 2
    assert r.ttft_s.p99 == pytest.approx(0.05) and r.e2e_s.p50 == pytest.approx(0.05 + 4 * 0.01)
    assert model.steps[0].tokens == 150 and model.steps[0].sampled == 2


def test_a_request_arriving_during_a_step_waits_for_the_boundary_and_then_shares_steps():
    model = ConstantModel(prefill_s=0.05, decode_s=0.01)
    r = _result(_requests([1.0, 1.02], [10, 10], [3, 3]), model)
    # step 1 (1.00-1.05): prefill A; step 2 (1.05-1.10): decode A + prefill B; step 3: decode A (done) + B
    assert [s.sequences for s in model.steps] == [1, 2, 2, 1]
    assert r.ttft_s.p50 == pytest.approx((0.05 + (0.10 - 0.02)) / 2)


def test_prompts_over_the_token_budget_are_chunked_and_decodes_go_first():
    cap = Capacity(kv_blocks=100, block_size=4, max_num_seqs=8, max_num_batched_tokens=4)
    model = ConstantModel(prefill_s=0.05, decode_s=0.01, capacity=cap)
    r = _result(_requests([0.5], [10], [2]), model)
    assert model.steps[:3] == [Step(prefills=(Chunk(4, 0, False),)), Step(prefills=(Chunk(4, 4, False),)),
                               Step(prefills=(Chunk(2, 8, True),))]
    assert model.steps[3] == Step(decode_contexts=(11,))
    assert r.ttft_s.p50 == pytest.approx(3 * 0.05)

    model = ConstantModel(capacity=cap)
    _result(_requests([0.5, 0.51], [3, 10], [4, 1]), model)
    # A's prompt (3) fills the first step but 1; then A decodes first and B gets the 3 tokens left
    assert model.steps[0] == Step(prefills=(Chunk(3, 0, True),))
    assert model.steps[1] == Step(prefills=(Chunk(3, 0, False),), decode_contexts=(4,))


def test_max_num_seqs_one_serves_requests_one_after_another():
    cap = Capacity(kv_blocks=1000, block_size=16, max_num_seqs=1, max_num_batched_tokens=8192)
    r = _result(_requests([0.0, 0.0, 0.0], [64, 64, 64], [4, 4, 4]), ConstantModel(0.05, 0.01, cap))
    one = 0.05 + 3 * 0.01
    assert r.e2e_s.p50 == pytest.approx(2 * one) and r.ttft_s.p50 == pytest.approx(one + 0.05)
    assert r.makespan_s == pytest.approx(3 * one)


def test_when_blocks_run_out_the_newest_request_is_preempted_and_recomputed():
    # two requests of 16 + 8 tokens, blocks of 16 tokens, 3 blocks: both prompts fit (2 blocks); at the 17th
    # token of the older one a third block is needed, then a fourth: the newer request is preempted
    cap = Capacity(kv_blocks=3, block_size=16, max_num_seqs=8, max_num_batched_tokens=8192)
    model = ConstantModel(0.05, 0.01, cap)
    r = _result(_requests([0.0, 0.0], [16, 16], [8, 8]), model)
    assert r.preemptions >= 1
    recompute = [c for s in model.steps[1:] for c in s.prefills]
    assert recompute and recompute[0].cached == 0 and recompute[0].tokens > 16  # prompt + generated tokens
    assert r.num_requests == 2 and r.e2e_s.p99 > r.e2e_s.p50


def test_a_request_that_cannot_fit_the_pool_alone_says_by_how_much():
    cap = Capacity(kv_blocks=10, block_size=16, max_num_seqs=8, max_num_batched_tokens=8192)
    with pytest.raises(InfeasibleError, match=r"fake: a request of 150 \+ 20 tokens needs 11 KV blocks, the pool "
                                              r"has 10: short by 1 blocks of 16 tokens"):
        run(_requests([0.0, 1.0], [10, 150], [5, 20]), ConstantModel(capacity=cap), "fake")


def test_percentiles_of_known_samples():
    q = Percentiles.of(np.arange(101.0))
    assert (q.p50, q.p90, q.p99) == (50.0, 90.0, 99.0)
    q = Percentiles.of(np.array([0.0, 10.0]))  # linear interpolation between samples
    assert (q.p50, q.p90, q.p99) == pytest.approx((5.0, 9.0, 9.9))


# ---- arrivals -----------------------------------------------------------------------------------------
def _workload(seed=0, kind="lognormal", n=500, rate=4.0):
    return OnlineWorkload(arrival_rate_per_s=rate, num_requests=n, seed=seed,
                          prompt=LengthDistribution(kind=kind, mean_tokens=300, min_tokens=10, max_tokens=2000),
                          gen=LengthDistribution(kind=kind, mean_tokens=100))


def test_arrivals_reproducible_by_seed():
    a, b, c = sample_requests(_workload(1), 4096), sample_requests(_workload(1), 4096), sample_requests(_workload(2), 4096)
    for x, y in ((a.arrival_s, b.arrival_s), (a.prompt_tokens, b.prompt_tokens), (a.gen_tokens, b.gen_tokens)):
        assert np.array_equal(x, y)
    assert not np.array_equal(a.arrival_s, c.arrival_s)
    assert np.all(np.diff(a.arrival_s) >= 0) and a.arrival_s[0] > 0
    assert a.arrival_s[-1] / len(a) == pytest.approx(1 / 4.0, rel=0.15)  # mean gap 1 / rate


@pytest.mark.parametrize("kind", ["fixed", "uniform", "lognormal"])
def test_lengths_keep_their_mean_and_bounds(kind):
    rng = np.random.default_rng(0)
    x = sample_lengths(LengthDistribution(kind=kind, mean_tokens=300, sigma=0.5), 20_000, rng, cap=100_000)
    assert x.mean() == pytest.approx(300, rel=0.02) and x.min() >= 1
    y = sample_lengths(LengthDistribution(kind=kind, mean_tokens=300, min_tokens=200, max_tokens=350), 1000, rng,
                       cap=320)
    assert y.min() >= 200 and y.max() <= 320


# ---- simulate(): which systems serve online ------------------------------------------------------------
class _NoParams(BaseModel):
    pass


class _Fake(ServingSystem):
    name = "fake"
    summary = "constant step times"
    Params = _NoParams

    def plan(self, ctx):  # pragma: no cover - not used
        raise NotImplementedError

    def online_model(self, ctx, plan, max_context_tokens):
        return ConstantModel()


class _Offline(_Fake):
    name = "offline-only"

    def online_model(self, ctx, plan, max_context_tokens):
        return None


@pytest.fixture(scope="module")
def ctx():
    return Context(moesim.get_model("olmoe-1b-7b"), moesim.get_hardware("rtx4090"),
                   OfflineWorkload(num_requests=20, prompt_tokens=128, gen_tokens=32), Options())


def test_simulate_with_any_system_that_prices_steps(ctx):
    r = simulate(ctx, SimpleNamespace(system="fake"), _Fake(), _workload(n=20, kind="fixed"))
    assert r.system == "fake" and r.num_requests == 20
    assert r.ttft_s.p50 >= 0.05 and r.tpot_s.p50 >= 0.01
    assert "constant step times" in r.assumptions
    assert r.to_json_dict()["ttft_s"] == {"p50": r.ttft_s.p50, "p90": r.ttft_s.p90, "p99": r.ttft_s.p99}


def test_simulate_names_the_systems_that_serve_online(ctx):
    assert "vllm" in online_systems() and "gpu-resident" not in online_systems()
    assert set(online_systems()) <= set(SYSTEMS)
    with pytest.raises(MoesimError, match=r"online serving is not modelled for offline-only; systems that can "
                                          r"serve online: .*vllm"):
        simulate(ctx, SimpleNamespace(system="offline-only"), _Offline(), _workload(n=5))
    gpu_resident = SYSTEMS["gpu-resident"]()
    with pytest.raises(MoesimError, match="not modelled for gpu-resident"):
        simulate(ctx, gpu_resident.plan(ctx), gpu_resident, _workload(n=5))
    with pytest.raises(MoesimError, match="needs a plan of fake"):
        simulate(ctx, SimpleNamespace(system="vllm"), _Fake(), _workload(n=5))


# ---- properties ---------------------------------------------------------------------------------------
@given(n=st.integers(1, 40), rate=st.floats(0.05, 500.0), seed=st.integers(0, 10_000),
       kind=st.sampled_from(["fixed", "uniform", "lognormal"]), prompt=st.integers(1, 600), gen=st.integers(1, 80),
       block_size=st.sampled_from([1, 4, 16]), blocks=st.integers(8, 800), max_seqs=st.integers(1, 16),
       budget=st.integers(1, 512))
@settings(max_examples=100, deadline=None)
def test_scheduler_properties(n, rate, seed, kind, prompt, gen, block_size, blocks, max_seqs, budget):
    work = OnlineWorkload(arrival_rate_per_s=rate, num_requests=n, seed=seed,
                          prompt=LengthDistribution(kind=kind, mean_tokens=prompt),
                          gen=LengthDistribution(kind=kind, mean_tokens=gen))
    reqs = sample_requests(work, cap=4096)
    cap = Capacity(kv_blocks=blocks, block_size=block_size, max_num_seqs=max_seqs, max_num_batched_tokens=budget)
    model = ContractModel(cap, int(reqs.context_tokens.max()))
    if np.ceil(reqs.context_tokens / block_size).max() > blocks:
        event("a request exceeds the pool")
        with pytest.raises(InfeasibleError, match="short by"):
            run(reqs, model)
        return
    event("served")
    trace = run(reqs, model)
    r = summarize(reqs, trace, system="fake", arrival_rate_per_s=rate, kv_blocks=blocks, assumptions=[])
    event("preempted" if r.preemptions else "no preemption")
    assert not np.isnan(trace.finish_s).any()
    for q in (r.ttft_s, r.tpot_s, r.e2e_s):
        assert 0 <= q.p50 <= q.p90 <= q.p99
    assert np.all(trace.first_token_s - reqs.arrival_s > 0)
    assert np.all(trace.finish_s >= trace.first_token_s)
    if n > 1 and reqs.arrival_s[-1] > reqs.arrival_s[0]:  # throughput never above the offered load
        offered = reqs.gen_tokens.sum() / (reqs.arrival_s[-1] - reqs.arrival_s[0])
        assert r.throughput_tok_s <= offered * (1 + 1e-12)
    assert r.steps >= reqs.gen_tokens.max()
    assert 1 <= r.mean_scheduled_per_step <= max_seqs


def test_every_continuous_batching_engine_serves_online():
    """vLLM, SGLang and TensorRT-LLM serve Poisson arrivals with their own capacity (the shared online model);
    layouts and speculative decoding they price offline only are refused, saying so."""
    import moesim
    from moesim.errors import InfeasibleError

    for system in ("vllm", "sglang", "trtllm"):
        r = moesim.predict_online("mixtral-8x7b", "hgx-h100", system=system, num_gpus=2, arrival_rate_per_s=2.0,
                                  num_requests=40, prompt_tokens=256, gen_tokens=64)
        assert r.system == system and r.num_requests == 40
        assert 0 < r.ttft_s.p50 <= r.ttft_s.p99 and 0 < r.tpot_s.p50 <= r.tpot_s.p99
    # experts expert parallel under one scheduler (no attention DP) serve online too
    r = moesim.predict_online("mixtral-8x7b", "hgx-h100", system="sglang", num_gpus=2, arrival_rate_per_s=2.0,
                              num_requests=40, prompt_tokens=256, gen_tokens=64,
                              system_params={"expert_parallel_size": 2})
    assert r.num_requests == 40 and r.tpot_s.p50 > 0
    # attention data parallel: one DP rank's scheduler, the instance's request count and throughput
    r = moesim.predict_online("mixtral-8x7b", "hgx-h100", system="sglang", num_gpus=2, arrival_rate_per_s=2.0,
                              num_requests=41, prompt_tokens=256, gen_tokens=64,
                              system_params={"data_parallel_size": 2, "enable_dp_attention": True,
                                             "expert_parallel_size": 2})
    assert r.num_requests == 41 and 0 < r.ttft_s.p50 <= r.ttft_s.p99
    assert r.request_throughput_per_s == pytest.approx(41 / r.makespan_s)
    assert any("attention data parallel" in a for a in r.assumptions)
    with pytest.raises(InfeasibleError, match="priced offline only"):
        moesim.predict_online("mixtral-8x7b", "hgx-h100", system="sglang", num_gpus=4, arrival_rate_per_s=2.0,
                              num_requests=40, system_params={"disaggregate": True, "prefill_gpus": 2,
                                                              "decode_gpus": 2})


def test_attention_dp_rank_steps_are_the_instance_steps():
    """An attention-DP rank's step of n sequences is the instance's pass of R x n sequences (every rank alike):
    the step table of a DP-R rank prices a decode step exactly as the engine's own pass over R n sequences, and a
    closed loop of C in flight runs one rank's scheduler with ceil(C / R) of them."""
    import math

    import moesim
    from moesim.predict import plan_scenario
    from moesim.serving.closed_loop import simulated_latency
    from moesim.serving.model import Step, ranks_of
    from moesim.serving.scheduler import run
    from moesim.systems import get_system

    params = {"data_parallel_size": 4, "enable_dp_attention": True, "expert_parallel_size": 4}
    sc = moesim.Scenario(model="mixtral-8x7b", hardware="hgx-h100", num_gpus=4, system="sglang", prompt_tokens=512,
                         gen_tokens=32, batch_size=8, num_requests=8, system_params=params)
    ctx, plan, _, _ = plan_scenario(sc)
    engine = get_system("sglang")(params)
    model = engine.online_model(ctx, plan, 544)
    assert ranks_of(model) == 4
    lay = engine._layout(ctx)
    n = 2  # on the decode grid: the table simulates it
    step = Step(decode_contexts=(16,) * n)
    assert model.step_time_s(step) == pytest.approx(engine._pass(ctx, lay, 4 * n, 4 * n, [(4 * n, 1, 16)],
                                                                 phase="decode").time_s, rel=1e-9)
    ttft, tpot = simulated_latency(engine, ctx, plan, 512, 32, concurrency=7, waves=2)
    c_rank = math.ceil(7 / 4)
    reqs = _fixed(2 * c_rank, 512, 32)
    trace = run(reqs, model, "sglang", concurrency=c_rank)
    assert ttft == pytest.approx(float(np.mean(trace.first_token_s - trace.arrival_s)))
    assert tpot == pytest.approx(float(np.mean((trace.finish_s - trace.first_token_s) / 31)))


# ---- the closed loop (a benchmark client keeping C requests in flight) -------------------------------------------
def _fixed(n: int, prompt: int, gen: int, arrivals=None) -> Requests:
    return Requests(np.zeros(n) if arrivals is None else np.asarray(arrivals, dtype=float),
                    np.full(n, prompt, dtype=np.int64), np.full(n, gen, dtype=np.int64))


def test_closed_loop_by_hand():
    """C = 2, 4 requests of 10 + 3 tokens, prefill step 50 ms, decode step 10 ms: the first two are prefilled in
    one step (first tokens at 0.05), decode twice (finish at 0.07), and the next two arrive then: TTFT 0.05 each,
    TPOT (0.07 - 0.05) / 2 = 0.01, the second wave done at 0.14."""
    model = ConstantModel()
    trace = run(_fixed(4, 10, 3), model, concurrency=2)
    assert list(trace.arrival_s) == pytest.approx([0, 0, 0.07, 0.07])
    assert list(trace.first_token_s) == pytest.approx([0.05, 0.05, 0.12, 0.12])
    assert list(trace.finish_s) == pytest.approx([0.07, 0.07, 0.14, 0.14])
    assert trace.steps == 6  # two prefill steps, four decode steps (two runs of two, each priced in one go)


def test_recv_interval_by_hand():
    """SGLang --scheduler-recv-interval 4, every step 1 s: A (4-token prompt, 20 tokens) arrives at 0 and is
    prefilled in [0, 1]; the poll after that prompt step (t = 1) finds nothing; B arrives at 1.5 while A decodes and
    is received only after 4 decode steps since that poll, at t = 5, then prefilled in [5, 6]: TTFT 4.5 s. Polling
    every step (the default), B is received at t = 2: TTFT 1.5 s. In a closed loop the runs of decode steps stop at
    the poll as the step-by-step run does."""
    for recv, ttft in ((4, 4.5), (1, 1.5)):
        cap = Capacity(kv_blocks=10_000, block_size=16, max_num_seqs=256, max_num_batched_tokens=8192, mixed=False,
                       recv_interval=recv)
        trace = run(_fixed(2, 4, 20, arrivals=[0.0, 1.5]), ConstantModel(prefill_s=1.0, decode_s=1.0, capacity=cap))
        assert trace.first_token_s[1] - 1.5 == pytest.approx(ttft)
    # closed loop, C = 1 and a second client request when the first finishes: the engine is idle then, polls at once
    cap = Capacity(kv_blocks=10_000, block_size=16, max_num_seqs=256, max_num_batched_tokens=8192, mixed=False,
                   recv_interval=30)
    trace = run(_fixed(2, 4, 5), ConstantModel(prefill_s=1.0, decode_s=1.0, capacity=cap), concurrency=1)
    assert list(trace.arrival_s) == pytest.approx([0, 5]) and list(trace.first_token_s) == pytest.approx([1, 6])


def test_prefill_first_engine_pauses_decodes_for_a_new_prompt():
    """A prompt arriving while another decodes: a mixing engine puts both in one step; a prefill-first one
    (SGLang's default) runs the prompt alone and the decode waits."""
    for mixed in (True, False):
        cap = Capacity(kv_blocks=10_000, block_size=16, max_num_seqs=256, max_num_batched_tokens=8192, mixed=mixed)
        model = ConstantModel(capacity=cap)
        run(_fixed(2, 10, 5, arrivals=[0.0, 0.055]), model)
        assert model.steps[0] == Step(prefills=(Chunk(10, 0, True),))
        assert model.steps[1] == Step(decode_contexts=(11,))  # at 0.05 -> 0.06: the second prompt not yet there
        if mixed:
            assert model.steps[2] == Step(prefills=(Chunk(10, 0, True),), decode_contexts=(12,))
        else:
            assert model.steps[2] == Step(prefills=(Chunk(10, 0, True),))
            assert model.steps[3] == Step(decode_contexts=(12, 11))


@given(c=st.integers(1, 12), waves=st.integers(1, 3), prompt=st.integers(1, 300), gen=st.integers(1, 60),
       block_size=st.sampled_from([1, 16]), blocks=st.integers(30, 400), budget=st.sampled_from([64, 512, 8192]),
       mixed=st.booleans(), recv=st.sampled_from([1, 1, 3, 30]), seed=st.one_of(st.none(), st.integers(0, 99)))
@settings(max_examples=100, deadline=None)
def test_closed_loop_runs_of_decode_steps_equal_step_by_step(c, waves, prompt, gen, block_size, blocks, budget,
                                                             mixed, recv, seed):
    """The closed loop prices runs of identical decode steps in one go; replaying its arrival times through the
    open-loop scheduler, which prices every step, gives the same first tokens and finishes (the step time is linear
    in the contexts, so the run's trapezoid is exact). With ``seed``, each request generates its own number of tokens
    (1 to ``gen``), so requests finish apart and arrive while others decode: the scheduler's polls for new requests
    every ``recv`` decode steps then keep their phase through the runs."""
    n = c * waves
    gens = np.full(n, gen) if seed is None else np.random.default_rng(seed).integers(1, gen + 1, size=n)

    def _fixed(n, prompt, gen, arrivals=None):  # noqa: ARG001 (the drawn lengths)
        return Requests(np.zeros(n) if arrivals is None else np.asarray(arrivals, dtype=float),
                        np.full(n, prompt, dtype=np.int64), gens.astype(np.int64))

    reqs = _fixed(n, prompt, gen)
    cap = Capacity(kv_blocks=blocks, block_size=block_size, max_num_seqs=256, max_num_batched_tokens=budget,
                   mixed=mixed, recv_interval=recv)
    if math.ceil((prompt + gen) / block_size) > blocks:
        return
    closed = run(reqs, ContractModel(cap, prompt + gen), concurrency=c)
    assert closed.steps >= gens.max() and not np.isnan(closed.finish_s).any()
    assert np.all(closed.first_token_s > closed.arrival_s) and np.all(closed.finish_s >= closed.first_token_s)
    order = np.argsort(closed.arrival_s, kind="stable")
    assert np.all(order == np.arange(n))  # sent in order
    # (each arrival a hair early: it lands on a step's end, which the replay sums step by step in other rounding)
    replay = run(_fixed(n, prompt, gen, closed.arrival_s - 1e-12), ContractModel(cap, prompt + gen))
    assert replay.first_token_s == pytest.approx(closed.first_token_s, rel=1e-9, abs=1e-12)
    assert replay.finish_s == pytest.approx(closed.finish_s, rel=1e-9, abs=1e-12)
    assert replay.steps == closed.steps and replay.preemptions == closed.preemptions


def test_staggered_client_spreads_the_first_wave_and_waits_less():
    """The staggered closed loop (closed_loop.STAGGERED) sends the first C requests at i E / C, E the analytic
    steady-state lifetime of one request; on a prefill-first engine (SGLang) a burst of C prompts queues C prefills,
    a spread wave does not, so its mean TTFT is lower while the decode pace (TPOT) stays within a few percent."""
    from moesim.predict import plan_scenario
    from moesim.serving.closed_loop import Client, simulated_client, simulated_latency
    from moesim.systems import get_system

    assert simulated_client("stag4") == Client(4, staggered=True) and simulated_client("sim4") == Client(4)
    assert simulated_client("half") is None
    sc = moesim.Scenario(model="mixtral-8x7b", hardware="hgx-h100", system="sglang", num_gpus=2, prompt_tokens=2048,
                         gen_tokens=64, batch_size=8, num_requests=8)
    ctx, plan, _, _ = plan_scenario(sc)
    engine = get_system("sglang")()
    burst = simulated_latency(engine, ctx, plan, 2048, 64, 8, waves=2)
    spread = simulated_latency(engine, ctx, plan, 2048, 64, 8, waves=2, staggered=True)
    assert spread[0] < burst[0]
    assert spread[1] == pytest.approx(burst[1], rel=0.15)


def test_attention_dp_closed_loop_is_monotone_in_concurrency():
    """An attention-DP layout's closed loop (one rank's scheduler): more requests in flight never shorten a decode
    step nor lower the throughput C G / E2E (Little's law), from below one request a rank to several."""
    import moesim
    from moesim.predict import plan_scenario
    from moesim.serving.closed_loop import closed_loop_throughput_tok_s, simulated_latency
    from moesim.systems import get_system

    params = {"data_parallel_size": 4, "enable_dp_attention": True, "expert_parallel_size": 4}
    sc = moesim.Scenario(model="mixtral-8x7b", hardware="hgx-h100", num_gpus=4, system="sglang", prompt_tokens=256,
                         gen_tokens=32, batch_size=8, num_requests=8, system_params=params)
    ctx, plan, _, _ = plan_scenario(sc)
    engine = get_system("sglang")(params)
    last_tpot, last_rate = 0.0, 0.0
    for c in (2, 4, 8, 16, 32):
        ttft, tpot = simulated_latency(engine, ctx, plan, 256, 32, concurrency=c, waves=2)
        rate = closed_loop_throughput_tok_s(c, 32, ttft, tpot)
        assert ttft > 0 and tpot >= last_tpot * (1 - 1e-9) and rate >= last_rate * (1 - 1e-9)
        last_tpot, last_rate = tpot, rate


def test_random_length_client_desynchronises_a_prefill_first_engine():
    """InferenceX's stated client (closed_loop.STATED "inferencex": 10 C requests, prompt and output lengths drawn
    uniformly from [0.8 L, L]). SGLang prefills every waiting prompt before it decodes, so a fixed-length closed loop
    stays in lockstep waves and every wave queues its C prefills; with lengths that differ, requests finish apart and
    later waves arrive spread out: the mean TTFT falls well below the lockstep client's and the median below the
    mean (the first wave's burst is the tail). Lengths stay within [floor(0.8 L), L], so every TPOT is finite."""
    import moesim
    from moesim.predict import plan_scenario
    from moesim.serving.closed_loop import Client, simulated_client, simulated_run
    from moesim.systems import get_system

    ix = simulated_client("inferencex")
    assert ix == Client(10, range_ratio=0.8)
    sc = moesim.Scenario(model="mixtral-8x7b", hardware="hgx-h100", system="sglang", num_gpus=2, prompt_tokens=2048,
                         gen_tokens=128, batch_size=16, num_requests=16)
    ctx, plan, _, _ = plan_scenario(sc)
    engine = get_system("sglang")()
    fixed = simulated_run(engine, ctx, plan, 2048, 128, 16, Client(10))
    spread = simulated_run(engine, ctx, plan, 2048, 128, 16, ix)
    assert spread.mean_ttft_s < 0.7 * fixed.mean_ttft_s
    assert spread.median_ttft_s < spread.mean_ttft_s
    assert fixed.median_ttft_s == pytest.approx(fixed.mean_ttft_s, rel=0.35)
    assert 0 < spread.mean_tpot_s < 10 * fixed.mean_tpot_s
    again = simulated_run(engine, ctx, plan, 2048, 128, 16, ix)
    assert again == spread  # seeded: the same draw, the same run


def test_steady_ttft_waits_half_the_receive_interval():
    """The analytic steady-state TTFT waits for the scheduler's next poll: half of R decode steps (R = the plan's
    recv_interval, SGLang's --scheduler-recv-interval), so R = 30 adds 14.5 decode steps to R = 1's wait, by hand."""
    from moesim.serving.closed_loop import steady_ttft_s

    def plan(recv):
        return SimpleNamespace(batch_size=8, prefill_tokens_per_pass=8192, decode_time_per_batch_s=0.01 * 100,
                               prefill=SimpleNamespace(time_s=0.2), config={"recv_interval": recv})

    base = steady_ttft_s(plan(1), 1024, 100)
    # q = min(1024, 8192 - 8) = 1024: one step of 0.2 x 1024 / 8192 + 0.01, after half a 0.01 s decode step
    assert base == pytest.approx(0.5 * 0.01 + 0.2 * 1024 / 8192 + 0.01)
    assert steady_ttft_s(plan(30), 1024, 100) - base == pytest.approx(14.5 * 0.01)
    assert steady_ttft_s(SimpleNamespace(**{**vars(plan(1)), "config": {}}), 1024, 100) == pytest.approx(base)
