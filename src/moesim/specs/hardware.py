"""Hardware specs: accelerators, CPUs, links, disks and the platforms that compose them.

Every quantity is SI with its unit in the field name. Peak FLOP/s figures are DENSE:
datasheet figures quoted "with sparsity" (2:4 structured sparsity) are never stored;
divide them by two before they enter a YAML file, and say so under ``derived``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .calibration import CalibrationProfile
from .common import Sourced, Spec

DENSE_FLOPS_NOTE = (
    "Dense peak FLOP/s per dtype. With-sparsity figures are never stored here: "
    "halve a datasheet's sparse figure and note it under `derived`."
)


class EmpiricalProfile(Spec):
    """Achievable fractions of the peaks and fixed overheads.

    These are the calibration seam: a constant default profile lives in
    ``hardware_db/efficiency/default.yaml``; a measured profile for one GPU replaces it.
    ``calibrated`` says whether the numbers were fitted to measurements of this device.
    """

    name: str = "default"
    calibrated: bool = False
    gpu: str | None = Field(default=None, description="the GPU this conservative profile describes (None: any GPU)")
    gemm_compute_efficiency: float = Field(gt=0, le=1)
    memory_bandwidth_efficiency: float = Field(gt=0, le=1)
    attention_compute_efficiency: float = Field(gt=0, le=1)
    vector_compute_efficiency: float = Field(gt=0, le=1)
    kernel_launch_s: float = Field(ge=0)
    host_sync_s: float = Field(ge=0, description="cost of a device->host synchronisation (e.g. .item())")
    cpu_compute_efficiency: float = Field(gt=0, le=1)
    cpu_memory_bandwidth_efficiency: float = Field(gt=0, le=1)
    dequant_flop_per_weight: float = Field(ge=0, description="vector ops to dequantize one weight element")
    gpu_memory_reserved_bytes: float = Field(ge=0, description="CUDA context, allocator slack, workspace")
    host_memory_reserved_fraction: float = Field(ge=0, lt=1, description="host memory kept for the OS etc.")
    min_tokens_for_peak_gemm: float = Field(
        gt=0,
        description="GEMM rows at which tensor cores reach the stated efficiency; "
        "below it efficiency falls linearly (Calculon-style size curve, first order)",
    )
    sustained_clock_fraction: float = Field(
        default=1.0, gt=0, le=1,
        description="tensor-core clock under the power limit at sustained load, as a fraction of the clock at which "
        "gemm_compute_efficiency was measured (short bursts); tensor-core compute time is divided by it",
    )
    sources: tuple[str, ...] = ()


class AcceleratorSpec(Sourced):
    """One GPU or accelerator."""

    vendor: str
    architecture: str = Field(description="family used to borrow calibration (e.g. hopper, ada, ampere)")
    memory_bytes: float = Field(gt=0)
    memory_bandwidth_bytes_per_s: float = Field(gt=0)
    peak_flop_per_s: dict[str, float] = Field(description=DENSE_FLOPS_NOTE)
    native_dtypes: tuple[str, ...] = Field(
        description="dtypes the tensor cores compute in natively; others are dequantized to bf16/fp16 first"
    )
    l2_cache_bytes: float | None = None
    tdp_w: float | None = None
    launch_price_usd: float | None = None
    cloud_usd_per_hour: float | None = None
    host_interface: str = Field(description="name of the link entry of its host interface, e.g. pcie-gen4-x16")
    nvlink_bytes_per_s: float | None = Field(default=None, description="per GPU, per direction")
    empirical: EmpiricalProfile | None = Field(
        default=None, description="measured profile; absent means the documented default profile is used"
    )

    @field_validator("peak_flop_per_s")
    @classmethod
    def _positive_peaks(cls, value: dict[str, float]) -> dict[str, float]:
        for dtype, flops in value.items():
            if flops <= 0:
                raise ValueError(f"peak_flop_per_s[{dtype}] must be > 0 (omit dtypes the chip lacks)")
        if "fp32" not in value:
            raise ValueError("peak_flop_per_s needs an fp32 entry (used for vector work)")
        return value

    def peak_for(self, dtype: str) -> tuple[float, str]:
        """Peak dense FLOP/s for computing in ``dtype`` and the dtype actually used.

        Falls back bf16 <-> fp16 and then to fp32 when the chip has no such unit.
        """
        for candidate in (dtype, {"bf16": "fp16", "fp16": "bf16"}.get(dtype, dtype), "fp16", "fp32"):
            if candidate in self.peak_flop_per_s:
                return self.peak_flop_per_s[candidate], candidate
        raise KeyError(dtype)  # unreachable: fp32 is required


class CPUSpec(Sourced):
    """One CPU socket."""

    vendor: str
    cores: int = Field(gt=0)
    base_clock_hz: float = Field(gt=0)
    boost_clock_hz: float | None = None
    isa: tuple[str, ...] = Field(default=(), description="vector/matrix extensions: avx2, avx512, avx512_bf16, amx")
    peak_flop_per_s: dict[str, float] = Field(description="per socket, dense, at base clock")
    memory_channels: int = Field(gt=0)
    memory_type: str
    memory_bandwidth_bytes_per_s: float = Field(gt=0, description="per socket, theoretical peak")
    tdp_w: float | None = None
    launch_price_usd: float | None = None

    @field_validator("peak_flop_per_s")
    @classmethod
    def _fp32_present(cls, value: dict[str, float]) -> dict[str, float]:
        if "fp32" not in value or any(v <= 0 for v in value.values()):
            raise ValueError("peak_flop_per_s needs a positive fp32 entry and only positive values")
        return value

    def peak_for(self, dtype: str) -> float:
        return self.peak_flop_per_s.get(dtype, self.peak_flop_per_s["fp32"])


class LinkSpec(Sourced):
    """A data link: PCIe generation x lanes, NVLink, a network."""

    kind: Literal["pcie", "nvlink", "network", "infinity-fabric"]
    generation: str | None = None
    lanes: int | None = None
    theoretical_bytes_per_s: float = Field(gt=0, description="per direction")
    h2d_pinned_bytes_per_s: float = Field(gt=0, description="typical achieved, pinned host memory")
    d2h_pinned_bytes_per_s: float = Field(gt=0)
    h2d_pageable_bytes_per_s: float = Field(gt=0)
    d2h_pageable_bytes_per_s: float = Field(gt=0)
    latency_s: float = Field(ge=0, default=0.0)

    @model_validator(mode="after")
    def _achieved_below_theory(self) -> "LinkSpec":
        for field in ("h2d_pinned_bytes_per_s", "d2h_pinned_bytes_per_s"):
            if getattr(self, field) > self.theoretical_bytes_per_s:
                raise ValueError(f"{field} exceeds theoretical_bytes_per_s")
        return self


class NetworkSpec(Sourced):
    """A scale-out network adapter (NIC) and its fabric: what joins one node to another.

    One entry describes one NIC port (e.g. ConnectX-7 at InfiniBand NDR 400 Gb/s); a platform says how many of
    them each node has (``PlatformSpec.nics_per_node``). Bandwidths are per NIC, per direction."""

    kind: Literal["infiniband", "roce", "ethernet"]
    nic: str = Field(min_length=1, description="the adapter, e.g. ConnectX-7")
    line_rate_bits_per_s: float = Field(gt=0, description="signalling rate of one port as sold, e.g. 400e9 (400 Gb/s)")
    theoretical_bytes_per_s: float = Field(gt=0, description="per NIC, per direction: line rate / 8")
    achieved_bytes_per_s: float = Field(gt=0, description="per NIC, per direction, as measured by a collective or "
                                        "all-to-all library over this NIC (sourced under derived)")
    latency_s: float = Field(ge=0, description="one-way small-message latency between two GPUs of different nodes")

    @model_validator(mode="after")
    def _rates_agree(self) -> "NetworkSpec":
        if abs(self.theoretical_bytes_per_s * 8 - self.line_rate_bits_per_s) > 1e-6 * self.line_rate_bits_per_s:
            raise ValueError("theoretical_bytes_per_s must be line_rate_bits_per_s / 8")
        if self.achieved_bytes_per_s > self.theoretical_bytes_per_s:
            raise ValueError("achieved_bytes_per_s exceeds theoretical_bytes_per_s")
        return self


class ScaleOut(Spec):
    """The network between the nodes of a resolved platform, per GPU (what the engines price inter-node traffic with).

    ``per_gpu_*``: the NIC bandwidth each GPU of a node drives, ``nics_per_node x NIC rate / gpus_per_board``
    (HGX and NVL72 systems give every GPU its own NIC: one NIC per GPU), per direction."""

    network: NetworkSpec
    nics_per_node: int = Field(ge=1)
    gpus_per_board: int = Field(ge=1, description="GPUs of the full board/rack the NICs serve (the entry's num_gpus)")

    @property
    def nics_per_gpu(self) -> float:
        return self.nics_per_node / self.gpus_per_board

    @property
    def per_gpu_theoretical_bytes_per_s(self) -> float:
        return self.nics_per_gpu * self.network.theoretical_bytes_per_s

    @property
    def per_gpu_bytes_per_s(self) -> float:
        """Achieved inter-node bandwidth per GPU, per direction (use this to price traffic)."""
        return self.nics_per_gpu * self.network.achieved_bytes_per_s

    @property
    def node_bytes_per_s(self) -> float:
        """Achieved bandwidth out of one whole node, per direction."""
        return self.nics_per_node * self.network.achieved_bytes_per_s

    @property
    def latency_s(self) -> float:
        return self.network.latency_s


class HostLinkMeasurement(Spec):
    """Host<->device copy bandwidths measured on one host (bandwidthTest, nvbandwidth, a torch copy loop).

    Pinned figures are required; a pageable figure left out is taken as the measured pinned one times the
    link entry's pageable/pinned ratio (resolution says so in the platform's assumptions)."""

    h2d_pinned_bytes_per_s: float = Field(gt=0)
    d2h_pinned_bytes_per_s: float = Field(gt=0)
    h2d_pageable_bytes_per_s: float | None = Field(default=None, gt=0)
    d2h_pageable_bytes_per_s: float | None = Field(default=None, gt=0)
    latency_s: float | None = Field(default=None, ge=0, description="None: the link entry's")
    source: str = Field(min_length=1, description="who measured it, with what tool, where it is published")
    url: str | None = None
    measured_on: str = Field(min_length=1, description="the machine measured (GPU, host, cloud instance type)")


HostKind = Literal["cloud_vm", "bare_metal"]


class DiskSpec(Spec):
    """Storage tier for weights that do not fit in host memory."""

    name: str
    read_bytes_per_s: float = Field(gt=0)
    capacity_bytes: float = Field(gt=0)
    source: str | None = None


class PlatformSpec(Sourced):
    """A machine: n GPUs, CPU socket(s), host memory, links and disk.

    ``gpu``, ``cpu``, ``host_link`` and ``gpu_link`` name entries of the hardware database;
    :func:`moesim.db.resolve_platform` turns them into a :class:`Platform`.
    """

    gpu: str
    num_gpus: int = Field(ge=1)
    cpu: str
    num_cpus: int = Field(ge=1, default=1)
    host_memory_bytes: float = Field(gt=0)
    host_memory_bandwidth_bytes_per_s: float | None = Field(
        default=None, gt=0, description="defaults to num_cpus x the CPU's memory bandwidth"
    )
    host_link: str = Field(description="link between host and each GPU, e.g. pcie-gen4-x16")
    gpu_link: str | None = Field(default=None, description="GPU-GPU link; None = through PCIe")
    disk: DiskSpec
    default_for_gpu: str | None = Field(default=None, description="this platform is the default host of that GPU")
    price_usd_excluding_gpus: float | None = Field(default=None, ge=0)
    host_kind: HostKind | None = Field(default=None, description="cloud_vm (a GPU passed through to a virtual "
                                       "machine) or bare_metal; None: not stated")
    host_link_measured: HostLinkMeasurement | None = Field(
        default=None, description="host<->device bandwidths measured on this kind of host; they replace the link "
        "entry's generation figures (unless --pcie swaps the link)")
    max_gpus: int | None = Field(default=None, ge=1, description="GPUs the host takes (slots, or the cloud "
                                 "instance's largest GPU count); None: the rule in moesim.limits.MAX_GPUS_UNSTATED")
    max_gpus_source: str | None = Field(default=None, description="where max_gpus comes from")
    network: str | None = Field(default=None, description="name of the scale-out NIC entry (hardware_db/networks) "
                                "joining this node to others; None: a single machine (--nodes must be 1)")
    nics_per_node: int | None = Field(default=None, ge=1, description="scale-out NICs of one node (compute fabric "
                                      "only: storage/management ports are not counted)")

    @model_validator(mode="after")
    def _slots_hold_gpus(self) -> "PlatformSpec":
        if (self.network is None) != (self.nics_per_node is None):
            raise ValueError("network and nics_per_node go together (a NIC entry and how many of them a node has)")
        if self.max_gpus is not None and self.max_gpus < self.num_gpus:
            raise ValueError(f"max_gpus ({self.max_gpus}) is below num_gpus ({self.num_gpus})")
        if self.max_gpus is not None and not self.max_gpus_source:
            raise ValueError("max_gpus needs max_gpus_source (where the slot count comes from)")
        return self


class Platform(Spec):
    """A platform with every name resolved to its spec: what the simulator consumes."""

    name: str
    gpu: AcceleratorSpec
    num_gpus: int = Field(ge=1)
    cpu: CPUSpec
    num_cpus: int = Field(ge=1)
    host_memory_bytes: float = Field(gt=0)
    host_memory_bandwidth_bytes_per_s: float = Field(gt=0)
    host_link: LinkSpec
    gpu_link: LinkSpec | None = None
    disk: DiskSpec
    empirical: EmpiricalProfile
    calibration: CalibrationProfile | None = Field(
        default=None, description="fitted efficiency curves (this GPU's own, or borrowed from its architecture)"
    )
    assumptions: tuple[str, ...] = ()
    price_usd_excluding_gpus: float | None = None
    host_kind: HostKind | None = None
    host_link_source: str | None = Field(default=None, description="source of measured host-link figures; None: "
                                         "the link entry's generation figures")
    max_gpus: int | None = Field(default=None, ge=1, description="GPUs the host takes")
    num_nodes: int = Field(default=1, ge=1, description="copies of this node joined by ``scale_out`` (--nodes); "
                           "num_gpus stays the GPUs used in EACH node")
    scale_out: ScaleOut | None = Field(default=None, description="the network between nodes; None: a single "
                                       "machine, which cannot take num_nodes > 1")

    @model_validator(mode="after")
    def _nodes_need_a_network(self) -> "Platform":
        if self.num_nodes > 1 and self.scale_out is None:
            raise ValueError(f"num_nodes = {self.num_nodes} needs a scale-out network, and {self.name} has none")
        return self

    @property
    def gpus_per_node(self) -> int:
        """GPUs used in each node (the same as ``num_gpus``)."""
        return self.num_gpus

    @property
    def total_gpus(self) -> int:
        """GPUs over every node: ``num_gpus x num_nodes``."""
        return self.num_gpus * self.num_nodes

    @property
    def usable_gpu_memory_bytes_per_gpu(self) -> float:
        return max(0.0, self.gpu.memory_bytes - self.empirical.gpu_memory_reserved_bytes)

    @property
    def usable_host_memory_bytes(self) -> float:
        return self.host_memory_bytes * (1.0 - self.empirical.host_memory_reserved_fraction)

    def scaled(self, **factors: float) -> "Platform":
        """A what-if copy with resources scaled, e.g. ``scaled(hbm=2, pcie=2, gpu_flops=2)``."""
        gpu, link, plat = self.gpu, self.host_link, {}
        if "hbm" in factors:
            gpu = gpu.model_copy(update={"memory_bandwidth_bytes_per_s": gpu.memory_bandwidth_bytes_per_s * factors["hbm"]})
        if "gpu_flops" in factors:
            gpu = gpu.model_copy(
                update={"peak_flop_per_s": {k: v * factors["gpu_flops"] for k, v in gpu.peak_flop_per_s.items()}}
            )
        if "pcie" in factors:
            f = factors["pcie"]
            link = link.model_copy(
                update={
                    k: getattr(link, k) * f
                    for k in (
                        "theoretical_bytes_per_s",
                        "h2d_pinned_bytes_per_s",
                        "d2h_pinned_bytes_per_s",
                        "h2d_pageable_bytes_per_s",
                        "d2h_pageable_bytes_per_s",
                    )
                }
            )
        if "host_bw" in factors:
            plat["host_memory_bandwidth_bytes_per_s"] = self.host_memory_bandwidth_bytes_per_s * factors["host_bw"]
        unknown = set(factors) - {"hbm", "gpu_flops", "pcie", "host_bw"}
        if unknown:
            raise ValueError(f"unknown resource(s) to scale: {sorted(unknown)}")
        return self.model_copy(update={"gpu": gpu, "host_link": link, **plat})
