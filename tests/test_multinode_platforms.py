"""Issue 14 item 3: multi-node platforms, the GPUs they need (B300, GB200, GB300, H800) with dense fp4 peaks, the
scale-out networks between nodes, and --nodes N."""

import subprocess
import sys
from types import SimpleNamespace

import pytest

import moesim
from moesim import db
from moesim.costs.quant import compute_dtype
from moesim.db.resolve import get_hardware
from moesim.errors import MoesimError
from moesim.scenario import fields
from moesim.systems import SYSTEMS
from moesim.systems.base import MultiNodeError

NEW_GPUS = ["B300", "GB200", "GB300", "H800 SXM"]
NEW_PLATFORMS = ["HGX B300", "HGX H800", "GB200 NVL72", "GB300 NVL72"]
TB = 1e12


@pytest.mark.parametrize("name", NEW_GPUS)
def test_new_gpu_entries_load_and_source_every_peak(name):
    gpu = db.gpus().get(name)
    assert gpu.sources and all(s.title.strip() for s in gpu.sources)
    for dtype in gpu.peak_flop_per_s:
        assert f"peak_flop_per_s.{dtype}" in gpu.derived, f"{name}: say where the {dtype} peak comes from"
    assert "memory_bytes" in gpu.derived and "nvlink_bytes_per_s" in gpu.derived


@pytest.mark.parametrize("name", NEW_PLATFORMS)
def test_new_platform_entries_load_cite_and_resolve(name):
    spec = db.platforms().get(name)
    assert spec.sources and spec.network and spec.nics_per_node
    p = get_hardware(name)
    assert p.num_nodes == 1 and p.total_gpus == spec.num_gpus and p.scale_out is not None


@pytest.mark.parametrize("name", ["H100 SXM", "H200", "H20", "H800 SXM", "B200", "B300", "GB200", "GB300"])
def test_fp8_is_twice_bf16_dense(name):
    # every NVIDIA datasheet of these parts gives FP8 = 2 x FP16/BF16 (dense and sparse alike)
    peaks = db.gpus().get(name).peak_flop_per_s
    assert peaks["fp8"] == pytest.approx(2 * peaks["bf16"], rel=1e-3)


@pytest.mark.parametrize("name", ["B200", "GB200"])
def test_fp4_is_twice_fp8_on_blackwell(name):
    peaks = db.gpus().get(name).peak_flop_per_s
    assert peaks["fp4"] == pytest.approx(2 * peaks["fp8"], rel=1e-6)


def test_blackwell_ultra_fp4_is_boosted_beyond_twice_fp8():
    # Blackwell Ultra: HGX B300 105 PF dense FP4 / 8 = 13.125 PF; GB300 NVL72 1,080 PF dense / 72 = 15 PF
    b300, gb300 = db.gpus().get("B300").peak_flop_per_s, db.gpus().get("GB300").peak_flop_per_s
    assert b300["fp4"] == pytest.approx(105e15 / 8) and gb300["fp4"] == pytest.approx(1080e15 / 72)
    assert 2 < b300["fp4"] / b300["fp8"] < 3.01 and gb300["fp4"] / gb300["fp8"] == pytest.approx(3.0)


def test_dense_peaks_are_dense_and_ordered():
    # sparse figures halved: GB200 NVL72 360 PF bf16 with sparsity / 72 / 2; HGX B300 36 PF / 8 / 2
    assert db.gpus().get("GB200").peak_flop_per_s["bf16"] == pytest.approx(360e15 / 72 / 2)
    assert db.gpus().get("B300").peak_flop_per_s["bf16"] == pytest.approx(36e15 / 8 / 2)
    h100 = db.gpus().get("H100 SXM")
    h800 = db.gpus().get("H800 SXM")
    assert h800.peak_flop_per_s == h100.peak_flop_per_s and h800.memory_bytes == h100.memory_bytes
    assert h800.nvlink_bytes_per_s == pytest.approx(h100.nvlink_bytes_per_s * 400 / 900)
    for name in ("B300", "GB200", "GB300"):
        g = db.gpus().get(name)
        assert 1 * TB < g.peak_flop_per_s["bf16"] < 3 * TB * 1e3 and g.memory_bandwidth_bytes_per_s == 8e12
        assert g.memory_bytes < (288 if name != "GB200" else 192) * 2**30  # the device exposes less than sold


def test_fp4_formats_run_on_fp4_tensor_cores_only_on_blackwell():
    for name in ("B200", "B300", "GB200", "GB300"):
        gpu = db.gpus().get(name)
        assert [compute_dtype(d, gpu) for d in ("nvfp4", "mxfp4", "fp4")] == ["fp4"] * 3
    for name in ("H100 SXM", "H200", "H800 SXM", "H20"):
        assert compute_dtype("nvfp4", db.gpus().get(name)) == "bf16"
    # Blackwell Ultra cut INT8 tensor throughput (~1/30 of fp8): int8 weights are dequantized to bf16 there
    assert compute_dtype("int8", db.gpus().get("B300")) == "bf16"
    assert compute_dtype("int8", db.gpus().get("GB200")) == "int8"


def test_grace_platforms_use_nvlink_c2c_as_host_link():
    for name in ("GB200 NVL72", "GB300 NVL72"):
        p = get_hardware(name)
        assert p.host_link.name == "nvlink-c2c" and p.cpu.name == "NVIDIA Grace"
        assert p.num_gpus == 72 and p.num_cpus == 36 and p.gpu_link.name == "nvlink5"
        assert p.host_link.theoretical_bytes_per_s == pytest.approx(900e9 / 2)


@pytest.mark.parametrize("name", sorted(db.networks().entries))
def test_network_entries_cite_and_agree(name):
    n = db.networks().entries[name]
    assert n.sources and {"achieved_bytes_per_s", "latency_s"} <= set(n.derived)
    assert n.theoretical_bytes_per_s == pytest.approx(n.line_rate_bits_per_s / 8)
    assert n.achieved_bytes_per_s <= n.theoretical_bytes_per_s


def test_scale_out_per_gpu_by_hand():
    # HGX H200: 8 x ConnectX-7 for 8 GPUs -> one NIC per GPU: 43 GB/s achieved (DeepEP), 50 GB/s line rate
    so = get_hardware("hgx-h200").scale_out
    assert so.per_gpu_bytes_per_s == pytest.approx(43e9) and so.per_gpu_theoretical_bytes_per_s == pytest.approx(50e9)
    assert so.node_bytes_per_s == pytest.approx(8 * 43e9) and so.latency_s == pytest.approx(5e-6)
    assert get_hardware("hgx-b300").scale_out.per_gpu_theoretical_bytes_per_s == pytest.approx(100e9)
    # fewer GPUs used per node keep their own NIC each
    assert get_hardware("hgx-h200", num_gpus=4).scale_out.per_gpu_bytes_per_s == pytest.approx(43e9)


def test_nodes_multiply_gpus_and_keep_num_gpus_per_node():
    p = get_hardware("hgx-h200", num_nodes=2)
    assert (p.num_nodes, p.num_gpus, p.gpus_per_node, p.total_gpus) == (2, 8, 8, 16)
    q = get_hardware("gb200-nvl72", num_gpus=72, num_nodes=9)
    assert q.total_gpus == 648
    assert get_hardware("hgx-h200", num_nodes=1) == get_hardware("hgx-h200")


def test_nodes_refused_clearly():
    with pytest.raises(MoesimError, match="no scale-out network.*--nodes 1"):
        get_hardware("rtx4090", num_nodes=2)
    with pytest.raises(MoesimError, match="--nodes 2 --gpus 8"):
        get_hardware("hgx-h200", num_gpus=16, num_nodes=2)
    with pytest.raises(MoesimError, match="whole number"):
        get_hardware("hgx-h200", num_nodes=0)
    with pytest.raises(ValueError, match="scale-out network"):
        get_hardware("rtx4090").model_copy(update={"num_nodes": 2}).model_validate(
            {**get_hardware("rtx4090").model_dump(), "num_nodes": 2})


def test_nodes_flag_is_a_scenario_field():
    info, flag = fields()["num_nodes"]
    assert flag.flags == ("--nodes",) and flag.unit == "nodes" and info.default == 1


def test_systems_refuse_several_nodes_unless_they_model_them():
    ctx = SimpleNamespace(platform=get_hardware("hgx-h200", num_nodes=2))
    one_node = SYSTEMS["moe-gen"]
    with pytest.raises(MultiNodeError, match="--nodes 1"):
        one_node.refuse_multi_node(ctx)
    one = SimpleNamespace(platform=get_hardware("hgx-h200"))
    one_node.refuse_multi_node(one)  # one node: nothing to refuse
    for engine in ("vllm", "sglang", "trtllm"):  # attention DP / expert parallel span nodes
        SYSTEMS[engine].refuse_multi_node(ctx)


def test_one_node_prediction_unchanged():
    a = moesim.predict("mixtral-8x7b", "hgx-h100", "vllm", num_gpus=2, num_requests=64)
    b = moesim.predict("mixtral-8x7b", "hgx-h100", "vllm", num_gpus=2, num_requests=64, num_nodes=1)
    assert a.throughput_tok_s == b.throughput_tok_s


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "moesim", *args], capture_output=True, text=True, timeout=120)


def test_cli_nodes_on_hgx_h200_refused_by_a_single_node_system():
    r = _cli("predict", "--model", "deepseek-r1", "--hw", "hgx-h200", "--system", "moe-gen", "--nodes", "2")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "modelled on one node" in r.stderr and "--nodes 1" in r.stderr


def test_cli_nodes_refused_on_a_platform_without_network():
    r = _cli("predict", "--model", "mixtral-8x7b", "--hw", "rtx4090", "--nodes", "2")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "no scale-out network" in r.stderr and "HGX H200" in r.stderr


def test_cli_show_and_list_hw():
    r = _cli("show", "hw", "hgx-h200", "--nodes", "2")
    assert r.returncode == 0 and "2 x 8 GPUs = 16 GPUs" in r.stdout and "8 x ConnectX-7 NDR 400G" in r.stdout
    r = _cli("list", "hw")
    assert r.returncode == 0
    for name in NEW_PLATFORMS + NEW_GPUS + ["ConnectX-8 800G"]:
        assert name in r.stdout


def test_auto_on_several_nodes_runs_one_node_systems_on_one_node():
    """More nodes never make auto's answer worse: a system modelled on one node runs on one of them, saying so."""
    one = moesim.predict(model="mixtral-8x7b", hardware="hgx-h200", num_requests=200)
    two = moesim.predict(model="mixtral-8x7b", hardware="hgx-h200", num_nodes=2, num_requests=200)
    assert two.throughput_tok_s >= one.throughput_tok_s * (1 - 1e-9)
    assert any("1 of 2 nodes" in v for v in two.systems_compared.values())


def test_engines_span_nodes_with_dp_and_ep_and_keep_tp_inside_a_node():
    """Two HGX H200 nodes: SGLang DP16 / EP16 runs (its MoE exchange leaves the node), its default TP16 is refused
    with the rule, and 16 GPUs widen the band (validated on at most 8)."""
    two = dict(model="deepseek-r1", hardware="hgx-h200", system="sglang", num_nodes=2, num_requests=256)
    p = moesim.predict(**two, system_params={"data_parallel_size": 16, "enable_dp_attention": True,
                                             "expert_parallel_size": 16})
    assert p.num_nodes == 2 and p.throughput_tok_s > 0
    assert any("16 GPUs, validated on at most 8" in a for a in p.assumptions)
    with pytest.raises(moesim.InfeasibleError, match="must stay inside one node"):
        moesim.predict(**two)
    r = _cli("predict", "--model", "deepseek-r1", "--hw", "hgx-h200", "--system", "sglang", "--nodes", "2",
             "--data-parallel-size", "16", "--enable-dp-attention", "--expert-parallel-size", "16", "--breakdown")
    assert r.returncode == 0, r.stderr
    assert "2 nodes x 8 x H200" in r.stdout and "communication" in r.stdout
