"""Calibration: the fit recovers known curves from synthetic measurements, the split is fixed,
and profiles change predictions only through the efficiency seam."""

import json

import numpy as np
import pytest

import moesim
from moesim import ops
from moesim.calibration import fit_profile, load_measurements
from moesim.calibration.cases import Case, assign_split
from moesim.calibration.report import summarize, Row
from moesim.specs import CalibrationProfile, FamilyCurve


def truth_profile() -> CalibrationProfile:
    return CalibrationProfile(
        gpu="H100 SXM", measurements="synthetic", kernel_launch_s=6e-6, host_sync_s=3e-5,
        families={
            "vector": FamilyCurve(compute_max=1.0, rows_half=0, memory_max=0.9, bytes_half=4e6, overhead_s=4e-6),
            "gemm:bf16": FamilyCurve(compute_max=0.78, rows_half=60, memory_max=0.85, bytes_half=8e6, overhead_s=7e-6),
            "expert": FamilyCurve(compute_max=0.7, rows_half=90, memory_max=0.8, bytes_half=2e7, overhead_s=8e-6),
            "moe_loop": FamilyCurve(compute_max=1.0, rows_half=0, memory_max=1.0, bytes_half=0, overhead_s=2e-5),
        })


def synthetic_cases(hw) -> list[Case]:
    ops_list = [("hbm_copy", {"nbytes": n}, ops.Copy(n, "d2d")) for n in (2**20, 2**24, 2**27, 2**30)]
    for m in (1, 8, 32, 128, 512, 2048, 8192):
        for n, k in ((28672, 4096), (4096, 14336), (8192, 8192)):
            ops_list.append(("gemm", {"m": m, "n": n, "k": k, "dtype": "bf16"}, ops.GEMM(m, n, k)))
    for t in (1, 16, 64, 256, 1024, 4096, 16384):
        ops_list.append(("expert_ffn", {"hidden": 4096, "ffn": 14336, "tokens": t, "dtype": "bf16"},
                         ops.ExpertFFN(4096, 14336, t)))
        ops_list.append(("moe_layer", {"hidden": 4096, "ffn": 14336, "experts": 8, "top_k": 2, "tokens": t,
                                       "impl": "loop", "dtype": "bf16"}, ops.MoELayer(4096, 14336, 8, 2, t, "loop")))
    return [Case(f, p, ops.estimate(op, hw)) for f, p, op in ops_list]


def test_fit_recovers_synthetic_truth_on_held_out_cases():
    hw = moesim.get_hardware("h100-sxm").model_copy(update={"calibration": truth_profile()})
    cases = synthetic_cases(hw)
    cases = assign_split(cases + [Case("launch", {}, 6e-6), Case("host_sync", {}, 3e-5)])
    fitted = fit_profile({}, cases, "h100-sxm", "synthetic")
    hw_fit = hw.model_copy(update={"calibration": fitted})
    held = [c for c in cases if c.held_out and c.op() is not None]
    assert len(held) >= 5
    errs = [abs(ops.estimate(c.op(), hw_fit) / c.median_s - 1) for c in held]
    assert np.median(errs) < 0.03 and max(errs) < 0.15
    assert fitted.fit_summary["train_median_abs_err"] < 0.03


def test_split_is_deterministic_and_holds_out_whole_shapes():
    a = Case("gemm", {"m": 64, "n": 2816, "k": 2048, "dtype": "bf16"}, 1e-5)
    b = Case("moe_layer", {"hidden": 2048, "ffn": 1024, "experts": 64, "top_k": 8, "tokens": 64, "impl": "loop"}, 1e-3)
    assert a.held_out and b.held_out
    series = [Case("gemm", {"m": m, "n": 28672, "k": 4096, "dtype": "bf16"}, 1e-5) for m in (512, 1, 64, 8, 4096)]
    split = assign_split(series)
    held = sorted(c.params["m"] for c in split if c.held_out)
    assert held == [8, 4096]  # sorted by size 1, 8, 64, 512, 4096: every third from the second
    assert [c.held_out for c in assign_split(series)] == [c.held_out for c in split]


def test_summary_splits_fitted_and_held_out():
    rows = [Row(c, 1.1) for c in assign_split([Case("gemm", {"m": m, "n": 2, "k": 1}, 1.0) for m in range(1, 41)])]
    summary = summarize(rows)
    assert summary["all/fitted"]["median"] == pytest.approx(0.1)
    assert summary["all/held_out"]["n"] + summary["all/fitted"]["n"] == 40


def test_load_measurements_drops_errored_cases(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"schema": 1, "env": {"gpu": "x"}, "cases": [
        {"family": "gemm", "params": {"m": 1, "n": 2, "k": 3, "dtype": "bf16"}, "median_s": 1e-5},
        {"family": "gemm", "params": {"m": 1, "n": 2, "k": 3}, "error": "OOM"}]}))
    env, cases = load_measurements(path)
    assert env == {"gpu": "x"} and len(cases) == 1


# ---- golden comparisons against the committed measurements --------------------------------------
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1] / "validation"


@pytest.mark.parametrize("gpu", ["h200", pytest.param("h100-sxm", marks=pytest.mark.xfail(strict=True, reason=(
    "overall held-out p90 20.1% since the end-to-end cases are moe-gen's predictions (19.9% with ops' own "
    "schedules): moe-gen under-predicts the offloaded layers at 16384-131072 tokens; see the next test")))])
def test_committed_profiles_meet_the_held_out_targets(gpu):
    """Issue 4's bar on each GPU's own fit: held-out median |error| <= 8% and p90 <= 20% over all
    families, end-to-end cases included (per-family p90s are not all met: ANALYSIS.md)."""
    from moesim.calibration.report import validation_report

    s = validation_report(gpu, ROOT, "own")["summary"]
    assert s["all/held_out"]["median"] <= 0.08 and s["all/held_out"]["p90"] <= 0.20


@pytest.mark.parametrize("gpu", ["h100-sxm", "h200"])
def test_end_to_end_cases_on_the_committed_profiles(gpu):
    """The end-to-end cases are moe-gen's predictions (``Case.predict_s``): every decode step within
    10%, and the offloaded layers within 10% where the expert stream is copy-bound (up to 1024
    tokens). At 16384 and 131072 tokens moe-gen under-predicts the layer (by 2.5-44%): its combine
    is an ordinary weighted pass, counted with the router before the experts, where the measured
    layer ends with an ``index_add_`` whose atomics collide (``scatter``, fitted on the fused
    layers); ANALYSIS.md, fourth pass."""
    from moesim.calibration.report import validation_report

    rows = validation_report(gpu, ROOT, "own")["rows"]
    steps = [r for r in rows if r.case.family == "decode_step"]
    layers = [r for r in rows if r.case.family == "offloaded_moe_layer"]
    assert len(steps) == 10 and len(layers) == 8
    assert max(abs(r.error) for r in steps) <= 0.10
    assert max(abs(r.error) for r in layers if r.case.params["tokens"] <= 1024) <= 0.10


def test_h200_from_the_h100_fit_without_refit():
    from moesim.calibration.report import validation_report

    rep = validation_report("h200", ROOT, "borrowed")
    assert rep["profile_from"] == "H100 SXM"
    assert rep["summary"]["all/held_out"]["median"] <= 0.15


#: how far a refit's predictions may be from the committed profile's (relative). The data determines
#: the predictions on the fitted cases, not every free parameter: a half point the data cannot see
#: (H200 ``rows_half``: 3.98e-07 committed, 4.87e-11 refitted under scipy 1.17.1, at its bound) or
#: an extrapolation's flat direction may land elsewhere under another scipy. Measured on the H200
#: file: the same data refitted with scipy's other trust-region method (dogbox) or a 10x smaller
#: finite-difference step moves fitted cases by at most 0.065% and held-out cases by at most 0.31%
#: (median under 5e-6), a 100x looser stopping tolerance by 0.003%; the committed profile itself is
#: reproduced to 3e-6 (max) under scipy 1.17.1. What the check must catch moves them much more: one
#: fitted measurement of any kernel family 2% higher moves some fitted case by 0.5-3.8% (the
#: per-expert loop's host time, fitted under soft-L1 on all the loop layers, is the exception:
#: 0.07% at 5%), the soft-L1 scale 0.1 -> 0.12 moves a fitted case by 0.46% and the median by
#: 0.07%. Hence: fitted cases within 0.1%, held-out cases within 0.5%, the median within 0.01%.
REFIT_FITTED_TOL, REFIT_HELD_OUT_TOL, REFIT_MEDIAN_TOL = 1e-3, 5e-3, 1e-4


def _refit_differences(gpu: str, name: str, perturb=None):
    """(|refit / committed - 1| per measured case, held_out per case) on the file the profile names."""
    from moesim.calibration.report import primary_measurements
    from moesim.calibration.store import _profiles
    from moesim.db import normalize

    env, cases = load_measurements(primary_measurements(ROOT, name))
    fresh = fit_profile(env, perturb(cases) if perturb else cases, gpu, "x")
    committed = _profiles()[normalize(name)]
    hw = moesim.get_hardware(gpu)
    new, old = hw.model_copy(update={"calibration": fresh}), hw.model_copy(update={"calibration": committed})
    rows = [(c.predict_s(new), c.predict_s(old), c.held_out) for c in cases if c.predict_s(old) is not None]
    diff = np.array([abs(a / b - 1) for a, b, _ in rows])
    return diff, np.array([h for _, _, h in rows])


def _refit_agrees(diff: np.ndarray, held: np.ndarray) -> bool:
    return bool(diff[~held].max() <= REFIT_FITTED_TOL and diff[held].max() <= REFIT_HELD_OUT_TOL
                and np.median(diff) <= REFIT_MEDIAN_TOL)


@pytest.mark.parametrize("gpu,name", [("h100-sxm", "H100 SXM"), ("h200", "H200")])
def test_refit_reproduces_the_committed_profile(gpu, name):
    """Refitting from the committed JSON predicts every measured case (fitted, held out, end to end)
    as the committed profile does, within what another scipy could change (REFIT_*_TOL)."""
    diff, held = _refit_differences(gpu, name)
    assert len(diff) > 200 and held.any() and (~held).any()
    assert diff[~held].max() <= REFIT_FITTED_TOL, diff[~held].max()
    assert diff[held].max() <= REFIT_HELD_OUT_TOL, diff[held].max()
    assert np.median(diff) <= REFIT_MEDIAN_TOL, np.median(diff)


def test_refit_check_catches_a_changed_measurement():
    """The tolerances above are tight enough to matter: one fitted GEMM measured 2% slower fails them."""
    from dataclasses import replace

    def slower_gemm(cases):
        i = next(i for i, c in enumerate(cases) if c.family == "gemm" and not c.held_out)
        return [replace(c, median_s=c.median_s * 1.02) if j == i else c for j, c in enumerate(cases)]

    assert not _refit_agrees(*_refit_differences("h200", "H200", slower_gemm))


def test_calibrated_prediction_says_so_and_uncalibrated_gpu_says_default():
    h100 = moesim.predict("mixtral-8x7b", "h100-sxm", "gpu-resident", {"num_requests": 16}, num_gpus=2)
    assert h100.calibrated
    h20 = moesim.predict("mixtral-8x7b", "h20", "gpu-resident", {"num_requests": 16}, num_gpus=2)
    assert h20.calibrated and any("borrowed from" in a for a in h20.assumptions)
    l4 = moesim.predict("olmoe-1b-7b", "l4", "gpu-resident", {"num_requests": 16})
    assert not l4.calibrated and any("conservative profile 'l4-conservative'" in a for a in l4.assumptions)


def test_timing_v3_files_are_read_at_their_idle_queue_times(tmp_path):
    """Harness timing v3 stored single calls after a GPU pre-load as median_s and the idle-queue
    calls (what moesim predicts, and what every other version stores as median_s) as cold_median_s."""
    case = {"family": "gemm", "params": {"m": 1, "n": 2, "k": 3, "dtype": "bf16"}, "median_s": 3e-5,
            "cold_median_s": 2e-5}
    for timing, expected in (("v3: ...", 2e-5), ("v2: ...", 3e-5), ("", 3e-5), ("v5: ...", 3e-5)):
        path = tmp_path / "m.json"
        path.write_text(json.dumps({"schema": 1, "env": {"timing": timing}, "cases": [case]}))
        assert load_measurements(path)[1][0].median_s == expected
    # v5 reads the interleaved single calls where the harness recorded them (short cases)
    path.write_text(json.dumps({"schema": 1, "env": {"timing": "v5: ..."},
                                "cases": [{**case, "interleaved_median_s": 2.5e-5}]}))
    assert load_measurements(path)[1][0].median_s == 2.5e-5


def test_combine_cases_come_from_fused_layers_and_keep_their_split():
    from moesim.calibration.cases import combine_cases

    layer = lambda t, shape: Case("moe_layer", {**shape, "tokens": t, "impl": "fused", "dtype": "bf16"}, 1e-3,
                                  {"combine_s": 1e-4})
    v2 = dict(hidden=2048, ffn=1408, experts=64, top_k=6)
    olmoe = dict(hidden=2048, ffn=1024, experts=64, top_k=8)  # a held-out shape
    cases = assign_split([layer(t, v2) for t in (1, 16, 64)] + [layer(16, olmoe)])
    derived = combine_cases(cases + [Case("moe_layer", {**v2, "tokens": 4, "impl": "loop"}, 1e-3, {"combine_s": 1})])
    assert [(c.params["rows"], c.params["width"]) for c in derived] == [(6, 2048), (96, 2048), (384, 2048),
                                                                        (128, 2048)]
    assert [c.held_out for c in derived] == [c.held_out for c in cases] == [False, True, False, True]
    assert all(isinstance(c.op(), ops.ScatterAdd) for c in derived)


def test_host_free_check_only_where_the_harness_graphed_and_burst():
    """The H100 campaign (timing v1) has no graphed or back-to-back times; the H200 one (v3) has
    them for the kernel families, and the model's GPU-alone time for a large GEMM is near them."""
    from moesim.calibration.report import host_free_check, validation_report

    assert host_free_check(validation_report("h100-sxm", ROOT, "own")) == {}
    rep = validation_report("h200", ROOT, "own")
    check = host_free_check(rep)
    assert set(check) == {"attention", "expert_ffn", "gemm", "mla_decode"}
    assert check["gemm"]["n"] == 52 and 0 <= check["gemm"]["gpu_median"] < check["gemm"]["gpu_p90"]


def test_report_is_about_the_file_the_profile_was_fitted_on_and_shows_the_others(tmp_path):
    """A GPU's report uses the measurement file its profile names (not merely the newest), and lists
    the same profile's error on every other file of that GPU (other leases: the host's share)."""
    import subprocess
    import sys

    from moesim.calibration.report import measurement_files, primary_measurements
    from moesim.db.resolve import get_hardware

    named = ROOT.parent / get_hardware("h200").calibration.measurements
    assert primary_measurements(ROOT, "H200") == named and named.is_file()
    files = measurement_files(ROOT, "H200")
    assert len(files) >= 2
    out = subprocess.run([sys.executable, "-m", "moesim.cli", "validate", "--gpu", "h200", "--no-plots"], cwd=ROOT.parent,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    table = out.stdout.split("the same profile on the other measurement files")[1]
    rows = [line for line in table.splitlines() if line.endswith("%") or line.endswith("(this report)")]
    assert sorted(r.split()[0] for r in rows) == sorted(f.name for f in files)
    assert [r.split()[0] for r in rows if r.endswith("(this report)")] == [named.name]


def test_copy_beside_compute_slowdown_is_measured_and_applied_where_a_copy_runs_beside():
    """s = (t_both - t_gemm) / t_copy from the harness's copy_beside_gemm case; a streamed expert's
    compute of c seconds beside a copy of o seconds takes c + s min(c, o); none without calibration."""
    from moesim.calibration.fit import _copy_compute_slowdown
    from moesim.costs import efficiency_for

    case = Case("copy_beside_gemm", {}, 13.5e-3, {"copy_alone_s": 10e-3, "gemm_alone_s": 13.0e-3})
    assert _copy_compute_slowdown([case]) == pytest.approx(0.05)
    # a copy longer than the GEMMs says nothing about the GEMMs' rate beside it
    assert _copy_compute_slowdown([Case("copy_beside_gemm", {}, 1.0, {"copy_alone_s": 2.0, "gemm_alone_s": 1.0})]) == 0
    hw = moesim.get_hardware("h200")
    prof = hw.calibration.model_copy(update={"copy_compute_slowdown": 0.05})
    eff = efficiency_for(hw.empirical, prof)
    assert eff.beside_copy_s(4e-4, 3e-4) == pytest.approx(4e-4 + 0.05 * 3e-4)
    assert eff.beside_copy_s(2e-4, 3e-4) == pytest.approx(2e-4 * 1.05)
    assert eff.beside_copy_s(4e-4, 0.0) == 4e-4
    assert efficiency_for(hw.empirical, None).beside_copy_s(4e-4, 3e-4) == 4e-4
    # moe-gen's expert stream (what the offloaded-layer cases run): compute-bound (131072 tokens) it
    # slows by about s x copy time per expert but the last; copy-bound (64 tokens) not at all, the
    # copies being the critical path
    from moesim.calibration.end_to_end import offloaded_moe_layer_s

    slow, fast = (hw.model_copy(update={"calibration": prof}),
                  hw.model_copy(update={"calibration": prof.model_copy(update={"copy_compute_slowdown": 0.0})}))
    big, small = ({"hidden": 2048, "ffn": 1408, "experts": 64, "top_k": 6, "tokens": t} for t in (131072, 64))
    copy_s = ops.estimate(ops.Copy(3 * 2048 * 1408 * 2, "h2d_pinned"), fast)
    assert offloaded_moe_layer_s(big, slow) - offloaded_moe_layer_s(big, fast) == pytest.approx(0.05 * 63 * copy_s,
                                                                                                rel=0.15)
    assert offloaded_moe_layer_s(small, slow) == pytest.approx(offloaded_moe_layer_s(small, fast), rel=1e-3)


# ---- the end-to-end cases are moe-gen's predictions --------------------------------------------
STEP = {"model": "deepseek-v2-lite", "layers": 3, "batch": 1024, "kv_len": 512, "micro_batch": 64, "dtype": "bf16"}
LAYER = {"hidden": 4096, "ffn": 14336, "experts": 8, "top_k": 2, "tokens": 1024, "dtype": "bf16"}


def test_end_to_end_cases_are_predicted_by_moe_gen():
    """A decode-step case's prediction is moe-gen's decode pass of the measured configuration (built
    here from the database model: 3 layers, all MoE, 1024 sequences at context 512, micro-batches of
    64, omega 0, shared experts resident), less its LM head; an offloaded-layer case's is moe-gen's
    MoE block of Mixtral's layer alone."""
    from moesim.db.resolve import get_model
    from moesim.modules import Context, Options
    from moesim.specs import ModelSpec, OfflineWorkload
    from moesim.systems.moe_gen import MoEGen

    hw = moesim.get_hardware("h200")
    data = get_model("deepseek-v2-lite").model_dump()
    data["num_layers"], data["moe"]["first_k_dense"] = 3, 0
    ctx = Context(ModelSpec.model_validate(data), hw, OfflineWorkload(num_requests=1024, batch_size=1024), Options())
    system = MoEGen({"resident_shared_experts": True, "max_tasks_per_module": 64, "host_python": False})
    sim = system._simulate(ctx, 1024, 1, 512, 64, 0.0, 0.0)
    head_s = ctx.gpu_s(ctx.head(1024, 1024))
    assert Case("decode_step", STEP, 1.0).predict_s(hw) == pytest.approx(sim.time_s - head_s, rel=1e-12)
    # the MoE part of every layer streams the 64 experts one task each, and the shared experts stay put
    names = [t.name for t in sim.engine.tasks]
    assert sum(n.startswith("L0 experts") and n.endswith("H2D") for n in names) == 64
    copies = [t for t in sim.engine.tasks if t.name.endswith("attention weights H2D")]
    assert copies and all(t.bytes == ctx.attention_weight_bytes for t in copies)

    data = get_model("mixtral-8x7b").model_dump()
    data["num_layers"] = 1
    ctx = Context(ModelSpec.model_validate(data), hw, OfflineWorkload(num_requests=1024), Options())
    layer = MoEGen({"max_tasks_per_module": 8, "host_python": False}).simulate_moe_layer(ctx, 1024)
    assert Case("offloaded_moe_layer", LAYER, 1.0).predict_s(hw) == pytest.approx(layer.makespan_s, rel=1e-12)
    assert Case("offloaded_moe_layer", LAYER, 1.0).op() is None and Case("decode_step", STEP, 1.0).op() is None


def test_end_to_end_predictions_go_through_moe_gen(monkeypatch):
    """Nothing else times them: MoEGen's methods are called with the measured settings, and what
    they return is what the report shows."""
    from moesim.calibration.report import validation_report
    from moesim.systems.moe_gen import MoEGen

    calls = []
    real_pass, real_layer = MoEGen.simulate_pass, MoEGen.simulate_moe_layer

    def spy_pass(self, ctx, *args):
        calls.append(("pass", ctx.model.num_layers, args))
        return real_pass(self, ctx, *args)

    def spy_layer(self, ctx, tokens):
        calls.append(("layer", ctx.model.num_layers, tokens))
        return real_layer(self, ctx, tokens)

    monkeypatch.setattr(MoEGen, "simulate_pass", spy_pass)
    monkeypatch.setattr(MoEGen, "simulate_moe_layer", spy_layer)
    hw = moesim.get_hardware("h200")
    Case("decode_step", STEP, 1.0).predict_s(hw)
    Case("offloaded_moe_layer", LAYER, 1.0).predict_s(hw)
    assert calls == [("pass", 3, (1024, 1, 512, 64, 0.0, 0.0)), ("layer", 1, 1024)]

    # a moe-gen whose MoE block took a second more per layer shows in the report's end-to-end rows
    before = {r.case.key: r.predicted_s for r in validation_report("h200", ROOT, "own")["rows"]}
    real_block = MoEGen._moe_block

    def slow_block(self, ctx, tokens, slots, disk_fraction):
        build, ring_bytes = real_block(self, ctx, tokens, slots, disk_fraction)

        def slower(eng, *args):
            return eng.add("a second more", "gpu", 1.0, [build(eng, *args)])
        return slower, ring_bytes

    monkeypatch.setattr(MoEGen, "_moe_block", slow_block)
    for r in validation_report("h200", ROOT, "own")["rows"]:
        if r.case.family == "decode_step":  # the last layer's second at least (others overlap copies)
            assert r.predicted_s > before[r.case.key] + 1.0
        elif r.case.family == "offloaded_moe_layer":
            assert r.predicted_s == pytest.approx(before[r.case.key] + 1.0, rel=1e-9)
        else:
            assert r.predicted_s == before[r.case.key]
