"""Every static-batch system splits requests the same way (issue 13, item 3): full batches of its batch B, then a
last, partial batch of the R mod B requests left, charged for what it holds (as FlexGen, MoE-Lightning and
transformers already did); gpu-resident, deepspeed, moe-gen and llama-cpp used to split R into equal batches
and charge the last one as a full one (``balanced_batches``: 10 requests at B = 4 were 3 batches of 4, 12 slots).

Hand-computed: 10 requests at B = 4 are the batches 4 + 4 + 2, so the run takes twice a lone batch of 4 plus a
lone batch of 2, each priced by the same system on its own (R = 4 and R = 2 are one batch each)."""

from __future__ import annotations

import pytest

import moesim

CASES = [
    ("gpu-resident", "qwen3-30b-a3b", "h200", {}, {}),
    ("deepspeed", "mixtral-8x7b", "a100-80gb", {}, {}),
    # b_a, the prefill batch and omega given, so that a lone batch of 2 runs as the last batch of the 10 does
    ("moe-gen", "deepseek-v2-lite", "moe-gen-c2",
     {"attention_micro_batch": 1, "prefill_batch": 1, "cpu_attention_fraction": 0.0}, {}),
    # 4 slots, every layer on the GPU whatever the requests (the placement is the server's, not the batch's)
    ("llama-cpp", "qwen3-30b-a3b", "h200", {"fit": False, "n_parallel": 4}, {}),
    ("ktransformers", "deepseek-v2-lite", "rtx4090", {}, {}),
]


def _run(system: str, model: str, hw: str, params: dict, requests: int, batch: int | None):
    work = {"num_requests": requests, "prompt_tokens": 64, "gen_tokens": 8}
    if batch:
        work["batch_size"] = batch
    return moesim.predict(model, hw, system, work, system_params=params or None)


@pytest.mark.parametrize("system, model, hw, params, _", CASES, ids=[c[0] for c in CASES])
def test_ten_requests_at_batch_four_are_four_four_two(system, model, hw, params, _):
    both = _run(system, model, hw, params, 10, 4)
    one = _run(system, model, hw, params, 4, 4)
    rest = _run(system, model, hw, params, 2, 4)
    assert both.config["batch_size"] == 4 and one.config["batch_size"] == 4 and rest.config["batch_size"] == 2
    assert both.total_time_s == pytest.approx(2 * one.total_time_s + rest.total_time_s, rel=1e-9)
    assert both.total_time_s < 3 * one.total_time_s  # not three full batches (12 slots)
    assert any("10 requests in 2 batches of 4 (one simulated) and a last of 2, simulated at its own size" in a
               for a in both.assumptions)


@pytest.mark.parametrize("system, model, hw, params, _", CASES[:2], ids=[c[0] for c in CASES[:2]])
def test_one_more_request_never_takes_less_time(system, model, hw, params, _):
    """With a fixed batch, each request added adds work: 8 to 12 requests at B = 4 take strictly more time each
    (an equal split of 9 requests into 3 batches of 3 could take less than 2 batches of 4 plus 1)."""
    totals = [_run(system, model, hw, params, r, 4).total_time_s for r in range(8, 13)]
    assert all(b > a for a, b in zip(totals, totals[1:]))


def test_full_batches_by_hand():
    """The one split every static-batch system uses: full batches of B, then what is left."""
    from moesim.systems.base import full_batches

    assert full_batches(10, 4) == (4, 3, 2)
    assert full_batches(8, 4) == (4, 2, 0)
    assert full_batches(3, 8) == (3, 1, 0)  # fewer requests than the batch: one batch of them, not partial
