"""Sweeps (serial, processes, Dask, resume), sensitivity, plots and their CLI."""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys

import pytest

import moesim
from moesim.analysis import plots
from moesim.cli import plot as cli_plot, sweep as cli_sweep
from moesim.errors import MoesimError
from moesim.analysis.sweep import COLUMNS, Grid, Records, point_key, run_sweep, sensitivity

PREDICT_MODULE = sys.modules["moesim.predict"]  # `moesim.predict` the attribute is the function


def small_grid() -> Grid:
    """24 cheap points, some infeasible (Mixtral does not fit one RTX 4090 or A5000 GPU-resident)."""
    return Grid(model=["olmoe-1b-7b", "mixtral-8x7b"], hardware=["rtx4090", "c2"], system=["auto", "gpu-resident"],
                batch_size=[1, 8, 32], num_requests=32, prompt_tokens=64, gen_tokens=16)


def csv_rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def count_predicts(monkeypatch):
    """Count (and optionally break) predict calls made in this process (serial sweeps)."""
    state = {"calls": 0, "fail_at": None}
    real = PREDICT_MODULE.predict

    def counting(*args, **kw):
        state["calls"] += 1
        if state["fail_at"] is not None and state["calls"] >= state["fail_at"]:
            raise RuntimeError("simulated crash")
        return real(*args, **kw)

    monkeypatch.setattr(PREDICT_MODULE, "predict", counting)
    return state


# ---- grid ------------------------------------------------------------------------------------
def test_grid_expands_in_canonical_order_and_coerces_strings():
    a = Grid(batch_size=[1, 8], model="mixtral-8x7b", hardware="c2", pcie=["gen3", "gen4"])
    b = Grid.from_strings(["batch=1,8", "pcie=gen3,gen4"], model=["mixtral-8x7b"], hardware=["c2"])
    assert a.points() == b.points()
    assert len(a) == 4
    assert [p["batch_size"] for p in a.points()] == [1, 1, 8, 8]  # batch_size varies slower than pcie
    assert all(p["system"] == "auto" for p in a.points())
    keys = {point_key(p) for p in a.points()}
    assert "model=mixtral-8x7b;hardware=c2;system=auto;batch_size=1;pcie=gen3" in keys
    assert Grid(model="m", hardware="h", host_memory_bytes="512GB").points()[0]["host_memory_bytes"] == 512e9
    with pytest.raises(MoesimError, match="unknown grid parameter"):
        Grid(model="m", hardware="h", batchsize=[1])
    with pytest.raises(MoesimError, match="needs hardware"):
        Grid(model="m")
    with pytest.raises(MoesimError, match="as int"):
        Grid(model="m", hardware="h", batch_size="eight")


def test_unknown_names_fail_before_the_sweep(tmp_path):
    with pytest.raises(moesim.UnknownNameError):
        run_sweep(Grid(model="mixtrl-8x7b", hardware="c2"), tmp_path / "x.csv", workers=1, progress=False)
    assert not (tmp_path / "x.csv").exists()


# ---- execution modes -------------------------------------------------------------------------
def test_serial_and_two_processes_give_identical_records(tmp_path):
    grid = small_grid()
    serial = run_sweep(grid, tmp_path / "serial.csv", workers=1, progress=False)
    parallel = run_sweep(grid, tmp_path / "parallel.csv", workers=2, progress=False)
    assert isinstance(serial, Records) and isinstance(serial, list)
    assert len(serial) == 24 and serial == parallel
    assert [r["index"] for r in serial] == list(range(24))
    assert (tmp_path / "serial.csv").read_bytes() == (tmp_path / "parallel.csv").read_bytes()
    assert set(serial[0]) == set(COLUMNS)
    feasible = serial.feasible()
    assert 0 < len(feasible) < len(serial)
    for r in feasible:
        assert r["throughput_tok_s"] > 0 and r["tpot_s"] > 0 and r["ttft_s"] > 0 and r["s_mbu"] > 0
        assert r["bottleneck"] and r["reason"] is None
    bad = [r for r in serial if not r["feasible"]]
    assert all(r["throughput_tok_s"] is None and r["reason"] for r in bad)
    assert any("short by" in r["reason"] for r in bad)
    summary = serial.summary()
    assert summary["points"] == 24 and summary["feasible"] == len(feasible)
    assert summary["best"]["throughput_tok_s"] == max(r["throughput_tok_s"] for r in feasible)
    assert set(summary["best_per_system"]) == {r["chosen_system"] for r in feasible}


def test_records_match_predict():
    rec = run_sweep(Grid(model="mixtral-8x7b", hardware="c2", system="moe-gen", num_requests=64, gen_tokens=32),
                    None, workers=1, progress=False)[0]
    p = moesim.predict("mixtral-8x7b", "c2", "moe-gen", {"num_requests": 64, "gen_tokens": 32})
    assert rec["throughput_tok_s"] == p.throughput_tok_s and rec["s_mfu"] == p.s_mfu
    assert rec["chosen_system"] == "moe-gen" and rec["bottleneck"] == p.bottleneck


def test_resume_after_a_crash_skips_finished_points(tmp_path, count_predicts):
    grid = small_grid()
    out = tmp_path / "sweep.csv"
    reference = run_sweep(grid, None, workers=1, progress=False)
    count_predicts["calls"], count_predicts["fail_at"] = 0, 10
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_sweep(grid, out, workers=1, progress=False, chunk_size=1)
    finished = len(csv_rows(out))
    assert finished == 9  # every point that finished before the crash was appended
    with open(out, "a") as f:  # and a torn last line, as a kill mid-write leaves it
        f.write("99,model=olmoe-1b-7b;hardware=rtx")
    count_predicts["calls"], count_predicts["fail_at"] = 0, None
    resumed = run_sweep(grid, out, workers=1, progress=False)
    assert count_predicts["calls"] == len(grid) - finished
    assert (resumed.computed, resumed.resumed) == (len(grid) - finished, finished)
    assert resumed == reference
    assert len(csv_rows(out)) == len(grid)
    before = out.read_bytes()
    count_predicts["calls"] = 0
    again = run_sweep(grid, out, workers=2, progress=False)  # complete: nothing is recomputed, in any mode
    assert count_predicts["calls"] == 0 and again.computed == 0 and again == reference
    assert out.read_bytes() == before


def test_a_grown_grid_computes_only_new_points(tmp_path):
    out = tmp_path / "sweep.csv"
    run_sweep(Grid(model="olmoe-1b-7b", hardware="rtx4090", batch_size=[1, 8], num_requests=16), out, workers=1,
              progress=False)
    grown = run_sweep(Grid(model="olmoe-1b-7b", hardware="rtx4090", batch_size=[1, 4, 8], num_requests=16), out,
                      workers=1, progress=False)
    assert (grown.computed, grown.resumed) == (1, 2)
    assert [r["batch_size"] for r in grown] == [1, 4, 8]


def test_a_foreign_csv_is_refused(tmp_path):
    out = tmp_path / "other.csv"
    out.write_text("a,b\n1,2\n")
    with pytest.raises(MoesimError, match="not a moesim sweep file"):
        run_sweep(small_grid(), out, workers=1, progress=False)


def test_to_frame_is_optional():
    recs = run_sweep(Grid(model="olmoe-1b-7b", hardware="rtx4090", num_requests=16), None, workers=1, progress=False)
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(MoesimError, match="pandas"):
            recs.to_frame()
    else:
        assert len(recs.to_frame()) == 1


def test_dask_1000_points_equal_serial():
    distributed = pytest.importorskip("distributed")
    grid = Grid(model=["olmoe-1b-7b", "mixtral-8x7b"], hardware=["rtx4090", "c2"], system="gpu-resident",
                batch_size=[1, 2, 4, 8, 16], prompt_tokens=[16, 32, 64, 128, 256],
                gen_tokens=[4, 8, 12, 16, 24, 32, 48, 64, 96, 128], num_requests=16)
    assert len(grid) == 1000
    serial = run_sweep(grid, None, workers=1, progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=":0") as cluster:
        on_dask = run_sweep(grid, None, scheduler=cluster.scheduler_address, progress=False)
    assert on_dask == serial
    assert 0 < len(serial.feasible()) < 1000


def test_missing_dask_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import fails as if not installed
    with pytest.raises(MoesimError, match=r"dask\[distributed\]"):
        run_sweep(small_grid(), None, scheduler="tcp://127.0.0.1:8786", progress=False)


# ---- sensitivity -----------------------------------------------------------------------------
def test_sensitivity_pcie_pays_most_for_moe_gen_on_c2():
    recs = sensitivity("mixtral-8x7b", "c2", system="moe-gen")
    assert sorted(r["resource"] for r in recs) == ["gpu_flops", "hbm", "host_bw", "pcie"]
    assert recs[0]["resource"] == "pcie" and recs[0]["best"] and recs[0]["pays"]
    assert recs[0]["relative_change"] > 0.3
    assert all(r["relative_change"] < recs[0]["relative_change"] for r in recs[1:])
    base = moesim.predict("mixtral-8x7b", "c2", "moe-gen").throughput_tok_s
    assert recs[0]["base_throughput_tok_s"] == base


def test_sensitivity_passes_workload_and_overrides():
    recs = sensitivity("olmoe-1b-7b", "rtx4090", system="gpu-resident", factor=1.5, num_requests=32,
                       gen_tokens=16, pcie="gen3")
    assert len(recs) == 4 and all(r["factor"] == 1.5 for r in recs)
    assert {r["resource"] for r in recs if r["best"]} <= {"hbm", "gpu_flops"}  # weights live in HBM


# ---- plots -----------------------------------------------------------------------------------
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WORK = dict(num_requests=64, prompt_tokens=64, gen_tokens=16)


def _labels(fig) -> list[tuple[str, str]]:
    return [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes]


def _check_png(path, fig, expected: tuple[str, str]):
    assert path.exists() and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000
    assert expected in _labels(fig)
    assert all(ax.get_title() or fig._suptitle for ax in fig.axes)


def test_plot_throughput_vs_batch(tmp_path):
    path, fig = plots.throughput_vs_batch("mixtral-8x7b", "c2", tmp_path / "t.png", batch_sizes=(1, 8, 64),
                                          return_figure=True, **WORK)
    _check_png(path, fig, ("batch size (sequences)", "generation throughput (tok/s, log scale)"))
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert len(lines["moe-gen"].get_xdata()) == 3 and "gpu-resident" not in lines
    assert any(n.startswith("gpu-resident at every batch: ") for n in plots.not_drawn(fig))


def test_plot_roofline(tmp_path):
    path, fig = plots.roofline("mixtral-8x7b", "c2", tmp_path / "r.png", system="moe-gen", return_figure=True, **WORK)
    _check_png(path, fig, ("arithmetic intensity (FLOP/byte)", "performance (FLOP/s)"))
    data = plots.roofline_data("mixtral-8x7b", "c2", "moe-gen", **WORK)
    assert {"routed experts", "attention core"} <= {op["name"] for op in data["operations"]}
    assert {s["level"] for s in data["step"]} == {"HBM", "PCIe"}
    pcie = next(s for s in data["step"] if s["level"] == "PCIe")
    roof = min(data["roofs"]["gpu_flop_per_s"], pcie["intensity"] * data["roofs"]["pcie_bytes_per_s"])
    assert pcie["flop_per_s"] <= roof * 1.01  # below the PCIe roof it is bound by
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(t.startswith("PCIe roof") for t in legend) and any(t.startswith("CPU roof") for t in legend)


def test_plot_timeline(tmp_path):
    path, fig = plots.timeline("mixtral-8x7b", "c2", tmp_path / "tl.png", system="moe-gen", return_figure=True,
                               **WORK)
    _check_png(path, fig, ("time (ms)", "resource"))
    rows = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert rows[:2] == ["gpu", "h2d"]


def test_plot_pareto(tmp_path):
    path, fig = plots.pareto("olmoe-1b-7b", tmp_path / "p.png", platforms=["c2", "rtx-4090-workstation", "hgx-h100"],
                             costs={"hgx-h100": 300_000}, return_figure=True, **WORK)
    _check_png(path, fig, ("capital cost (USD, log scale)", "generation throughput (tok/s, log scale)"))
    rows = plots.pareto_points("olmoe-1b-7b", ["c2", "rtx-4090-workstation", "hgx-h100"], costs={"hgx-h100": 3e5},
                               **WORK)
    assert all(r["cost_usd"] for r in rows)
    cheapest = min(rows, key=lambda r: r["cost_usd"])
    assert cheapest["pareto"]
    c2 = moesim.get_hardware("c2")
    assert plots.platform_cost_usd(c2) == c2.gpu.launch_price_usd + c2.price_usd_excluding_gpus


def test_plot_utilization(tmp_path):
    path, fig = plots.utilization_vs_batch("mixtral-8x7b", "c2", tmp_path / "u.png", system="moe-gen",
                                           batch_sizes=(1, 8, 64), return_figure=True, **WORK)
    _check_png(path, fig, ("batch size (sequences)", "memory-bandwidth utilisation (fraction of peak)"))
    assert ("batch size (sequences)", "compute utilisation (fraction of peak FLOP/s)") in _labels(fig)
    labels = [line.get_label() for ax in fig.axes for line in ax.get_lines()]
    assert "moe-gen: S-MBU" in labels and "moe-gen: MFU" in labels


def test_plot_svg_and_bad_extension(tmp_path):
    path = plots.timeline("olmoe-1b-7b", "rtx4090", tmp_path / "t.svg", **WORK)
    assert path.read_text().lstrip().startswith("<?xml") and "<svg" in path.read_text()[:2000]
    with pytest.raises(MoesimError, match="png or .svg"):
        plots.timeline("olmoe-1b-7b", "rtx4090", tmp_path / "t.jpg", **WORK)


def test_predict_path_never_imports_matplotlib():
    code = ("import sys, moesim, moesim.analysis.sweep, moesim.analysis.plots, moesim.cli.plot, moesim.cli.sweep\n"
            "moesim.predict('olmoe-1b-7b', 'rtx4090', workload={'num_requests': 8})\n"
            "moesim.analysis.sweep.run_sweep(moesim.analysis.sweep.Grid(model='olmoe-1b-7b', hardware='c2'), None, workers=1,"
            " progress=False)\n"
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---- CLI -------------------------------------------------------------------------------------
def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="moesim")
    sub = parser.add_subparsers(dest="command", required=True)
    cli_sweep.add_parser(sub)
    cli_plot.add_parser(sub)
    args = parser.parse_args(argv)
    return {"sweep": cli_sweep.run, "sensitivity": cli_sweep.run, "plot": cli_plot.run}[args.command](args)


def test_cli_sweep_resumes(tmp_path, capsys):
    out = tmp_path / "s.csv"
    argv = ["sweep", "--model", "mixtral-8x7b,olmoe-1b-7b", "--hw", "c2", "--grid", "batch_size=1,8",
            "--grid", "pcie=gen3,gen4", "--grid", "requests=32", "--grid", "gen=16", "--out", str(out),
            "--workers", "1", "--no-progress"]
    assert _cli(argv) == 0
    first = capsys.readouterr().out
    assert "8 points: 8 feasible" in first and "best " in first
    assert _cli(argv + ["--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["computed"] == 0 and summary["resumed"] == 8
    assert len(csv_rows(out)) == 8


def test_cli_sensitivity_and_plot(tmp_path, capsys):
    assert _cli(["sensitivity", "--model", "mixtral-8x7b", "--hw", "c2", "--system", "moe-gen", "--json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert recs[0]["resource"] == "pcie" and len(recs) == 4
    assert _cli(["sensitivity", "--model", "mixtral-8x7b", "--hw", "c2", "--system", "moe-gen"]) == 0
    assert "pays most" in capsys.readouterr().out
    for kind in cli_plot.KINDS:
        path = tmp_path / f"{kind}.png"
        argv = ["plot", kind, "--model", "olmoe-1b-7b", "--hw", "rtx4090", "--plot", str(path), "--requests", "32",
                "--gen", "16", "--batches", "1,8"]
        assert _cli(argv) == 0, kind
        assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(MoesimError, match="needs --hw"):
        _cli(["plot", "roofline", "--model", "olmoe-1b-7b", "--plot", str(tmp_path / "x.png")])
