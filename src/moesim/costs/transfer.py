"""Copies between host and device, and inside the device.

    t = latency + bytes / achieved_bandwidth(kind)

Host<->device uses the link's *achieved* bandwidth for pinned or pageable host memory
(hardware_db/links, each figure sourced); device-to-device copies read and write HBM:
t = 2 bytes / (HBM bandwidth * eta_memory). On a platform, :func:`platform_copy_time_s` uses
the bandwidths measured by calibration when the platform's host link is the one measured.
"""

from __future__ import annotations

from typing import Literal

from ..specs import AcceleratorSpec, LinkCalibration, LinkSpec, Platform

CopyKind = Literal["h2d_pinned", "h2d_pageable", "d2h_pinned", "d2h_pageable", "d2d"]


def link_bandwidth_bytes_per_s(link: LinkSpec | LinkCalibration, kind: CopyKind) -> float:
    return getattr(link, f"{kind}_bytes_per_s")


def copy_time_s(nbytes: float, kind: CopyKind, link: LinkSpec | LinkCalibration, gpu: AcceleratorSpec | None = None,
                memory_efficiency: float = 1.0) -> float:
    if nbytes <= 0:
        return 0.0
    if kind == "d2d":
        if gpu is None:
            raise ValueError("d2d copies need the GPU")
        return 2.0 * nbytes / (gpu.memory_bandwidth_bytes_per_s * memory_efficiency)
    return link.latency_s + nbytes / link_bandwidth_bytes_per_s(link, kind)


def achieved_link(platform: Platform) -> LinkSpec | LinkCalibration:
    """The host link's figures: measured ones where the calibration was taken on this link entry."""
    cal = platform.calibration
    if cal is not None and cal.link is not None and cal.link.link == platform.host_link.name:
        return cal.link
    return platform.host_link


def platform_copy_time_s(nbytes: float, kind: CopyKind, platform: Platform) -> float:
    """A copy on ``platform``: host<->device over :func:`achieved_link`; device-to-device through the
    GPU's (calibrated) memory-efficiency curve of the ``copy`` family."""
    if nbytes <= 0:
        return 0.0
    if kind != "d2d":
        return copy_time_s(nbytes, kind, achieved_link(platform))
    from .efficiency import efficiency_for
    from .roofline import OpCost, gpu_time_s

    cost = OpCost(family="copy", flop=0.0, bytes=2.0 * nbytes, dtype="bf16", launches=1)
    return gpu_time_s(cost, platform.gpu, efficiency_for(platform.empirical, platform.calibration))
