"""Reading models from Hugging Face config.json files."""

import json
import shutil
from pathlib import Path

import pytest

import moesim
from moesim.errors import SpecError

DATA = Path(__file__).parent / "data"


def test_mixtral_config_matches_database_entry():
    from_hf = moesim.get_model(DATA / "mixtral_config.json")
    from_db = moesim.get_model("mixtral-8x7b")
    assert from_hf.total_params == from_db.total_params
    assert from_hf.active_params() == from_db.active_params()
    assert from_hf.kv_bytes_per_token() == from_db.kv_bytes_per_token()


def test_unknown_field_is_named(tmp_path):
    cfg = json.loads((DATA / "mixtral_config.json").read_text())
    cfg["expert_capacity_factor"] = 1.25
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(SpecError, match="expert_capacity_factor"):
        moesim.get_model(path)


def test_missing_field_is_named(tmp_path):
    cfg = json.loads((DATA / "mixtral_config.json").read_text())
    del cfg["num_hidden_layers"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(SpecError, match="num_hidden_layers"):
        moesim.get_model(path)


def test_predict_from_config(tmp_path):
    path = tmp_path / "config.json"
    shutil.copy(DATA / "mixtral_config.json", path)
    p = moesim.predict(path, "rtx4090", "moe-gen", {"num_requests": 16, "prompt_tokens": 64, "gen_tokens": 8})
    assert p.throughput_tok_s > 0


@pytest.mark.parametrize("config, entry", [("kimi_k2.5_config.json", "kimi-k2.5"),
                                           ("minimax_m2.5_config.json", "minimax-m2.5")])
def test_released_configs_match_database_entries(config, entry):
    """Kimi-K2.5 (a multimodal wrapper whose text_config is a kimi_k2 model, routed experts in compressed-tensors
    INT4 group 32) and MiniMax-M2.5 (minimax_m2, block fp8) read from their released config.json give the same
    model as the hand-written database entries: parameters, bytes (int4 + one bf16 scale per 32 weights on the
    experts only), KV per token and the kernel-table quant kind."""
    from_hf = moesim.get_model(DATA / config)
    from_db = moesim.get_model(entry)
    assert from_hf.total_params == from_db.total_params
    assert from_hf.active_params() == from_db.active_params()
    assert from_hf.weight_bytes() == pytest.approx(from_db.weight_bytes(), rel=1e-12)
    assert from_hf.kv_bytes_per_token() == from_db.kv_bytes_per_token()
    assert (from_hf.quant_kind, from_hf.expert_dtype, from_hf.default_dtype) == \
        (from_db.quant_kind, from_db.expert_dtype, from_db.default_dtype)


def test_kimi_k25_int4_experts_bytes_by_hand():
    """384 experts x 3 matrices x 7168 x 2048 weights in 60 MoE layers at 4 bits plus a bf16 scale per 32
    (0.5625 byte each); everything else bf16 (2 bytes)."""
    m = moesim.get_model(DATA / "kimi_k2.5_config.json")
    expert_weights = 60 * 384 * 3 * 7168 * 2048
    rest = m.total_params - expert_weights
    assert m.weight_bytes() == pytest.approx(expert_weights * 0.5625 + rest * 2.0, rel=1e-9)


@pytest.mark.parametrize("change", [
    lambda q: q["config_groups"]["group_0"]["weights"].update(group_size=128),  # no dtype for group 128
    lambda q: q.update(ignore=["lm_head"]),  # attention quantised too -> every Linear int4
    lambda q: q.update(ignore=["lm_head", "re:.*self_attn.*"]),  # experts + shared + dense only: not mapped
])
def test_compressed_tensors_variants(tmp_path, change):
    """An unmapped group size or a partial quantisation is refused naming the config; quantising every Linear
    makes int4 the default dtype."""
    cfg = json.loads((DATA / "kimi_k2.5_config.json").read_text())
    change(cfg["text_config"]["quantization_config"])
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    ignore = cfg["text_config"]["quantization_config"]["ignore"]
    if ignore == ["lm_head"]:
        m = moesim.get_model(path)
        assert m.default_dtype == "int4_g32" and m.expert_dtype is None and m.quant_kind == "int4"
    else:
        with pytest.raises(SpecError, match="compressed-tensors"):
            moesim.get_model(path)


def test_other_multimodal_wrappers_are_refused(tmp_path):
    cfg = json.loads((DATA / "kimi_k2.5_config.json").read_text())
    cfg["model_type"] = "llama4"
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(SpecError, match="text_config"):
        moesim.get_model(path)


def test_minimax_linear_attention_layers_refused(tmp_path):
    cfg = json.loads((DATA / "minimax_m2.5_config.json").read_text())
    cfg["attn_type_list"] = [0] + [1] * 61
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(SpecError, match="linear-attention"):
        moesim.get_model(path)


@pytest.mark.parametrize("change", [
    lambda q: q.update(config_groups={"g": [1, 2]}),
    lambda q: q.update(config_groups={"g": {"weights": "int4"}}),
    lambda q: q.update(ignore="lm_head"),
    lambda q: q.update(ignore=["re:(unclosed"]),
    lambda q: q["config_groups"]["group_0"].update(weights=None),
])
def test_malformed_compressed_tensors_is_one_spec_error(tmp_path, change):
    """A quantization_config of the wrong shape is a SpecError naming the config, never a traceback."""
    cfg = json.loads((DATA / "kimi_k2.5_config.json").read_text())
    change(cfg["text_config"]["quantization_config"])
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(SpecError, match="compressed-tensors"):
        moesim.get_model(path)
