"""The typed Scenario: every knob declared once and reaching the CLI, the API and sweeps."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import moesim
from moesim import scenario as sc
from moesim.analysis.sweep import ALIASES, PARAMS, Grid, scenario_of
from moesim.cli import _parser
from moesim.cli.args import build_scenario
from moesim.errors import MoesimError


def _option_strings(command: str) -> set[str]:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {o for a in sub._actions for o in a.option_strings}


def test_every_field_has_a_cli_flag_a_help_text_and_a_sweep_parameter():
    predict_flags, serve_flags = _option_strings("predict"), _option_strings("serve")
    for name, (info, flag) in sc.fields().items():
        assert info.description, f"Scenario.{name} has no docstring (its help text)"
        assert set(flag.flags) <= predict_flags | serve_flags, name
        assert name in PARAMS, f"{name} is not a sweep parameter"
    # the offline knobs are on every command that predicts
    offline = {f.flags[0] for n, (_, f) in sc.fields().items() if f.group not in ("online",)}
    for command in ("sweep", "sensitivity", "plot"):
        assert offline <= _option_strings(command), (command, offline - _option_strings(command))


def test_cli_defaults_are_the_scenarios_defaults():
    """No flag given = the Scenario's own default (the CLI holds no second copy of a default)."""
    args = _parser().parse_args(["predict", "--model", "mixtral-8x7b", "--hw", "rtx4090"])
    assert build_scenario(args) == moesim.Scenario(model="mixtral-8x7b", hardware="rtx4090")


def test_flags_and_grid_values_are_read_by_one_parser():
    args = _parser().parse_args(["predict", "--model", "m", "--hw", "c2", "--host-mem", "512GiB", "--batch", "8",
                                 "--no-mla-absorption", "--param", "cpu_offload_gb=72", "--zipf", "1.5"])
    from_cli = build_scenario(args)
    point = Grid.from_strings(["host_mem=512GiB", "batch=8", "mla_absorbed=false", "param=cpu_offload_gb=72",
                               "zipf=1.5"], model=["m"], hardware=["c2"]).points()[0]
    assert scenario_of(point) == from_cli
    assert from_cli.host_memory_bytes == 512 * 2**30 and from_cli.mla_absorbed is False
    assert from_cli.system_params == {"cpu_offload_gb": 72}


def test_aliases_name_fields():
    assert ALIASES["hw"] == ALIASES["gpu"] == "hardware"
    assert ALIASES["batch"] == "batch_size" and ALIASES["host_mem"] == "host_memory_bytes"
    assert set(ALIASES.values()) <= set(PARAMS)


def test_the_library_takes_the_older_spellings():
    a = sc.build("mixtral-8x7b", "rtx4090", None, {"prompt_tokens": 64, "gen_tokens": 8},
                 speculative={"draft_model": "olmoe-1b-7b", "num_tokens": 3, "acceptance_rate": 0.5},
                 expert_popularity=[1.0] * 8)
    assert (a.prompt_tokens, a.gen_tokens, a.draft_model, a.spec_tokens, a.spec_accept) == (64, 8, "olmoe-1b-7b", 3, 0.5)
    assert a.expert_histogram == (1.0,) * 8 and a.system == "auto"
    assert a.replace(system="vllm").prompt_tokens == 64


@pytest.mark.parametrize("knobs,needle", [
    ({"num_gpus": 0}, "--gpus (num_gpus): must be at least 1"),
    ({"host_memory_bytes": 0}, "--host-mem (host_memory_bytes): must be above 0"),
    ({"zipf_s": -1}, "--zipf (zipf_s): must be at least 0"),
    ({"zipf_s": float("nan")}, "finite"),
    ({"top_k": 0}, "--top-k (top_k): must be at least 1"),
    ({"spec_tokens": 4}, "needs a draft model"),
    ({"spec_accept": 1.5, "draft_model": "x"}, "must be at most 1"),
    ({"dtype": "bf61"}, "did you mean bf16"),
    ({"batchsize": 3}, "did you mean batch_size"),
])
def test_bad_knobs_name_the_flag_and_the_rule(knobs, needle):
    with pytest.raises(MoesimError, match="invalid scenario") as info:
        sc.build("mixtral-8x7b", "rtx4090", **knobs)
    assert needle in str(info.value)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moesim", *args], capture_output=True, text=True, timeout=120)


def test_cli_refuses_a_field_given_twice_and_reads_the_rest():
    proc = _run("predict", "--model", "olmoe-1b-7b", "--hw", "h100-sxm", "--gpu", "rtx4090")
    assert proc.returncode == 2 and "--hw/--gpu given more than once" in proc.stderr
    proc = _run("predict", "--model", "olmoe-1b-7b", "--hw", "h100-sxm", "--prompt", "64", "--gen", "8",
                "--requests", "4", "--system", "gpu-resident", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["workload"]["prompt_tokens"] == 64 and out["system"] == "gpu-resident"
    lib = moesim.predict("olmoe-1b-7b", "h100-sxm", "gpu-resident", prompt_tokens=64, gen_tokens=8, num_requests=4)
    assert out["throughput_tok_s"] == pytest.approx(lib.throughput_tok_s, rel=1e-12)


_TEXT = st.one_of(st.text(max_size=8), st.sampled_from(["0", "-1", "nan", "inf", "1e308", "3.5", "64", "512GB",
                                                        "true", "none", "fused", "lognormal", "a=1"]))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(list(sc.fields())), _TEXT, max_size=4))
def test_any_text_for_any_knob_is_a_scenario_or_a_clear_error(values):
    """Fuzz: text for any field gives a Scenario or a MoesimError, never another exception."""
    try:
        fields = {k: sc.parse_value(k, v) if k != "system_params" else sc.parse_key_values([v])
                  for k, v in values.items()}
        sc.build(**{"model": "mixtral-8x7b", "hardware": "rtx4090", **{k: v for k, v in fields.items()}})
    except MoesimError as exc:
        assert str(exc)


def test_a_sweep_point_with_an_arrival_rate_is_served_online():
    from moesim.analysis.sweep import run_sweep

    recs = run_sweep(Grid(model="olmoe-1b-7b", hardware="h100-sxm", system="vllm", num_requests=40,
                          arrival_rate_per_s=[2, 20]), None, workers=1, progress=False)
    assert [r["feasible"] for r in recs] == [True, True]
    direct = moesim.predict_online(moesim.Scenario(model="olmoe-1b-7b", hardware="h100-sxm", system="vllm",
                                                   num_requests=40, arrival_rate_per_s=20))
    assert recs[1]["ttft_p99_s"] == pytest.approx(direct.ttft_s.p99, rel=1e-12)
    assert recs[1]["tpot_s"] == pytest.approx(direct.tpot_s.p50, rel=1e-12)
    assert all(r["tpot_s"] <= r["tpot_p99_s"] for r in recs)


def _help_of(command: str) -> dict[str, str]:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {a.option_strings[0]: a.help or "" for a in sub._actions if a.option_strings}


def test_help_gives_the_unit_of_every_number_and_every_default():
    """Issue 11: `--help` states each numeric flag's unit and each flag's default (system parameters: per
    owning system)."""
    helps = _help_of("predict")
    for name, (info, flag) in sc.fields().items():
        if flag.invert or name in ("model", "hardware", "system_params"):
            continue
        text = helps[flag.flags[0]]
        assert "default" in text, (flag.flags[0], text)
        if sc.value_kind(name) in (int, float):
            assert flag.unit and f"[{flag.unit}]" in text, (flag.flags[0], text)
    from moesim.systems import SYSTEMS

    for cls in SYSTEMS.values():
        for pname, info in cls.Params.model_fields.items():
            flag = "--" + pname.replace("_", "-")
            if pname in sc.fields():
                continue
            assert info.description, f"{cls.name}.{pname} has no description (its help text)"
            assert f"{cls.name}" in helps[flag] and "default" in helps[flag], (flag, helps[flag])
    assert "[GiB]" in helps["--cpu-offload-gb"] and "default 0.0" in helps["--cpu-offload-gb"]


def test_byte_sized_system_parameters_take_units():
    from moesim.systems import get_system

    assert get_system("moe-gen")({"host_kv_bytes": "64GiB"}).params.host_kv_bytes == 64 * 2**30
    assert get_system("moe-gen")({"host_kv_bytes": 2**30}).params.host_kv_bytes == 2**30
    with pytest.raises(MoesimError, match="needs a unit"):
        get_system("moe-gen")({"host_kv_bytes": "64"})
