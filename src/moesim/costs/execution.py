"""Execution modes: how a system's kernels reach the GPU, and which host costs it pays.

``eager``  PyTorch eager (Hugging Face code, the offloaders): each torch call is issued by Python and
           ATen on the host; an operation pays its issue latency, the host's launch roof, syncs and the
           per-expert loop's launches (:func:`moesim.costs.gpu_time_s` with the platform's efficiency model,
           fitted on eager torch).
``graph``  CUDA-graph replay (vLLM, SGLang and TensorRT-LLM decode): the whole step's kernels are one graph
           launch; no per-op host issue, dispatch or sync exists inside it, only a small gap between
           consecutive kernels on the GPU::

               t = sum over parts p of roof_p  +  kernels x kernel_gap_s

           The engine's per-step CPU work (scheduling, input preparation, sampling bookkeeping,
           detokenising) is priced by the system beside the GPU step (see ``systems/shared/engine_step.py``).
``native`` C++ engines (llama.cpp, KTransformers' CPU kernels): kernels launched from C++, no Python per op:
           each kernel pays the profile's launch latency ``kernel_launch_s`` and nothing else on the host.

Engine kernels (``Execution.engine_kernels``): datacenter engines run their own GEMM and MoE kernels (CUTLASS /
DeepGEMM fp8, Triton or CUTLASS fused MoE, Marlin / Triton MXFP4), not torch's. Where no measured kernel table
covers an operation, their weight streaming is priced at the rate the platform's calibration measured for a
bf16 GEMM (``gemm`` curve in bf16), whatever the weight dtype (the eager fits of ``torch._scaled_mm`` fp8, 0.30 of
HBM bandwidth on the H200, and of torch's grouped GEMM with its per-problem ramp describe torch's kernels, not
these); a fused MoE kernel has no per-problem host or ramp term (``group_s`` = 0); the gather/scatter of routed
tokens runs at the vector (elementwise) rate, fused into the MoE kernel's loads and epilogue; weights stored in
a dtype the tensor cores lack (MXFP4 on Hopper) are dequantised inside the GEMM's pipelined main loop, hidden
under the weight stream (``dequant_flop_per_weight`` = 0).

The mode is part of :meth:`moesim.modules.Context.gpu_s`'s key, so systems of one ``auto`` comparison that
share a Context never share a time priced under another mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .efficiency import EfficiencyModel
    from .roofline import OpCost

Mode = Literal["eager", "graph", "native"]
MODES: tuple[str, ...] = ("eager", "graph", "native")
_WEIGHT_FAMILIES = ("gemm", "expert", "grouped_expert")


@dataclass(frozen=True)
class Execution:
    """How one phase of a system runs: its mode, the GPU gap between kernels of a replayed graph, and whether
    its GEMM/MoE kernels are a datacenter engine's own (see the module docstring)."""

    mode: Mode = "eager"
    kernel_gap_s: float = 0.0
    engine_kernels: bool = False
    moe_tile_rows: int = 16  # rows of one fused-MoE tile (each expert's rows padded to a multiple)
    moe_memory_efficiency: float | None = None  # fused-MoE weight streaming, fraction of HBM peak (None: bf16 GEMM's)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"execution mode {self.mode!r}: expected one of {', '.join(MODES)}")
        if self.kernel_gap_s < 0:
            raise ValueError(f"kernel_gap_s must be >= 0, got {self.kernel_gap_s}")


EAGER = Execution()


@dataclass(frozen=True)
class ModeEfficiency:
    """An efficiency model seen through an execution mode: ``base`` (the platform's, fitted on eager torch)
    with the host terms the mode does not pay removed (see the module docstring for each mode)."""

    base: "EfficiencyModel"
    execution: Execution

    def __getattr__(self, name: str):
        """Anything the mode does not change is the base model's (e.g. figures the efficiency model gains later)."""
        if name in ("base", "execution"):
            raise AttributeError(name)
        return getattr(self.base, name)

    # ---- host terms -------------------------------------------------------------------------
    @property
    def kernel_launch_s(self) -> float:
        return self.execution.kernel_gap_s if self.execution.mode == "graph" else self.base.kernel_launch_s

    @property
    def host_sync_s(self) -> float:
        return 0.0  # no host round trip inside a graph; C++ engines keep their results on the device

    def issue_s(self, cost: "OpCost", launches: int) -> float:
        """graph: each kernel adds the replay gap; native: each kernel its C++ launch latency."""
        return launches * self.kernel_launch_s

    def dispatch_s(self, cost: "OpCost") -> float:
        return 0.0

    def index_call_s(self, cost: "OpCost") -> float:
        return 0.0

    def loop_launch_s(self, cost: "OpCost") -> float:
        return self.kernel_launch_s

    # ---- GPU terms --------------------------------------------------------------------------
    def _weights_as_gemm(self, cost: "OpCost") -> "OpCost":
        return cost.with_(family="gemm", dtype="bf16")

    def compute_efficiency(self, cost: "OpCost") -> float:
        """Engine kernels' expert GEMMs: the platform's large-GEMM efficiency in the cost's dtype times the fill
        of the fused-MoE tiles, each expert's r rows padded to a multiple of the tile's rows R::

            eta = eta_gemm(large) * r / (ceil(r / R) R)

        (the tensor cores run the padded rows; torch's grouped-GEMM curve, fitted in eager, does not apply)."""
        if self.execution.engine_kernels and cost.family in ("expert", "grouped_expert") and cost.rows > 0:
            tile = self.execution.moe_tile_rows
            fill = cost.rows / (math.ceil(cost.rows / tile - 1e-9) * tile)
            return self.base.compute_efficiency(cost.with_(family="gemm", rows=1e9)) * fill
        return self.base.compute_efficiency(cost)

    def memory_efficiency(self, cost: "OpCost") -> float:
        if self.execution.engine_kernels:
            if cost.family in ("expert", "grouped_expert") and self.execution.moe_memory_efficiency:
                return self.execution.moe_memory_efficiency
            if cost.family in _WEIGHT_FAMILIES:
                return self.base.memory_efficiency(self._weights_as_gemm(cost))
            if cost.family == "scatter":
                return self.base.memory_efficiency(cost.with_(family="vector"))
        return self.base.memory_efficiency(cost)

    def group_s(self, cost: "OpCost") -> float:
        return 0.0 if self.execution.engine_kernels else self.base.group_s(cost)

    def sustained_compute_s(self, cost: "OpCost", compute_s: float) -> float:
        return self.base.sustained_compute_s(cost, compute_s)

    def beside_copy_s(self, compute_s: float, overlap_s: float) -> float:
        return self.base.beside_copy_s(compute_s, overlap_s)

    @property
    def dequant_flop_per_weight(self) -> float:
        return 0.0 if self.execution.engine_kernels else self.base.dequant_flop_per_weight

    @property
    def cpu_compute_efficiency(self) -> float:
        return self.base.cpu_compute_efficiency

    @property
    def cpu_memory_efficiency(self) -> float:
        return self.base.cpu_memory_efficiency

    @property
    def vector_efficiency(self) -> float:
        return self.base.vector_efficiency


def efficiency_in(base: "EfficiencyModel", execution: Execution) -> "EfficiencyModel":
    """``base`` as ``execution`` sees it (``base`` itself for eager execution without engine kernels)."""
    if execution.mode == "eager" and not execution.engine_kernels:
        return base
    return ModeEfficiency(base, execution)  # type: ignore[return-value]
