"""Fuzz the spec files a user passes (--model / --hw): random bytes, random YAML, mutated Hugging Face
config.json and mutated database entries.

The library answers with a spec or a MoesimError, never another exception; the command line
answers with "moesim: error: ..." and an exit code of 1-4 (or a prediction), never a traceback or
the internal-error exit 70. A spec that loads is then predicted with, through every kind of system, and
answers believably (no NaN/inf/negative figure, TTFT within the total, S-MBU/S-MFU in (0, 1], valid JSON) or
fails with a MoesimError. Library draws are a few hundred (``MOESIM_FUZZ_EXAMPLES`` raises the predicting
test's count for long runs); command-line draws about ten.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import moesim
from moesim.errors import MoesimError
from moesim.specs import ModelSpec, Platform
from test_fuzz_predict import check  # the believable-figures invariants, shared

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"
MIXTRAL_CONFIG = json.loads((DATA / "mixtral_config.json").read_text())
#: an MLA config (DeepSeek-V2-Lite's fields) so that mutations reach the MLA branch too
MLA_CONFIG = {**{k: v for k, v in MIXTRAL_CONFIG.items() if k not in ("num_local_experts", "sliding_window")},
              "model_type": "deepseek_v2", "architectures": ["DeepseekV2ForCausalLM"], "n_routed_experts": 64,
              "num_experts_per_tok": 6, "moe_intermediate_size": 1408, "n_shared_experts": 2, "kv_lora_rank": 512,
              "q_lora_rank": None, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
              "first_k_dense_replace": 1, "num_hidden_layers": 27, "hidden_size": 2048, "num_attention_heads": 16,
              "num_key_value_heads": 16, "intermediate_size": 10944, "vocab_size": 102400}
MODEL_ENTRY = yaml.safe_load((ROOT / "models_db" / "mixtral-8x7b.yaml").read_text())
#: a platform entry with its optional numbers set too, so that mutations reach them
PLATFORM_ENTRY = {**yaml.safe_load(next((ROOT / "hardware_db" / "platforms").glob("*.yaml")).read_text()),
                  "host_memory_bandwidth_bytes_per_s": 2.0e11, "price_usd_excluding_gpus": 5000}

_CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-3, max_value=10),
    st.sampled_from([0, -1, 2**31, 2**63, 10**30]), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["4096", "bf16", "mixtral", "", "sigmoid", "1e3", "nan"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)


def _mutated(base: dict, draw) -> dict:
    """``base`` with a few keys dropped, set to random values, or added (top level and one level down)."""
    out = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["drop", "set", "set", "add", "nested"]))
        keys = sorted(out)
        if action == "drop" and keys:
            out.pop(draw(st.sampled_from(keys)))
        elif action == "set" and keys:
            out[draw(st.sampled_from(keys))] = draw(values)
        elif action == "add":
            out[draw(st.text(max_size=10))] = draw(values)
        elif action == "nested":
            inner = [k for k in keys if isinstance(out[k], dict) and out[k]]
            if inner:
                key = draw(st.sampled_from(inner))
                out[key][draw(st.sampled_from(sorted(out[key])))] = draw(values)
    return out


@st.composite
def spec_files(draw) -> tuple[str, bytes]:
    """(file name, content): random bytes, random YAML, a mutated config.json or database entry."""
    kind = draw(st.sampled_from(["bytes", "yaml", "config", "mla-config", "model-entry", "platform-entry"]))
    if kind == "bytes":
        return draw(st.sampled_from(["spec.yaml", "config.json", "spec.bin", "spec"])), draw(st.binary(max_size=600))
    if kind == "yaml":
        data = draw(values)
        return "spec.yaml", yaml.safe_dump(data, allow_unicode=True).encode()
    if kind in ("config", "mla-config"):
        cfg = _mutated(MIXTRAL_CONFIG if kind == "config" else MLA_CONFIG, draw)
        return "config.json", json.dumps(cfg).encode()  # NaN and Infinity too, as Python writes them
    entry = _mutated(MODEL_ENTRY if kind == "model-entry" else PLATFORM_ENTRY, draw)
    return "spec.yaml", yaml.safe_dump(entry, allow_unicode=True).encode()


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _write(folder: Path, name: str, content: bytes) -> Path:
    path = folder / name
    path.write_bytes(content)
    return path


@settings(max_examples=300, deadline=None, suppress_health_check=_CHECKS)
@given(spec=spec_files())
def test_library_answers_a_spec_or_a_moesim_error(fuzz_dir, spec):
    path = _write(fuzz_dir, *spec)
    for load, kind in ((moesim.get_model, ModelSpec), (moesim.get_hardware, Platform)):
        try:
            result = load(path)
        except MoesimError as exc:
            assert str(exc).strip(), "an error says something"
        else:
            assert isinstance(result, kind)
            if kind is ModelSpec:  # what predictions compute from a model is defined
                assert math.isfinite(result.total_params) and result.total_params > 0


PREDICT_EXAMPLES = int(os.environ.get("MOESIM_FUZZ_EXAMPLES", "60"))


@settings(max_examples=PREDICT_EXAMPLES, deadline=None, suppress_health_check=_CHECKS)
@given(spec=spec_files(), system=st.sampled_from(["auto", "gpu-resident", "vllm", "moe-gen", "flexgen",
                                                   "llama-cpp", "ktransformers"]),
       prompt=st.integers(1, 2048), gen=st.integers(1, 512), requests=st.integers(1, 300))
def test_hostile_specs_predict_believably_or_say_why(fuzz_dir, spec, system, prompt, gen, requests):
    """A spec file that loads, through predict: a believable answer or a MoesimError, never another
    exception (the issue-11 long run drives this with MOESIM_FUZZ_EXAMPLES)."""
    path = _write(fuzz_dir, *spec)
    try:
        model, hardware = moesim.get_model(path), "c2"
    except MoesimError:
        try:
            model, hardware = "olmoe-1b-7b", moesim.get_hardware(path)
        except MoesimError:
            return
    try:
        p = moesim.predict(model=model, hardware=hardware, system=system, prompt_tokens=prompt, gen_tokens=gen,
                           num_requests=requests)
    except MoesimError as exc:
        assert str(exc).strip()
        assert "short by 0 B" not in str(exc) and "short by -" not in str(exc), str(exc)
        return
    check(p)


def _cli(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("MOESIM_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "moesim", *args], capture_output=True, text=True, env=env,
                          timeout=120)


@settings(max_examples=10, deadline=None, suppress_health_check=_CHECKS)
@given(spec=spec_files(), flag=st.sampled_from(["--model", "--hw"]))
def test_cli_answers_one_error_line_and_a_user_exit_code(fuzz_dir, spec, flag):
    path = _write(fuzz_dir, *spec)
    other = ["--hw", "rtx4090"] if flag == "--model" else ["--model", "olmoe-1b-7b"]
    proc = _cli(["predict", flag, str(path), *other, "--requests", "2", "--prompt", "16", "--gen", "2",
                 "--system", "gpu-resident"])
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    if proc.returncode:
        assert proc.returncode in (1, 2, 3, 4), (proc.returncode, proc.stderr)
        assert proc.stderr.startswith("moesim: error: "), proc.stderr
