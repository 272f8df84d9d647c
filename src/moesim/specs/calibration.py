"""A GPU's calibration profile: efficiency curves fitted to measurements of that GPU.

Per operation family f (gemm per dtype, expert, attention, vector/copy), the achieved
fraction of a roof grows with the size of the work, Calculon-style (Isaev et al., SC'23):

    eta_compute_f(rows)  = compute_max_f * rows  / (rows  + rows_half_f)     (tile filling)
    eta_memory_f(bytes)  = memory_max_f  * bytes / (bytes + bytes_half_f)     (too few bytes in flight)
    t = overhead_s_f + max(flop / (P_peak eta_compute) + groups group_s_f, bytes / (B_peak eta_memory),
                           further calls x dispatch_s_f (index_call_s_f for indexing calls))

per segment between host syncs (the full form, with parts on their own roofs, is in
:mod:`moesim.costs.roofline`): ``overhead_s`` is paid once, before an operation's first kernel.

Tensor-core compute time is further stretched by the clock the power limiter settles at under
sustained work (``sustained_clock``, ``clock_tau_s``; :meth:`FamilyCurve.sustained_compute_s`):
short GEMMs run at the boost clock, long ones lower (``nvidia-smi dmon`` read 1335-1965 MHz on an
H200 during the GEMM and MoE-layer cases, 1980 MHz otherwise).

The third roof is the host's: PyTorch issues torch calls one by one, so a run of small kernels
takes as long as issuing them (the host issues while the GPU works, so each operation costs the
larger of the two).

The parameters are fitted by :mod:`moesim.calibration.fit` (scipy least squares on log time)
to a training split of the measurements in ``validation/measurements/<gpu>/``.
"""

from __future__ import annotations

import math

from pydantic import Field

from .common import Spec


class FamilyCurve(Spec):
    compute_max: float = Field(gt=0, le=1.0)
    rows_half: float = Field(ge=0, description="GEMM rows at which half of compute_max is reached")
    memory_max: float = Field(gt=0, le=1.0)
    bytes_half: float = Field(ge=0, description="bytes moved at which half of memory_max is reached")
    overhead_s: float = Field(ge=0, description="host latency before an operation's first kernel (once per "
                              "operation; per launch for the per-expert loop, family moe_loop)")
    dispatch_s: float = Field(default=0.0, ge=0, description="host time to issue one torch call after an "
                              "operation's first (the host's launch roof); indexing calls cost index_call_s")
    index_call_s: float = Field(default=0.0, ge=0, description="host time to issue one torch call that "
                                "sorts, selects or indexes by a tensor (topk, argsort, bincount, x[idx], "
                                "index_add_), after an operation's first call")
    group_s: float = Field(default=0.0, ge=0, description="GPU time each GEMM problem (expert) of a grouped "
                           "kernel adds: its ramp and tail")
    sustained_clock: float = Field(default=1.0, gt=0, le=1.0, description="the SM clock the power limiter "
                                   "settles at under sustained tensor-core work, as a fraction of the clock "
                                   "short kernels run at (1: no drop)")
    clock_tau_s: float = Field(default=0.0, ge=0, description="time constant of the clock's fall from its "
                               "short-kernel value to sustained_clock once tensor-core work starts")

    def compute_efficiency(self, rows: float) -> float:
        if rows <= 0:
            return self.compute_max
        return self.compute_max * rows / (rows + self.rows_half)

    def memory_efficiency(self, nbytes: float) -> float:
        if nbytes <= 0:
            return self.memory_max
        return self.memory_max * nbytes / (nbytes + self.bytes_half)

    def sustained_compute_s(self, compute_s: float) -> float:
        """Tensor-core compute time ``compute_s`` (at the short-kernel clock f_0) stretched by the
        power limiter's clock drop. The clock falls from f_0 towards r f_0 (r =
        ``sustained_clock``) with time constant tau (``clock_tau_s``),

            f(t) = f_0 (r + (1 - r) exp(-t / tau)),

        so over a kernel of T seconds it averages f_0 (r + (1 - r) (tau / T) (1 - exp(-T / tau)))
        and the kernel takes T = compute_s f_0 / f_avg, evaluated to first order at T = compute_s.
        Short kernels keep f_0; long ones approach compute_s / r."""
        r, tau = self.sustained_clock, self.clock_tau_s
        if r >= 1.0 or compute_s <= 0.0:
            return compute_s
        if tau <= 0.0:
            return compute_s / r
        x = compute_s / tau
        kept = -math.expm1(-x) / x if x > 1e-9 else 1.0
        return compute_s / (r + (1.0 - r) * kept)


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
    copy_compute_slowdown: float = Field(default=0.0, ge=0, le=1.0, description="the fraction by which GPU "
                                         "compute slows while a host-to-device copy runs beside it (HBM and "
                                         "L2 shared with the copy engine's writes), from the harness's "
                                         "copy_beside_gemm case")
    fit_summary: dict[str, float] = Field(default_factory=dict)

    def curve(self, family: str, dtype: str | None = None) -> FamilyCurve | None:
        if dtype and f"{family}:{dtype}" in self.families:
            return self.families[f"{family}:{dtype}"]
        return self.families.get(family)
