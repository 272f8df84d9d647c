"""Timing on the device as METHOD.md prescribes: warm-up, CUDA events around each repetition,
the median of many repetitions (p10/p90 beside it); on the CPU, perf_counter."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch


def on_cuda() -> bool:
    return torch.cuda.is_available()


def sync() -> None:
    if on_cuda():
        torch.cuda.synchronize()


def measure(fn: Callable[[int], object], warmup: int = 3, min_reps: int = 5, max_reps: int = 40,
            budget_s: float = 0.4) -> dict[str, float]:
    """Time ``fn(rep)`` (rep lets callers rotate input buffers); returns median/p10/p90 seconds."""
    for i in range(warmup):
        fn(i)
    sync()
    times: list[float] = []
    spent = 0.0
    rep = 0
    while rep < min_reps or (rep < max_reps and spent < budget_s):
        if on_cuda():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(rep)
            end.record()
            end.synchronize()
            t = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            fn(rep)
            t = time.perf_counter() - t0
        times.append(t)
        spent += t
        rep += 1
    a = np.array(times)
    return {"median_s": float(np.median(a)), "p10_s": float(np.percentile(a, 10)),
            "p90_s": float(np.percentile(a, 90)), "reps": len(a)}


def host_wall(fn: Callable[[], object], reps: int = 200) -> float:
    """Host wall-clock seconds per call of ``fn`` after a sync (for launch and sync overheads)."""
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t0) / reps
