"""Issue 12: the engines' dense GEMMs and fused MoE from their measured tables, dense reference models, and the
closed-loop benchmark harness of each AIConfigurator collection pipeline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import moesim
from moesim import db
from moesim.costs import kernels
from moesim.costs.ffn import router as router_cost
from moesim.modules import Context
from moesim.predict import plan_scenario
from moesim.serving import closed_loop as CL
from moesim.systems.shared import engine_step as ES
from moesim.calibration.published import load_module

ROOT = Path(__file__).resolve().parents[1]


# ---- closed loop: the "wave" model ---------------------------------------------------------------------------------
def test_wave_model_by_hand():
    """B = 4 prompts of 512 in passes of 1024 tokens (0.1 s, last 0.05 s): every first token at 0.15 s; 8 in flight
    are two groups, the second waiting half a group's prefill + decode (1.15 s) on average."""
    plan = SimpleNamespace(batch_size=4, prefill_tokens_per_pass=1024, prefill_passes_per_batch=2,
                           prefill=SimpleNamespace(time_s=0.1), prefill_last=SimpleNamespace(time_s=0.05),
                           decode_time_per_batch_s=1.0, prefill_time_per_batch_s=0.15, mixed_step=None, system="x")
    assert CL.benchmark_latency(plan, 512, 100, 4, "wave") == (pytest.approx(0.15), pytest.approx(0.01))
    assert CL.benchmark_latency(plan, 512, 100, 8, "wave")[0] == pytest.approx(0.15 + 0.5 * 1.15)
    # the wave's mean TTFT is never below the lockstep mean (every request waits for the last pass)
    assert CL.benchmark_latency(plan, 512, 100, 4, "wave")[0] >= CL.benchmark_latency(plan, 512, 100, 4, "lockstep")[0]


# ---- the engines' GEMM tables ---------------------------------------------------------------------------------------
def _ctx(model: str, system: str = "sglang", gpus: int = 8, hw: str = "hgx-h200") -> Context:
    sc = moesim.Scenario(model=model, hardware=hw, num_gpus=gpus, system=system, prompt_tokens=512, gen_tokens=16,
                         batch_size=4, num_requests=4)
    ctx, _, _, _ = plan_scenario(sc)
    return ctx


def test_gemm_shapes_carry_the_weights_of_one_gpu():
    """The two attention GEMMs hold 1/tp of the attention weights; the FFN's gate/up and down 1/tp of 3 H I."""
    m = db.models().get("deepseek-r1")
    (n1, k1), (n2, k2) = ES.attention_gemm_shapes(m, 8)
    assert n1 * k1 + n2 * k2 == pytest.approx(m.attention_params / 8, rel=1e-3)
    assert ES.ffn_gemm_shapes(7168, 18432, True, 8) == [(2 * 2304, 7168), (7168, 2304)]
    assert ES.ffn_gemm_shapes(7168, 18432, False, 8) == [(2304, 7168), (7168, 2304)]


def test_table_gemms_sum_the_tables_lookups_in_the_weights_kernel_kind():
    ctx = _ctx("deepseek-r1")
    tables = kernels.kernel_tables("H200", "sglang")
    shapes = ES.attention_gemm_shapes(ctx.model, 8)
    expected = sum(tables.gemm_s(4096, n, k, "fp8_block") for n, k in shapes)
    assert ES.table_gemms_s(ctx, tables, 4096, shapes) == pytest.approx(expected)
    assert ES.quant_kind(ctx.wdtype, ctx.model) == "fp8_block"
    # a shape no table covers falls back to the roofline (None here)
    assert ES.table_gemms_s(ctx, tables, 4096, [(7, 3)]) is None


def test_fused_moe_table_is_not_charged_a_second_permute_and_combine():
    """With the fused-MoE table the router keeps its logits GEMM and top-k only: less than the eager router with
    dispatch and combine, and no less than the bare router GEMM."""
    ctx = _ctx("deepseek-r1")
    ex = ES.engine_execution("graph")
    lt = ES.engine_layer_times(ctx, 8192, [(1.0, 8192, 8192)], ex, "sglang")
    full = ctx.gpu_s(ctx.router(8192), ex)
    assert lt.router < 0.5 * full
    assert lt.router == pytest.approx(ctx.gpu_s(router_cost(7168, 256, 8192), ex))
    assert lt.router == ES.engine_router_s(ctx, 8192, ex, fused_table=True)
    assert ES.engine_router_s(ctx, 8192, ex, fused_table=False) == pytest.approx(full)


# ---- dense reference models -------------------------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moesim", "predict", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_a_dense_model_runs_on_the_engines_and_is_refused_elsewhere_saying_where_it_runs():
    ok = moesim.predict(model="qwen3-32b", hardware="hgx-h100", system="sglang", num_gpus=4)
    assert ok.tpot_s > 0 and ok.ttft_s > 0
    out = _cli("--model", "llama-3.1-8b", "--hw", "rtx4090", "--system", "moe-gen")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "no MoE layers" in out.stderr and "vllm" in out.stderr and "sglang" in out.stderr


def test_dense_tpot_grows_with_the_model():
    small = moesim.predict(model="llama-3.1-8b", hardware="hgx-h100", system="vllm", num_gpus=2, batch_size=64)
    large = moesim.predict(model="llama-3.1-70b", hardware="hgx-h100", system="vllm", num_gpus=2, batch_size=64)
    assert large.tpot_s > 3 * small.tpot_s


# ---- the AIConfigurator harness per collection pipeline -----------------------------------------------------------
def _aic():
    return load_module("aiconfigurator")


def test_pipeline_of_a_row_is_read_from_its_source():
    A = _aic()
    assert A.pipeline_of({"silicon_data_source": "source_file=/x/aic-auto-gap-analysis/data/h200_sxm/vllm"}) \
        == "gap-analysis"
    assert A.pipeline_of({"silicon_data_source": "db-dump/2026-04-27; config_id=733"}) == "silicon-ci"


def test_harness_file_was_fitted_on_fit_rows_only():
    """Every fitted entry names its fit-row count, equal to the count of that pipeline's FIT rows (H100) the fit rule
    selects; re-running the fit script on the silicon-CI / vLLM fit rows (the entry the engines' request overhead
    comes from; one entry keeps this a few seconds) gives the committed benchmark model and overhead, so the file is
    what those rows alone produce. An engine without an entry falls back to its pipeline's pooled."""
    A = _aic()
    fitted = A._harness()["pipelines"]
    fit = load_module("aiconfigurator_fit")
    for pipe, entries in fitted.items():
        for who, entry in entries.items():
            rows = fit.harness_rows(pipe, None if who == "pooled" else who)
            assert entry["fit_rows"] == len(rows), (pipe, who)
            assert entry["benchmark_model"] in A.HARNESS_MODELS and entry["request_overhead_s"] >= 0
    committed = fitted["silicon-ci"]["vllm"]
    # the committed client against the analytic default (the full candidate list takes minutes)
    refit = fit.fit_harness(fit.harness_rows("silicon-ci", "vllm"), "silicon-ci vllm",
                            models=tuple(dict.fromkeys((committed["benchmark_model"], CL.BENCHMARK_MODEL))))
    assert refit["benchmark_model"] == committed["benchmark_model"]
    assert refit["request_overhead_s"] == pytest.approx(committed["request_overhead_s"], abs=5e-4)
    row = {"silicon_data_source": "db-dump", "backend": "sglang"}
    assert A.harness_of(row) == (fitted["silicon-ci"]["pooled"]["benchmark_model"],
                                 fitted["silicon-ci"]["pooled"]["request_overhead_s"])


def test_the_engines_request_overhead_is_the_harness_fit_of_aiconfigurators_own_client():
    """systems_db/vllm.yaml's request_overhead_s (what the layout search adds to its analytic client,
    closed_loop.BENCHMARK_MODEL) is the overhead the harness fit found for that client on the silicon-CI / vLLM fit
    rows: one fitted figure, in two places, kept equal."""
    fitted = _aic()._harness()["pipelines"]["silicon-ci"]["vllm"]["default_model_overhead_s"]
    assert CL.request_overhead_s("vllm") == pytest.approx(fitted, abs=5e-5)
    assert CL.request_overhead_s("no-such-system") == 0.0


def test_graph_sizes_read_the_engines_rules_by_hand():
    """first:last:step ranges (last inclusive, or the top), single sizes, capped at the top."""
    assert ES.graph_sizes("1,2,4,8:24:8,32:top:16", 64) == (1, 2, 4, 8, 16, 24, 32, 48, 64)
    assert ES.graph_sizes("1,2,3,32,64,128", 40) == (1, 2, 3, 32)
    assert ES.vllm_capture_sizes(8) == (1, 2, 4, 8, 16)  # min(2 x 8, 512) = 16


def test_show_system_states_each_phases_execution():
    out = subprocess.run([sys.executable, "-m", "moesim", "show", "system", "llama-cpp"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and "prefill native, decode native" in out.stdout
