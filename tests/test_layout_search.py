"""`moesim recommend --layouts`: the layout search (analysis/layouts.py), its Pareto front and SLO choice, the
engines' launch commands, and the closed-loop benchmark rule it shares with the AIConfigurator validation."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.analysis import layouts as L
from moesim.serving import closed_loop as CL
from moesim.calibration.published import load_module

ROOT = Path(__file__).resolve().parents[1]


def _dominates(a, b) -> bool:
    return a[0] >= b[0] and a[1] >= b[1] and (a[0] > b[0] or a[1] > b[1])


def _check_front(pts, front):
    on = set(front)
    for i in front:  # nothing beats a point of the front
        assert not any(_dominates(p, pts[i]) for p in pts), (pts[i], pts)
    for j in range(len(pts)):  # every other point is beaten by, or equal to, one of the front
        if j not in on:
            assert any(_dominates(pts[i], pts[j]) or pts[i] == pts[j] for i in front), (pts[j], front)
    assert len({pts[i] for i in front}) == len(front)  # one of each equal pair


# ---- the pure functions -----------------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), max_size=40))
def test_pareto_front_is_exactly_the_non_dominated_points_on_a_grid(pts):
    """Integer points: many ties on one coordinate and exact duplicates."""
    front = L.pareto_front(pts)
    _check_front(pts, front)
    xs = [pts[i][0] for i in front]
    assert xs == sorted(xs, reverse=True)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(1e-3, 1e4), st.floats(1e-3, 1e4)), min_size=1, max_size=60))
def test_pareto_front_of_real_valued_points(pts):
    _check_front(pts, L.pareto_front(pts))


def test_pareto_front_by_hand():
    pts = [(1.0, 5.0), (2.0, 4.0), (2.0, 3.0), (3.0, 1.0), (0.5, 5.0), (3.0, 1.0)]
    assert L.pareto_front(pts) == [3, 1, 0]  # (3,1) once, (2,4), (1,5); (2,3), (0.5,5) dominated


def test_slo_ratio_by_hand():
    assert L.slo_ratio(1.0, 0.02) == 0.0
    assert L.slo_ratio(1.0, 0.02, max_ttft_s=2.0) == 0.5
    assert L.slo_ratio(1.0, 0.02, max_tpot_s=0.01) == pytest.approx(2.0)
    assert L.slo_ratio(1.0, 0.02, min_tok_s_per_user=25.0) == pytest.approx(0.5)  # 25 tok/s asked, 50 seen
    assert L.slo_ratio(3.0, 0.02, 2.0, 0.04, 25.0) == pytest.approx(1.5)  # the worst one


def _pt(tok_gpu, tok_user, ratio, gpus=8):
    return L.LayoutPoint(system="vllm", label="TP8", params={}, gpus_per_node=gpus, nodes=1, instance_gpus=gpus,
                         replicas=1, disaggregated=False, concurrency=1, running_batch=1, ttft_s=0.1,
                         tpot_s=1 / tok_user, tok_s_per_user=tok_user, tok_s_per_gpu=tok_gpu, throughput_tok_s=1.0,
                         slo_ratio=ratio, launch="", client="")


def test_choose_takes_the_most_tok_s_per_gpu_meeting_the_slo_else_the_closest():
    a, b, c = _pt(100, 20, 1.4), _pt(50, 40, 0.9), _pt(30, 60, 0.5)
    assert L.choose([a, b, c]) == (b, None)
    far, near = _pt(100, 20, 3.0), _pt(10, 90, 1.2)
    assert L.choose([far, near]) == (None, near)
    assert L.choose([]) == (None, None)


def test_closed_loop_rule_by_hand():
    """A plan of B = 4 running sequences, prefill in passes of N = 1024 tokens of 0.1 s (last 0.05 s), 2 passes a
    batch of 4 prompts of 512: requests 1-2 finish with pass 1 (0.1 s), 3-4 with the last (0.1 + 0.05 s)."""
    plan = SimpleNamespace(batch_size=4, prefill_tokens_per_pass=1024, prefill_passes_per_batch=2,
                           prefill=SimpleNamespace(time_s=0.1), prefill_last=SimpleNamespace(time_s=0.05),
                           decode_time_per_batch_s=1.0, prefill_time_per_batch_s=0.15, mixed_step=None)
    assert CL.wave_mean_ttft_s(plan, 512, 4) == pytest.approx((0.1 + 0.1 + 0.15 + 0.15) / 4)
    ttft, tpot = CL.benchmark_latency(plan, 512, 100, 4, "lockstep")
    assert (ttft, tpot) == (pytest.approx(0.125), pytest.approx(0.01))
    # concurrency 8 = two groups of 4: the mean wait is half a group's prefill + decode
    ttft8, _ = CL.benchmark_latency(plan, 512, 100, 8, "lockstep")
    assert ttft8 == pytest.approx(0.125 + 0.5 * 1.15)
    # Little's law: 8 in flight, each 0.5 + 99 x 0.01 s for 100 tokens
    assert CL.closed_loop_throughput_tok_s(8, 100, 0.5, 0.01) == pytest.approx(800 / 1.49)


def test_the_validation_module_uses_the_library_rule():
    """aiconfigurator.py scores with the very functions the layout search prices with (the move changed no number:
    tests/test_engines.py::test_aiconfigurator_golden_rows checks its figures)."""
    mod = load_module("aiconfigurator")
    assert mod.benchmark_latency is CL.benchmark_latency
    assert mod.request_overhead_s is CL.request_overhead_s
    assert (mod.BENCHMARK_MODEL, mod.MODELS) == (CL.BENCHMARK_MODEL, CL.MODELS) == ("half", ("lockstep", "steady",
                                                                                              "half", "wave"))


# ---- layouts and launch commands --------------------------------------------------------------------------------
def test_candidate_layouts_keep_tensor_parallel_groups_inside_a_node():
    one = {s: L.candidate_layouts(s, 8) for s in L.ENGINES}
    assert len(one["vllm"]) == 8 and len(one["sglang"]) == 16 and len(one["trtllm"]) == 8
    for s, cands in one.items():
        assert len({label for label, _ in cands}) == len(cands), s
    two = L.candidate_layouts("vllm", 8, nodes=2)
    assert {p.get("data_parallel_size", 1) for _, p in two} == {2, 4, 8, 16}  # attention TP 8, 4, 2, 1
    assert ("TP8 DP8 EP64", {"data_parallel_size": 8, "enable_expert_parallel": True}) not in two
    assert ("TP1 DP16 EP16", {"data_parallel_size": 16, "enable_expert_parallel": True}) in two
    assert L.candidate_layouts("trtllm", 8, is_moe=False) == [("TP8", {}), ("TP8 attn-DP", {"enable_attention_dp": True})]
    assert L.instance_sizes(8, 2) == [(1, 1), (2, 1), (4, 1), (8, 1), (8, 2)]


def test_launch_commands_by_hand():
    m = "deepseek-ai/DeepSeek-R1"
    assert L.launch_command("sglang", m, 8, 1, {"data_parallel_size": 8, "enable_dp_attention": True,
                                                "expert_parallel_size": 8}, 256) == (
        "python -m sglang.launch_server --model-path deepseek-ai/DeepSeek-R1 --tp 8 --dp 8 --enable-dp-attention "
        "--ep-size 8 --max-running-requests 256")
    assert L.launch_command("vllm", m, 8, 1, {"data_parallel_size": 8, "enable_expert_parallel": True}, 64) == (
        "vllm serve deepseek-ai/DeepSeek-R1 --tensor-parallel-size 1 --data-parallel-size 8 --enable-expert-parallel "
        "--max-num-seqs 64")
    assert L.launch_command("trtllm", m, 8, 1, {"enable_attention_dp": True, "moe_expert_parallel_size": 8}, 512) == (
        "printf 'enable_attention_dp: true\\n' > extra_llm_api_options.yaml && trtllm-serve deepseek-ai/DeepSeek-R1 "
        "--tp_size 8 --ep_size 8 --extra_llm_api_options extra_llm_api_options.yaml --max_batch_size 512")
    assert L.launch_command("vllm", m, 8, 1, {}) == "vllm serve deepseek-ai/DeepSeek-R1 --tensor-parallel-size 8"
    two = L.launch_command("sglang", m, 8, 2, {"data_parallel_size": 16, "enable_dp_attention": True,
                                               "expert_parallel_size": 16})
    assert "--tp 16 --dp 16" in two and "--nnodes 2" in two and "--dist-init-addr" in two
    vllm2 = L.launch_command("vllm", m, 8, 2, {"data_parallel_size": 16, "enable_expert_parallel": True})
    assert "--data-parallel-size 16 --data-parallel-size-local 8" in vllm2


def test_budget_buys_whole_nodes_else_a_divisor_of_the_node():
    import moesim

    plat = moesim.get_hardware("hgx-h200")
    price = plat.gpu.launch_price_usd
    node = plat.num_gpus * price + (plat.price_usd_excluding_gpus or 0.0)
    assert L.gpus_for_budget("hgx-h200", 1.5 * node)[:2] == (plat.num_gpus, 1)
    assert L.gpus_for_budget("hgx-h200", (plat.price_usd_excluding_gpus or 0.0) + 3.5 * price)[:2] == (2, 1)
    with pytest.raises(moesim.MoesimError, match="buys no"):
        L.gpus_for_budget("hgx-h200", 0.5 * price)


# ---- a real search ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def r1_search():
    L.clear_cache()
    return L.search_layouts("deepseek-r1", "hgx-h200", prompt_tokens=1024, gen_tokens=1024, max_tpot_s=0.05,
                            max_ttft_s=2.0)


def test_the_search_covers_every_engine_and_its_pareto_is_non_dominated(r1_search):
    """(Its speed is measured in benchmarks/bench_layouts.py, not asserted here.)"""
    res = r1_search
    assert {p.system for p in res.points} == set(L.ENGINES)
    pts = [(p.tok_s_per_user, p.tok_s_per_gpu) for p in res.points]
    front = [(p.tok_s_per_user, p.tok_s_per_gpu) for p in res.pareto]
    assert len(front) >= 3
    for f in front:
        assert f in pts and not any(_dominates(p, f) for p in pts)
    for p in pts:  # every point is on the front or beaten by (or equal to) one of it
        assert any(_dominates(f, p) or f == p for f in front)
    # the layouts the engines refuse (weights beyond 1-4 H200s) are said, not dropped silently
    assert any(r["instance_gpus"] < 8 and "weights" in r["reason"] for r in res.refused)
    for p in res.points:  # the figures are consistent with each other
        assert p.tok_s_per_user == pytest.approx(1 / p.tpot_s)
        assert p.tok_s_per_gpu == pytest.approx(p.concurrency * 1024 / (p.ttft_s + 1023 * p.tpot_s) / p.instance_gpus)
        assert p.running_batch <= p.concurrency


def test_the_chosen_configuration_meets_the_slo_and_is_the_best_that_does(r1_search):
    res = r1_search
    ch = res.chosen
    assert ch is not None and res.closest is None
    assert ch.ttft_s <= 2.0 and ch.tpot_s <= 0.05
    assert all(p.tok_s_per_gpu <= ch.tok_s_per_gpu for p in res.points if p.ttft_s <= 2.0 and p.tpot_s <= 0.05)
    assert any(p.tok_s_per_gpu > ch.tok_s_per_gpu for p in res.points)  # the SLO cost something
    # the best under the SLO is never dominated by a point also under it: a point that dominates it on the Pareto axes
    # (tok/s/user, tok/s/GPU) must break the SLO the axes do not show, TTFT (here vLLM's TP2 DP4 at 2.05 s)
    meets = [p for p in res.points if p.ttft_s <= 2.0 and p.tpot_s <= 0.05]
    assert not any(_dominates((p.tok_s_per_user, p.tok_s_per_gpu), (ch.tok_s_per_user, ch.tok_s_per_gpu)) for p in meets)
    assert ch in res.pareto or any(p.ttft_s > 2.0 for p in res.pareto)
    assert ch.launch.split()[0] in ("vllm", "python", "printf", "trtllm-serve") and str(ch.concurrency) in ch.launch


def test_an_unreachable_slo_says_none_meets_it_and_gives_the_closest():
    res = L.search_layouts("deepseek-r1", "hgx-h200", prompt_tokens=1024, gen_tokens=1024, min_tok_s_per_user=1e4)
    assert res.chosen is None and res.closest is not None
    assert res.closest.slo_ratio == min(p.slo_ratio for p in res.points) > 1.0
    assert res.closest.tok_s_per_user == max(p.tok_s_per_user for p in res.points)
    assert res.verdict.startswith("no configuration meets tok/s/user >= 10000; closest:")


def test_disaggregated_candidates_follow_the_engines_parameter():
    """Disaggregated deployments are searched once the engines have ``disaggregate`` (the disagg branch): Qwen3-30B
    fits workers of 1-4 GPUs, so one node holds prefill and decode pools."""
    res = L.search_layouts("qwen3-30b-a3b", "hgx-h200", prompt_tokens=1024, gen_tokens=1024, systems=("sglang",),
                           concurrencies=(64,))
    if L.disaggregation_supported("sglang"):
        dis = [p for p in res.points if p.disaggregated]
        assert dis and all(p.replicas == 1 and p.instance_gpus <= 8 for p in dis)
        assert all("--disaggregation-mode prefill" in p.launch and "--disaggregation-mode decode" in p.launch
                   for p in dis)
        assert any("disaggregated prefill/decode searched" in n for n in res.notes)
    else:
        assert not any(p.disaggregated for p in res.points)
        assert any("disaggregated prefill/decode not searched" in n for n in res.notes)


def test_two_nodes_search_instances_over_both():
    res = L.search_layouts("deepseek-r1", "hgx-h200", nodes=2, prompt_tokens=1024, gen_tokens=1024,
                           systems=("sglang",), concurrencies=(128,))
    assert res.total_gpus == 16
    big = [p for p in res.points if p.instance_gpus == 16 and not p.disaggregated]
    assert big and all("--nnodes 2" in p.launch and p.replicas == 1 for p in big)
    assert all(p.replicas == 2 for p in res.points if p.instance_gpus == 8 and not p.disaggregated)


def test_bad_input_is_a_clear_error():
    from moesim.errors import MoesimError

    with pytest.raises(MoesimError, match="covers vllm, sglang, trtllm"):
        L.search_layouts("deepseek-r1", "hgx-h200", systems=("moe-gen",))
    with pytest.raises(MoesimError, match="sets batch_size"):
        L.search_layouts("deepseek-r1", "hgx-h200", batch_size=4)
    with pytest.raises(MoesimError, match="not both"):
        L.search_layouts("deepseek-r1", "hgx-h200", gpus_per_node=8, budget_usd=1e6)
    with pytest.raises(MoesimError, match="max_tpot_s"):
        L.search_layouts("deepseek-r1", "hgx-h200", max_tpot_s=-1)


# ---- the command line ---------------------------------------------------------------------------------------------
def _cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "moesim.cli", "recommend", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_cli_layouts_prints_the_pareto_and_a_launch_command():
    # its speed is measured by benchmarks/bench_layouts.py, not asserted here
    proc = _cli("--layouts", "--model", "deepseek-r1", "--hw", "hgx-h200", "--prompt", "1024", "--gen", "1024",
                "--max-tpot", "0.05", "--max-ttft", "2")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Pareto front" in out and "answer:" in out
    launch = out.split("launch (", 1)[1].splitlines()[1].strip()
    assert any(launch.startswith(w) for w in ("vllm serve", "python -m sglang.launch_server", "printf", "trtllm-serve"))
    assert "deepseek-ai/DeepSeek-R1" in launch


def test_cli_layouts_json_and_an_unmet_slo():
    proc = _cli("--layouts", "--model", "deepseek-r1", "--hw", "hgx-h200", "--systems", "vllm", "--concurrency",
                "1,64", "--min-tok-s-per-user", "10000", "--json")
    assert proc.returncode == 3, proc.stderr
    data = json.loads(proc.stdout)
    assert data["chosen"] is None and data["closest"]["system"] == "vllm"
    assert {p["concurrency"] for p in data["points"]} == {1, 64}
    assert all(math.isfinite(p["tok_s_per_gpu"]) for p in data["pareto"])


@pytest.mark.parametrize("args, needle", [
    (("--layouts", "--model", "deepseek-r1"), "--layouts needs --hw"),
    (("--model", "deepseek-r1", "--max-ttft", "1", "--target-tok-s", "5"), "--max-ttft goes with --layouts"),
    (("--model", "deepseek-r1", "--hw", "hgx-h200", "--target-tok-s", "5"), "--hw goes with --layouts"),
    (("--model", "deepseek-r1"), "--target-tok-s is required"),
    (("--layouts", "--model", "deepseek-r1", "--hw", "hgx-h200", "--concurrency", "0"), "at least 1"),
    (("--layouts", "--model", "deepseek-r1", "--hw", "hgx-h200", "--max-ttft", "nan"), "--max-ttft"),
])
def test_cli_bad_layout_flags_are_one_line_errors(args, needle):
    proc = _cli(*args, timeout=30)
    assert proc.returncode != 0 and needle in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
