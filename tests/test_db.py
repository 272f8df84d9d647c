"""The databases: every entry loads, cites sources, cross-references resolve; names are forgiving."""

import re

import pytest

import moesim
from moesim import db
from moesim.errors import SpecError, UnknownNameError


def test_every_entry_loads_and_cross_references_resolve():
    counts = db.check_all()
    assert counts["models"] >= 2 and counts["gpus"] >= 1 and counts["platforms"] >= 1


@pytest.mark.parametrize("table", [db.models, db.gpus, db.cpus, db.links, db.platforms, db.systems])
def test_every_entry_names_its_sources(table):
    for name, spec in table().entries.items():
        assert spec.sources, f"{name} ({table().files[name]}) cites no source"


def test_every_gpu_has_a_default_host():
    from moesim.db.resolve import default_platform_for

    for name, gpu in db.gpus().entries.items():
        assert default_platform_for(gpu) is not None, f"{name} has no default host platform"


def test_no_with_sparsity_figures_bf16_below_fp8():
    for name, gpu in db.gpus().entries.items():
        peaks = gpu.peak_flop_per_s
        if "fp8" in peaks and "bf16" in peaks:
            assert peaks["fp8"] <= 2.05 * peaks["bf16"], name  # L40S datasheet: 733 vs 362.05


@pytest.mark.parametrize("spelling", ["deepseek-r1", "DeepSeek-R1", "deepseek_r1", "DEEPSEEK R1", "r1"])
def test_model_names_are_case_and_punctuation_insensitive(spelling):
    assert moesim.get_model(spelling).name == "DeepSeek-R1"


@pytest.mark.parametrize("spelling", ["rtx4090", "RTX 4090", "rtx-4090", "4090"])
def test_gpu_names_resolve_to_default_host(spelling):
    hw = moesim.get_hardware(spelling)
    assert hw.gpu.name == "RTX 4090" and hw.num_gpus == 1


def test_unknown_name_suggests_closest():
    with pytest.raises(UnknownNameError) as err:
        moesim.get_model("mixtrl-8x7b")
    assert "Mixtral-8x7B" in err.value.suggestions


def test_composed_platform_overrides():
    hw = moesim.get_hardware("rtx4090", num_gpus=2, host_memory_bytes=256e9)
    assert hw.num_gpus == 2 and hw.host_memory_bytes == 256e9


def test_malformed_yaml_names_file_and_field(tmp_path):
    from moesim.specs import AcceleratorSpec

    src = (db.data_root("hardware_db") / "gpus" / "rtx-4090.yaml").read_text()
    bad = tmp_path / "gpu.yaml"
    bad.write_text(re.sub(r"(?m)^memory_bytes: .*$", "memory_bytes: -1", src))
    with pytest.raises(SpecError) as err:
        db.load_spec_file(AcceleratorSpec, bad)
    assert str(bad) in str(err.value) and "memory_bytes" in str(err.value)


def test_what_if_copy_is_one_line():
    hw = moesim.get_hardware("rtx4090")
    faster = hw.model_copy(update={"host_link": hw.host_link.model_copy(update={"h2d_pinned_bytes_per_s": 50e9})})
    assert faster.host_link.h2d_pinned_bytes_per_s == 50e9 and hw.host_link.h2d_pinned_bytes_per_s != 50e9
