"""Parameter counts computed by moesim agree with the published ones.

The tolerance is 2%, or the rounding of the published figure where that is coarser
("2.4B" means 2.35B to 2.45B): a count cannot be checked more finely than it was published.
"""

import pytest

from moesim import db
from moesim.db import models


def published_tolerance(value: float) -> float:
    text = f"{value / 1e9:g}"
    decimals = len(text.split(".")[1]) if "." in text else 0
    half_unit = 0.5 * 10.0 ** -decimals * 1e9
    return max(0.02, half_unit / value)


@pytest.mark.parametrize("name,model", sorted(db.models().entries.items()))
def test_param_counts_match_published(name, model):
    pub = model.published
    assert pub is not None, f"{name} has no published parameter counts"
    extra = pub.count_tolerance or 0.0
    if extra:
        assert "published.count_tolerance" in model.derived, f"{name}: a wider tolerance must be explained"
    rel_total = max(extra, published_tolerance(pub.total_params))
    assert model.total_params == pytest.approx(pub.total_params, rel=rel_total)
    active = model.published_convention_active_params()
    assert active == pytest.approx(pub.active_params, rel=max(extra, published_tolerance(pub.active_params)))


def test_tolerance_follows_published_rounding():
    assert published_tolerance(2.4e9) == pytest.approx(0.05 / 2.4)
    assert published_tolerance(671e9) == 0.02


def test_mixtral_hand_count():
    m = models().get("mixtral-8x7b")
    attn = 4096 * 4096 * 2 + 2 * 4096 * 1024
    expert = 3 * 4096 * 14336
    emb = 32000 * 4096
    assert m.total_params == 32 * (attn + 8 * expert + 4096 * 8) + 2 * emb


def test_checkpoint_kv_dtype_is_applied_where_the_engine_honours_it():
    """nvidia/MiniMax-M2.5-NVFP4 declares an FP8 KV cache (ModelOpt kv_cache_quant_algo): with --kv-dtype auto vLLM
    (pull request 29980) runs it, SGLang (not known to) keeps bf16 and says so, the released FP8 checkpoint declares
    none, and an explicit --kv-dtype wins. The KV pool then holds twice the tokens: 62 layers x 8 KV heads x 128 x 2
    (K, V) x 1 byte = 126,976 B per token instead of 253,952. TensorRT-LLM inherits it too (its docs)."""
    import moesim
    from moesim.predict import kv_cache_dtype, resolve

    m = moesim.get_model("minimax-m2.5")
    assert m.checkpoints["nvfp4"].kv_cache_dtype == "fp8"
    assert kv_cache_dtype("auto", m, "nvfp4", "vllm")[0] == "fp8"
    assert kv_cache_dtype("auto", m, "nvfp4", "trtllm")[0] == "fp8"  # KvCacheConfig dtype auto inherits it
    kv, why = kv_cache_dtype("auto", m, "nvfp4", "sglang")
    assert kv == "bf16" and "not known to apply" in why
    assert kv_cache_dtype("auto", m, None, "vllm") == ("bf16", None)
    assert kv_cache_dtype("bf16", m, "nvfp4", "vllm") == ("bf16", None)
    assert kv_cache_dtype("auto", m, "nvfp4", "auto") == ("bf16", None)
    assert m.kv_bytes_per_token("fp8") == 62 * 8 * 128 * 2 * 1 and m.kv_bytes_per_token("bf16") == 2 * 126_976
    sc = moesim.Scenario(model="minimax-m2.5", hardware="hgx-b200", num_gpus=1, system="vllm", dtype="nvfp4")
    r = resolve(sc)
    assert r.options.kv_dtype == "fp8" and any("KV cache fp8" in a for a in r.assumptions)
    assert moesim.Scenario(model="minimax-m2.5", hardware="hgx-b200").kv_dtype == "auto"
    with pytest.raises(moesim.MoesimError, match="one of auto, fp32"):
        moesim.Scenario(model="minimax-m2.5", hardware="hgx-b200", kv_dtype="fp7")


def test_checkpoint_variant_rejects_unknown_kv_dtype():
    from pydantic import ValidationError

    from moesim.specs.model import CheckpointVariant

    with pytest.raises(ValidationError, match="kv_cache_dtype"):
        CheckpointVariant(hf_id="x/y", kv_cache_dtype="fp7", source="test")
