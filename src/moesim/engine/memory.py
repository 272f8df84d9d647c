"""Memory pools of a schedule: buffers held over time, their peak per pool, the capacity check.

A buffer is taken at the start of one task and released at the end of another (or held to the
end of the schedule); a pool's peak is the largest sum of buffers held at once (a sweep over
take/release events, releases before takes at equal times), and a peak above the pool's
capacity is an error that says by how much.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

from ..errors import SimulationError


@dataclass(frozen=True)
class Buffer:
    pool: str
    label: str
    nbytes: float
    start_s: float
    end_s: float  # inf = held to the end



def peak_memory_bytes(buffers: Iterable[Buffer]) -> dict[str, float]:
    """Peak bytes held in each pool over the schedule (sweep over buffer events)."""
    peaks: dict[str, float] = {}
    by_pool: dict[str, list[tuple[float, int, float]]] = defaultdict(list)
    for b in buffers:
        by_pool[b.pool].append((b.start_s, 1, b.nbytes))
        by_pool[b.pool].append((b.end_s, 0, -b.nbytes))  # releases sort before takes at equal times
    for pool, events in by_pool.items():
        level = peak = 0.0
        for _, _, delta in sorted(events):
            level += delta
            peak = max(peak, level)
        peaks[pool] = peak
    return peaks


def check_capacity(peaks: dict[str, float], capacity_bytes: dict[str, float]) -> None:
    """Raise SimulationError if any pool's peak exceeds its capacity."""
    for pool, peak in peaks.items():
        cap = capacity_bytes.get(pool)
        if cap is not None and peak > cap * (1 + 1e-9):
            raise SimulationError(
                f"{pool} memory over capacity: peak {peak / 1e9:.2f} GB > {cap / 1e9:.2f} GB "
                f"(short by {(peak - cap) / 1e9:.2f} GB)"
            )
