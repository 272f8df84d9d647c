"""Timing on the device as METHOD.md prescribes: warm-up, CUDA events, the median of many
repetitions (p10/p90 beside it); on the CPU, perf_counter.

Three views of one operation, because an operation of a few microseconds of GPU work timed
alone in eager PyTorch is mostly host time:

* ``median_s``: one call between a pair of events, the GPU's queue empty before it (what the
  cost model predicts: the host's issue latency for the first kernel is not hidden behind
  anything). Timing v3 (one H200 campaign, 2026-12-01) tried preceding each such call with half
  a millisecond of GPU work and a sync, in case idle clocks caused the two modes that single
  calls of tiny operations fell into on one lease (eager MLA decode at 115 or 240 us): the clocks
  stayed at 1980 MHz (nvidia-smi dmon) and the pre-loaded calls came out slower (median 1.03x,
  p90 1.27x) and no steadier, so the modes are the host's, and v4 times the idle-queue call
  again (v3's ``cold_median_s``);
* ``burst_s``: ``burst_n`` calls back to back between one pair of events, divided by
  ``burst_n`` (steady-state eager: per call, the larger of the host's issue time and the
  GPU's time); ``host_issue_s`` is the host wall time spent issuing them, per call;
* ``graph_s``: the same ``burst_n`` calls captured in one CUDA graph and replayed, divided by
  ``burst_n``: GPU time alone, no host dispatch (only for operations that can be captured);
* ``interleaved_median_s`` (v5): the single call again, in rounds that visit every short case of
  the family in a shuffled order (:func:`interleaved`), so that a host state that drifts over
  seconds (two H200 leases and the H100 file showed single calls of 20-70 us operations falling
  into modes that lasted for whole runs of consecutive cases) is spread over all the cases
  instead of landing on the few measured while it lasted.

Warm-up runs at least ``warmup`` calls and at least ``warmup_s`` seconds, so that lazily
loaded kernels, library heuristics and clock ramps stay out of the numbers.
"""

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


def _events_s(fn: Callable[[], object]) -> float:
    """Seconds between two CUDA events around ``fn()`` (perf_counter on the CPU)."""
    if on_cuda():
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _reps(fn: Callable[[int], object], min_reps: int, max_reps: int, budget_s: float) -> np.ndarray:
    """Single calls, each between a pair of events after the previous one finished."""
    times: list[float] = []
    spent = 0.0
    rep = 0
    while rep < min_reps or (rep < max_reps and spent < budget_s):
        t = _events_s(lambda: fn(rep))
        times.append(t)
        spent += t
        rep += 1
    return np.array(times)


def _burst(fn: Callable[[int], object], n: int, reps: int = 5) -> dict[str, float]:
    """``n`` back-to-back calls between one pair of events; median over ``reps`` of the time per call."""
    per, host = [], []
    for r in range(reps):
        sync()
        issued = [0.0]

        def run():
            t0 = time.perf_counter()
            for j in range(n):
                fn(r * n + j)
            issued[0] = time.perf_counter() - t0

        per.append(_events_s(run) / n)
        host.append(issued[0] / n)
    return {"burst_s": float(np.median(per)), "host_issue_s": float(np.median(host)), "burst_n": n}


def capture_graph(fn: Callable[[int], object], n: int, capture_error_mode: str = "global") -> "torch.cuda.CUDAGraph":
    """``n`` calls ``fn(0..n-1)`` captured in one CUDA graph, after three warm-up calls on a side stream (as
    torch.cuda.graphs asks); raises what the capture raises."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for j in range(3):
            fn(j)
    torch.cuda.current_stream().wait_stream(side)
    sync()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode=capture_error_mode):
        for j in range(n):
            fn(j)
    return graph


def _graph(fn: Callable[[int], object], n: int, reps: int = 5) -> float:
    """GPU seconds per call: ``n`` calls captured in one CUDA graph, replays timed with events."""
    graph = capture_graph(fn, n)
    graph.replay()
    sync()
    per = [_events_s(graph.replay) / n for _ in range(reps)]
    del graph
    return float(np.median(per))


def measure(fn: Callable[[int], object], warmup: int = 3, min_reps: int = 5, max_reps: int = 100,
            budget_s: float = 0.4, warmup_s: float = 0.02, burst: bool = False, graph: bool = False,
            burst_target_s: float = 2e-3, max_burst: int = 64) -> dict[str, float]:
    """Time ``fn(rep)`` (rep lets callers rotate input buffers); returns median/p10/p90 seconds of
    single calls, and with ``burst``/``graph`` the per-call times of back-to-back and graphed runs."""
    t0 = time.perf_counter()
    i = 0
    while i < warmup or time.perf_counter() - t0 < warmup_s:
        fn(i)
        i += 1
        if i % 8 == 0:
            sync()
    sync()
    a = _reps(fn, min_reps, max_reps, budget_s)
    out: dict[str, float] = {"median_s": float(np.median(a)), "p10_s": float(np.percentile(a, 10)),
                             "p90_s": float(np.percentile(a, 90)), "reps": len(a)}
    n = int(min(max_burst, max(2, round(burst_target_s / max(out["median_s"], 1e-9)))))
    if burst:
        out.update(_burst(fn, n))
    if graph and on_cuda():
        try:
            out["graph_s"] = _graph(fn, n)
        except Exception as exc:  # not capturable: recorded, the other figures stand
            out["graph_error"] = f"{type(exc).__name__}: {exc}"[:200]
            torch.cuda.set_stream(torch.cuda.default_stream())  # a failed capture may leave its stream current
            sync()
    return out


def interleaved(fns: dict[int, Callable[[int], object]], rounds: int = 24, calls: int = 3,
                seed: int = 0) -> dict[int, dict[str, float]]:
    """Single calls of several cases, interleaved: ``rounds`` rounds, each visiting every case once in
    a fresh random order; a visit makes one untimed call (the case's caches and heuristics warm
    again after the other cases ran), then ``calls`` single calls, each timed alone as in
    ``median_s``. Returns, per case, the median and p10/p90 over all its timed calls."""
    rng = np.random.default_rng(seed)
    keys = list(fns)
    times: dict[int, list[float]] = {k: [] for k in keys}
    for r in range(rounds):
        for k in rng.permutation(keys):
            fn = fns[int(k)]
            fn(r)
            sync()
            times[int(k)].extend(_events_s(lambda: fn(r + 1 + j)) for j in range(calls))
    return {k: {"interleaved_median_s": float(np.median(v)), "interleaved_p10_s": float(np.percentile(v, 10)),
                "interleaved_p90_s": float(np.percentile(v, 90)), "interleaved_calls": len(v)}
            for k, v in times.items()}


def host_wall(fn: Callable[[], object], reps: int = 200) -> float:
    """Host wall-clock seconds per call of ``fn`` after a sync (for launch and sync overheads)."""
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t0) / reps
