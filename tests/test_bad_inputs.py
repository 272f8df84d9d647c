"""Bad input is a clear MoesimError (CLI: one "moesim: error:" message and exit 1-4), never the internal-error
exit 70 or a raw Python exception: spec files that are not specs, malformed config.json, oversized files,
output paths, recommend's numbers, wrong-type API calls, model variants; and sweep summaries for people.

The command-line cases run in subprocesses (module fixture), then are checked one by one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import moesim
from moesim.errors import MoesimError, SpecError
from moesim.limits import MAX_LISTED_PROBLEMS, MAX_SPEC_FILE_BYTES

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"
MIXTRAL = json.loads((DATA / "mixtral_config.json").read_text())
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde"


def _config(**changes) -> str:
    cfg = dict(MIXTRAL)
    for key, value in changes.items():
        if value is ...:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    return json.dumps(cfg)


# ---- files: name -> content (bytes, text, or None for a folder) ----------------------------------------------
FILES: dict[str, bytes | str | None] = {
    "random.bin": bytes(range(256)) * 4,
    "image.png": PNG,
    "random.yaml": b"\xff\xfe\x00garbage\x01\x02",
    "latin1.yaml": "name: Caf\u00e9\n".encode("latin-1"),
    "list.yaml": "- a\n- b\n",
    "scalar.yaml": "just some text\n",
    "empty.yaml": "",
    "folder.yaml": None,
    "bad.yaml": "name: [unclosed\n",
    "notjson.json": "this is not json\n",
    "list.json": "[1, 2, 3]\n",
    "experts0.json": _config(num_local_experts=0),
    "noexperts.json": _config(num_local_experts=..., num_experts_per_tok=...),
    "hidden_text.json": _config(hidden_size="4096"),
    "heads0.json": _config(num_attention_heads=0),
    "negative.json": _config(intermediate_size=-14336),
    "nolayers.json": _config(num_hidden_layers=...),
    "topk9.json": _config(num_experts_per_tok=9),
    "kvheads.json": _config(num_key_value_heads=5),
    "dense.json": _config(model_type="llama", architectures=["LlamaForCausalLM"], num_local_experts=...,
                          num_experts_per_tok=...),
    "huge.yaml": "k: v\n" * (MAX_SPEC_FILE_BYTES // 5 + 1),
    "manykeys.yaml": "".join(f"key{i}: {i}\n" for i in range(200)),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    for name, content in FILES.items():
        path = folder / name
        if content is None:
            path.mkdir()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    (folder / "out").mkdir()
    return folder


# ---- the command line ---------------------------------------------------------------------------------------
REC = ("recommend", "--model", "mixtral-8x7b", "--platforms", "rtx4090")
#: id -> (arguments, with {d} for the files' folder; exit code; words the message must hold)
CLI_CASES: dict[str, tuple[tuple[str, ...], int, tuple[str, ...]]] = {
    "binary model": (("predict", "--model", "{d}/random.bin", "--hw", "rtx4090"), 2, ("random.bin", "binary")),
    "png model": (("predict", "--model", "{d}/image.png", "--hw", "rtx4090"), 2, ("image.png", "binary")),
    "png hw": (("predict", "--model", "mixtral-8x7b", "--hw", "{d}/image.png"), 2, ("image.png", "binary")),
    "non-UTF-8 yaml hw": (("predict", "--model", "mixtral-8x7b", "--hw", "{d}/latin1.yaml"), 2, ("not UTF-8",)),
    "list hw": (("predict", "--model", "mixtral-8x7b", "--hw", "{d}/list.yaml"), 2, ("mapping", "got a list")),
    "empty model": (("predict", "--model", "{d}/empty.yaml", "--hw", "rtx4090"), 2, ("empty.yaml", "is empty")),
    "folder hw": (("predict", "--model", "mixtral-8x7b", "--hw", "{d}/folder.yaml"), 2, ("is a folder",)),
    "not json": (("predict", "--model", "{d}/notjson.json", "--hw", "rtx4090"), 2, ("notjson.json", "not JSON")),
    "experts 0": (("predict", "--model", "{d}/experts0.json", "--hw", "rtx4090"), 2,
                  ("experts0.json", "num_local_experts", "0 routed experts")),
    "hidden text": (("predict", "--model", "{d}/hidden_text.json", "--hw", "rtx4090"), 2,
                    ("hidden_size", "whole number", "'4096'")),
    "heads 0": (("predict", "--model", "{d}/heads0.json", "--hw", "rtx4090"), 2, ("num_attention_heads", "positive")),
    "dense": (("predict", "--model", "{d}/dense.json", "--hw", "rtx4090"), 1, ("no MoE layers",)),
    "huge": (("predict", "--model", "mixtral-8x7b", "--hw", "{d}/huge.yaml"), 2, ("above moesim's cap",)),
    "top-k 9": (("predict", "--model", "mixtral-8x7b", "--hw", "rtx4090", "--top-k", "9"), 1,
                ("top-k 9 exceeds Mixtral-8x7B's 8 routed experts",)),
    "recommend plot txt": ((*REC, "--target-tok-s", "5", "--plot", "{d}/out/x.txt"), 1, ("--plot", ".png", "'.txt'")),
    "recommend plot folder": ((*REC, "--target-tok-s", "5", "--plot", "{d}/missing_dir/cap.png"), 1,
                              ("missing_dir", "does not exist")),
    "plot plot pdf": (("plot", "roofline", "--model", "mixtral-8x7b", "--hw", "c2", "--plot", "{d}/out/x.pdf"), 1,
                      ("--plot", ".svg", "'.pdf'")),
    "plot plot folder": (("plot", "roofline", "--model", "mixtral-8x7b", "--hw", "c2", "--plot", "{d}/nope/x.png"), 1,
                         ("nope", "does not exist")),
    "sweep out folder": (("sweep", "--model", "mixtral-8x7b", "--hw", "c2", "--out", "{d}/nope/s.csv"), 1,
                         ("--out", "does not exist")),
    "sweep out is a folder": (("sweep", "--model", "mixtral-8x7b", "--hw", "c2", "--out", "{d}/out"), 1,
                              ("is a folder",)),
    "sweep out not ours": (("sweep", "--model", "mixtral-8x7b", "--hw", "c2", "--out", "{d}/image.png", "--requests",
                            "4", "--gen", "4", "--no-progress"), 1, ("not a moesim sweep file",)),
    "predict trace folder": (("predict", "--model", "mixtral-8x7b", "--hw", "c2", "--trace", "{d}/nope/t.json"), 1,
                             ("--trace", "does not exist")),
    "target nan": ((*REC, "--target-tok-s", "nan"), 1, ("--target-tok-s", "finite", "nan")),
    "target inf": ((*REC, "--target-tok-s", "inf"), 1, ("--target-tok-s", "finite")),
    "target negative": ((*REC, "--target-tok-s", "-1"), 1, ("--target-tok-s", "above 0")),
    "max-tpot nan": ((*REC, "--target-tok-s", "5", "--max-tpot", "nan"), 1, ("--max-tpot", "finite")),
    "budget inf": ((*REC, "--target-tok-s", "5", "--budget", "inf"), 1, ("--budget", "finite")),
    "usd-per-kwh negative": ((*REC, "--target-tok-s", "5", "--usd-per-kwh", "-1"), 1, ("--usd-per-kwh", "at least 0")),
    "years 0": ((*REC, "--target-tok-s", "5", "--years", "0"), 1, ("--years", "above 0")),
}


#: cases also run as a command of their own (`python -m moesim ...`); the rest run one after another in a single
#: Python process through moesim's CLI entry point (one interpreter start instead of thirty)
SEPARATE = ("binary model", "top-k 9", "recommend plot txt", "target nan")
_BATCH = """
import contextlib, io, json, sys
from moesim.cli import main
out = {}
for name, argv in json.load(sys.stdin).items():
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    out[name] = [code, stdout.getvalue(), stderr.getvalue()]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def cli_results(files) -> dict[str, subprocess.CompletedProcess]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("MOESIM_DEBUG", None)
    argvs = {name: [a.format(d=files) for a in args] for name, (args, _, _) in CLI_CASES.items()}

    def alone(argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "moesim", *argv], capture_output=True, text=True, env=env,
                              timeout=120)

    with ThreadPoolExecutor(max_workers=len(SEPARATE)) as pool:
        separate = {name: pool.submit(alone, argvs[name]) for name in SEPARATE}
        batch = subprocess.run([sys.executable, "-c", _BATCH], input=json.dumps(
            {k: v for k, v in argvs.items() if k not in SEPARATE}), capture_output=True, text=True, env=env,
            timeout=300)
        assert batch.returncode == 0, batch.stderr
        results = {name: subprocess.CompletedProcess(argvs[name], code, out, err)
                   for name, (code, out, err) in json.loads(batch.stdout).items()}
        results.update({name: f.result() for name, f in separate.items()})
    return results


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_refuses_bad_input_in_words(cli_results, case):
    _, code, needles = CLI_CASES[case]
    proc = cli_results[case]
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.startswith("moesim: error: ") and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)
    assert "pydantic" not in proc.stderr and "http" not in proc.stderr


def test_output_paths_are_checked_before_the_work(cli_results):
    """recommend's search takes seconds; a wrong --plot is refused before it (no table was printed)."""
    for case in ("recommend plot txt", "recommend plot folder", "plot plot folder", "sweep out folder"):
        assert cli_results[case].stdout == "", case


# ---- the library: the same files, the same messages ------------------------------------------------------------
@pytest.mark.parametrize("name,load,needle", [
    ("random.bin", "model", "binary"), ("image.png", "hardware", "binary"), ("random.yaml", "model", "binary"),
    ("latin1.yaml", "model", "not UTF-8 text (byte 0xe9 at offset 9)"),
    ("list.yaml", "model", "got a list"), ("scalar.yaml", "hardware", "got text"), ("empty.yaml", "hardware", "empty"),
    ("folder.yaml", "hardware", "is a folder"), ("bad.yaml", "model", "(yaml)"), ("notjson.json", "model", "not JSON"),
    ("list.json", "model", "JSON object"), ("experts0.json", "model", "num_local_experts: 0 routed experts"),
    ("noexperts.json", "model", "num_local_experts: missing"),
    ("hidden_text.json", "model", "hidden_size: must be a whole number, got text ('4096')"),
    ("heads0.json", "model", "num_attention_heads: must be positive (got 0)"),
    ("negative.json", "model", "intermediate_size: must be positive (got -14336)"),
    ("nolayers.json", "model", "num_hidden_layers: required field missing"),
    ("topk9.json", "model", "num_experts_per_tok: 9 exceeds the 8 routed experts"),
    ("kvheads.json", "model", "num_key_value_heads: 5 does not divide num_attention_heads (32)"),
    ("huge.yaml", "model", "above moesim's cap of 1.00 MB"),
])
def test_library_raises_spec_error_naming_file_and_field(files, name, load, needle):
    func = moesim.get_model if load == "model" else moesim.get_hardware
    with pytest.raises(SpecError) as info:
        func(files / name)
    assert name in str(info.value) and needle in str(info.value)


def test_dense_config_reads_but_is_not_predicted(files):
    spec = moesim.get_model(files / "dense.json")
    assert spec.moe is None
    with pytest.raises(MoesimError, match="no MoE layers"):
        moesim.predict(spec, "rtx4090")


def test_spec_error_lists_a_bounded_number_of_problems(files):
    with pytest.raises(SpecError) as info:
        moesim.get_model(files / "manykeys.yaml")
    lines = str(info.value).splitlines()
    assert len(info.value.problems) > 200 - 1
    assert len(lines) == 1 + MAX_LISTED_PROBLEMS + 1 and lines[-1].startswith("  ... and ")
    assert lines[-1] == f"  ... and {len(info.value.problems) - MAX_LISTED_PROBLEMS} more"


def test_yaml_alias_bomb_is_refused(tmp_path):
    lines, prev = ["a: &a [x, x, x, x, x, x, x, x, x]"], "a"
    for i in range(8):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*{prev}"] * 9) + "]")
        prev = f"l{i}"
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SpecError, match="more than 100,000 values"):
        moesim.get_hardware(path)


# ---- wrong-type API calls ---------------------------------------------------------------------------------------
M, H = "mixtral-8x7b", "rtx4090"
API_CALLS = {
    "predict(123, H)": (lambda: moesim.predict(123, H), "--model (model) takes a name or a file path"),
    "predict(M, 4090)": (lambda: moesim.predict(M, 4090), "--hw (hardware) takes a name or a file path"),
    "predict(system=5)": (lambda: moesim.predict(M, H, system=5), "--system (system) takes text"),
    "predict(workload=5)": (lambda: moesim.predict(M, H, workload=5), "workload takes an OfflineWorkload"),
    "predict(workload='x')": (lambda: moesim.predict(M, H, workload="x"), "workload takes an OfflineWorkload"),
    "predict(workload=[1, 2])": (lambda: moesim.predict(M, H, workload=[1, 2]), "workload takes"),
    "predict(workload={'prompt': 5})": (lambda: moesim.predict(M, H, workload={"prompt": 5}),
                                        "unknown field 'prompt' (did you mean prompt_tokens?)"),
    "predict(workload={'prompt_tokens': 'x'})": (lambda: moesim.predict(M, H, workload={"prompt_tokens": "x"}),
                                                 "--prompt (prompt_tokens)"),
    "predict(speculative=5)": (lambda: moesim.predict(M, H, speculative=5), "speculative takes a mapping"),
    "predict(system_params=5)": (lambda: moesim.predict(M, H, "vllm", system_params=5),
                                 "--param (system_params) takes"),
    "predict(expert_histogram=5)": (lambda: moesim.predict(M, H, expert_histogram=5), "--expert-histogram"),
    "predict(expert_histogram='missing.json')": (lambda: moesim.predict(M, H, expert_histogram="missing.json"),
                                                 "does not exist"),
    "predict(trace_path=5)": (lambda: moesim.predict(M, H, trace_path=5), "trace_path takes a file path"),
    "predict(top_k=9)": (lambda: moesim.predict(M, H, top_k=9), "top-k 9 exceeds Mixtral-8x7B's 8 routed experts"),
    "predict(host_memory_bytes=inf)": (lambda: moesim.predict(M, H, host_memory_bytes=float("inf")), "finite"),
    "predict(bogus=1)": (lambda: moesim.predict(M, H, bogus=1), "unknown knob"),
    "get_hardware(None)": (lambda: moesim.get_hardware(None), "hardware takes a name or a file path"),
    "get_hardware(123)": (lambda: moesim.get_hardware(123), "hardware takes a name or a file path"),
    "get_hardware(H, num_gpus='x')": (lambda: moesim.get_hardware(H, num_gpus="x"), "num_gpus takes a whole number"),
    "get_hardware(H, num_gpus=0)": (lambda: moesim.get_hardware(H, num_gpus=0), "num_gpus takes a whole number"),
    "get_hardware(H, cpu=5)": (lambda: moesim.get_hardware(H, cpu=5), "cpu takes a name"),
    "get_hardware(H, pcie=5)": (lambda: moesim.get_hardware(H, pcie=5), "pcie takes a name"),
    "get_hardware(H, host_memory_bytes=-1)": (lambda: moesim.get_hardware(H, host_memory_bytes=-1),
                                              "host_memory_bytes takes a finite number"),
    "get_model(['x'])": (lambda: moesim.get_model(["x"]), "model takes a name or a file path"),
    "get_model(None)": (lambda: moesim.get_model(None), "model takes a name or a file path"),
    "get_model({})": (lambda: moesim.get_model({"name": "x"}), "model takes a name or a file path"),
    "get_model('')": (lambda: moesim.get_model(""), "model is empty"),
    "get_model(NUL)": (lambda: moesim.get_model("a\0b"), "NUL"),
    "get_model(long name)": (lambda: moesim.get_model("x" * 5000 + ".yaml"), "does not exist"),
    "Scenario(model=None)": (lambda: moesim.Scenario(model=None, hardware=H), "--model (model) takes"),
    "Scenario()": (lambda: moesim.Scenario(), "--model (model) is required"),
    "Scenario(prompt_tokens=-1)": (lambda: moesim.Scenario(model=M, hardware=H, prompt_tokens=-1), "at least 1"),
    "Scenario(seed=-1)": (lambda: moesim.Scenario(model=M, hardware=H, seed=-1), "--seed (seed)"),
    "predict_online(workload='x')": (lambda: moesim.predict_online(M, H, workload="x"),
                                     "workload takes an OnlineWorkload"),
    "predict_online(workload=5)": (lambda: moesim.predict_online(M, H, workload=5), "workload takes an OnlineWorkload"),
    "predict_online(system=5)": (lambda: moesim.predict_online(M, H, system=5, arrival_rate_per_s=1.0),
                                 "--system (system) takes text"),
    "with_top_k(9)": (lambda: moesim.get_model(M).with_top_k(9), "top-k 9 exceeds Mixtral-8x7B's 8 routed experts"),
    "with_experts(0)": (lambda: moesim.get_model(M).with_experts(0), "number of experts must be from 1"),
    "with_expert_ffn('x')": (lambda: moesim.get_model(M).with_expert_ffn("x"), "takes a whole number"),
}


@pytest.mark.parametrize("call", list(API_CALLS))
def test_wrong_api_calls_raise_moesim_error(call):
    func, needle = API_CALLS[call]
    try:
        func()
    except MoesimError as exc:
        assert needle in str(exc), str(exc)
        assert "pydantic" not in str(exc) and "http" not in str(exc)
    except Exception as exc:  # noqa: BLE001 - the point: no other exception type
        pytest.fail(f"{call} raised {type(exc).__name__}: {exc}")
    else:
        pytest.fail(f"{call} did not raise")


@pytest.mark.parametrize("kwargs,needle", [
    ({"target_tok_s": float("nan")}, "target_tok_s must be a finite number above 0"),
    ({"target_tok_s": 5, "max_tpot_s": float("nan")}, "max_tpot_s"),
    ({"target_tok_s": 5, "budget_usd": float("inf")}, "budget_usd"),
    ({"target_tok_s": 5, "usd_per_kwh": -1}, "usd_per_kwh must be a finite number of at least 0"),
    ({"target_tok_s": 5, "amortization_years": 0}, "amortization_years"),
    ({"target_tok_s": "5"}, "target_tok_s takes a number"),
    ({"target_tok_s": 5, "dtypes": "bf16"}, "dtypes takes a list"),
])
def test_recommend_api_checks_its_numbers(kwargs, needle):
    from moesim.analysis.recommend import recommend

    with pytest.raises(MoesimError, match=needle.replace("(", r"\(")):
        recommend("mixtral-8x7b", platforms=["rtx4090"], **kwargs)


# ---- sweep output for people --------------------------------------------------------------------------------------
def test_times_and_rates_have_units_and_three_figures():
    from moesim.units import fmt_rate, fmt_seconds

    assert fmt_seconds(2.42) == "2.42 s" and fmt_seconds(0.9997) == "1 s" and fmt_seconds(0.00242) == "2.42 ms"
    assert fmt_seconds(5400) == "1.5 h" and fmt_seconds(12.3 * 86400) == "12.3 days"
    assert fmt_seconds(75848846.78 * 3600) == "8,650 years"
    assert fmt_rate(999.96, "tok/s") == "1 ktok/s" and fmt_rate(1234.5, "tok/s") == "1.23 ktok/s"


def test_sweep_summary_uses_units():
    from moesim.analysis.sweep import Records, format_summary

    base = {"system": "moe-gen", "chosen_system": "moe-gen", "feasible": True, "throughput_tok_s": 12345.6,
            "tpot_s": 2.42, "total_time_s": 75848846.78 * 3600, "s_mbu": 0.5, "bottleneck": "h2d", "arrival_rate_per_s": None,
            "batch_size": 8, "key": "a", "index": 0}
    records = Records([base, {**base, "key": "b", "index": 1, "batch_size": 16, "throughput_tok_s": 10.0}])
    text = format_summary(records)
    assert "12.3 ktok/s" in text and "TPOT 2.42 s" in text and "8,650 years" in text
    assert "e+" not in text and " h " not in text
