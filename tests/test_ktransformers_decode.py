"""KTransformers' decode as V0.2.1 runs it: GGUF expert bytes, the CPU MoE call's fixed time and streaming rate from
KTransformers' own microbenchmark, and the GPU step replayed as one CUDA graph."""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import moesim
from moesim import costs
from moesim.costs.cpu import cpu_experts, gguf_expert_bytes_per_weight, gguf_use_more_bits
from moesim.db import system_constants
from moesim.predict import build, plan_scenario
from moesim.systems import get_system

C = system_constants("ktransformers")
TYPES = {t: float(C.value(f"ggml_bytes_per_weight_{t}")) for t in ("q4_k", "q5_k", "q6_k", "q8_0")}
HW = "ktransformers-6454s-4090"
WL = {"num_requests": 1, "prompt_tokens": 969, "gen_tokens": 32}
V021 = {"cpu_infer": 65, "cpu_kernel": "llamafile", "gguf_type": "q4_k_m", "lm_head_marlin": False}


def test_q4_k_m_keeps_ffn_down_in_q6_k_in_27_of_deepseek_v3s_58_moe_layers():
    """llama.cpp's use_more_bits for n_layer 61: layers 0-6, 9, 12, ..., 51 and 53-60; of the MoE layers 3-60 that is
    4 + 15 + 8 = 27, so the mean expert weight is (2 x 0.5625 + (27 x 0.8203125 + 31 x 0.5625) / 58) / 3 bytes."""
    more = [i for i in range(3, 61) if gguf_use_more_bits(i, 61)]
    assert more == [3, 4, 5, 6] + list(range(9, 52, 3)) + list(range(53, 61))
    expected = (2 * 0.5625 + (27 * 0.8203125 + 31 * 0.5625) / 58) / 3
    assert gguf_expert_bytes_per_weight("q4_k_m", list(range(3, 61)), 61, TYPES) == pytest.approx(expected, rel=1e-12)
    assert expected * 8 == pytest.approx(4.82, abs=0.005)  # bits a weight
    assert gguf_expert_bytes_per_weight("q8_0", [1, 2], 4, TYPES) == pytest.approx(34 / 32)
    with pytest.raises(ValueError, match="q3"):
        gguf_expert_bytes_per_weight("q3", [1], 4, TYPES)


def test_benchmark_points_give_the_decode_call_time_and_streaming_fraction():
    """Re-fit t = t_call + B / BW on the nine points of KTransformers' MoE microbenchmark (one 6454S socket,
    307.2 GB/s) stored in systems_db: the committed constants are that fit, rounded."""
    points = [x.split() for x in str(C.value("llamafile_decode_benchmark_us")).split(",")]
    weights = 6 * 3 * 5120 * 1536
    t = np.array([float(us) for _, us, _ in points]) * 1e-6
    b = np.array([float(bpe) for _, _, bpe in points]) * weights
    (t0, inv_bw), *_ = np.linalg.lstsq(np.vstack([np.ones_like(b), b]).T, t, rcond=None)
    assert t0 == pytest.approx(float(C.value("llamafile_decode_call_s")), abs=2e-6)
    assert 1 / inv_bw / 307.2e9 == pytest.approx(float(C.value("llamafile_decode_memory_fraction")), abs=0.005)


@given(bpw=st.floats(0.3, 2.0), active=st.floats(1, 64))
@settings(max_examples=20, deadline=None)
def test_gguf_bytes_replace_the_dtypes_weight_bytes_only(bpw, active):
    base = cpu_experts(7168, 2048, active, 8, True, "int4")
    gguf = cpu_experts(7168, 2048, active, 8, True, "int4", bpw)
    assert gguf.bytes - base.bytes == pytest.approx(active * 3 * 7168 * 2048 * (bpw - 0.5), rel=1e-9)
    assert gguf.flop == base.flop


def test_cpu_kernel_call_time_adds_to_the_roofline():
    assert costs.cpu_kernel_time_s(1e9, 1e11, 1e12, 2e11, call_s=1e-4) == pytest.approx(0.5001)
    with pytest.raises(ValueError):
        costs.cpu_kernel_time_s(1e9, 1e11, 1e12, 2e11, call_s=-1.0)


def _ctx(**knobs):
    s = build("deepseek-v3", HW, "ktransformers", WL, system_params=V021, dtype="int4", top_k=8, **knobs)
    ctx, _, _, _ = plan_scenario(s)
    return ctx


def test_decode_cpu_experts_by_hand():
    """One decode token, DeepSeek-V3 Q4_K_M, 64 workers on the two 6454S (614.4 GB/s): 148 us, then its 8 experts'
    weights (3 x 7168 x 2048 each at 0.6025 bytes) at 0.78 of the DRAM peak; their FLOPs at 0.374 of 2 x 4.506
    TFLOP/s take less (0.21 ms against 0.44 ms)."""
    ctx = _ctx()
    system = get_system("ktransformers")(V021)
    bpw = (2 * 0.5625 + (27 * 0.8203125 + 31 * 0.5625) / 58) / 3
    weights = 8 * 3 * 7168 * 2048 * bpw
    acts = 8 * (7168 + 2 * 2048 + 2048 + 7168 + 2 * 2048) * 2  # each token-expert pair's activations, bf16
    expected = 148e-6 + (weights + acts) / (2 * 307.2e9 * 0.78)
    assert system._cpu_expert_s(ctx, 1, 65, "llamafile") == pytest.approx(expected, rel=1e-3)
    # four tokens (fewer than group_min_len): forward_one per token, each reads its own 8 experts
    four = system._cpu_expert_s(ctx, 4, 65, "llamafile")
    assert four == pytest.approx(148e-6 + 4 * (weights + acts) / (2 * 307.2e9 * 0.78), rel=1e-3)


def test_graph_decode_pays_every_small_kernel_of_every_layer():
    """The decode step is at least the graph's small kernels (61 layers x 70 attention nodes x 2.1 us) plus the 58 MoE
    layers' CPU calls; V0.2.1's bf16 LM head (129280 x 7168) holds 1.5 bytes a weight more than a 4-bit Marlin one
    and reads them every step."""
    ctx = _ctx()
    plan = get_system("ktransformers")(V021).plan(ctx)
    _, step = plan.mid_decode
    floor = 61 * 70 * float(C.value("decode_graph_node_s")) + 58 * float(C.value("llamafile_decode_call_s"))
    assert step.time_s > floor
    marlin_head = get_system("ktransformers")({**V021, "lm_head_marlin": True}).plan(ctx)
    assert marlin_head.mid_decode[1].time_s < step.time_s
    assert plan.gpu_mem_bytes - marlin_head.gpu_mem_bytes == pytest.approx(129280 * 7168 * 1.5, rel=1e-9)


def test_v021_decode_slower_than_the_int4_reading_and_close_to_its_parts():
    """Q4_K_M experts read more bytes than int4 ones: decode is slower with the stated GGUF."""
    int4 = moesim.predict("deepseek-v3", HW, "ktransformers", WL, dtype="int4", top_k=8,
                          system_params={k: v for k, v in V021.items() if k != "gguf_type"})
    q4km = moesim.predict("deepseek-v3", HW, "ktransformers", WL, dtype="int4", top_k=8, system_params=V021)
    assert q4km.decode_tok_s < int4.decode_tok_s
    assert q4km.config["gguf_type"] == "q4_k_m"


def test_cli_rejects_an_unknown_gguf_type_in_one_line():
    r = subprocess.run([sys.executable, "-m", "moesim", "predict", "--model", "deepseek-v3", "--hw", HW, "--system",
                        "ktransformers", "--param", "gguf_type=q3", "--dtype", "int4"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "gguf_type" in r.stderr and len(r.stderr.strip().splitlines()) == 1
