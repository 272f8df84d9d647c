"""The schedule: resources as in-order streams, tasks with dependencies.

Semantics (those of CUDA streams and copy engines): each resource runs its tasks one at a
time in the order they were submitted; a task starts when its resource is free and every
task it depends on has ended:

    start(t) = max( end(previous task on resource(t)), max_{d in deps(t)} end(d) )
    end(t)   = start(t) + duration(t)

Dependencies may only name tasks submitted earlier, so the submission order is a
topological order, the schedule is computed in one pass, and it is deterministic.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Iterable

from ..errors import SimulationError
from .memory import Buffer, check_capacity, peak_memory_bytes


_new_task = tuple.__new__  # builds a Task from a tuple without the named tuple's Python-level __new__


class Task(NamedTuple):
    """One scheduled task (a named tuple: built tens of thousands of times per prediction)."""

    id: int
    name: str
    resource: str
    category: str
    duration_s: float
    deps: tuple[int, ...]
    start_s: float
    end_s: float
    bytes: float = 0.0
    flop: float = 0.0


@dataclass
class Engine:
    """Build a schedule by submitting tasks; query makespan, busy time, memory and the trace."""

    memory_capacity_bytes: dict[str, float] = field(default_factory=dict)
    tasks: list[Task] = field(default_factory=list)
    buffers: list[Buffer] = field(default_factory=list)
    _free_at: dict[str, float] = field(default_factory=dict)
    _ends: list[float] = field(default_factory=list)  # end of each task, by id (the hot path reads these)
    _makespan_s: float = 0.0

    def add(self, name: str, resource: str, duration_s: float, deps: Iterable[int | None] = (),
            category: str = "other", nbytes: float = 0.0, flop: float = 0.0) -> int:
        """Submit a task; returns its id. ``None`` entries in ``deps`` are ignored."""
        if not duration_s >= 0:  # also rejects NaN
            raise SimulationError(f"task {name!r} has invalid duration {duration_s}")
        ends = self._ends
        n = len(ends)
        ready = 0.0
        dep_ids = []
        for d in deps:
            if d is None:
                continue
            if not 0 <= d < n:
                raise SimulationError(f"task {name!r} depends on unknown or later task {d}")
            end = ends[d]
            if end > ready:
                ready = end
            dep_ids.append(d)
        free_at = self._free_at
        free = free_at.get(resource, 0.0)
        start = ready if ready > free else free
        end = start + duration_s
        self.tasks.append(_new_task(Task, (n, name, resource, category, duration_s, tuple(dep_ids), start, end,
                                           nbytes, flop)))
        ends.append(end)
        free_at[resource] = end
        if end > self._makespan_s:
            self._makespan_s = end
        return n

    def hold(self, pool: str, nbytes: float, label: str, from_task: int | None = None,
             until_task: int | None = None) -> None:
        """Hold ``nbytes`` of ``pool`` from the start of ``from_task`` (or time 0) to the end of
        ``until_task`` (or the end of the schedule)."""
        start = self.tasks[from_task].start_s if from_task is not None else 0.0
        end = self.tasks[until_task].end_s if until_task is not None else float("inf")
        self.buffers.append(Buffer(pool, label, nbytes, start, end))

    # ---- queries ---------------------------------------------------------------------------
    @property
    def makespan_s(self) -> float:
        return self._makespan_s

    def end_of(self, task_id: int) -> float:
        return self._ends[task_id]

    def busy_s(self) -> dict[str, float]:
        busy: dict[str, float] = defaultdict(float)
        for t in self.tasks:
            busy[t.resource] += t.duration_s
        return dict(busy)

    def busy_by_category_s(self) -> dict[str, float]:
        busy: dict[str, float] = defaultdict(float)
        for t in self.tasks:
            busy[t.category] += t.duration_s
        return dict(busy)

    def hidden_s(self, resource: str, behind: Iterable[str] = ("gpu", "cpu")) -> tuple[float, float]:
        """See :func:`moesim.engine.overlap.hidden_s`."""
        from .overlap import hidden_s

        return hidden_s(self.tasks, resource, behind)

    def peak_memory_bytes(self) -> dict[str, float]:
        """Peak bytes held in each pool over the schedule."""
        return peak_memory_bytes(self.buffers)

    def check_memory(self) -> dict[str, float]:
        """Raise SimulationError if any pool's peak exceeds its capacity; return the peaks."""
        peaks = self.peak_memory_bytes()
        check_capacity(peaks, self.memory_capacity_bytes)
        return peaks

    # ---- exports ---------------------------------------------------------------------------
    def to_networkx(self):
        from .trace import to_networkx

        return to_networkx(self.tasks)

    def chrome_trace(self) -> dict:
        from .trace import chrome_trace

        return chrome_trace(self.tasks)

    def write_chrome_trace(self, path: str | Path) -> None:
        from .trace import write_chrome_trace

        write_chrome_trace(self.tasks, path)
