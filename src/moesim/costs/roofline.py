"""The cost of one operation and its time on a device: a roofline with efficiency factors.

    t = max( flop / (peak_flop_per_s(dtype) * eta_compute),
             bytes / (memory_bandwidth_bytes_per_s * eta_memory),
             launches * dispatch_s )                      (host launch roof; 0 when uncalibrated)
        + launches * kernel_launch_s + syncs * host_sync_s

(Williams, Waterman, Patterson, "Roofline", CACM 2009; the efficiency factors are the
calibration seam of :mod:`moesim.costs.efficiency`.)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..specs import AcceleratorSpec, CPUSpec
from .efficiency import EfficiencyModel
from .quant import compute_dtype, needs_dequant

#: Operation families: the unit of calibration.
FAMILIES = ("gemm", "expert", "grouped_expert", "moe_loop", "attention", "mla", "vector", "copy", "cpu_attention", "cpu_expert")


@dataclass(frozen=True)
class OpCost:
    """FLOPs and bytes of one operation (or a fused group of kernels)."""

    family: str
    flop: float
    bytes: float
    dtype: str = "bf16"  # storage dtype of the weights/operands; the math dtype follows from the GPU
    weight_elements: float = 0.0  # weights read (for dequantization cost of quantized dtypes)
    launches: int = 1
    loop_launches: int = 0  # launches issued from a Python loop (HF per-expert loop): priced as family "moe_loop"
    syncs: int = 0
    rows: float = 0.0  # GEMM rows per kernel (tokens per expert for expert GEMMs); 0 = not a GEMM
    extra_s: float = 0.0  # time that is neither compute nor memory (e.g. dequantization done separately)
    parts: tuple[str, ...] = field(default=(), compare=False)

    def __add__(self, other: "OpCost") -> "OpCost":
        """Sequential composition: work adds, the family of the larger-FLOP part is kept."""
        main = self if self.flop >= other.flop else other
        return replace(
            main,
            flop=self.flop + other.flop,
            bytes=self.bytes + other.bytes,
            weight_elements=self.weight_elements + other.weight_elements,
            launches=self.launches + other.launches,
            loop_launches=self.loop_launches + other.loop_launches,
            syncs=self.syncs + other.syncs,
            extra_s=self.extra_s + other.extra_s,
        )

    def scaled(self, factor: float) -> "OpCost":
        return replace(
            self, flop=self.flop * factor, bytes=self.bytes * factor, weight_elements=self.weight_elements * factor
        )

    @property
    def arithmetic_intensity(self) -> float:
        return self.flop / self.bytes if self.bytes else float("inf")


def gpu_time_s(cost: OpCost, gpu: AcceleratorSpec, eff: EfficiencyModel) -> float:
    """Time of ``cost`` on ``gpu`` (roofline + overheads + dequantization of quantized weights)."""
    peak, _ = gpu.peak_for(compute_dtype(cost.dtype, gpu))
    compute_s = cost.flop / (peak * eff.compute_efficiency(cost)) if cost.flop else 0.0
    memory_s = cost.bytes / (gpu.memory_bandwidth_bytes_per_s * eff.memory_efficiency(cost)) if cost.bytes else 0.0
    loop = replace(cost, family="moe_loop") if cost.loop_launches else None
    dispatch_s = cost.launches * eff.dispatch_s(cost) + (cost.loop_launches * eff.dispatch_s(loop) if loop else 0.0)
    total = (max(compute_s, memory_s, dispatch_s) + cost.launches * eff.launch_s(cost)
             + cost.syncs * eff.host_sync_s + cost.extra_s)
    if loop is not None:
        total += cost.loop_launches * eff.launch_s(loop)
    if cost.weight_elements and needs_dequant(cost.dtype, gpu):
        vector_flop_per_s = gpu.peak_flop_per_s["fp32"] * eff.vector_efficiency
        total += cost.weight_elements * eff.dequant_flop_per_weight / vector_flop_per_s
    return total


def cpu_time_s(cost: OpCost, cpu: CPUSpec, num_cpus: int, memory_bandwidth_bytes_per_s: float,
               eff: EfficiencyModel) -> float:
    """Time of ``cost`` on the host CPU(s): bounded by DRAM bandwidth and CPU FLOPs."""
    peak = cpu.peak_for(cost.dtype) * num_cpus
    compute_s = cost.flop / (peak * eff.cpu_compute_efficiency) if cost.flop else 0.0
    memory_s = cost.bytes / (memory_bandwidth_bytes_per_s * eff.cpu_memory_efficiency) if cost.bytes else 0.0
    return max(compute_s, memory_s) + cost.extra_s


def bound_of(cost: OpCost, gpu: AcceleratorSpec, eff: EfficiencyModel) -> str:
    """'compute' or 'memory': which roof limits the operation."""
    peak, _ = gpu.peak_for(compute_dtype(cost.dtype, gpu))
    compute_s = cost.flop / (peak * eff.compute_efficiency(cost))
    memory_s = cost.bytes / (gpu.memory_bandwidth_bytes_per_s * eff.memory_efficiency(cost))
    return "compute" if compute_s >= memory_s else "memory"
