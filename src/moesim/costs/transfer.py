"""Copies between host and device, and inside the device.

    t = latency + bytes / achieved_bandwidth(kind)

A serving system's host copies take one of four paths (:data:`CopyPath`), priced by
:func:`path_copy_time_s` from the link's achieved figures (n bytes in k copies, direction d):

  pinned         direct DMA from page-locked memory:  t = k L + n / B_pinned(d)
  pageable       cudaMemcpy from pageable memory; the driver stages it through its own pinned
                 buffer, which the measured pageable figure already includes:  t = k L + n / B_pageable(d)
  per_parameter  k small pageable copies, each synchronous (``tensor.to(device)`` per parameter, as
                 accelerate's ``cpu_offload`` hooks do): each pays the latency and a host sync S:
                 t = k (L + S) + n / B_pageable(d)
  staged         the application copies pageable memory into its own pinned bounce buffers with the
                 CPU (memcpy at H = host memory bandwidth x efficiency / 2, a read and a write) and
                 DMAs each chunk while filling the next (double buffering), k chunks of c = n / k:
                 t = k L + c / H + (k - 1) c / min(H, B_pinned) + c / B_pinned

Host<->device uses the link's *achieved* bandwidth for pinned or pageable host memory
(hardware_db/links, each figure sourced); device-to-device copies read and write HBM:
t = 2 bytes / (HBM bandwidth * eta_memory). On a platform, :func:`platform_copy_time_s` uses
the bandwidths measured by calibration when the platform's host link is the one measured.
"""

from __future__ import annotations

from typing import Literal

from ..specs import AcceleratorSpec, LinkCalibration, LinkSpec, Platform

CopyKind = Literal["h2d_pinned", "h2d_pageable", "d2h_pinned", "d2h_pageable", "d2d"]
CopyPath = Literal["pinned", "staged", "per_parameter", "pageable"]
CopyDirection = Literal["h2d", "d2h"]
COPY_PATHS: tuple[str, ...] = ("pinned", "staged", "per_parameter", "pageable")


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
    """The host link's figures: the platform's own measured ones (``host_link_measured``, a measurement of
    that host) first; else those calibration measured where it was taken on this link entry; else the
    link entry's generation figures."""
    if platform.host_link_source is not None:
        return platform.host_link
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


def path_copy_time_s(nbytes: float, path: CopyPath, direction: CopyDirection, link: LinkSpec | LinkCalibration,
                     copies: int = 1, host_copy_bytes_per_s: float | None = None, per_copy_sync_s: float = 0.0) -> float:
    """Time of ``nbytes`` moved host<->device in ``copies`` copies (chunks, for ``staged``) along ``path``
    (equations in the module docstring). ``staged`` needs the host's memcpy bandwidth."""
    if nbytes <= 0:
        return 0.0
    if path not in COPY_PATHS:
        raise ValueError(f"copy path {path!r}: expected one of {', '.join(COPY_PATHS)}")
    if direction not in ("h2d", "d2h"):
        raise ValueError(f"copy direction {direction!r}: expected h2d or d2h")
    k = max(1, int(copies))
    latency = k * link.latency_s
    if path == "pinned":
        return latency + nbytes / link_bandwidth_bytes_per_s(link, f"{direction}_pinned")
    if path == "pageable":
        return latency + nbytes / link_bandwidth_bytes_per_s(link, f"{direction}_pageable")
    if path == "per_parameter":
        return latency + k * per_copy_sync_s + nbytes / link_bandwidth_bytes_per_s(link, f"{direction}_pageable")
    if host_copy_bytes_per_s is None or host_copy_bytes_per_s <= 0:
        raise ValueError("a staged copy needs the host's memcpy bandwidth (host_copy_bytes_per_s > 0)")
    dma = link_bandwidth_bytes_per_s(link, f"{direction}_pinned")
    chunk = nbytes / k
    return latency + chunk / host_copy_bytes_per_s + (k - 1) * chunk / min(host_copy_bytes_per_s, dma) + chunk / dma


def host_copy_bytes_per_s(platform: Platform) -> float:
    """CPU memcpy bandwidth of the host (a staged copy's fill): every byte is read and written, so half the
    achieved DRAM bandwidth, H = host_memory_bandwidth x cpu_memory_bandwidth_efficiency / 2."""
    return platform.host_memory_bandwidth_bytes_per_s * platform.empirical.cpu_memory_bandwidth_efficiency / 2.0


