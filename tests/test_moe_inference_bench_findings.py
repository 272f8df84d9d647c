"""MoE-Inference-Bench's parallelism findings (Sec. 7.1, Fig. 13: Mixtral-8x7B and OLMoE-1B-7B on 1-4 H100;
summarised in shared/reference/models-and-hardware.md) as properties of moesim's engines on an HGX H100:

* tensor parallelism scales: more GPUs, faster decode and more throughput (1 -> 4 GPUs more than 2x throughput);
* expert parallelism is hurt by its token exchange and load imbalance: at the same GPUs, vLLM with
  --data-parallel-size N --enable-expert-parallel decodes slower than plain TP, most of all at small batch where
  the exchange's latency is not amortised.

Relative findings only (the paper's figures are not in moesim's corpus); pipeline parallelism is not modelled.
"""

import pytest

import moesim

WORKLOAD = {"prompt_tokens": 512, "gen_tokens": 128}


def _vllm(model: str, gpus: int, batch: int, **params):
    return moesim.predict(model, "hgx-h100", "vllm", {**WORKLOAD, "num_requests": batch, "batch_size": batch},
                          num_gpus=gpus, **({"system_params": params} if params else {}))


@pytest.mark.parametrize("model", ["olmoe-1b-7b", "mixtral-8x7b"])
def test_tensor_parallel_scales(model):
    smallest = 1 if model == "olmoe-1b-7b" else 2  # Mixtral's 93 GB of bf16 weights need two H100s under vLLM
    runs = {n: _vllm(model, n, 64) for n in (smallest, 2, 4) if n >= smallest}
    gpus = sorted(runs)
    for a, b in zip(gpus, gpus[1:]):
        assert runs[b].tpot_s < runs[a].tpot_s and runs[b].throughput_tok_s > runs[a].throughput_tok_s
    if smallest == 1:
        assert runs[4].throughput_tok_s > 2 * runs[1].throughput_tok_s  # the paper's note: > 2x from 1 to 4 GPUs


@pytest.mark.parametrize("gpus", [2, 4])
def test_expert_parallel_is_hurt_by_its_exchange_most_at_small_batch(gpus):
    ratios = {}
    for batch in (1, 64):
        tp = _vllm("mixtral-8x7b", gpus, batch)
        ep = _vllm("mixtral-8x7b", gpus, batch, data_parallel_size=gpus, enable_expert_parallel=True)
        assert ep.tpot_s > tp.tpot_s, (gpus, batch, ep.tpot_s, tp.tpot_s)
        ratios[batch] = ep.tpot_s / tp.tpot_s
    assert ratios[1] > ratios[64]
