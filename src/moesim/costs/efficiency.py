"""The calibration seam: achievable fractions of peak for each operation.

Uncalibrated, a constant per family from an :class:`~moesim.specs.EmpiricalProfile`: the GPU's
conservative profile (``hardware_db/efficiency/<gpu>.yaml``: efficiencies from public measurements
of that GPU, its tensor-core clock under the power limit) over ``default.yaml``, with one
size effect: GEMMs with fewer rows than a tensor-core tile waste the rest of the tile, so

    eta_compute(rows) = eta_family * min(1, rows / min_tokens_for_peak_gemm)

(the first-order form of Calculon's efficiency-by-size curves). A calibrated model replaces
this class with fitted curves; everything else only calls these methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..specs import CalibrationProfile, EmpiricalProfile, FamilyCurve

if TYPE_CHECKING:
    from .roofline import OpCost


class EfficiencyModel(Protocol):
    kernel_launch_s: float
    host_sync_s: float
    cpu_compute_efficiency: float
    cpu_memory_efficiency: float
    vector_efficiency: float
    dequant_flop_per_weight: float

    def compute_efficiency(self, cost: "OpCost") -> float: ...

    def memory_efficiency(self, cost: "OpCost") -> float: ...

    def issue_s(self, cost: "OpCost", launches: int) -> float: ...

    def dispatch_s(self, cost: "OpCost") -> float: ...

    def index_call_s(self, cost: "OpCost") -> float: ...

    def loop_launch_s(self, cost: "OpCost") -> float: ...

    def group_s(self, cost: "OpCost") -> float: ...

    def sustained_compute_s(self, cost: "OpCost", compute_s: float) -> float: ...

    def beside_copy_s(self, compute_s: float, overlap_s: float) -> float: ...


@dataclass(frozen=True)
class ProfileEfficiency:
    """Constant-per-family efficiency from an empirical profile."""

    profile: EmpiricalProfile

    @property
    def kernel_launch_s(self) -> float:
        return self.profile.kernel_launch_s

    @property
    def host_sync_s(self) -> float:
        return self.profile.host_sync_s

    @property
    def cpu_compute_efficiency(self) -> float:
        return self.profile.cpu_compute_efficiency

    @property
    def cpu_memory_efficiency(self) -> float:
        return self.profile.cpu_memory_bandwidth_efficiency

    @property
    def vector_efficiency(self) -> float:
        return self.profile.vector_compute_efficiency

    @property
    def dequant_flop_per_weight(self) -> float:
        return self.profile.dequant_flop_per_weight

    def compute_efficiency(self, cost: "OpCost") -> float:
        p = self.profile
        base = {
            "gemm": p.gemm_compute_efficiency,
            "expert": p.gemm_compute_efficiency,
            "grouped_expert": p.gemm_compute_efficiency,
            "attention": p.attention_compute_efficiency,
        }.get(cost.family, p.vector_compute_efficiency)
        if cost.rows > 0:
            base *= min(1.0, max(cost.rows, 1.0) / p.min_tokens_for_peak_gemm)
        return base

    def memory_efficiency(self, cost: "OpCost") -> float:
        return self.profile.memory_bandwidth_efficiency

    def issue_s(self, cost: "OpCost", launches: int) -> float:
        """Fixed host time of an operation of ``launches`` kernels: additive per launch here."""
        return launches * self.profile.kernel_launch_s

    def dispatch_s(self, cost: "OpCost") -> float:
        return 0.0  # the default profile has no host launch roof (launch overhead is additive)

    def index_call_s(self, cost: "OpCost") -> float:
        return 0.0  # nor for indexing calls

    def loop_launch_s(self, cost: "OpCost") -> float:
        return self.profile.kernel_launch_s

    def group_s(self, cost: "OpCost") -> float:
        return 0.0  # uncalibrated: no per-group time in grouped GEMMs

    def sustained_compute_s(self, cost: "OpCost", compute_s: float) -> float:
        """Tensor-core work (GEMM, expert and attention families) at the clock the power limit allows under
        sustained load: compute_s / ``sustained_clock_fraction`` (1 in the default profile; below 1 where
        public measurements of the GPU show the clock falling, e.g. the 70 W T4)."""
        if cost.family in _TENSOR_FAMILIES:
            return compute_s / self.profile.sustained_clock_fraction
        return compute_s

    def beside_copy_s(self, compute_s: float, overlap_s: float) -> float:
        return compute_s  # uncalibrated: no measured slowdown of compute beside a copy


#: families whose math runs on the tensor cores (the power-limited clock applies to them)
_TENSOR_FAMILIES = frozenset({"gemm", "expert", "grouped_expert", "attention", "mla"})

#: families without a curve of their own borrow one (expert GEMMs behave like GEMMs).
_FALLBACK = {"mla": "attention", "grouped_expert": "expert", "expert": "gemm", "attention": "vector", "gemm": "vector", "copy": "vector",
             "scatter": "vector", "moe_loop": ""}


@dataclass(frozen=True)
class CalibratedEfficiency(ProfileEfficiency):
    """Fitted per-family efficiency curves (see :mod:`moesim.specs.calibration`).

    CPU factors, dequantization and memory reservations still come from the empirical profile.
    """

    calibration: CalibrationProfile = None  # type: ignore[assignment]

    def _curve(self, cost: "OpCost") -> FamilyCurve | None:
        family = cost.family
        while family:
            curve = self.calibration.curve(family, cost.dtype)
            if curve is not None:
                return curve
            family = _FALLBACK.get(family, "")
        return None

    @property
    def kernel_launch_s(self) -> float:
        return self.calibration.kernel_launch_s

    @property
    def host_sync_s(self) -> float:
        return self.calibration.host_sync_s

    def compute_efficiency(self, cost: "OpCost") -> float:
        curve = self._curve(cost)
        return curve.compute_efficiency(cost.rows) if curve else super().compute_efficiency(cost)

    def memory_efficiency(self, cost: "OpCost") -> float:
        curve = self._curve(cost)
        return curve.memory_efficiency(cost.bytes) if curve else super().memory_efficiency(cost)

    def issue_s(self, cost: "OpCost", launches: int) -> float:
        """Host latency before the operation's first kernel runs (``overhead_s``, once per operation:
        an operation timed alone waits for it; the rest of its kernels' issue overlaps the GPU)."""
        if launches <= 0:
            return 0.0
        curve = self._curve(cost)
        return curve.overhead_s if curve else launches * self.calibration.kernel_launch_s

    def dispatch_s(self, cost: "OpCost") -> float:
        """Host time to issue each further ordinary torch call of an operation (fitted)."""
        curve = self._curve(cost)
        return curve.dispatch_s if curve else 0.0

    def index_call_s(self, cost: "OpCost") -> float:
        """Host time to issue each further call that sorts, selects or indexes by a tensor (fitted)."""
        curve = self._curve(cost)
        return curve.index_call_s if curve else 0.0

    def loop_launch_s(self, cost: "OpCost") -> float:
        """Per launch of a per-expert Python loop: each iteration waits on a host sync, so every
        launch's host latency is exposed (family ``moe_loop``)."""
        curve = self._curve(cost)
        return curve.overhead_s if curve else self.calibration.kernel_launch_s

    def group_s(self, cost: "OpCost") -> float:
        curve = self._curve(cost)
        return curve.group_s if curve else 0.0

    def sustained_compute_s(self, cost: "OpCost", compute_s: float) -> float:
        """Tensor-core compute time under the power limiter's clock drop (see
        :meth:`moesim.specs.FamilyCurve.sustained_compute_s`)."""
        curve = self._curve(cost)
        return curve.sustained_compute_s(compute_s) if curve else compute_s

    def beside_copy_s(self, compute_s: float, overlap_s: float) -> float:
        """GPU work of ``compute_s`` alone, of which ``overlap_s`` runs beside a host-to-device copy:

            t = compute_s + s min(compute_s, overlap_s)

        with s = ``copy_compute_slowdown``, measured by the harness as (t_both - t_gemm) / t_copy
        for one copy beside a run of GEMMs longer than it (``copy_beside_gemm``)."""
        return compute_s + self.calibration.copy_compute_slowdown * min(compute_s, max(overlap_s, 0.0))


def efficiency_for(empirical: EmpiricalProfile, calibration: CalibrationProfile | None) -> ProfileEfficiency:
    """The efficiency model of a platform: calibrated curves when there are any."""
    if calibration is None:
        return ProfileEfficiency(empirical)
    return CalibratedEfficiency(empirical, calibration)
