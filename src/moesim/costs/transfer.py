"""Copies between host and device, and inside the device.

    t = latency + bytes / achieved_bandwidth(kind)

Host<->device uses the link's *achieved* bandwidth for pinned or pageable host memory
(hardware_db/links, each figure sourced); device-to-device copies read and write HBM:
t = 2 bytes / (HBM bandwidth * eta_memory).
"""

from __future__ import annotations

from typing import Literal

from ..specs import AcceleratorSpec, LinkSpec

CopyKind = Literal["h2d_pinned", "h2d_pageable", "d2h_pinned", "d2h_pageable", "d2d"]


def link_bandwidth_bytes_per_s(link: LinkSpec, kind: CopyKind) -> float:
    return getattr(link, f"{kind}_bytes_per_s")


def copy_time_s(nbytes: float, kind: CopyKind, link: LinkSpec, gpu: AcceleratorSpec | None = None,
                memory_efficiency: float = 1.0) -> float:
    if nbytes <= 0:
        return 0.0
    if kind == "d2d":
        if gpu is None:
            raise ValueError("d2d copies need the GPU")
        return 2.0 * nbytes / (gpu.memory_bandwidth_bytes_per_s * memory_efficiency)
    return link.latency_s + nbytes / link_bandwidth_bytes_per_s(link, kind)
