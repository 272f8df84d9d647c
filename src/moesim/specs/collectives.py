"""A platform's collective-communication profile: latency + bandwidth per collective family, fitted to
measurements of that platform (``validation/torchbench/multi_gpu.py``) by
:mod:`moesim.calibration.collectives`, stored as ``hardware_db/collectives/<platform>.yaml``.

Per family f (all_reduce, all_gather, reduce_scatter, all_to_all, all_to_all_uneven) and GPU count n,

    t_f(bytes, n) = alpha_f(n) + A_f(n) * bytes / beta_f(n)

with ``bytes`` each rank's largest buffer (nccl-tests' size; for all-to-all the most any rank sends or
receives), ``beta`` the bus bandwidth and A the algorithm factor: ring all-reduce 2 (n - 1) / n,
all-gather, reduce-scatter and all-to-all (n - 1) / n (each rank's link carries that fraction of the
buffer; nccl-tests, doc/PERFORMANCE.md, "bus bandwidth"). Fitted per measured n (``by_gpus``), and
across counts (``across_counts``) with alpha(n) = alpha_s + alpha_per_peer_s (n - 1) and one bus
bandwidth, for GPU counts not measured.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import Spec

CollectiveFamily = Literal["all_reduce", "all_gather", "reduce_scatter", "all_to_all", "all_to_all_uneven"]
Timing = Literal["eager", "burst", "graph"]


def algorithm_factor(family: str, gpus: int) -> float:
    """Bytes each rank's link carries per byte of the buffer: ring all-reduce 2 (n - 1) / n, all-gather,
    reduce-scatter, all-to-all (n - 1) / n (nccl-tests, doc/PERFORMANCE.md); 0 on one GPU."""
    if gpus <= 1:
        return 0.0
    return 2.0 * (gpus - 1) / gpus if family == "all_reduce" else (gpus - 1) / gpus


class ErrorSummary(Spec):
    """|predicted / measured - 1| over a set of cases."""

    cases: int = Field(ge=0)
    median_rel_err: float | None = Field(default=None, ge=0)
    p90_rel_err: float | None = Field(default=None, ge=0)


class CollectiveFit(Spec):
    """alpha + A(n) bytes / beta at one GPU count."""

    alpha_s: float = Field(ge=0, description="latency: the time of an empty collective")
    bus_bytes_per_s: float = Field(gt=0, description="bus bandwidth beta (bytes each rank's link carries per second)")
    fit: ErrorSummary
    held_out: ErrorSummary

    def time_s(self, family: str, nbytes: float, gpus: int) -> float:
        return self.alpha_s + algorithm_factor(family, gpus) * nbytes / self.bus_bytes_per_s


class CrossCountFit(Spec):
    """alpha(n) = alpha_s + alpha_per_peer_s (n - 1), one bus bandwidth, fitted on ``fit_gpu_counts``
    and scored on ``held_out_gpu_counts``."""

    alpha_s: float = Field(ge=0)
    alpha_per_peer_s: float = Field(ge=0)
    bus_bytes_per_s: float = Field(gt=0)
    fit_gpu_counts: list[int]
    held_out_gpu_counts: list[int]
    fit: ErrorSummary
    held_out: ErrorSummary

    def time_s(self, family: str, nbytes: float, gpus: int) -> float:
        return (self.alpha_s + self.alpha_per_peer_s * (gpus - 1)
                + algorithm_factor(family, gpus) * nbytes / self.bus_bytes_per_s)


class CollectiveFamilyProfile(Spec):
    by_gpus: dict[int, CollectiveFit] = Field(default_factory=dict)
    across_counts: CrossCountFit | None = None


class CollectiveProfile(Spec):
    platform: str
    measurements: list[str] = Field(description="the measurement files the fit read")
    synthetic: bool = Field(default=False, description="fitted on generated data (tests only; never committed)")
    environment: dict[str, str] = Field(default_factory=dict)
    split: str = Field(description="which cases were fitted and which only scored (fixed in code before fitting)")
    timings: dict[Timing, dict[CollectiveFamily, CollectiveFamilyProfile]]

    def time_s(self, family: str, nbytes: float, gpus: int, timing: str = "eager") -> float | None:
        """Seconds of one collective: the fit at ``gpus`` where it was measured, else the cross-count
        model, else None (no figure of ours: the caller keeps its own model)."""
        if gpus <= 1:
            return 0.0
        fam = self.timings.get(timing, {}).get(family)  # type: ignore[call-overload]
        if fam is None:
            return None
        if gpus in fam.by_gpus:
            return fam.by_gpus[gpus].time_s(family, nbytes, gpus)
        if fam.across_counts is not None:
            return fam.across_counts.time_s(family, nbytes, gpus)
        return None
