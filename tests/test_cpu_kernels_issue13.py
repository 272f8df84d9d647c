"""CPU expert kernels of KTransformers at their measured rates, and ggml-cuda's tile / graph rules (issue 13)."""

import pytest

import moesim
from moesim import costs
from moesim.db import system_constants
from moesim.errors import InfeasibleError
from moesim.systems.llama_cpp import _mmq_tile_rows

WL = {"num_requests": 1, "prompt_tokens": 969, "gen_tokens": 8}


def test_cpu_kernel_time_is_the_roofline_of_the_measured_rate():
    # 2 TFLOP at 1 TFLOP/s = 2 s beats 100 GB at 200 GB/s = 0.5 s; the other way round when memory dominates
    assert costs.cpu_kernel_time_s(2e12, 1e11, 1e12, 2e11) == pytest.approx(2.0)
    assert costs.cpu_kernel_time_s(1e9, 1e11, 1e12, 2e11) == pytest.approx(0.5)


def test_ktransformers_llamafile_prefill_is_compute_bound_at_its_measured_rate():
    """DeepSeek-V3 int4, 969-token prompt, 64 threads on the two 6454S: the routed experts' FLOPs (8 of 256, 58 MoE
    layers: 2 x 3 x 7168 x 2048 x 8 x 58 per token) at 0.374 x 4.506 TFLOP/s x 2 sockets bound prefill from above."""
    p = moesim.predict("deepseek-v3", "ktransformers-6454s-4090", "ktransformers", WL, dtype="int4",
                       system_params={"cpu_infer": 64, "cpu_kernel": "llamafile"})
    rate = system_constants("ktransformers").value("llamafile_fraction_of_fp32_peak") * 4.506e12 * 2
    cpu_only_tok_s = rate / (2 * 3 * 7168 * 2048 * 8 * 58)
    assert 0.8 * cpu_only_tok_s < p.prefill_tok_s < cpu_only_tok_s


def test_ktransformers_amx_kernels_prefill_faster_and_need_amx():
    kw = {"dtype": "int4"}
    lf = moesim.predict("deepseek-v3", "ktransformers-6454s-4090", "ktransformers", WL, **kw,
                        system_params={"cpu_infer": 64, "cpu_kernel": "llamafile"})
    amx = moesim.predict("deepseek-v3", "ktransformers-6454s-4090", "ktransformers", WL, **kw,
                         system_params={"cpu_infer": 64, "cpu_kernel": "amx"})
    assert amx.prefill_tok_s > 2 * lf.prefill_tok_s
    with pytest.raises(InfeasibleError, match="AMX"):
        moesim.predict("mixtral-8x7b", "c2", "ktransformers", WL, system_params={"cpu_kernel": "amx"})


@pytest.mark.parametrize("tokens, rows", [(1, 1), (8, 1), (9, 16), (16, 16), (40, 40), (41, 48), (50, 64),
                                          (64, 64), (100, 112), (512, 128)])
def test_mmq_tile_width_follows_ggml_rule(tokens, rows):
    assert _mmq_tile_rows(tokens, system_constants("llama-cpp")) == rows
