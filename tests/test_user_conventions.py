"""What new users bring (issue 11): vLLM's flag words, Hugging Face ids and folders, sizes with units,
composed platforms said to be composed, output for people, and no traceback ever."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import moesim
from moesim import cli
from moesim.db.resolve import get_model
from moesim.errors import MoesimError
from moesim.units import fmt_config, parse_bytes

DATA = Path(__file__).parent / "data"


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "moesim", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_sizes_need_a_unit():
    assert parse_bytes("512GB") == 512e9 and parse_bytes("1TiB") == 2**40 and parse_bytes("64B") == 64
    with pytest.raises(MoesimError, match="needs a unit"):
        parse_bytes("64")
    proc = run("predict", "--model", "olmoe-1b-7b", "--hw", "c2", "--host-mem", "64")
    assert proc.returncode == 1 and "needs a unit" in proc.stderr and "Traceback" not in proc.stderr


def test_vllm_flag_words_mean_the_same():
    ours = run("predict", "--model", "mixtral-8x7b", "--hw", "h100-sxm", "--gpus", "2", "--system", "vllm",
               "--param", "max_num_seqs=64", "--dtype", "bf16", "--json")
    theirs = run("predict", "--model", "mixtral-8x7b", "--hw", "h100-sxm", "--tensor-parallel-size", "2",
                 "--system", "vllm", "--max-num-seqs", "64", "--dtype", "bfloat16", "--kv-cache-dtype", "auto",
                 "--json")
    assert ours.returncode == theirs.returncode == 0, theirs.stderr
    a, b = json.loads(ours.stdout), json.loads(theirs.stdout)
    assert a["throughput_tok_s"] == b["throughput_tok_s"] and b["config"]["params"]["max_num_seqs"] == 64
    assert b["num_gpus"] == 2 and b["kv_dtype"] == "bf16"


def test_hugging_face_ids_snapshots_and_names(tmp_path):
    assert get_model("deepseek-ai/DeepSeek-R1").name == "DeepSeek-R1"  # the database's hf_id
    snapshot = tmp_path / "hub" / "models--someorg--Mixy" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    shutil.copy(DATA / "mixtral_config.json", snapshot / "config.json")
    assert get_model(snapshot).name == "someorg/Mixy"  # a snapshot folder: named by its repository
    proc = run("predict", "--model", "someorg/Mixy", "--hw", "c2", "--json", env={"HF_HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["model"] == "someorg/Mixy"
    loose = tmp_path / "tmp"
    loose.mkdir()
    shutil.copy(DATA / "mixtral_config.json", loose / "config.json")
    assert get_model(loose / "config.json").name == "Mixtral"  # not "tmp": the architecture
    proc = run("predict", "--model", "someorg/Nope", "--hw", "c2", env={"HF_HOME": str(tmp_path)})
    assert proc.returncode == 2 and "Hugging Face cache" in proc.stderr


def test_show_system_lists_its_parameters():
    proc = run("show", "system", "vllm")
    assert proc.returncode == 0
    assert "max_num_seqs (int | None, default None)" in proc.stdout and "cpu_offload_gb" in proc.stdout
    assert "1024 on GPUs of 70 GiB or more but A100, else 256" in proc.stdout  # vLLM's own default, by GPU


def test_a_composed_platform_says_so():
    p = moesim.predict("olmoe-1b-7b", "rtx-a6000", "gpu-resident", cpu="EPYC 7453", host_memory_bytes=512e9,
                       prompt_tokens=64, gen_tokens=8, num_requests=4)
    assert p.hardware == "MoE-Gen C3 (composed)"
    assert any("composed platform: MoE-Gen C3 with CPU AMD EPYC 7453 instead of AMD EPYC 7313P" in a
               for a in p.assumptions)


def test_configuration_is_printed_for_people():
    text = fmt_config({"batch_size": 63, "mixed_step_s": 0.02522329624535886,
                       "weights_on_gpu_bytes_per_gpu": 31135017642.666668, "steps_per_batch": 256.0,
                       "params": {"cpu_offload_gb": 0.0, "chunked_prefill": True}})
    assert text == ("batch_size=63, mixed_step_s=25.2ms, weights_on_gpu_bytes_per_gpu=31.14GB, steps_per_batch=256, "
                    "params=(cpu_offload_gb=0, chunked_prefill=True)")


def test_a_bug_is_one_line_and_a_code_not_a_traceback(monkeypatch, capsys):
    def broken(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "_handlers", lambda: {"list": broken})
    monkeypatch.delenv("MOESIM_DEBUG", raising=False)
    assert cli.main(["list", "models"]) == cli.INTERNAL_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error (ZeroDivisionError" in err and "MOESIM_DEBUG=1" in err


def test_one_systems_overflow_does_not_abort_auto(monkeypatch):
    """The engine's capacity check (SimulationError) in one system marks that system infeasible; auto answers."""
    from moesim.errors import SimulationError
    from moesim.systems import get_system

    def overflow(self, ctx):
        raise SimulationError("gpu memory over capacity: peak 22.78 GB > 22.50 GB (short by 0.28 GB)")

    monkeypatch.setattr(get_system("moe-gen"), "plan", overflow)
    p = moesim.predict("mixtral-8x7b", "c2", prompt_tokens=64, gen_tokens=8, num_requests=16)
    assert p.systems_compared["moe-gen"] == ("infeasible: gpu memory over capacity: peak 22.78 GB > 22.50 GB "
                                             "(short by 0.28 GB)")
    assert p.system != "moe-gen" and p.throughput_tok_s > 0


def test_a_second_gpu_never_lowers_autos_answer_through_single_gpu_systems():
    one = moesim.predict("mixtral-8x7b", "c2")
    two = moesim.predict("mixtral-8x7b", "c2", num_gpus=2)
    assert two.throughput_tok_s >= one.throughput_tok_s
    assert two.system == one.system == "moe-gen" and two.num_gpus == 1  # it runs on one of the two, and says so
    assert any("runs on 1 of the platform's 2 GPUs" in a for a in two.assumptions)
    assert two.systems_compared["moe-gen"].endswith("on 1 of 2 GPUs")
    with pytest.raises(MoesimError, match="modelled on one GPU"):  # a named system keeps its own rule
        moesim.predict("mixtral-8x7b", "c2", "moe-gen", num_gpus=2)


def test_calibrate_writes_where_it_says(tmp_path):
    root = Path(__file__).parent.parent
    proc = subprocess.run([sys.executable, "-m", "moesim", "calibrate", "--gpu", "h200", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {tmp_path / 'h200.yaml'}" in proc.stdout and (tmp_path / "h200.yaml").is_file()


def test_a_gpu_board_holds_the_gpus_it_has():
    with pytest.raises(MoesimError, match=r"HGX H200 is a board of 8 GPUs joined by nvlink4; --gpus 16 would need 2"):
        moesim.get_hardware("hgx-h200", num_gpus=16)
    assert moesim.get_hardware("hgx-h200", num_gpus=4).num_gpus == 4


def test_show_model_and_hardware_for_people_and_as_yaml():
    proc = run("show", "model", "deepseek-v2")
    assert proc.returncode == 0
    assert "160 routed (top-6, FFN 1536) + 2 shared" in proc.stdout and "235.7B total, 21.4B active" in proc.stdout
    proc = run("show", "hw", "c2")
    assert "1 x RTX A5000" in proc.stdout and "1 x AMD EPYC 7453" in proc.stdout
    proc = run("show", "model", "mixtral-8x7b", "--yaml")
    assert proc.stdout.startswith("name: Mixtral-8x7B")
