"""Uncertainty bands (moesim.uncertainty): hand-computed derivation and coverage, monotone widening,
bands around every figure of every system through the CLI, and coverage on the validation records."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim import uncertainty as u
from moesim.uncertainty import Provenance, Record, Widths

ROOT = Path(__file__).resolve().parents[1]


def prov(**kw):
    base = dict(gpu="G", kernels="own", link="measured", uses_host_link=False, system=None)
    base.update(kw)
    return Provenance(**base)


def rec(ratio, phase="kernel", heldout=True, source="s", key=None, **kw):
    """A record whose prediction is ``ratio`` x the measured 2.0 s."""
    return Record(source=source, key=key or f"{phase}{ratio}{kw}", provenance=prov(**kw), phase=phase,
                  measured=2.0, predicted=2.0 * ratio, heldout=heldout)


def test_coverage_hand_computed():
    w = Widths({"kernels.own": 0.1})
    records = [rec(1.05), rec(1.2), rec(0.95), rec(1.5, heldout=False)]
    # |log 1.05| = 0.049 <= 0.1 in; |log 1.2| = 0.182 out; |log 0.95| = 0.051 in; the fitted record does not count
    assert u.coverage(records, w) == pytest.approx(2 / 3)
    assert u.covered(rec(math.exp(0.1)), w)  # on the edge: inside
    assert not u.covered(rec(math.exp(0.1001)), w)


def test_derive_widths_hand_computed():
    kern = [rec(math.exp(e), key=str(e)) for e in (0.1, -0.2, 0.3, -0.4, 0.5)]
    # p90 of |log error| (0.1 .. 0.5): position 0.9 * 4 = 3.6 -> 0.4 + 0.6 * 0.1 = 0.46
    system = [rec(math.exp(0.5), phase="decode", system="x", key="a"),
              rec(math.exp(-0.3), phase="decode", system="x", key="b")]
    w = u.derive_widths(kern + system, priors={"extrapolation.gpus": 0.4})
    assert w.components["kernels.own"] == pytest.approx(0.46)
    # excess over the kernels' 0.46: sqrt(0.25 - 0.2116) = 0.196, and 0 for |-0.3| < 0.46; p90 of the two
    assert w.components["system.x.decode"] == pytest.approx(0.9 * math.sqrt(0.25 - 0.46 ** 2))
    assert w.components["system.unvalidated.decode"] == pytest.approx(w.components["system.x.decode"])
    assert w.components["extrapolation.gpus"] == 0.4
    assert w.validated["x"] == {"num_gpus": 1, "context_tokens": 0}
    # a record is inside its band when its excess is within the width: b (excess 0) is, a (0.196 > 0.176) not
    assert u.coverage(system, w) == 0.5


def test_assumed_mtp_acceptance_gets_its_own_width_hand_computed():
    """A decode priced with an assumed MTP acceptance (speculation="assumed") informs its own component, the excess
    over every other component of its record (kernels, system), and not the system's width; a decode band of such a
    prediction carries it, a kernel's does not; without any such record the component falls back to a system
    never compared."""
    kern = [rec(math.exp(e), key=str(e)) for e in (0.1, -0.2, 0.3, -0.4, 0.5)]  # kernels.own = 0.46 (above)
    system = [rec(math.exp(0.5), phase="decode", system="x", key="a"),
              rec(math.exp(-0.3), phase="decode", system="x", key="b")]
    mtp = [rec(math.exp(-1.0), phase="decode", system="x", key="m1", speculation="assumed"),
           rec(math.exp(-0.2), phase="decode", system="x", key="m2", speculation="assumed")]
    w = u.derive_widths(kern + system + mtp)
    sys_w = 0.9 * math.sqrt(0.25 - 0.46 ** 2)  # as without the MTP records (test above)
    assert w.components["system.x.decode"] == pytest.approx(sys_w)
    others = math.hypot(0.46, sys_w)  # kernels and system in quadrature
    # excess of m1: sqrt(1 - others^2); of m2: 0 (0.2 < others); p90 of the two
    assert w.components["speculation.assumed"] == pytest.approx(0.9 * math.sqrt(1.0 - others ** 2))
    names = [c[0] for c in u.components(prov(system="x", speculation="assumed"), "decode", w)]
    assert "speculation.assumed" in names
    assert "speculation.assumed" not in [c[0] for c in u.components(prov(speculation="assumed"), "kernel", w)]
    bare = u.derive_widths(kern + system)
    comps = u.components(prov(system="x", speculation="assumed"), "decode", bare)
    assert comps[-1][0] == "system.unvalidated.decode" and "never compared" in comps[-1][2]


def test_band_and_total_band_hand_computed():
    assert u.band(2.0, math.log(1.5)) == pytest.approx((2.0 / 1.5, 3.0))
    # 1 s prefill at x/2, 3 s decode at x/1.1: [0.5 + 3 / 1.1, 2 + 3.3]
    assert u.total_band(1.0, 3.0, math.log(2), math.log(1.1)) == pytest.approx((0.5 + 3 / 1.1, 5.3))
    b = u.figure_bands({"tpot_s": 0.1, "decode_tok_s": 50.0, "total_time_s": 4.0, "throughput_tok_s": 10.0},
                       1.0, 3.0, {"prefill": math.log(2), "decode": math.log(1.1)})
    assert b["tpot_s_low"] == pytest.approx(0.1 / 1.1) and b["tpot_s_high"] == pytest.approx(0.11)
    assert b["decode_tok_s_low"] == pytest.approx(50 / 1.1) and b["decode_tok_s_high"] == pytest.approx(55.0)
    assert b["total_time_s_high"] == pytest.approx(5.3)
    assert b["throughput_tok_s_low"] == pytest.approx(10.0 * 4.0 / 5.3)  # a rate: the inverse of its time's band


@settings(max_examples=60, deadline=None)
@given(kernels=st.sampled_from(u.KERNEL_STATES), link=st.sampled_from(u.LINK_STATES), uses=st.booleans(),
       system=st.sampled_from(["moe-gen", "vllm", "llama-cpp", "never-validated"]),
       gpus=st.integers(1, 16), context=st.integers(1, 200_000), phase=st.sampled_from(u.PHASES))
def test_band_widens_when_a_component_becomes_uncalibrated(kernels, link, uses, system, gpus, context, phase):
    w = u.widths()
    p = Provenance(gpu="G", kernels=kernels, link=link, uses_host_link=uses, system=system, num_gpus=gpus,
                   context_tokens=context)
    width = u.half_width(u.components(p, phase, w))
    worse = [Provenance(**{**p.__dict__, "kernels": k}) for k in u.KERNEL_STATES[u.KERNEL_STATES.index(kernels):]]
    worse += [Provenance(**{**p.__dict__, "link": s}) for s in u.LINK_STATES[u.LINK_STATES.index(link):]]
    worse += [Provenance(**{**p.__dict__, "uses_host_link": True}),
              Provenance(**{**p.__dict__, "num_gpus": gpus * 2}),
              Provenance(**{**p.__dict__, "context_tokens": context * 2})]
    for q in worse:
        assert u.half_width(u.components(q, phase, w)) >= width - 1e-12


@pytest.mark.parametrize("model,hw,system", [("mixtral-8x7b", "rtx4090", "auto"),
                                             ("deepseek-v2-lite", "h200", "vllm"),
                                             ("qwen3-30b-a3b", "h100", "gpu-resident")])
def test_every_figure_inside_its_band(model, hw, system):
    import moesim

    p = moesim.predict(model, hw, system, {"num_requests": 64, "prompt_tokens": 256, "gen_tokens": 32})
    for name in u.FIGURES:
        v, lo, hi = getattr(p, name), getattr(p, f"{name}_low"), getattr(p, f"{name}_high")
        assert 0 < lo < v < hi and math.isfinite(hi), (name, lo, v, hi)
    assert any(n.startswith("uncertainty of decode figures") for n in p.assumptions)


def test_uncalibrated_gpu_band_is_wider_than_calibrated():
    import moesim

    work = {"num_requests": 64, "prompt_tokens": 256, "gen_tokens": 32}
    cal = moesim.predict("mixtral-8x7b", "h200", "gpu-resident", work, num_gpus=2)
    unc = moesim.predict("mixtral-8x7b", "a100-80gb-sxm", "gpu-resident", work, num_gpus=2)
    assert cal.uncertainty["provenance"]["kernels"] == "own"
    assert unc.uncertainty["provenance"]["kernels"] == "uncalibrated"
    assert unc.tpot_s_high / unc.tpot_s > cal.tpot_s_high / cal.tpot_s


def _cli(*args):
    return subprocess.Popen([sys.executable, "-m", "moesim.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_json_bands_finite_for_every_system():
    from moesim.systems import SYSTEMS

    small = ("--requests", "16", "--prompt", "128", "--gen", "8", "--json")
    runs = {}
    for hw in ("rtx4090", "h200"):  # an offloading host, then a GPU that holds the model for those that need one
        procs = {name: _cli("predict", "--model", "mixtral-8x7b", "--hw", hw, "--system", name, *small)
                 for name in SYSTEMS if name not in runs}
        for name, p in procs.items():
            out, err = p.communicate(timeout=120)
            if p.returncode == 0:
                runs[name] = json.loads(out)
            else:
                assert "Traceback" not in err, err
    assert set(runs) == set(SYSTEMS), f"no hardware ran {set(SYSTEMS) - set(runs)}"
    for name, data in runs.items():
        for fig in u.FIGURES:
            lo, v, hi = data[f"{fig}_low"], data[fig], data[f"{fig}_high"]
            assert all(math.isfinite(x) for x in (lo, v, hi)) and 0 < lo <= v <= hi, (name, fig)
        assert set(data["uncertainty"]["log_half_width"]) == set(u.PHASES)


def test_online_result_carries_bands():
    p = _cli("serve", "--model", "mixtral-8x7b", "--hw", "h200", "--rate", "4", "--requests", "20", "--json")
    out, err, = p.communicate(timeout=120)
    assert p.returncode == 0, err
    data = json.loads(out)
    for fig in ("ttft_s", "tpot_s", "e2e_s"):
        for q in ("p50", "p90", "p99"):
            assert 0 < data[f"{fig}_low"][q] <= data[fig][q] <= data[f"{fig}_high"][q]
    assert 0 < data["throughput_tok_s_low"] <= data["throughput_tok_s"] <= data["throughput_tok_s_high"]


@pytest.fixture(scope="module")
def records():
    from moesim.calibration.sources import all_records

    return [r for r in all_records(ROOT / "validation") if r.heldout]


def _priors() -> dict[str, float]:
    """The bands file's ``priors:`` block, read by validation/derive_bands.py's own rule."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("derive_bands", ROOT / "validation" / "derive_bands.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.committed_priors()


def test_cross_fitted_coverage_at_least_80_percent_per_source(records):
    result = u.crossfit(records, _priors())
    assert {"moe-gen paper (C2: RTX A5000)", "torchbench h200 own kernels"} <= set(result)
    for source, v in result.items():
        assert v["scored"] >= 0.9 * v["n"], source
        assert v["coverage"] >= 0.8, f"{source}: coverage {v['coverage']:.1%}"


def test_committed_widths_match_their_derivation(records):
    """The YAML is what validation/derive_bands.py derives from today's sources (rerun it when they move)."""
    committed = u.widths()
    derived = u.derive_widths(records, _priors())
    assert set(derived.components) == set(committed.components)
    for name, value in derived.components.items():
        assert committed.components[name] == pytest.approx(value, abs=0.02), \
            f"{name}: committed {committed.components[name]:.3f}, derived {value:.3f}: run validation/derive_bands.py"


def test_extrapolation_outside_the_validated_range():
    w = Widths({"kernels.own": 0.1, "system.x.decode": 0.2, "extrapolation.batch": 0.3, "extrapolation.model": 0.4,
                "extrapolation.gpus": 0.5, "extrapolation.context": 0.6},
               validated={"x": {"num_gpus": 1, "context_tokens": 1000, "batch_min": 8, "batch_max": 64,
                                "total_params_min": 1e10, "total_params_max": 1e11}})
    inside = prov(system="x", batch=8, total_params=1e11, context_tokens=1000)
    assert u.half_width(u.components(inside, "decode", w)) == pytest.approx(math.hypot(0.1, 0.2))
    for change, extra in (({"batch": 4}, 0.3), ({"batch": 65}, 0.3), ({"total_params": 2e11}, 0.4),
                          ({"total_params": 5e9}, 0.4), ({"num_gpus": 2}, 0.5), ({"context_tokens": 1001}, 0.6)):
        p = Provenance(**{**inside.__dict__, **change})
        assert u.half_width(u.components(p, "decode", w)) == pytest.approx(math.sqrt(0.01 + 0.04 + extra ** 2)), change
