"""Fuzz (issue 11): random scenarios through the library and the CLI.

Every draw either answers or fails with a MoesimError; an answer has no NaN, infinite or negative figure,
TTFT and TPOT within the time for the whole workload, S-MBU and S-MFU in (0, 1], and its JSON is valid.
CI runs a few hundred draws; ``MOESIM_FUZZ_EXAMPLES=20000 pytest tests/test_fuzz_predict.py`` is the long run.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import moesim
from moesim.errors import MoesimError

EXAMPLES = int(os.environ.get("MOESIM_FUZZ_EXAMPLES", "150"))
MODELS = ["olmoe-1b-7b", "qwen1.5-moe-a2.7b", "deepseek-v2-lite", "mixtral-8x7b", "qwen3-30b-a3b", "gpt-oss-20b",
          "deepseek-v2", "deepseek-r1", "llama-4-scout"]
HARDWARE = ["c1", "c2", "rtx4090", "l4", "t4", "h100-sxm", "hgx-h200", "a100-80gb-sxm", "rtx-a6000",
            "hgx-b300", "hgx-h800", "gb200"]
SYSTEMS = ["auto", "gpu-resident", "vllm", "llama-cpp", "ktransformers", "deepspeed", "flexgen", "moe-lightning",
           "moe-gen", "moe-gen-gpu"]

scenarios = st.fixed_dictionaries({
    "model": st.sampled_from(MODELS),
    "hardware": st.sampled_from(HARDWARE),
    "system": st.sampled_from(SYSTEMS),
    "prompt_tokens": st.integers(1, 4096),
    "gen_tokens": st.integers(1, 1024),
    "num_requests": st.integers(1, 2000),
}, optional={
    "batch_size": st.integers(1, 512),
    "num_gpus": st.integers(1, 8),
    "num_nodes": st.integers(1, 3),
    "kv_dtype": st.sampled_from(["bf16", "fp8"]),
    "dtype": st.sampled_from(["bf16", "fp8", "int4"]),
    "zipf_s": st.one_of(st.floats(0, 3), st.sampled_from([1e3, 1e308])),
    "moe_impl": st.sampled_from(["fused", "loop"]),
})

FIGURES = ("prefill_tok_s", "decode_tok_s", "throughput_tok_s", "ttft_s", "tpot_s", "total_time_s", "s_mbu", "s_mfu",
           "mbu", "mfu", "gpu_mem_bytes", "host_mem_bytes")


def check(p: moesim.Prediction) -> None:
    for name in FIGURES:
        value = getattr(p, name)
        assert math.isfinite(value) and value >= 0, (name, value)
    assert p.ttft_s <= p.total_time_s * (1 + 1e-9), (p.ttft_s, p.total_time_s)
    assert p.tpot_s <= p.total_time_s * (1 + 1e-9)
    assert 0 < p.s_mbu <= 1 + 1e-9 and 0 < p.s_mfu <= 1 + 1e-9, (p.system, p.s_mbu, p.s_mfu)
    json.loads(json.dumps(p.to_json_dict(), allow_nan=False))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios)
def test_random_scenarios_answer_believably_or_say_why(knobs):
    try:
        p = moesim.predict(**knobs)
    except MoesimError as exc:
        assert str(exc).strip()
        if "short by" in str(exc):
            assert "short by 0 B" not in str(exc) and "short by -" not in str(exc), str(exc)
        return
    check(p)


CLI_DRAWS = [
    ["--model", "olmoe-1b-7b", "--hw", "c1", "--kv-dtype", "fp8", "--prompt", "664", "--gen", "2", "--requests", "16"],
    ["--model", "mixtral-8x7b", "--hw", "l4", "--system", "ktransformers"],
    ["--model", "deepseek-v2", "--hw", "c2", "--prompt", "954", "--gen", "861", "--requests", "698"],
    ["--model", "mixtral-8x7b", "--hw", "c2", "--zipf", "1e308"],
    ["--model", "kimi-k2", "--hw", "t4", "--system", "flexgen"],
    ["--model", "mixtral-8x7b", "--hw", "rtx4090", "--gpus", "-1"],
    ["--model", "mixtral-8x7b", "--hw", "rtx4090", "--top-k", "9"],
    ["--model", "mixtral-8x7b", "--hw", "h100-sxm", "--gpus", "3", "--system", "vllm"],
]


def test_cli_draws_answer_in_json_or_fail_in_one_line():
    for args in CLI_DRAWS:
        proc = subprocess.run([sys.executable, "-m", "moesim", "predict", *args, "--json"], capture_output=True,
                              text=True, timeout=120)
        assert "Traceback" not in proc.stderr and proc.returncode in (0, 1, 2, 3, 4), (args, proc.stderr)
        if proc.returncode == 0:
            out = json.loads(proc.stdout, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
            assert out["ttft_s"] <= out["total_time_s"] and 0 < out["s_mbu"] <= 1, (args, out)
        else:
            assert proc.stderr.startswith("moesim: error:") and proc.stdout == "", (args, proc.stderr)
