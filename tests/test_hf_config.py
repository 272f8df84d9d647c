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
