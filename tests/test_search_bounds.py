"""Searches that skip candidates by lower bounds choose what an exhaustive search chooses: the bounds are
lower bounds of what is simulated, and the bounded search returns the exhaustive minimum (ties included);
the Context's memos return what the computations they stand for return."""

import math
import random

import pytest

import moesim
from moesim import scenario as sc
from moesim.modules import Context
from moesim.predict import resolve
from moesim.systems.base import simpson_decode_time
from moesim.systems.moe_lightning import MoELightning
from moesim.systems.shared.search import best_by_bounds, simpson_bound

#: rounding: a bound adds the simulation's durations in another order
ULPS = 1e-12


def context(model: str, hardware: str, **workload) -> Context:
    r = resolve(sc.build(model, hardware, **workload))
    return Context(r.model, r.platform, r.workload, r.options)


@pytest.mark.parametrize("seed", range(5))
def test_best_by_bounds_is_the_exhaustive_minimum_ties_to_the_least_rank(seed):
    rng = random.Random(seed)
    values = [rng.choice([3.0, 4.0, 5.0, 5.0, 6.0]) for _ in range(12)]
    ranks = [rng.random() for _ in values]
    bounds = [v * rng.uniform(0.5, 1.0) for v in values]
    evaluated = []

    def exact(i):
        evaluated.append(i)
        return (values[i], f"detail {i}")

    best, (value, detail) = best_by_bounds(list(range(len(values))), (lambda i: bounds[i],), exact,
                                           lambda i: ranks[i])
    expected = min(range(len(values)), key=lambda i: (values[i], ranks[i]))
    assert (best, value, detail) == (expected, values[expected], f"detail {expected}")
    assert all(i in evaluated for i in range(len(values)) if values[i] == values[expected])  # ties are all seen
    assert len(evaluated) < len(values)  # and something was skipped


def test_simpson_bound_weighs_the_contexts_simpson_simulates():
    def step(c: int):
        return type("S", (), {"time_s": 1.0 + c / 100})()

    for gen in (1, 2, 3, 64):
        exact, _ = simpson_decode_time(step, 100, gen)
        assert simpson_bound(lambda c: step(c).time_s, 100, gen) == pytest.approx(exact, rel=1e-15)


@pytest.mark.parametrize("model, hardware, params, workload", [
    ("mixtral-8x7b", "rtx4090", {}, dict(prompt_tokens=512, gen_tokens=256)),
    ("gpt-oss-20b", "l4", {"prefill_attention": "eager"}, dict(prompt_tokens=2048, gen_tokens=64)),  # windowed
    ("deepseek-v2-lite", "moe-gen-c2", {"max_simulated_micro_batches": 2}, dict(prompt_tokens=128, gen_tokens=5)),
    ("qwen3-30b-a3b", "t4-server", {"one_prefill_pass": True}, dict(prompt_tokens=16, gen_tokens=2)),
])
def test_moe_lightning_bounds_are_below_every_candidates_simulated_steps(model, hardware, params, workload):
    ctx = context(model, hardware, num_requests=1000, **workload)
    system = MoELightning(params)
    n_cap, _, _ = system._batch_cap(ctx)
    cands = system._candidates(ctx, n_cap, None)
    assert cands
    P, G = ctx.workload.prompt_tokens, ctx.workload.gen_tokens
    for cand in cands:
        assert system._prefill_lower_bound(ctx, cand) <= system._prefill(ctx, cand).time_s * (1 + ULPS)
        any_context = system._decode_lower_bound(ctx, cand)
        for kv in (P + 1, (2 * P + 1 + G) // 2, P + G):
            bound = system._decode_lower_bound(ctx, cand, kv)
            assert any_context <= bound * (1 + ULPS)
            assert bound <= system._decode(ctx, cand, kv).time_s * (1 + ULPS)


@pytest.mark.parametrize("model, hardware, workload", [
    ("mixtral-8x7b", "rtx4090", dict(prompt_tokens=256, gen_tokens=512)),
    ("olmoe-1b-7b", "t4-server", dict(prompt_tokens=1024, gen_tokens=32)),
])
def test_moe_lightning_chooses_the_exhaustive_minimum(model, hardware, workload):
    ctx = context(model, hardware, num_requests=1000, **workload)
    system = MoELightning({"policy": "best"})
    plan = system.plan(ctx)
    n_cap, _, _ = system._batch_cap(ctx)
    w = ctx.workload

    def one(cand):
        decode_s, _ = simpson_decode_time(lambda c: system._decode(ctx, cand, c), w.prompt_tokens, w.gen_tokens)
        prefill = system._prefill(ctx, cand).time_s
        return math.ceil(cand["n"] / cand["n_p"]) * prefill + decode_s

    def total(cand):  # full batches, then the last one charged for the sequences it holds
        b = math.ceil(w.num_requests / cand["n"])
        r = w.num_requests - (b - 1) * cand["n"]
        return (b - 1) * one(cand) + (one(cand) if r == cand["n"] else one(system._partial(ctx, cand, r)))

    cands = system._candidates(ctx, n_cap, None)
    rank = system._hrm_rank(ctx, cands)
    best = min(range(len(cands)), key=lambda i: (total(cands[i]), rank(i)))
    assert (plan.config["policy_batch_size"], plan.config["policy_micro_batch_size"]) == (cands[best]["n"],
                                                                                         cands[best]["mu"])
    assert plan.total_time_s == pytest.approx(total(cands[best]), rel=1e-12)


def test_context_memos_return_what_they_stand_for():
    ctx = context("mixtral-8x7b", "rtx4090", prompt_tokens=512, gen_tokens=256)
    fresh = context("mixtral-8x7b", "rtx4090", prompt_tokens=512, gen_tokens=256)
    for _ in range(2):  # computed, then remembered
        assert ctx.router(1000) == moesim.costs.router(4096, 8, 1000) + moesim.costs.dispatch_combine(4096, 2000)
        assert ctx.gpu_s(ctx.router(1000)) == moesim.costs.gpu_time_s(fresh.router(1000), fresh.platform.gpu,
                                                                       fresh.eff)
        assert ctx.h2d_s(1e9) == moesim.costs.platform_copy_time_s(1e9, "h2d_pinned", ctx.platform)
        assert ctx.d2h_s(0.0) == 0.0
    # an int and an equal float argument keep separate entries (they may compute differently)
    assert ctx.attention_proj(64) is not ctx.attention_proj(64.0)
    assert ctx.memo(("k",), lambda: None) is None and ctx.memo(("k",), lambda: 1) is None
