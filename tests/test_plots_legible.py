"""Figures that read correctly to a person (issue 11): every drawn point is named in a legend or a
label, what is not drawn is said with its reason, labels do not overlap, non-negative quantities
have non-negative axes, larger is better on every radar axis, and nothing to draw is an error."""

from __future__ import annotations

import math

import pytest

from moesim.analysis import plots
from moesim.analysis.cap import CAPPoint, cap_radar_data, plot_cap_radar
from moesim.analysis.sweep import Grid, run_sweep
from moesim.cli import main as cli_main
from moesim.errors import MoesimError

WORK = dict(num_requests=64, prompt_tokens=64, gen_tokens=16)
#: a 100k-token prompt: no system holds Kimi-K2's prefill of it on a T4 (moe-gen runs Kimi-K2 from disk otherwise)
TOO_LONG = dict(num_requests=64, prompt_tokens=100_000, gen_tokens=16)
BATCHES = (1, 8, 64, 512)


def _sweep(model, hardware, systems, batches=BATCHES, work=WORK):
    grid = Grid({**work, "model": model, "hardware": hardware, "system": systems, "batch_size": list(batches)})
    return run_sweep(grid, None, workers=1, progress=False)


def _legend_texts(legend) -> list[str]:
    return [t.get_text() for t in legend.get_texts()]


def _note_text(fig) -> str:
    return "\n".join(t.get_text() for t in fig.texts)


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


# ---- throughput vs batch ---------------------------------------------------------------------
def test_throughput_legend_is_exactly_the_systems_drawn_and_the_rest_is_listed(tmp_path):
    systems = ["gpu-resident", "vllm", "llama-cpp", "ktransformers", "deepspeed", "moe-gen"]
    work = dict(num_requests=512, prompt_tokens=512, gen_tokens=32)  # long enough that big batches stop fitting
    recs = _sweep("mixtral-8x7b", "c2", systems, work=work)
    runs = {s for s in systems if any(r["system"] == s and r["feasible"] for r in recs)}
    partly = {s for s in runs if any(r["system"] == s and not r["feasible"] for r in recs)}
    never = set(systems) - runs
    assert runs and never and partly  # the case is one that exercises all three
    _, fig = plots.throughput_vs_batch("mixtral-8x7b", "c2", tmp_path / "t.png", systems=systems,
                                       batch_sizes=BATCHES, return_figure=True, **work)
    ax = fig.axes[0]
    legend = _legend_texts(ax.get_legend())
    assert sorted(legend) == sorted(runs)
    for line in ax.get_lines():  # every line drawn is in the legend, with every feasible batch
        assert line.get_label() in legend
        feasible = sorted(r["batch_size"] for r in recs if r["system"] == line.get_label() and r["feasible"])
        assert list(line.get_xdata()) == feasible
    notes = plots.not_drawn(fig)
    for system in never:
        assert any(n.startswith(f"{system} at every batch: ") for n in notes), system
    for system in partly:
        bad = ", ".join(str(r["batch_size"]) for r in recs if r["system"] == system and not r["feasible"])
        assert any(n.startswith(f"{system} at batch {bad}: ") for n in notes), system
    shown = _note_text(fig)
    assert all(system in shown for system in never | partly)  # in the figure too, not only on the object
    assert ax.get_ylim()[0] > 0 and ax.get_yscale() == "log"
    assert "tok/s" in ax.get_ylabel() and "sequences" in ax.get_xlabel()


def test_throughput_a_line_hidden_under_an_identical_one_says_so(tmp_path, monkeypatch):
    def rec(system, batch, tput):
        return {"system": system, "batch_size": batch, "feasible": tput is not None, "throughput_tok_s": tput,
                "reason": None if tput else f"{system}: does not fit"}

    recs = [rec("a", 1, 10.0), rec("a", 8, 50.0), rec("b", 1, 10.02), rec("b", 8, 50.1), rec("c", 1, 10.0),
            rec("c", 8, 90.0), rec("d", 1, None), rec("d", 8, None)]
    monkeypatch.setattr(plots, "_batch_sweep", lambda *a, **k: recs)
    _, fig = plots.throughput_vs_batch("mixtral-8x7b", "c2", tmp_path / "t.png", systems=["a", "b", "c", "d"],
                                       batch_sizes=(1, 8), return_figure=True)
    ax = fig.axes[0]
    assert _legend_texts(ax.get_legend()) == ["a", "b (same as a)", "c"]
    assert [line.get_linestyle() for line in ax.get_lines()] == ["-", "--", "-"]
    assert plots.not_drawn(fig) == ["d at every batch: does not fit"]


def test_throughput_nothing_feasible_is_an_error_not_an_empty_figure(tmp_path):
    out = tmp_path / "empty.png"
    with pytest.raises(MoesimError, match=r"no system can run kimi-k2 on T4 server at any batch") as exc:
        plots.throughput_vs_batch("kimi-k2", "t4", out, systems=["vllm", "moe-gen", "llama-cpp"],
                                  batch_sizes=(1, 8), **TOO_LONG)
    message = str(exc.value)
    for system in ("vllm", "moe-gen", "llama-cpp"):
        assert f"\n  {system}: " in message
    assert "short by" in message or "needs" in message  # the reasons themselves, not just names
    assert not out.exists()


def test_cli_nothing_feasible_exits_non_zero(tmp_path, capsys):
    out = tmp_path / "empty.png"
    rc = cli_main(["plot", "throughput-vs-batch", "--model", "kimi-k2", "--hw", "t4", "--plot", str(out),
                   "--batches", "1,8", "--system", "vllm,moe-gen", "--requests", "32", "--gen", "16",
                   "--prompt", "100000"])
    err = capsys.readouterr().err
    assert rc != 0 and "no system can run kimi-k2 on T4 server at any batch" in err and not out.exists()


def test_cli_prints_what_was_not_drawn_on_stderr(tmp_path, capsys):
    rc = cli_main(["plot", "throughput-vs-batch", "--model", "mixtral-8x7b", "--hw", "c2", "--system",
                   "gpu-resident,moe-gen", "--batches", "1,8", "--plot", str(tmp_path / "t.png"), "--requests", "32",
                   "--gen", "16"])
    captured = capsys.readouterr()
    assert rc == 0 and "moesim: not drawn: gpu-resident at every batch: " in captured.err


# ---- utilisation -----------------------------------------------------------------------------
def test_utilization_names_the_system_of_every_point(tmp_path):
    recs = _sweep("mixtral-8x7b", "c2", ["auto"], batches=(1, 16, 32, 64, 256))
    chosen = {r["batch_size"]: r["chosen_system"] for r in recs if r["feasible"]}
    assert len(set(chosen.values())) > 1  # auto switches system: the case the reviewer saw
    _, fig = plots.utilization_vs_batch("mixtral-8x7b", "c2", tmp_path / "u.png", system="auto",
                                        batch_sizes=(1, 16, 32, 64, 256), return_figure=True, **WORK)
    systems_legend = _legend_texts(fig.legends[0])
    assert systems_legend == list(dict.fromkeys(chosen[b] for b in sorted(chosen)))
    for ax in fig.axes:
        assert ax.get_ylim()[0] == 0 and "fraction of peak" in ax.get_ylabel()
        for line in ax.get_lines():
            if line.get_label().startswith("_"):  # the 1.0 guide line
                continue
            system, metric = line.get_label().split(": ")
            assert system in systems_legend and metric in ("S-MBU", "MBU", "S-MFU", "MFU")
            drawn = [int(x) for x, y in zip(line.get_xdata(), line.get_ydata()) if not math.isnan(y)]
            assert drawn == sorted(b for b, s in chosen.items() if s == system)  # each point under its own system
    metric_legend = " ".join(_legend_texts(fig.legends[1]))
    assert "S-MBU" in metric_legend and "MFU" in metric_legend


def test_utilization_nothing_feasible_is_an_error(tmp_path):
    with pytest.raises(MoesimError, match=r"moe-gen cannot run kimi-k2 on T4 server at any batch"):
        plots.utilization_vs_batch("kimi-k2", "t4", tmp_path / "u.png", system="moe-gen", batch_sizes=(1,), **TOO_LONG)


# ---- Pareto ----------------------------------------------------------------------------------
PLATFORMS = ["c2", "rtx-5090-workstation", "hgx-h100", "hgx-h200", "t4", "l4"]
#: vLLM keeps Mixtral-8x7B's 93 GB of weights on the GPUs: it runs on the 8-GPU boards only
PARETO = dict(system="vllm", costs={"t4": 5000, "hgx-h100": 300000}, **WORK)


def test_pareto_draws_or_lists_every_platform(tmp_path):
    rows = plots.pareto_points("mixtral-8x7b", PLATFORMS, **PARETO)
    drawn = [r for r in rows if r["feasible"] and r["cost_usd"] is not None]
    unpriced = [r for r in rows if r["cost_usd"] is None]
    infeasible = [r for r in rows if not r["feasible"]]
    assert drawn and unpriced and infeasible
    _, fig = plots.pareto("mixtral-8x7b", tmp_path / "p.png", platforms=PLATFORMS, return_figure=True, **PARETO)
    ax = fig.axes[0]
    legend = _legend_texts(ax.get_legend())
    numbered = [t for t in legend if t[0].isdigit()]
    assert len(numbered) == len(drawn)
    shown = _note_text(fig)
    for r in rows:
        in_legend = any(t.split(". ", 1)[1].startswith(f"{r['platform']} (") for t in numbered)
        assert in_legend == (r in drawn), r["platform"]
        if r not in drawn:
            assert r["platform"] in shown, r["platform"]
    assert "no price on file" in shown and "T4 server cannot run mixtral-8x7b: " in shown
    assert [a.get_text() for a in ax.texts] == [str(i) for i in range(1, len(drawn) + 1)]
    assert f"{len(drawn)} of {len(rows)} platforms drawn" in ax.get_title()
    assert "USD" in ax.get_xlabel() and "tok/s" in ax.get_ylabel()


def test_pareto_labels_do_not_overlap_when_points_crowd(tmp_path):
    platforms = ["c2", "c3", "rtx-4090-workstation", "rtx-5090-workstation", "rtx-3090-workstation", "hgx-h100",
                 "l4", "t4", "a100-pcie-server"]
    costs = {"hgx-h100": 10_000, "l4": 10_100, "t4": 10_200, "a100-pcie-server": 10_300, "c2": 10_050,
             "c3": 10_150, "rtx-4090-workstation": 10_250, "rtx-5090-workstation": 10_350,
             "rtx-3090-workstation": 10_400}
    _, fig = plots.pareto("mixtral-8x7b", tmp_path / "p.png", platforms=platforms, costs=costs,
                          return_figure=True, **WORK)
    ax = fig.axes[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(boxes) >= 6
    for i, a in enumerate(boxes):
        assert ax.bbox.x0 <= a.x0 and a.x1 <= ax.bbox.x1 and ax.bbox.y0 <= a.y0 and a.y1 <= ax.bbox.y1
        for b in boxes[i + 1:]:
            assert not _overlaps(a, b), (a, b)


def test_pareto_with_nothing_drawable_says_why(tmp_path):
    with pytest.raises(MoesimError, match=r"(?s)no platform can be drawn.*no price on file.*HGX H100"):
        plots.pareto("mixtral-8x7b", tmp_path / "p.png", platforms=["hgx-h100"], **WORK)


# ---- roofline --------------------------------------------------------------------------------
def test_roofline_legend_names_every_point(tmp_path):
    _, fig = plots.roofline("deepseek-v2-lite", "h100-sxm", tmp_path / "r.png", return_figure=True, **WORK)
    data = plots.roofline_data("deepseek-v2-lite", "h100-sxm", **WORK)
    legend = _legend_texts(fig.axes[0].get_legend())
    for op in data["operations"]:
        assert f"{op['name']} ({op['device']}, {op['level']} bytes)" in legend
    assert "whole decode step (achieved FLOP/s)" in legend
    assert [t.get_text() for t in fig.axes[0].texts] == [f"step vs {s['level']} bytes" for s in data["step"]]
    assert plots.not_drawn(fig) == data["not_placed"]


# ---- CAP radar -------------------------------------------------------------------------------
def _paper_points():
    return [CAPPoint(label="SGLang", tpot_s=0.058, cost=8920, accuracy=0.911, quantized=False, offloaded=False),
            CAPPoint(label="K-Transformers", tpot_s=0.073, cost=3800, accuracy=0.800, quantized=True, offloaded=True),
            CAPPoint(label="MoE-Infinity", tpot_s=0.150, cost=None, accuracy=0.911, quantized=False, offloaded=True)]


def test_radar_larger_is_better_on_every_axis_and_the_labels_say_so(tmp_path):
    _, fig = plot_cap_radar(_paper_points(), str(tmp_path / "cap.png"), cost_max=8000, return_figure=True)
    ax = fig.axes[0]
    perf, cost, acc = [t.get_text() for t in ax.get_xticklabels()]
    assert perf.startswith("Performance: speed") and "rim (best): TPOT 0.058 s/token" in perf
    assert "inner ring: 0.15 s/token" in perf
    assert cost.startswith("Cost: cheapness (capital, $)") and "rim (best): $0" in cost
    assert "inner ring: $8,000 or more" in cost
    assert acc.startswith("Accuracy") and "rim (best): 100%" in acc and "inner ring: 80.0%" in acc
    assert "larger is better on every axis" in ax.get_title()
    assert all(not t.get_text() for t in ax.get_yticklabels())  # no unitless 0..100 score on the plot
    # cheaper sits further out on the cost axis; faster further out on the performance axis
    lines = {line.get_label().split(" [")[0]: line.get_ydata() for line in ax.get_lines()}
    assert lines["K-Transformers"][1] > lines["SGLang"][1]  # $3,800 beyond $8,920
    assert lines["SGLang"][0] > lines["K-Transformers"][0] > lines["MoE-Infinity"][0]  # TPOT 0.058 < 0.073 < 0.150
    legend = _legend_texts(ax.get_legend())
    assert legend == ["SGLang [PA]", "K-Transformers [PC]", "MoE-Infinity [CA] (cost unknown: drawn at the centre)"]


def test_radar_power_axis_says_watts():
    rows = cap_radar_data([CAPPoint(label="a", tpot_s=0.1, cost=900, cost_unit="W", accuracy=0.95),
                           CAPPoint(label="b", tpot_s=0.04, cost=2000, cost_unit="W", accuracy=0.92)])
    from moesim.analysis.cap import axis_labels

    cost = axis_labels(rows)[1]
    assert cost.startswith("Cost: cheapness (power, W)") and "rim (best): 0 W" in cost
    assert "inner ring: 2,000 W or more" in cost
