"""SGLang's eager forwards: a forward launched kernel by kernel from Python takes at least the host's issue of its
kernels (``systems_db/sglang.yaml`` ``extend_host_s_per_layer``, SGLang pull request 12160: DeepSeek-V3, one new
token, 82.64 ms eager), so a short prefill costs that floor however little the GPU does; a long one is GPU-bound.
``--enable-piecewise-cuda-graph`` removes it from prefill; a decode batch replaying a captured graph never pays it, one
above cuda_graph_max_bs (run eagerly) does. TensorRT-LLM's eager context phase takes SGLang's figure as an assumption
for the architecture it timed (MLA) only, and none with piecewise CUDA graphs; vLLM (compiled, graphed prefill)
declares none."""

from __future__ import annotations

import pytest

import moesim
from moesim.db import system_constants
from moesim.modules import Context, Options
from moesim.specs import OfflineWorkload
from moesim.systems import get_system
from moesim.systems.shared.engine_step import EngineRuntime, engine_execution


def _ctx(model: str = "deepseek-r1", gpus: int = 8, prompt: int = 1024, gen: int = 64) -> Context:
    platform = moesim.get_hardware("hgx-h200", num_gpus=gpus)
    return Context(moesim.get_model(model), platform, OfflineWorkload(num_requests=1, prompt_tokens=prompt,
                                                                      gen_tokens=gen), Options())


def _per_layer_s() -> float:
    return float(system_constants("sglang").value("extend_host_s_per_layer"))


def test_floor_is_the_larger_of_gpu_and_host_issue():
    g = engine_execution("graph")
    rt = EngineRuntime("sglang", g, g, 1e-3, 1e-5, True, prefill_host_s=0.08)
    assert rt.prefill_s(0.02) == 0.08 and rt.prefill_s(0.3) == 0.3
    assert EngineRuntime("vllm", g, g, 1e-3, 1e-5, True).prefill_s(0.02) == 0.02  # no floor unless declared


def test_sglang_floor_is_layers_times_the_sourced_per_layer_issue_and_off_with_piecewise_graphs():
    ctx = _ctx()
    layers = ctx.model.num_layers
    assert layers == 61
    assert get_system("sglang")().runtime(ctx).prefill_host_s == pytest.approx(61 * _per_layer_s())
    assert 61 * _per_layer_s() == pytest.approx(0.08264, rel=1e-3)  # the source's 82.64 ms forward
    assert get_system("sglang")({"enable_piecewise_cuda_graph": True}).runtime(ctx).prefill_host_s == 0.0
    assert get_system("vllm")().runtime(ctx).prefill_host_s == 0.0  # vLLM's prefill is compiled and graphed


def test_short_prefill_pays_the_floor_long_prefill_and_decode_do_not():
    ctx = _ctx()
    eager, pcg = get_system("sglang")(), get_system("sglang")({"enable_piecewise_cuda_graph": True})
    floor = eager.runtime(ctx).prefill_host_s
    lay = eager._layout(ctx)
    short_e = eager._pass(ctx, lay, 64, 1, [(1, 64, 64)])
    short_g = pcg._pass(ctx, lay, 64, 1, [(1, 64, 64)])
    assert short_g.time_s < floor <= short_e.time_s + 1e-12  # GPU-alone below the floor; eager waits on the host
    assert short_e.category_s.get("host issue (eager prefill)", 0.0) == pytest.approx(short_e.time_s - short_g.time_s)
    long_e = eager._pass(ctx, lay, 32768, 32, [(32, 1024, 1024)])
    long_g = pcg._pass(ctx, lay, 32768, 32, [(32, 1024, 1024)])
    assert long_g.time_s > floor and long_e.time_s == pytest.approx(long_g.time_s)
    dec_e = eager._pass(ctx, lay, 8, 8, [(8, 1, 1024)])
    dec_g = pcg._pass(ctx, lay, 8, 8, [(8, 1, 1024)])
    assert dec_e.time_s == pytest.approx(dec_g.time_s) and dec_e.time_s < floor


def test_online_step_table_composes_gpu_times_and_floors_each_prefill_step():
    """The step table's per-pair and per-row slopes are GPU-time differences (the floor would flatten them to 0);
    the floor applies to a whole step with prompt tokens, not to a decode-only step."""
    ctx = _ctx()
    eager, pcg = get_system("sglang")(), get_system("sglang")({"enable_piecewise_cuda_graph": True})
    lay = eager._layout(ctx)
    from moesim.systems.shared.online import EngineStepModel

    te, tg = EngineStepModel(eager, ctx, lay, 2048).table, EngineStepModel(pcg, ctx, lay, 2048).table
    assert te.beta == pytest.approx(tg.beta) and te.beta > 0
    assert te.head_row_s == pytest.approx(tg.head_row_s)
    floor = eager.runtime(ctx).prefill_host_s
    one_prompt = dict(tokens=1024, rows=1, decode_ctx_sum=0.0, prefill_pairs=1024 * 1025 / 2)
    assert tg.time_s(**one_prompt) < floor and te.time_s(**one_prompt) == pytest.approx(floor)
    assert te.time_s(8, 8, 8 * 1024.0, 0.0) == pytest.approx(tg.time_s(8, 8, 8 * 1024.0, 0.0))


def test_cli_takes_the_flag_and_a_short_prompt_ttft_reflects_the_floor():
    base = dict(model="deepseek-r1", hardware="hgx-h200", num_gpus=8, system="sglang", prompt_tokens=256,
                gen_tokens=32, batch_size=1, num_requests=1)
    eager = moesim.predict(moesim.Scenario(**base))
    pcg = moesim.predict(moesim.Scenario(**base, system_params={"enable_piecewise_cuda_graph": True}))
    assert eager.ttft_s >= 61 * _per_layer_s() > pcg.ttft_s
    assert any("launched eagerly" in a and "host-bound" in a for a in eager.assumptions)
    assert not any("launched eagerly" in a for a in pcg.assumptions)


def test_analytic_steady_client_charges_the_floor_to_each_prompt_chunk():
    """The layout search's analytic client (``closed_loop.steady_ttft_s``) prices a steady-state prompt's chunk at
    q / N of a full pass: for SGLang that chunk is an eager forward of its own, so it takes at least the floor."""
    from moesim.predict import plan_scenario
    from moesim.serving.closed_loop import prefill_host_s_of, steady_ttft_s

    base = dict(model="deepseek-r1", hardware="hgx-h200", num_gpus=8, system="sglang", prompt_tokens=512,
                gen_tokens=256, batch_size=16, num_requests=16)
    _, eager, _, _ = plan_scenario(moesim.Scenario(**base))
    _, pcg, _, _ = plan_scenario(moesim.Scenario(**base, system_params={"enable_piecewise_cuda_graph": True}))
    floor = prefill_host_s_of(eager)
    assert floor == pytest.approx(61 * _per_layer_s()) and prefill_host_s_of(pcg) == 0.0
    decode_step = eager.decode_time_per_batch_s / 256
    assert steady_ttft_s(eager, 512, 256) >= floor + decode_step > steady_ttft_s(pcg, 512, 256)


def test_decode_floor_only_where_no_captured_graph_takes_the_batch():
    g, e = engine_execution("graph"), engine_execution("eager")
    rt = EngineRuntime("sglang", g, g, 1e-3, 1e-5, True, (1, 2, 4, 8), uncaptured=e, eager_decode_host_s=0.08)
    assert rt.decode_floor_s(3) == 0.0 and rt.decode_floor_s(8) == 0.0  # padded to / replaying a graph
    assert rt.decode_floor_s(9) == 0.08  # above the largest captured size: eager
    unpadded = EngineRuntime("trtllm", g, g, 1e-3, 1e-5, True, (1, 2, 4, 8), pad_to_graph=False, uncaptured=e,
                             eager_decode_host_s=0.08)
    assert unpadded.decode_floor_s(3) == 0.08 and unpadded.decode_floor_s(4) == 0.0  # off the list without padding
    assert EngineRuntime("vllm", g, g, 1e-3, 1e-5, True, (1, 2)).decode_floor_s(64) == 0.0  # none declared


def test_sglang_decode_above_cuda_graph_max_bs_pays_the_floor_below_does_not():
    ctx = _ctx()
    sg = get_system("sglang")({"cuda_graph_max_bs": 8})
    lay = sg._layout(ctx)
    floor = 61 * _per_layer_s()
    captured = sg._pass(ctx, lay, 8, 8, [(8, 1, 1024)])
    eager = sg._pass(ctx, lay, 9, 9, [(9, 1, 1024)])
    assert captured.time_s < floor <= eager.time_s + 1e-12
    assert eager.category_s.get("host issue (eager decode)", 0.0) > 0
    none = get_system("sglang")({"cuda_graph_max_bs": 0})  # no graphs at all: every decode step is eager
    assert none.runtime(ctx).decode_execution(1)[0].mode == "eager"
    assert none._pass(ctx, lay, 1, 1, [(1, 1, 1024)]).time_s >= floor - 1e-12
    from moesim.systems.shared.online import EngineStepModel

    table = EngineStepModel(sg, ctx, lay, 2048).table  # the online step table floors the same batches
    assert table.time_s(8, 8, 8 * 1024.0, 0.0) < floor <= table.time_s(9, 9, 9 * 1024.0, 0.0) + 1e-12


def test_engines_without_a_sourced_or_assumed_figure_declare_no_eager_floor():
    """vLLM declares none (its prefill is compiled and graphed; --enforce-eager's host cost has no source here);
    TensorRT-LLM none for gpt-oss-120b, where SGLang's figure does not transfer (on B200 its 49 ms exceeds
    TensorRT-LLM's whole measured TTFT)."""
    for model, name, params in (("deepseek-r1", "vllm", {}), ("deepseek-r1", "vllm", {"enforce_eager": True}),
                                ("gpt-oss-120b", "trtllm", {})):
        rt = get_system(name)(params).runtime(_ctx(model))
        assert rt.prefill_host_s == 0.0 and rt.decode_floor_s(1000) == 0.0


def test_a_one_token_prompt_is_a_prefill_forward_not_a_decode():
    """SGLang's source case itself: an extend of one new token runs eagerly (82.64 ms), so a one-token prompt's TTFT
    pays the floor although its attention looks like a decode's."""
    base = dict(model="deepseek-r1", hardware="hgx-h200", num_gpus=8, system="sglang", prompt_tokens=1,
                gen_tokens=8, batch_size=1, num_requests=1)
    assert moesim.predict(moesim.Scenario(**base)).ttft_s >= 61 * _per_layer_s()
    pcg = moesim.predict(moesim.Scenario(**base, system_params={"enable_piecewise_cuda_graph": True}))
    assert pcg.ttft_s < 61 * _per_layer_s()


def test_trtllm_assumes_sglangs_figure_for_mla_models_only_and_none_with_piecewise_graphs():
    ctx = _ctx()
    trt = get_system("trtllm")()
    per_layer = float(system_constants("trtllm").value("eager_forward_host_s_per_layer"))
    assert per_layer == pytest.approx(_per_layer_s())  # the same source figure, assumed for TensorRT-LLM
    rt = trt.runtime(ctx)
    assert rt.prefill_host_s == pytest.approx(61 * per_layer) and rt.eager_decode_host_s == rt.prefill_host_s
    assert get_system("trtllm")({"enable_piecewise_cuda_graph": True}).runtime(ctx).prefill_host_s == 0.0
    for model in ("gpt-oss-120b", "qwen3-235b-a22b"):  # other attention kinds: no source, no floor
        other = _ctx(model)
        assert other.model.attention.kind != "mla"
        assert trt.runtime(other).prefill_host_s == 0.0 and trt.runtime(other).eager_decode_host_s == 0.0


def test_trtllm_one_short_prompt_waits_on_the_host_through_the_cli():
    """Through the CLI: one 920-token DeepSeek-R1 prompt on 4 B200 under TensorRT-LLM takes the host floor (61 layers x
    the per-layer figure) where the GPU alone would be faster, and piecewise CUDA graphs take it away."""
    import json
    import subprocess
    import sys

    def ttft_s(*extra: str) -> tuple[float, list[str]]:
        out = subprocess.run([sys.executable, "-m", "moesim", "predict", "--model", "deepseek-r1", "--hw", "hgx-b200",
                              "--gpus", "4", "--system", "trtllm", "--dtype", "nvfp4", "--batch", "1", "--requests", "1",
                              "--prompt", "920", "--gen", "2", "--json", *extra],
                             capture_output=True, text=True, check=True)
        data = json.loads(out.stdout)
        return data["ttft_s"], data["assumptions"]

    floor = 61 * float(system_constants("trtllm").value("eager_forward_host_s_per_layer"))
    eager, notes = ttft_s()
    graphed, graphed_notes = ttft_s("--enable-piecewise-cuda-graph")
    assert graphed < floor and eager == pytest.approx(floor, rel=1e-3)
    assert any("host-bound" in n and "ASSUMED" in n for n in notes)
    assert not any("launched eagerly" in n for n in graphed_notes)
