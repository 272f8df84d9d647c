"""The GPU measurement harness, run on the CPU at tiny sizes: its kernels compute the right
functions and the campaign writes the schema that calibration reads."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
HARNESS = Path(__file__).resolve().parents[1] / "validation" / "torchbench"
sys.path.insert(0, str(HARNESS))
import kernels as K  # noqa: E402


def rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_expert_ffn_matches_float64_reference():
    x, w13, w2 = K.rand(16, 32, scale=1.0), K.rand(32, 96), K.rand(48, 32)
    ref = x.double() @ w13.double()
    g, u = ref.chunk(2, dim=-1)
    ref = (torch.nn.functional.silu(g) * u) @ w2.double()
    assert rel_err(K.expert_ffn(x, w13, w2), ref) < 2e-2


def test_fused_loop_and_offloaded_moe_agree():
    torch.manual_seed(1)
    e, h, f, k = 8, 32, 48, 2
    x, router = K.rand(40, h, scale=1.0), K.rand(h, e, scale=1.0)
    w13, w2 = K.rand(e, h, 2 * f, scale=0.2), K.rand(e, f, h, scale=0.2)
    loop = K.moe_loop(x, router, w13, w2, k)
    fused = K.moe_fused(x, router, w13, w2, k)
    off = K.offloaded_moe_layer(x, router, K.OffloadedExperts(w13.clone(), w2.clone(), "cpu"), k)
    assert rel_err(fused, loop) < 2e-2 and rel_err(off, loop) < 2e-2
    assert float(loop.abs().sum()) > 0


def test_mla_decode_matches_explicit_softmax():
    ql, qr, lat, kr = K.rand(2, 4, 16, scale=1.0), K.rand(2, 4, 8, scale=1.0), K.rand(2, 10, 16, scale=1.0), \
        K.rand(2, 10, 8, scale=1.0)
    s = (ql.double() @ lat.double().transpose(1, 2) + qr.double() @ kr.double().transpose(1, 2)) / (24 ** 0.5)
    ref = torch.softmax(s, -1) @ lat.double()
    assert rel_err(K.mla_decode(ql, qr, lat, kr), ref) < 2e-2


def test_quick_campaign_writes_the_schema(tmp_path):
    out = tmp_path / "m.json"
    proc = subprocess.run([sys.executable, str(HARNESS / "measure.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["schema"] == 1 and data["env"]["timer"] in ("cuda_event", "perf_counter")
    families = {c["family"] for c in data["cases"]}
    assert families == {"hbm_copy", "launch", "host_sync", "copy", "gemm", "copy_beside_gemm", "expert_ffn",
                        "moe_layer", "attention", "mla_decode", "offloaded_moe_layer", "decode_step"}
    errors = [c for c in data["cases"] if "error" in c]
    assert not errors, errors
    assert all(c["median_s"] > 0 and c["p10_s"] <= c["median_s"] <= c["p90_s"] for c in data["cases"])
    # kernel cases are also timed back to back; the fused layer's gather and combine alone
    bursts = [c for c in data["cases"] if c["family"] in ("gemm", "expert_ffn", "attention", "mla_decode")]
    assert bursts and all(c["burst_s"] > 0 and c["host_issue_s"] > 0 and c["burst_n"] >= 2 for c in bursts)
    fused = [c for c in data["cases"] if c["family"] == "moe_layer" and c["params"]["impl"] == "fused"]
    assert fused and all(c["extra"]["combine_s"] > 0 and c["extra"]["gather_s"] > 0 for c in fused)
    assert data["env"]["timing"].startswith("v5")
    # short cases of the interleaved families are timed again in shuffled rounds (timing v5)
    short = [c for c in data["cases"] if c["family"] in ("gemm", "expert_ffn", "attention", "mla_decode", "copy")
             and c["median_s"] < 1e-3]
    assert short and all(c["interleaved_calls"] == 24 * 3 and
                         c["interleaved_p10_s"] <= c["interleaved_median_s"] <= c["interleaved_p90_s"] for c in short)
    assert not any("interleaved_median_s" in c for c in data["cases"]
                   if c["family"] in ("launch", "host_sync", "offloaded_moe_layer", "decode_step"))


@pytest.mark.parametrize("model", ["mixtral-8x7b", "deepseek-v2-lite"])
def test_harness_decode_shapes_are_the_database_models(model):
    """The harness (standalone torch) and the model moe-gen is given for its decode-step cases
    (``calibration.end_to_end.measured_model``, from models_db) must be the same layers: shapes,
    the attention weights copied per layer, the KV copied per token, routed and shared experts."""
    import math

    from moesim.calibration.end_to_end import measured_model

    s, m = K.SHAPES[model], measured_model(model, 3)
    a, moe = m.attention, m.moe
    assert m.num_layers == m.num_moe_layers == 3
    assert (m.hidden_size, a.num_heads, a.num_kv_heads, a.out_head_dim) == (s["hidden"], s["heads"], s["kv_heads"],
                                                                             s["head_dim"])
    assert (moe.num_experts, moe.top_k, moe.expert_intermediate_size, moe.num_shared_experts * moe.shared_ffn) == (
        s["experts"], s["top_k"], s["ffn"], s["shared_ffn"])
    assert sum(math.prod(v) for v in K.attention_weight_shapes(s).values()) == m.attention_params
    if s.get("mla"):
        assert (a.kind, a.kv_lora_rank, a.qk_rope_head_dim, a.qk_nope_head_dim) == ("mla", s["kv_lora"], s["rope"],
                                                                                    s["nope"])
        assert a.kv_elements_per_token() == s["kv_lora"] + s["rope"]
    else:
        assert a.kv_elements_per_token() == 2 * s["kv_heads"] * s["head_dim"]


def test_harness_offloaded_layers_are_database_model_layers():
    """Each offloaded-layer shape of the campaign is a database model's routed experts (the layer
    moe-gen is given for it, without shared experts, as the harness runs it)."""
    import cases as grids

    from moesim.calibration.end_to_end import measured_model, model_of_shape

    shapes = {tuple(p[k] for k in ("hidden", "ffn", "experts", "top_k")) for p in grids.full()["offloaded_moe_layer"]}
    assert len(shapes) == 2
    for shape in shapes:
        m = measured_model(model_of_shape(*shape), 1, shared_experts=False)
        assert (m.hidden_size, m.moe.expert_intermediate_size, m.moe.num_experts, m.moe.top_k) == shape
        assert m.shared_expert_params == 0
