"""Cost figures, published accuracy, MoE-CAP's CAP radar and classification, and `recommend`."""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.analysis.accuracy import accuracy_of, common_suite, score_for
from moesim.analysis.cap import (CAPPoint, cap_point, cap_radar_data, classify, classify_design, normalize_cost,
                        plot_cap_radar)
from moesim.analysis.pricing import capital_cost_usd, cost_of, moecap_cost_usd, power_w, usd_per_mtok
from moesim.db import models
from moesim.db.resolve import get_hardware
from moesim.predict import predict
from moesim.analysis.recommend import Recommendation, format_table, recommend


@pytest.fixture(scope="module")
def r4090():
    """RTX 4090 workstation: 1 x RTX 4090 ($1,599, 450 W) + host $8,992 (EPYC 9354, 280 W)."""
    return get_hardware("rtx4090")


@pytest.fixture(scope="module")
def known_pred(r4090):
    pred = predict("deepseek-r1", r4090, dtype="int4")
    return pred.model_copy(update={"throughput_tok_s": 100.0, "utilization": {"gpu": 0.5}, "total_time_s": 3600.0})


# ---------------------------------------------------------------- cost


def test_capital_and_parts():
    assert capital_cost_usd(8, 27500.0, None) == (220000.0, None, None)
    assert capital_cost_usd(2, None, 5000.0) == (None, 5000.0, None)
    assert capital_cost_usd(2, 1000.0, 5000.0) == (2000.0, 5000.0, 7000.0)


def test_cost_report_hand_computed(known_pred, r4090):
    c = cost_of(known_pred, r4090)
    assert c.capital_usd == pytest.approx(1599 + 8992)  # 10,591
    # GPU 450 W x (0.3 + 0.7 x 0.5) = 292.5 W; CPU 280 W x 0.3 (idle share, no CPU work) = 84 W
    assert c.gpu_power_w == pytest.approx(292.5)
    assert c.cpu_power_w == pytest.approx(84.0)
    assert c.power_w == pytest.approx(376.5)
    assert c.energy_usd_per_hour == pytest.approx(0.3765 * 0.15)
    # (10591 / (8760 x 3) + 0.056475) $/h over 100 tok/s x 3600 s -> $/Mtok
    assert c.usd_per_mtok_owned == pytest.approx((10591 / 26280 + 0.056475) / 360000 * 1e6)
    assert c.usd_per_mtok_owned == pytest.approx(1.27634, rel=1e-4)
    assert c.usd_per_mtok_energy == pytest.approx(0.056475 / 360000 * 1e6)
    assert c.tok_s_per_kusd == pytest.approx(100 / 10.591)
    assert c.tokens_per_joule == pytest.approx(100 / 376.5)
    assert c.usd_per_mtok_cloud is None and any("cloud" in n for n in c.notes)  # no cloud price for a 4090
    # MoE-CAP: (1599 + 7214) x 1.25 + (450 + 350)/1000 x 0.15 x 1 h x 1.2
    assert c.moecap_capital_usd == pytest.approx(8813.0)
    assert c.moecap_energy_usd == pytest.approx(0.12)
    assert c.moecap_cost_usd == pytest.approx(1.25 * 8813 + 1.2 * 0.12)


def test_missing_prices_are_reported_not_invented(known_pred):
    hgx = get_hardware("hgx-h100")  # H100 SXM priced, the HGX host is not
    c = cost_of(known_pred.model_copy(update={"num_gpus": 8, "throughput_tok_s": 1000.0}), hgx)
    assert c.capital_usd is None and c.host_capital_usd is None
    assert c.capital_known_usd == pytest.approx(8 * 27500)
    assert c.usd_per_mtok_owned is None and c.tok_s_per_kusd is None
    assert any("price_usd_excluding_gpus" in n for n in c.notes)
    assert c.cloud_usd_per_hour == pytest.approx(8 * 2.95)
    assert c.usd_per_mtok_cloud == pytest.approx(8 * 2.95 / 3.6e6 * 1e6)
    assert c.moecap_prices_from.startswith("MoE-CAP")  # MoE-CAP's own table lists the H100 SXM
    assert c.moecap_capital_usd == pytest.approx(8 * 38000 + 7214)


def test_moecap_formula_and_power_helpers():
    out = moecap_cost_usd(7200.0, 2400.0, 230.0, 1)
    assert out["capital_usd"] == 9614.0
    assert out["energy_usd"] == pytest.approx(0.58 * 0.15 * 2)
    assert out["cost_usd"] == pytest.approx(1.2 * out["energy_usd"] + 1.25 * 9614.0)
    assert power_w(2, 100.0, 2.0, 1, None) == (200.0, None)  # utilisation clipped to 1; unknown CPU TDP
    assert usd_per_mtok(None, 10.0) is None and usd_per_mtok(3.6, 0.0) is None


@settings(max_examples=15, deadline=None)
@given(st.floats(min_value=0.5, max_value=5e4), st.floats(min_value=1.01, max_value=20.0))
def test_usd_per_mtok_falls_as_throughput_rises(tok_s, factor):
    pred = _PRED_FOR_HYPOTHESIS
    hgx = get_hardware("hgx-h200")
    slow = cost_of(pred, _R4090, tok_s=tok_s)
    fast = cost_of(pred, _R4090, tok_s=tok_s * factor)
    assert fast.usd_per_mtok_owned < slow.usd_per_mtok_owned
    assert fast.usd_per_mtok_energy < slow.usd_per_mtok_energy
    assert fast.tok_s_per_kusd > slow.tok_s_per_kusd
    p8 = pred.model_copy(update={"num_gpus": 8})
    assert cost_of(p8, hgx, tok_s=tok_s * factor).usd_per_mtok_cloud < cost_of(p8, hgx, tok_s=tok_s).usd_per_mtok_cloud


_R4090 = get_hardware("rtx4090")
_PRED_FOR_HYPOTHESIS = predict("deepseek-r1", _R4090, dtype="int4")


# ---------------------------------------------------------------- accuracy


def test_accuracy_sourced_values():
    a = accuracy_of("deepseek-r1", "int4")
    assert a["scores"]["gsm8k"] == pytest.approx(95.68)  # ISTA-DASLab GPTQ INT4, OpenLLM v1
    assert all(r["source"]["url"].startswith("https://") for r in a["results"])
    assert accuracy_of("r1")["scores"]["math_500"] == pytest.approx(97.3)  # released fp8, DeepSeek's card
    bf16 = accuracy_of("deepseek-r1", "bf16")
    assert bf16["scores_dtype"] == "fp8" and "upcast" in bf16["note"]
    assert score_for("mixtral-8x7b", "fp8", "mmlu")["value"] == pytest.approx(70.00)
    assert common_suite("deepseek-r1", ["fp8", "int4"], "gsm8k") == "ista-openllm-v1"


def test_accuracy_unknown_stays_unknown():
    assert accuracy_of("no-such-model", "bf16") is None
    assert accuracy_of("qwen3-30b-a3b", "bf16") is None  # no accuracy file
    m = accuracy_of("mixtral-8x7b", "int4")
    assert m["scores"] == {} and "no published score" in m["note"]
    assert score_for("mixtral-8x7b", "int4", "mmlu") is None


def test_accuracy_files_name_known_models():
    from moesim.analysis.accuracy import _table
    from moesim.specs.common import BYTES_PER_ELEMENT

    table = _table()
    assert len(table) >= 5
    for spec in table.values():
        assert models().find(spec.model) is not None, spec.model
        assert all(r.dtype in BYTES_PER_ELEMENT and r.source.url for r in spec.results)


# ---------------------------------------------------------------- CAP


def _paper_points():
    # MoE-CAP Fig. 3 (left), Qwen3-30B-A3B: (cost $, TPOT s, accuracy) from the repo's example YAML
    return [CAPPoint(label="SGLang", tpot_s=0.058, cost=8920, accuracy=0.911, quantized=False, offloaded=False),
            CAPPoint(label="K-Transformers", tpot_s=0.073, cost=3800, accuracy=0.800, quantized=True, offloaded=True),
            CAPPoint(label="MoE-Infinity", tpot_s=0.150, cost=3800, accuracy=0.911, quantized=False, offloaded=True)]


def test_cap_scaling_and_classes_reproduce_the_paper():
    rows = {r["label"]: r for r in cap_radar_data(_paper_points(), cost_max=8000)}
    sg, kt, mi = rows["SGLang"], rows["K-Transformers"], rows["MoE-Infinity"]
    assert sg["scaled"] == pytest.approx({"performance": 100.0, "cost": 20.0, "accuracy": 20 + 0.111 / 0.2 * 80})
    assert kt["scaled"]["performance"] == pytest.approx(20 + (0.150 - 0.073) / 0.092 * 80)
    assert kt["scaled"]["cost"] == pytest.approx(20 + 4200 / 8000 * 80)
    assert mi["scaled"]["performance"] == pytest.approx(20.0)
    # design rule and score rule agree with the paper: SGLang PA, K-Transformers PC, MoE-Infinity CA
    for row, cls in ((sg, "performance-accuracy"), (kt, "performance-cost"), (mi, "cost-accuracy")):
        assert row["class"] == cls and row["class_by_scores"] == cls


def test_classification_rule_and_unknowns():
    assert classify_design(quantized=False, offloaded=False) == "performance-accuracy"
    assert classify_design(quantized=True, offloaded=False) == "performance-cost"
    assert classify_design(quantized=False, offloaded=True) == "cost-accuracy"
    assert classify_design(quantized=True, offloaded=True) == "performance-cost"
    assert normalize_cost(20000, 8000) == 20.0
    rows = cap_radar_data([CAPPoint(label="a", tpot_s=1.0, cost=None, accuracy=None),
                           CAPPoint(label="b", tpot_s=1.0, cost=10.0, accuracy=0.5)])
    assert rows[0]["scaled"]["cost"] is None and rows[0]["class_by_scores"] is None
    assert rows[1]["scaled"]["performance"] == 100.0  # equal TPOTs: nobody is worse


def test_classify_predictions(r4090):
    offloaded_fp8 = predict("deepseek-r1", r4090)  # released fp8, weights in host memory
    assert classify(offloaded_fp8) == "cost-accuracy"
    assert classify(predict("deepseek-r1", r4090, dtype="int4")) == "performance-cost"
    assert classify(predict("mixtral-8x7b", "hgx-h100")) == "performance-accuracy"
    p = cap_point(offloaded_fp8, cost_of(offloaded_fp8, r4090), 95.91)
    assert p.accuracy == pytest.approx(0.9591) and p.cost == pytest.approx(10591)


def test_radar_png_and_labels(tmp_path):
    png = plot_cap_radar(_paper_points(), str(tmp_path / "cap.png"), title="Qwen3-30B-A3B")
    assert (tmp_path / "cap.png").stat().st_size > 10_000
    assert png.endswith("cap.png")
    svg = tmp_path / "cap.svg"
    plot_cap_radar(_paper_points(), str(svg))
    text = svg.read_text()
    for label in ("Performance: speed (TPOT, s/token)", "Cost: cheapness (capital, $)", "Accuracy (exact match)",
                  "SGLang [PA]", "MoE-Infinity [CA]"):
        assert label in text


def test_predict_path_never_imports_matplotlib():
    code = ("import sys, moesim, moesim.analysis.pricing, moesim.analysis.cap, moesim.analysis.accuracy, moesim.analysis.recommend;"
            "moesim.predict('mixtral-8x7b', 'rtx4090');"
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- recommend


@pytest.fixture(scope="module")
def r1_recs() -> list[Recommendation]:
    return recommend("deepseek-r1", 10)


def test_recommend_deepseek_r1(r1_recs):
    assert r1_recs
    top = r1_recs[0]
    assert top.rank == 1 and top.status == "ok"
    assert top.reached_tok_s >= 10 and top.capital_usd is not None
    ranked = [r for r in r1_recs if r.status == "ok"]
    assert [r.capital_usd for r in ranked] == sorted(r.capital_usd for r in ranked)
    assert all(r.rank is None and r.reason for r in r1_recs if r.status not in ("ok", "ok-price-unknown"))
    assert all(r.reason.startswith("infeasible: ") for r in r1_recs if r.status == "infeasible")
    table = format_table(r1_recs)
    assert "#1: recommended" in table and "why the others lost" in table


def test_recommend_says_why_a_platform_cannot_run():
    """R1 in bf16 with 60k-token prompts on a T4 server: no system runs it (moe-gen, which pages weights from disk,
    cannot fit one 60k-token prompt's prefill on the GPU), and the reason says what each system lacks."""
    recs = recommend("deepseek-r1", 10, platforms=["t4-server"], dtypes=("bf16",), prompt_tokens=60000,
                     gen_tokens=1000)
    assert [r.status for r in recs] == ["infeasible"]
    assert recs[0].reason.startswith("infeasible: ") and "moe-gen" in recs[0].reason


def test_recommend_budget_and_tpot(r1_recs):
    cheapest = r1_recs[0].capital_usd
    recs = recommend("deepseek-r1", 10, budget_usd=cheapest)
    assert recs[0].capital_usd <= cheapest
    assert any(r.status == "over-budget" and "over budget" in r.reason for r in recs)
    # 0.1 s: at 1 s every platform that reaches 10 tok/s has a system within the limit (llama.cpp fits
    # the RTX 4090's 24 GiB since capacities are what CUDA reports), so none would be "tpot-too-high"
    recs = recommend("deepseek-r1", 10, max_tpot_s=0.1)
    assert all(r.tpot_s <= 0.1 for r in recs if r.rank is not None)
    assert any(r.status == "tpot-too-high" for r in recs)
    slow = recommend("deepseek-r1", 1e9, platforms=["rtx4090"])
    assert all(r.rank is None for r in slow) and any(r.status == "too-slow" for r in slow)


def test_cli_recommend():
    from moesim.cli import recommend as cli_recommend

    parser = argparse.ArgumentParser()
    cli_recommend.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["recommend", "--model", "deepseek-r1", "--target-tok-s", "10",
                              "--platforms", "rtx4090,c2", "--scenario", "offline"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_recommend.run(args) == 0
    assert "#1: recommended" in out.getvalue()


def test_recommend_cli_draws_the_cap_radar(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "cap.png"
    proc = subprocess.run([sys.executable, "-m", "moesim.cli", "recommend", "--model", "mixtral-8x7b",
                           "--target-tok-s", "5", "--platforms", "c2,rtx4090", "--plot", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 10_000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
