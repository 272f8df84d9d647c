"""The cost of one operation and its time on a device: a roofline with efficiency factors.

An operation is one or more kernels issued by the host in sequence (eager PyTorch). Its parts
that are separate kernels of a different kind (a GEMM, then an elementwise pass, then an atomic
scatter-add) each run on their own roof, one after the other; parts of the same kind merge:

    t_gpu  = sum over parts p of max( S(flop_p / (peak_flop_per_s(dtype) * eta_compute_p)),
                                      bytes_p / (memory_bandwidth_bytes_per_s * eta_memory_p) )
                                 + groups_p * group_s_p
    t      = issue_s + max( t_gpu, host_roof_s )                       (host launch roof)
             + syncs * host_sync_s + loop_launches * loop_overhead_s + extra_s
    host_roof_s = further ordinary calls * dispatch_s + further indexing calls * index_call_s

with the first two terms taken per segment between host syncs inside the operation (a sync
drains the GPU, and the next kernel waits for its own issue latency).

``issue_s`` is the host latency before the first kernel of the operation starts (nothing hides
it when the operation is timed alone); the host then issues the remaining calls while the GPU
works (the host runs ahead of the GPU, so the GPU time and the remaining issue time overlap),
each at the cost of its kind (:func:`_host_roof_s`): ``index_call_s`` per call that sorts,
selects or indexes by a tensor, ``dispatch_s`` per other call. In eager
PyTorch the unit the host pays for is a torch operation (Python and ATen dispatch, ~10-15 us on
the hosts measured); kernels one operation launches from C++ (SDPA's split-KV and combine,
argsort's passes) cost it little, so ``launches`` counts host-issued operations.
``S`` stretches tensor-core compute time for the clock the power limiter settles at under
sustained work (identity when uncalibrated; see :meth:`moesim.specs.FamilyCurve.sustained_compute_s`).
``group_s`` is the GPU time each GEMM problem of a grouped kernel adds (one expert's ramp and
tail: a grouped GEMM over 64 small experts streams its weights slower than one large GEMM). The
uncalibrated default profile has no launch roof: there issue_s = launches * kernel_launch_s.
(Williams, Waterman, Patterson, "Roofline", CACM 2009; the efficiency factors and the two host
figures are the calibration seam of :mod:`moesim.costs.efficiency`.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..specs import AcceleratorSpec, CPUSpec
from .efficiency import EfficiencyModel
from .quant import compute_dtype, needs_dequant

#: the OpCost fields that add up when operations compose (the rest describe the main part)
ADDITIVE_FIELDS = ("flop", "bytes", "weight_elements", "launches", "indexed_launches", "loop_launches", "syncs",
                   "extra_s", "groups")


@dataclass(frozen=True)
class OpCost:
    """FLOPs and bytes of one operation (or a fused group of kernels)."""

    family: str
    flop: float
    bytes: float
    dtype: str = "bf16"  # storage dtype of the weights/operands; the math dtype follows from the GPU
    weight_elements: float = 0.0  # weights read (for dequantization cost of quantized dtypes)
    launches: int = 1
    indexed_launches: int = 0  # of ``launches``: calls that sort, select or index by a tensor (``index_call_s``)
    loop_launches: int = 0  # launches issued from a Python loop (HF per-expert loop): priced as family "moe_loop"
    syncs: int = 0
    rows: float = 0.0  # GEMM rows per kernel (tokens per expert for expert GEMMs); 0 = not a GEMM
    groups: float = 0.0  # GEMM problems inside one grouped kernel (active experts x GEMMs), each with its own ramp
    extra_s: float = 0.0  # time that is neither compute nor memory (e.g. dequantization done separately)
    parts: tuple[str, ...] = field(default=(), compare=False)
    serial: tuple["OpCost", ...] = ()  # parts (included in the totals above) run as kernels of their own kind

    def with_(self, **changes: Any) -> "OpCost":
        """A copy with ``changes`` (``dataclasses.replace`` without re-running ``__init__``: OpCosts are
        composed thousands of times a prediction and have no derived fields to recompute)."""
        new = object.__new__(OpCost)
        fields = new.__dict__
        fields.update(self.__dict__)
        fields.update(changes)
        return new

    def _summed(self, other: "OpCost", base: "OpCost", serial: tuple["OpCost", ...]) -> "OpCost":
        """``base`` (its family, dtype, rows) carrying the summed work of this operation and ``other``."""
        a, b = self.__dict__, other.__dict__
        return base.with_(serial=serial, **{k: a[k] + b[k] for k in ADDITIVE_FIELDS})

    def __add__(self, other: "OpCost") -> "OpCost":
        """Merged composition: work adds, the family of the larger-FLOP part is kept (one roof for
        the sum: right for kernels of one kind); serial parts of both stay serial."""
        main = self if self.flop >= other.flop else other
        return self._summed(other, main, self.serial + other.serial)

    def then(self, other: "OpCost") -> "OpCost":
        """Serial composition: ``other`` runs after this operation as kernels of its own kind, each
        of its parts on its own roof. The totals (flop, bytes, launches, ...) still add up; the
        family, dtype and rows of this operation's own part are kept."""
        return self._summed(other, self, self.serial + other.pieces())

    def pieces(self) -> tuple["OpCost", ...]:
        """The parts priced each on its own roof: this operation's own part (the totals less the
        serial parts), then the serial parts."""
        s = self.serial
        if not s:
            return (self,)
        own = self.with_(serial=(), **{k: getattr(self, k) - sum(getattr(p, k) for p in s) for k in ADDITIVE_FIELDS})
        return (own,) + s

    def scaled(self, factor: float) -> "OpCost":
        return self.with_(
            flop=self.flop * factor, bytes=self.bytes * factor, weight_elements=self.weight_elements * factor,
            serial=tuple(p.scaled(factor) for p in self.serial),
        )


def _roof_s(cost: OpCost, gpu: AcceleratorSpec, eff: EfficiencyModel) -> float:
    """GPU time of one part: the larger of its compute and memory times (+ dequantization).

    Tensor-core math (every compute dtype but fp32, which runs on the SIMT units at a fraction of
    the rate and power) is stretched by the power limiter's clock drop under sustained work
    (``eff.sustained_compute_s``: short kernels run at the boost clock, long ones settle lower)."""
    math_dtype = compute_dtype(cost.dtype, gpu)
    peak, _ = gpu.peak_for(math_dtype)
    compute_s = cost.flop / (peak * eff.compute_efficiency(cost)) if cost.flop else 0.0
    if compute_s and math_dtype != "fp32":
        compute_s = eff.sustained_compute_s(cost, compute_s)
    memory_s = cost.bytes / (gpu.memory_bandwidth_bytes_per_s * eff.memory_efficiency(cost)) if cost.bytes else 0.0
    t = max(compute_s, memory_s) + cost.groups * eff.group_s(cost)
    if cost.weight_elements and needs_dequant(cost.dtype, gpu):
        vector_flop_per_s = gpu.peak_flop_per_s["fp32"] * eff.vector_efficiency
        t += cost.weight_elements * eff.dequant_flop_per_weight / vector_flop_per_s
    return t


def compute_floor_s(cost: OpCost, gpu: AcceleratorSpec) -> float:
    """The compute lower bound of ``cost`` on ``gpu``: every part's FLOPs at the datasheet's dense peak of its math
    dtype, no efficiency, memory, launch or host term::

        t_floor = sum over parts of F / peak(dtype)

    No run of this work can be faster; a measured time below it is not a time of this work (what
    :func:`moesim.systems.shared.engine_step.table_attention_core` checks its table lookups against). FLOPs only:
    an operation's modelled bytes may include traffic a kernel avoids, so they bound nothing."""
    total = 0.0
    for p in cost.pieces():
        if p.flop:
            peak, _ = gpu.peak_for(compute_dtype(p.dtype, gpu))
            total += p.flop / peak
    return total


def _segments(pieces: tuple[OpCost, ...]) -> list[list[OpCost]]:
    """Split an operation's parts after every part whose result the host reads (``syncs``)."""
    out: list[list[OpCost]] = [[]]
    for p in pieces:
        out[-1].append(p)
        if p.syncs:
            out.append([])
    return [seg for seg in out if seg]


def _host_roof_s(cost: OpCost, launches: int, indexed: int, eff: EfficiencyModel) -> float:
    """Host time to issue a segment's torch calls after its first one (whose latency is ``issue_s``):

        (further ordinary calls) * dispatch_s + (further indexing calls) * index_call_s

    Calls that sort, select or index by a tensor (topk, argsort, bincount, ``x[idx]``,
    ``index_add_``) allocate data-dependent outputs and run several ATen steps on the host, so they
    cost ``index_call_s``; every other call (matmul, elementwise, reduction, view) ``dispatch_s``.
    The first call of a segment is an ordinary one unless all of them index."""
    if launches <= 1:
        return 0.0
    indexed = min(indexed, launches)
    ordinary = launches - indexed
    if ordinary:
        ordinary -= 1
    else:
        indexed -= 1
    return ordinary * eff.dispatch_s(cost) + indexed * eff.index_call_s(cost)


def gpu_time_s(cost: OpCost, gpu: AcceleratorSpec, eff: EfficiencyModel) -> float:
    """Time of ``cost`` on ``gpu``: per-part rooflines in sequence, the host's issue latency and
    launch roof, syncs, the per-expert loop's launches and dequantization of quantized weights.

    A host sync inside an operation (a part with ``syncs``) ends the overlap of host and GPU: the
    GPU drains, the host reads the result, and the next kernel waits for its own issue latency,
    so each segment between syncs is priced on its own (issue + max(GPU, launch roof))."""
    total = cost.syncs * eff.host_sync_s + cost.extra_s
    if not cost.serial:  # one part, one segment (the common case; same result as below)
        host_roof_s = _host_roof_s(cost, cost.launches, cost.indexed_launches, eff)
        total += eff.issue_s(cost, cost.launches) + max(_roof_s(cost, gpu, eff), host_roof_s)
        if cost.loop_launches:
            total += cost.loop_launches * eff.loop_launch_s(cost.with_(family="moe_loop"))
        return total
    for seg in _segments(cost.pieces()):
        launches = sum(p.launches for p in seg)
        gpu_s = sum(_roof_s(p, gpu, eff) for p in seg)
        host_roof_s = _host_roof_s(cost, launches, sum(p.indexed_launches for p in seg), eff)
        lead = next((p for p in seg if p.launches), seg[0])
        total += eff.issue_s(lead, launches) + max(gpu_s, host_roof_s)
    if cost.loop_launches:
        total += cost.loop_launches * eff.loop_launch_s(cost.with_(family="moe_loop", serial=()))
    return total


def cpu_time_s(cost: OpCost, cpu: CPUSpec, num_cpus: int, memory_bandwidth_bytes_per_s: float,
               eff: EfficiencyModel) -> float:
    """Time of ``cost`` on the host CPU(s): bounded by DRAM bandwidth and CPU FLOPs."""
    peak = cpu.peak_for(cost.dtype) * num_cpus
    compute_s = cost.flop / (peak * eff.cpu_compute_efficiency) if cost.flop else 0.0
    memory_s = cost.bytes / (memory_bandwidth_bytes_per_s * eff.cpu_memory_efficiency) if cost.bytes else 0.0
    return max(compute_s, memory_s) + cost.extra_s


def bound_of(cost: OpCost, gpu: AcceleratorSpec, eff: EfficiencyModel) -> str:
    """'compute' or 'memory': which roof limits the operation (its main part)."""
    peak, _ = gpu.peak_for(compute_dtype(cost.dtype, gpu))
    compute_s = cost.flop / (peak * eff.compute_efficiency(cost))
    memory_s = cost.bytes / (gpu.memory_bandwidth_bytes_per_s * eff.memory_efficiency(cost))
    return "compute" if compute_s >= memory_s else "memory"
