"""The collective latency/bandwidth fit (moesim.calibration.collectives) on SYNTHETIC measurement files
generated here from known alpha and beta: it must recover them. Nothing here is a measurement."""

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.calibration import collectives as C
from moesim.specs.collectives import algorithm_factor

#: the law the synthetic data follow: alpha(n) = a0 + a1 (n - 1) seconds, bus bandwidth beta bytes/s
TRUTH = {"all_reduce": (8e-6, 2.5e-6, 360e9), "all_gather": (6e-6, 1.0e-6, 330e9),
         "reduce_scatter": (6e-6, 1.2e-6, 320e9), "all_to_all": (10e-6, 3.0e-6, 300e9),
         "all_to_all_uneven": (12e-6, 3.0e-6, 280e9)}
SIZES = [1024 * 2 ** i for i in range(21)]


def true_time(fam, nbytes, n):
    a0, a1, beta = TRUTH[fam]
    return a0 + a1 * (n - 1) + algorithm_factor(fam, n) * nbytes / beta


def synthetic_campaign(path, n, noise=0.01, seed=0):
    """A file shaped like multi_gpu.py's output, times from TRUTH times (1 + noise * N(0, 1)); graph
    times 0.8 x the latency. Labelled synthetic."""
    rng = np.random.default_rng(seed + n)
    cases = []
    for fam in TRUTH:
        for b in SIZES:
            t = true_time(fam, b, n)
            g = t - 0.2 * (TRUTH[fam][0] + TRUTH[fam][1] * (n - 1))
            cases.append({"family": fam, "params": {"nbytes": b, "dtype": "bf16"}, "gpus": n,
                          "median_s": t * (1 + noise * rng.standard_normal()),
                          "graph_s": g * (1 + noise * rng.standard_normal()),
                          "extra": {"max_rank_bytes": b}})
    for tokens, recv in ((4, [8.0] * n), (64, [128.0 * (1 + (r == 0)) for r in range(n)])):
        rows = max(tokens * 2, *recv)
        data = true_time("all_to_all_uneven", rows * 512 * 2, n)
        cases.append({"family": "ep_moe", "params": {"tokens": tokens, "top_k": 2, "hidden": 512, "experts": 16,
                                                     "routing": "zipf", "dtype": "bf16"}, "gpus": n,
                      "median_s": 1e-3, "dispatch_s": true_time("all_to_all", 16 * 8, n) + data, "combine_s": data,
                      "extra": {"received_rows_per_rank": recv}})
    cases.append({"family": "all_reduce", "params": {"nbytes": 7}, "error": "OutOfMemoryError"})
    path.write_text(json.dumps({"schema": 1, "harness": "multi_gpu", "synthetic": True,
                                "env": {"world_size": n, "synthetic": True, "gpus": ["SYNTHETIC"] * n,
                                        "env_vars": {"NCCL_NVLS_ENABLE": "0"}}, "cases": cases}))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("synthetic")
    return [synthetic_campaign(d / f"synthetic-x{n}.json", n) for n in (2, 4, 8)]


@pytest.fixture(scope="module")
def profile(files):
    return C.fit_profile(files, "HGX H200")


def test_per_count_fits_recover_alpha_and_beta(profile):
    assert profile.synthetic
    for fam, (a0, a1, beta) in TRUTH.items():
        for n in (2, 4, 8):
            f = profile.timings["eager"][fam].by_gpus[n]
            assert f.alpha_s == pytest.approx(a0 + a1 * (n - 1), rel=0.05), (fam, n)
            assert f.bus_bytes_per_s == pytest.approx(beta, rel=0.02), (fam, n)
            # 1% noise: held-out error of the order of the noise, scored on 7 of 21 sizes
            assert f.held_out.cases == 7 and f.fit.cases == 14
            assert f.held_out.median_rel_err < 0.02 and f.held_out.p90_rel_err < 0.04
        g = profile.timings["graph"][fam].by_gpus[8]
        assert g.alpha_s == pytest.approx(0.8 * (a0 + 7 * a1), rel=0.05)


def test_cross_count_model_fitted_on_2_and_8_predicts_4(profile):
    for fam, (a0, a1, beta) in TRUTH.items():
        c = profile.timings["eager"][fam].across_counts
        assert c.fit_gpu_counts == [2, 8] and c.held_out_gpu_counts == [4]
        assert c.alpha_s == pytest.approx(a0, rel=0.15, abs=5e-7)
        assert c.alpha_per_peer_s == pytest.approx(a1, rel=0.1)
        assert c.bus_bytes_per_s == pytest.approx(beta, rel=0.02)
        assert c.held_out.cases == 21 and c.held_out.median_rel_err < 0.02


def test_profile_hook_times_measured_and_unmeasured_counts(profile):
    a0, a1, beta = TRUTH["all_reduce"]
    assert profile.time_s("all_reduce", 2**30, 8) == pytest.approx(true_time("all_reduce", 2**30, 8), rel=0.03)
    # 16 GPUs were never measured: the cross-count law
    assert profile.time_s("all_reduce", 1e6, 16) == pytest.approx(a0 + 15 * a1 + 2 * 15 / 16 * 1e6 / beta, rel=0.1)
    assert profile.time_s("all_reduce", 1e6, 1) == 0.0
    assert profile.time_s("ep_moe", 1e6, 8) is None


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(1e-6, 1.0), min_size=9, max_size=9))
def test_split_reads_sizes_never_times(times):
    pts = [C.Point("eager", "all_reduce", 8, float(1024 * 4 ** i), t) for i, t in enumerate(times)]
    held = [p.nbytes for p in C.assign_split(pts) if p.held_out_size]
    assert held == [1024 * 4 ** i for i in (1, 4, 7)]


def test_synthetic_profile_never_lands_in_hardware_db(profile, tmp_path):
    with pytest.raises(C.CollectiveDataError):
        C.save(profile, C.profile_path("HGX H200"))
    assert not C.profile_path("HGX H200").exists() or not C.load_profile(C.profile_path("HGX H200")).synthetic
    out = tmp_path / "h.yaml"
    C.save(profile, out)
    back = C.load_profile(out)
    assert back == profile and "SYNTHETIC" in C.report(back)


def test_cli_fits_files_and_refuses_bad_input(files, tmp_path):
    out = tmp_path / "p.yaml"
    ok = subprocess.run([sys.executable, "-m", "moesim.calibration.collectives", *map(str, files), "--platform", "x",
                         "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "held out" in ok.stdout and out.exists()
    bad = tmp_path / "bad.json"
    bad.write_text('{"cases": []}')
    r = subprocess.run([sys.executable, "-m", "moesim.calibration.collectives", str(bad), "--platform", "x",
                        "--dry-run"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not a multi_gpu.py measurement file" in r.stderr and "Traceback" not in r.stderr


def test_ep_communication_scored_from_the_all_to_all_fits(profile, files):
    ep = C.score_ep(profile, files)
    assert set(ep) == {"dispatch:zipf", "combine:zipf"}
    assert ep["dispatch:zipf"].cases == 6 and ep["combine:zipf"].median_rel_err < 0.03


def test_a_measured_profile_replaces_the_all_reduce_model_of_tp_systems(profile, monkeypatch):
    """The hook (issue 15): once hardware_db/collectives/<platform>.yaml exists, eager TP systems price their
    all-reduce from its eager fit and the CUDA-graph engines from its graph fit; without one, their own models."""
    import moesim.db as db
    from moesim.predict import Scenario, resolve
    from moesim.modules import Context
    from moesim.systems.shared import engine_step, tensor_parallel

    r = resolve(Scenario(model="mixtral-8x7b", hardware="hgx-h200", num_gpus=4))
    ctx = Context(r.model, r.platform, r.scenario.offline_workload(), r.options)
    tokens = 64
    nbytes = ctx.hidden_state_bytes(tokens)
    own = tensor_parallel.allreduce_s(ctx, tokens)
    monkeypatch.setattr(db, "collective_profile", lambda name: profile if name == ctx.platform.name else None)
    assert tensor_parallel.allreduce_s(ctx, tokens) == pytest.approx(profile.time_s("all_reduce", nbytes, 4, "eager"))
    assert engine_step.engine_allreduce_s(ctx, tokens, "vllm") == pytest.approx(
        profile.time_s("all_reduce", nbytes, 4, "graph"))
    assert tensor_parallel.allreduce_s(ctx, tokens) != pytest.approx(own)
