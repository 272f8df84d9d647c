"""A GPU's calibration profile: efficiency curves fitted to measurements of that GPU.

Per operation family f (gemm per dtype, expert, attention, vector/copy), the achieved
fraction of a roof grows with the size of the work, Calculon-style (Isaev et al., SC'23):

    eta_compute_f(rows)  = compute_max_f * rows  / (rows  + rows_half_f)     (tile filling)
    eta_memory_f(bytes)  = memory_max_f  * bytes / (bytes + bytes_half_f)     (too few bytes in flight)
    t = max(flop / (P_peak eta_compute), bytes / (B_peak eta_memory), launches * dispatch_s_f)
        + launches * overhead_s_f

The third roof is the host's: PyTorch issues kernels one by one, so a run of small kernels
takes as long as issuing them (back-to-back small operations overlap issue and execution,
so each costs the larger of the two).

The parameters are fitted by :mod:`moesim.calibration.fit` (scipy least squares on log time)
to a training split of the measurements in ``validation/measurements/<gpu>/``.
"""

from __future__ import annotations

from pydantic import Field

from .common import Spec


class FamilyCurve(Spec):
    compute_max: float = Field(gt=0, le=1.0)
    rows_half: float = Field(ge=0, description="GEMM rows at which half of compute_max is reached")
    memory_max: float = Field(gt=0, le=1.0)
    bytes_half: float = Field(ge=0, description="bytes moved at which half of memory_max is reached")
    overhead_s: float = Field(ge=0, description="fixed time per kernel launch of this family")
    dispatch_s: float = Field(default=0.0, ge=0, description="host time to issue one kernel: an operation "
                              "never runs faster than launches x dispatch_s (the host's launch roof)")
    group_s: float = Field(default=0.0, ge=0, description="GPU time each GEMM problem (expert) of a grouped "
                           "kernel adds: its ramp and tail")

    def compute_efficiency(self, rows: float) -> float:
        if rows <= 0:
            return self.compute_max
        return self.compute_max * rows / (rows + self.rows_half)

    def memory_efficiency(self, nbytes: float) -> float:
        if nbytes <= 0:
            return self.memory_max
        return self.memory_max * nbytes / (nbytes + self.bytes_half)


class LinkCalibration(Spec):
    """Achieved host<->device bandwidths measured on the calibration host."""

    link: str = Field(description="the link entry these were measured on, e.g. pcie-gen5-x16")
    h2d_pinned_bytes_per_s: float = Field(gt=0)
    d2h_pinned_bytes_per_s: float = Field(gt=0)
    h2d_pageable_bytes_per_s: float = Field(gt=0)
    d2h_pageable_bytes_per_s: float = Field(gt=0)
    latency_s: float = Field(ge=0)


class CalibrationProfile(Spec):
    gpu: str = Field(description="the hardware_db GPU name this profile was measured on")
    measurements: str = Field(description="repository path of the measurement JSON")
    environment: dict[str, str] = Field(default_factory=dict)
    families: dict[str, FamilyCurve]
    kernel_launch_s: float = Field(ge=0)
    host_sync_s: float = Field(ge=0)
    link: LinkCalibration | None = None
    fit_summary: dict[str, float] = Field(default_factory=dict)

    def curve(self, family: str, dtype: str | None = None) -> FamilyCurve | None:
        if dtype and f"{family}:{dtype}" in self.families:
            return self.families[f"{family}:{dtype}"]
        return self.families.get(family)
