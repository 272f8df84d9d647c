"""The CLI through a subprocess: the headline command, JSON output, and bad input."""

import json
import subprocess
import sys

import pytest


def run(*args, check=False):
    proc = subprocess.run([sys.executable, "-m", "moesim.cli", *args], capture_output=True, text=True, timeout=120)
    return proc


def test_headline_command_prints_prediction_with_assumptions():
    proc = run("predict", "--model", "deepseek-r1", "--hw", "rtx4090")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for label in ("decode throughput", "TPOT", "S-MBU", "S-MFU", "bottleneck", "assumptions:", "placement"):
        assert label in out


def test_json_has_required_fields():
    proc = run("predict", "--model", "mixtral-8x7b", "--hw", "rtx4090", "--requests", "32", "--gen", "16", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    required = {"model", "hardware", "system", "workload", "prefill_tok_s", "decode_tok_s", "throughput_tok_s",
                "ttft_s", "tpot_s", "total_time_s", "s_mbu", "s_mfu", "mbu", "mfu", "bottleneck",
                "gpu_mem_bytes", "host_mem_bytes", "assumptions"}
    assert required <= set(data)
    assert data["throughput_tok_s"] > 0


@pytest.mark.parametrize("args,code,needle", [
    (("predict", "--model", "deepsek-r1", "--hw", "rtx4090"), 2, "DeepSeek-R1"),
    (("predict", "--model", "mixtral-8x7b", "--hw", "rtx4909"), 2, "RTX 4090"),
    (("predict", "--model", "mixtral-8x7b", "--hw", "rtx4090", "--system", "moegen2"), 2, "moe-gen"),
    (("predict", "--model", "mixtral-8x7b", "--hw", "rtx4090", "--batch", "0"), 1, "at least 1"),
    (("predict", "--model", "mixtral-8x7b", "--hw", "rtx4090", "--prompt", "40000"), 3, "exceeds"),
    (("predict", "--model", "mixtral-8x7b", "--hw", "rtx4090", "--system", "gpu-resident"), 3, "short by"),
    (("predict", "--model", "mixtral-8x7b", "--hw", "rtx4090", "--host-mem", "lots"), 1, "cannot read"),
])
def test_bad_input_is_a_message_not_a_traceback(args, code, needle):
    proc = run(*args)
    assert proc.returncode == code, proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr


def test_malformed_model_file_names_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nfamily: y\nnum_layers: -3\nhidden_size: 8\nvocab_size: 8\nmax_context_tokens: 8\n"
                   "attention: {kind: gqa, num_heads: 4, num_kv_heads: 3, head_dim: 2}\n")
    proc = run("predict", "--model", str(bad), "--hw", "rtx4090")
    assert proc.returncode == 2
    assert str(bad) in proc.stderr and "num_layers" in proc.stderr and "Traceback" not in proc.stderr


def test_list_and_show():
    assert "moe-gen" in run("list", "systems").stdout
    assert "DeepSeek-R1" in run("list", "models").stdout
    shown = run("show", "model", "DeepSeek-R1")
    assert shown.returncode == 0 and "KV latent 512" in shown.stdout
    shown = run("show", "model", "DeepSeek-R1", "--yaml")
    assert shown.returncode == 0 and "kv_lora_rank: 512" in shown.stdout


def test_mixtral_on_two_h100_decode_is_under_the_hbm_bound_and_smbu_matches_tpot():
    """Issue 2's acceptance check, recomputed by hand from the specs rather than from moesim internals."""
    proc = run("predict", "--model", "mixtral-8x7b", "--hw", "h100-sxm", "--gpus", "2",
               "--system", "gpu-resident", "--batch", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    # Batch 1 reads at least the top-2 experts of every layer plus all non-expert weights each step.
    hidden, ffn, layers, vocab = 4096, 14336, 32, 32000
    attn = hidden * 32 * 128 * 2 + hidden * 8 * 128 * 2
    active = layers * (attn + 2 * 3 * hidden * ffn + hidden * 8) + vocab * hidden  # lm head; embedding is a gather
    hbm = 2 * 3.35e12  # two H100 SXM, bf16 = 2 bytes per weight
    bound_tok_s = hbm / (2 * active)
    assert 0 < data["decode_tok_s"] < bound_tok_s
    # S-MBU = bytes moved per step / (TPOT x peak bandwidth); batch 1 moves at least the active weights.
    implied = 2 * active / (data["tpot_s"] * hbm)
    assert implied <= data["s_mbu"] <= 1.0
    assert data["s_mbu"] == pytest.approx(implied, rel=0.05)  # KV bytes of one 768-token sequence are < 1%


def test_mixtral_bf16_on_one_h100_does_not_fit_and_says_by_how_much():
    proc = run("predict", "--model", "mixtral-8x7b", "--hw", "h100-sxm", "--system", "gpu-resident",
               "--dtype", "bf16")
    assert proc.returncode == 3
    assert "short by" in proc.stderr and "Traceback" not in proc.stderr


def test_moe_gen_trace_shows_expert_transfers_overlapping_expert_compute(tmp_path):
    trace = tmp_path / "step.json"
    proc = run("predict", "--model", "mixtral-8x7b", "--hw", "c2", "--system", "moe-gen", "--requests", "256",
               "--trace", str(trace), "--breakdown")
    assert proc.returncode == 0, proc.stderr
    assert "hidden behind compute" in proc.stdout
    events = json.loads(trace.read_text())["traceEvents"]
    rows = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {"gpu", "h2d", "d2h"} <= set(rows.values())  # one row per resource
    spans = [e for e in events if e["ph"] == "X"]
    assert all(e["dur"] >= 0 and e["ts"] >= 0 and e["tid"] in rows for e in spans)
    copies = [e for e in spans if rows[e["tid"]] == "h2d" and "experts" in e["name"]]
    computes = [e for e in spans if rows[e["tid"]] == "gpu" and "experts" in e["name"]]
    assert copies and computes
    overlapping = [(c, g) for c in copies for g in computes
                   if c["ts"] < g["ts"] + g["dur"] and g["ts"] < c["ts"] + c["dur"]]
    assert overlapping, "no expert copy runs while an expert computes"


def test_system_parameters_from_the_command_line():
    ok = run("predict", "--model", "mixtral-8x7b", "--hw", "c2", "--system", "vllm", "--param", "cpu_offload_gb=87",
             "--requests", "64", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["decode_tok_s"] > 0
    bad = run("predict", "--model", "mixtral-8x7b", "--hw", "c2", "--system", "vllm", "--param", "cpu_offload=3")
    assert bad.returncode == 1 and "cpu_offload_gb" in bad.stderr and "Traceback" not in bad.stderr


def test_online_serving_prints_latency_percentiles():
    proc = run("serve", "--model", "olmoe-1b-7b", "--hw", "h100-sxm", "--rate", "5", "--requests", "60", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    for key in ("ttft_s", "tpot_s", "e2e_s"):
        assert 0 < data[key]["p50"] <= data[key]["p90"] <= data[key]["p99"]
    bad = run("serve", "--model", "olmoe-1b-7b", "--hw", "h100-sxm", "--rate", "-1")
    assert bad.returncode == 1 and "arrival_rate_per_s" in bad.stderr


def test_every_command_prints_its_help():
    """argparse formats help texts with %: a parameter's description with a literal % once crashed `--help`."""
    from moesim.cli import _parser

    sub = next(a for a in _parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    for name, parser in sub.choices.items():
        text = parser.format_help()
        assert "usage:" in text, name
    proc = subprocess.run([sys.executable, "-m", "moesim", "predict", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "--percent" in proc.stdout and "Traceback" not in proc.stderr


@pytest.mark.parametrize("flag", [("--transformers", "4.42"), ("--param", "transformers=4.42")])
def test_deepspeed_transformers_release_4_42_from_the_cli(flag):
    """The CLI parses 4.42 as a number; DeepSpeed's ``transformers`` parameter takes it as the release 4.42
    (logits of every prompt position, which the default current release does not compute)."""
    proc = run("predict", "--model", "mixtral-8x7b", "--hw", "a100-80gb", "--system", "deepspeed",
               "--requests", "4", "--gen", "8", *flag, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["config"]["logits_all_positions"] is True
    proc = run("predict", "--model", "mixtral-8x7b", "--hw", "a100-80gb", "--system", "deepspeed",
               "--requests", "4", "--gen", "8", "--transformers", "4.5")
    assert proc.returncode == 1 and "'current' or '4.42'" in proc.stderr and "Traceback" not in proc.stderr
