"""Calibration: the fit recovers known curves from synthetic measurements, the split is fixed,
and profiles change predictions only through the efficiency seam."""

import json

import numpy as np
import pytest

import moesim
from moesim import ops
from moesim.calibration import fit_profile, load_measurements
from moesim.calibration.cases import Case
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
    cases += [Case("launch", {}, 6e-6), Case("host_sync", {}, 3e-5)]
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
    c = Case("gemm", {"m": 64, "n": 4096, "k": 4096, "dtype": "bf16"}, 1e-5)
    assert c.held_out == Case("gemm", dict(c.params), 2e-5).held_out  # depends on parameters only


def test_summary_splits_fitted_and_held_out():
    rows = [Row(Case("gemm", {"m": m, "n": 1, "k": 1}, 1.0), 1.1) for m in range(40)]
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
