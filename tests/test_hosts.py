"""Hosts: measured host-link figures, copy paths, per-GPU conservative profiles, GPU slots of PCIe hosts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import moesim
from moesim import costs, db
from moesim.errors import MoesimError, SpecError
from moesim.modules import Context, Options
from moesim.specs import OfflineWorkload, PlatformSpec

ROOT = Path(__file__).parent.parent


# ---- copy paths, hand-computed ------------------------------------------------------------------------------
def _gen4():
    return db.links().get("pcie-gen4-x16")  # 25 GB/s pinned, 10 GB/s pageable, 5 us latency each way


def test_pinned_and_pageable_copy_times_by_hand():
    link, n = _gen4(), 1e9
    assert costs.path_copy_time_s(n, "pinned", "h2d", link) == pytest.approx(5e-6 + 1e9 / 25e9, rel=1e-12)
    assert costs.path_copy_time_s(n, "pageable", "d2h", link) == pytest.approx(5e-6 + 1e9 / 10e9, rel=1e-12)
    assert costs.path_copy_time_s(n, "pinned", "h2d", link, copies=4) == pytest.approx(4 * 5e-6 + 0.04, rel=1e-12)
    assert costs.path_copy_time_s(0.0, "staged", "h2d", link) == 0.0


def test_per_parameter_copies_pay_latency_and_a_sync_each():
    # 300 parameters of 1 MB each, pageable, 20 us sync: 300 (5 + 20) us + 0.3 GB / 10 GB/s
    t = costs.path_copy_time_s(300e6, "per_parameter", "h2d", _gen4(), copies=300, per_copy_sync_s=20e-6)
    assert t == pytest.approx(300 * 25e-6 + 0.03, rel=1e-12)


def test_staged_double_buffer_by_hand():
    link = _gen4()
    # host memcpy 12.5 GB/s, 4 chunks of 0.25 GB: fill the first, then the slower of fill and DMA per chunk,
    # then the last DMA: 4 x 5 us + 0.25/12.5 + 3 x 0.25/12.5 + 0.25/25
    t = costs.path_copy_time_s(1e9, "staged", "h2d", link, copies=4, host_copy_bytes_per_s=12.5e9)
    assert t == pytest.approx(20e-6 + 0.02 + 3 * 0.02 + 0.01, rel=1e-12)
    # host memcpy faster than the link: the DMA paces it after the first fill
    t = costs.path_copy_time_s(1e9, "staged", "h2d", link, copies=4, host_copy_bytes_per_s=100e9)
    assert t == pytest.approx(20e-6 + 0.0025 + 3 * 0.01 + 0.01, rel=1e-12)
    # one chunk: fill, then DMA, nothing overlaps
    t = costs.path_copy_time_s(1e9, "staged", "h2d", link, copies=1, host_copy_bytes_per_s=100e9)
    assert t == pytest.approx(5e-6 + 0.01 + 0.04, rel=1e-12)
    with pytest.raises(ValueError, match="memcpy bandwidth"):
        costs.path_copy_time_s(1e9, "staged", "h2d", link)
    with pytest.raises(ValueError, match="copy path 'dma'"):
        costs.path_copy_time_s(1e9, "dma", "h2d", link)  # type: ignore[arg-type]


def _ctx(hw, **kw):
    return Context(moesim.get_model("mixtral-8x7b"), moesim.get_hardware(hw, **kw), OfflineWorkload(num_requests=1),
                   Options())


def test_context_copy_s_keeps_h2d_s_meaning_pinned_and_uses_the_host():
    ctx = _ctx("c2")
    assert ctx.copy_s(3e9) == ctx.h2d_s(3e9)
    assert ctx.copy_s(3e9, "pinned", "d2h") == ctx.d2h_s(3e9)
    p = ctx.platform
    h = p.host_memory_bandwidth_bytes_per_s * p.empirical.cpu_memory_bandwidth_efficiency / 2
    assert costs.host_copy_bytes_per_s(p) == pytest.approx(h)
    assert ctx.copy_s(1e9, "staged", copies=8) == pytest.approx(
        costs.path_copy_time_s(1e9, "staged", "h2d", p.host_link, 8, h))
    assert ctx.copy_s(1e9, "per_parameter", copies=100) == pytest.approx(
        100 * (p.host_link.latency_s + ctx.eff.host_sync_s) + 1e9 / p.host_link.h2d_pageable_bytes_per_s)
    # slowest to fastest for the same bytes on a host whose memcpy outruns its link
    assert ctx.copy_s(1e9, "pinned") < ctx.copy_s(1e9, "staged", copies=16) < ctx.copy_s(1e9, "pageable")


@given(factor=st.floats(1.0, 16.0), path=st.sampled_from(costs.COPY_PATHS), copies=st.integers(1, 512),
       direction=st.sampled_from(["h2d", "d2h"]), nbytes=st.floats(1.0, 1e12))
@settings(max_examples=60, deadline=None)
def test_a_faster_link_never_makes_a_copy_slower(factor, path, copies, direction, nbytes):
    link = _gen4()
    fast = link.model_copy(update={k: getattr(link, k) * factor for k in
                                   ("h2d_pinned_bytes_per_s", "d2h_pinned_bytes_per_s", "h2d_pageable_bytes_per_s",
                                    "d2h_pageable_bytes_per_s")})
    slow_t = costs.path_copy_time_s(nbytes, path, direction, link, copies, 20e9, 2e-5)
    fast_t = costs.path_copy_time_s(nbytes, path, direction, fast, copies, 20e9, 2e-5)
    assert fast_t <= slow_t * (1 + 1e-12)


@pytest.mark.parametrize("system", ["moe-gen", "deepspeed", "flexgen", "llama-cpp"])
def test_a_faster_host_link_never_slows_an_offloading_system(system):
    work = {"num_requests": 64, "prompt_tokens": 256, "gen_tokens": 16}
    base = moesim.predict("mixtral-8x7b", "c2", system, work)
    hw = moesim.get_hardware("c2")
    better = moesim.predict("mixtral-8x7b", hw.scaled(pcie=2.0), system, work)
    assert better.throughput_tok_s >= base.throughput_tok_s * (1 - 1e-9)


# ---- measured host links ------------------------------------------------------------------------------------
def test_measured_host_link_replaces_the_generation_figures_and_says_where_it_was_measured():
    t4 = moesim.get_hardware("t4")
    assert t4.host_kind == "cloud_vm" and t4.host_link_source and "bandwidthTest" in t4.host_link_source
    assert t4.host_link.h2d_pinned_bytes_per_s == 9.7e9 and t4.host_link.d2h_pinned_bytes_per_s == 11.1e9
    gen3 = db.links().get("pcie-gen3-x16")  # pageable not measured there: measured pinned x the entry's ratio
    assert t4.host_link.h2d_pageable_bytes_per_s == pytest.approx(9.7e9 * gen3.h2d_pageable_bytes_per_s /
                                                                  gen3.h2d_pinned_bytes_per_s)
    assert any("Alibaba Cloud ECS" in a and "h2d pageable = measured pinned x 0.40" in a for a in t4.assumptions)
    assert costs.achieved_link(t4) is t4.host_link
    ctx = _ctx("t4")
    assert ctx.h2d_s(9.7e9) == pytest.approx(1.0 + gen3.latency_s)


def test_swapping_the_link_drops_the_measured_figures():
    t4 = moesim.get_hardware("t4", pcie="gen4")
    assert t4.host_link_source is None and t4.host_link.h2d_pinned_bytes_per_s == 25e9


def test_every_platform_says_what_kind_of_host_it_is():
    for name, spec in db.platforms().entries.items():
        assert spec.host_kind in ("cloud_vm", "bare_metal"), name
        if spec.host_link_measured is not None:
            assert spec.host_link_measured.source and spec.host_link_measured.measured_on, name


def test_a_measured_link_above_the_links_theory_is_refused():
    spec = db.platforms().get("t4-server")
    bad = spec.model_copy(update={"host_link_measured": spec.host_link_measured.model_copy(
        update={"h2d_pinned_bytes_per_s": 20e9})})
    with pytest.raises(MoesimError, match="exceeds pcie-gen3-x16's theoretical 15.8 GB/s"):
        moesim.get_hardware(bad)


# ---- conservative per-GPU profiles ------------------------------------------------------------------------------
def test_each_uncalibrated_gpu_gets_its_own_profile_and_the_rest_the_default():
    for gpu in ("T4", "L4", "RTX A5000", "RTX A6000", "RTX 3090", "RTX 4090", "RTX 5090", "A100 40GB PCIe",
                "A100 80GB PCIe", "A100 40GB SXM", "A100 80GB SXM", "H100 PCIe", "H20", "L40S", "B200", "MI300X"):
        prof = db.efficiency_profile_for(gpu)
        assert prof.gpu == gpu and not prof.calibrated and prof.sources, gpu
    assert db.efficiency_profile_for("H200") is db.default_profile()  # calibrated GPUs have no such file
    t4 = db.efficiency_profile_for("T4")
    assert (t4.gemm_compute_efficiency, t4.sustained_clock_fraction) == (0.64, 0.57)
    assert t4.kernel_launch_s == db.default_profile().kernel_launch_s  # fields it does not set: the default's


def test_the_profile_is_used_and_named():
    p = moesim.predict("olmoe-1b-7b", "l4", "gpu-resident", {"num_requests": 4, "gen_tokens": 4})
    assert not p.calibrated
    assert any("conservative profile 'l4-conservative'" in a for a in p.assumptions)


def test_power_limited_clock_stretches_tensor_core_work_only():
    ctx = _ctx("t4")
    prof = ctx.platform.empirical
    gemm = costs.OpCost(family="gemm", flop=65e12, bytes=0.0, dtype="fp16", rows=4096)
    # 65 TFLOP on a 65 TFLOPS peak at 0.64 efficiency and 0.57 of the burst clock
    assert costs.gpu_time_s(gemm, ctx.platform.gpu, ctx.eff) == pytest.approx(
        1.0 / (prof.gemm_compute_efficiency * prof.sustained_clock_fraction) + ctx.eff.issue_s(gemm, gemm.launches),
        rel=1e-9)
    vector = costs.OpCost(family="vector", flop=1e12, bytes=0.0, dtype="fp16")
    assert ctx.eff.sustained_compute_s(vector, 2.0) == 2.0


def test_a_profile_file_for_another_gpu_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "hardware_db" / "efficiency"
    folder.mkdir(parents=True)
    (folder / "default.yaml").write_text((ROOT / "hardware_db/efficiency/default.yaml").read_text())
    (folder / "t4.yaml").write_text("name: x\ngpu: L4\ngemm_compute_efficiency: 0.5\n")
    monkeypatch.setattr(db, "data_root", lambda kind: tmp_path / kind)
    db.efficiency_profile_for.cache_clear()
    db.default_profile.cache_clear()
    try:
        with pytest.raises(SpecError, match="names 'L4', but the file is the profile of 'T4'"):
            db.efficiency_profile_for("T4")
    finally:
        db.efficiency_profile_for.cache_clear()
        db.default_profile.cache_clear()


# ---- GPU slots of PCIe hosts ----------------------------------------------------------------------------------
def test_a_pcie_host_takes_the_gpus_it_has_slots_for():
    with pytest.raises(MoesimError, match=r"T4 server is a PCIe host; it takes 4 GPUs \(MoE-Lightning .*\); "
                                          r"--gpus 5 would need 2 such hosts"):
        moesim.get_hardware("t4-server", num_gpus=5)
    assert moesim.get_hardware("t4-server", num_gpus=4).num_gpus == 4
    assert moesim.get_hardware("t4", num_gpus=4).max_gpus == 4


def test_a_host_without_max_gpus_follows_the_stated_rule():
    spec = db.platforms().get("c2").model_copy(update={"max_gpus": None, "max_gpus_source": None})
    assert moesim.get_hardware(spec, num_gpus=8).num_gpus == 8
    with pytest.raises(MoesimError, match="states no max_gpus, and a PCIe host is taken to hold at most 8 GPUs; "
                                          "--gpus 9 would need 2"):
        moesim.get_hardware(spec, num_gpus=9)


def test_max_gpus_needs_a_source_and_room_for_the_entrys_gpus():
    data = db.platforms().get("c2").model_dump()
    with pytest.raises(ValueError, match="max_gpus needs max_gpus_source"):
        PlatformSpec.model_validate({**data, "max_gpus": 2, "max_gpus_source": None})
    with pytest.raises(ValueError, match=r"max_gpus \(1\) is below num_gpus \(2\)"):
        PlatformSpec.model_validate({**data, "num_gpus": 2, "max_gpus": 1})


def test_cli_refuses_a_thousand_gpus_on_a_workstation():
    proc = subprocess.run([sys.executable, "-m", "moesim", "predict", "--model", "mixtral-8x7b", "--hw", "rtx4090",
                           "--system", "llama-cpp", "--gpus", "1000"], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert ("RTX 4090 workstation is a PCIe host; it takes 4 GPUs (assumed: a workstation board with four "
            "double-width x16 slots, no specific board named); --gpus 1000 would need 250 such hosts") in proc.stderr
    assert proc.stderr.count("\n") == 1
