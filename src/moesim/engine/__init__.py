"""Discrete-event engine: resources as in-order streams, tasks with dependencies, memory pools.

Semantics (those of CUDA streams and copy engines): each resource runs its tasks one at a
time in the order they were submitted; a task starts when its resource is free and every
task it depends on has ended:

    start(t) = max( end(previous task on resource(t)), max_{d in deps(t)} end(d) )
    end(t)   = start(t) + duration(t)

Dependencies may only name tasks submitted earlier, so the submission order is a
topological order, the schedule is computed in one pass, and it is deterministic.
Buffers are taken at the start of one task and released at the end of another; the
peak of every memory pool is checked against its capacity (exceeding it is an error).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Iterable

from ..errors import SimulationError


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


@dataclass(frozen=True)
class Buffer:
    pool: str
    label: str
    nbytes: float
    start_s: float
    end_s: float  # inf = held to the end


@dataclass
class Engine:
    """Build a schedule by submitting tasks; query makespan, busy time, memory and the trace."""

    memory_capacity_bytes: dict[str, float] = field(default_factory=dict)
    tasks: list[Task] = field(default_factory=list)
    buffers: list[Buffer] = field(default_factory=list)
    _free_at: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, name: str, resource: str, duration_s: float, deps: Iterable[int | None] = (),
            category: str = "other", nbytes: float = 0.0, flop: float = 0.0) -> int:
        """Submit a task; returns its id. ``None`` entries in ``deps`` are ignored."""
        if not duration_s >= 0:  # also rejects NaN
            raise SimulationError(f"task {name!r} has invalid duration {duration_s}")
        tasks = self.tasks
        n = len(tasks)
        ready = 0.0
        dep_ids = []
        for d in deps:
            if d is None:
                continue
            if not 0 <= d < n:
                raise SimulationError(f"task {name!r} depends on unknown or later task {d}")
            end = tasks[d].end_s
            if end > ready:
                ready = end
            dep_ids.append(d)
        free = self._free_at[resource]
        start = ready if ready > free else free
        end = start + duration_s
        tasks.append(Task(n, name, resource, category, duration_s, tuple(dep_ids), start, end, nbytes, flop))
        self._free_at[resource] = end
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
        return max((t.end_s for t in self.tasks), default=0.0)

    def end_of(self, task_id: int) -> float:
        return self.tasks[task_id].end_s

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
        """(busy seconds of ``resource``, seconds of it that overlap work on the ``behind`` resources).

        A transfer is hidden where some compute runs at the same time: intervals of the compute
        resources are merged, then intersected with each task of ``resource``.
        """
        behind = set(behind)
        spans = sorted((t.start_s, t.end_s) for t in self.tasks if t.resource in behind and t.end_s > t.start_s)
        merged: list[list[float]] = []
        for a, b in spans:
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        busy = hidden = 0.0
        for t in self.tasks:
            if t.resource != resource or t.end_s <= t.start_s:
                continue
            busy += t.end_s - t.start_s
            for a, b in merged:
                if b <= t.start_s:
                    continue
                if a >= t.end_s:
                    break
                hidden += min(b, t.end_s) - max(a, t.start_s)
        return busy, hidden

    def peak_memory_bytes(self) -> dict[str, float]:
        """Peak bytes held in each pool over the schedule (sweep over buffer events)."""
        peaks: dict[str, float] = {}
        by_pool: dict[str, list[tuple[float, int, float]]] = defaultdict(list)
        for b in self.buffers:
            by_pool[b.pool].append((b.start_s, 1, b.nbytes))
            by_pool[b.pool].append((b.end_s, 0, -b.nbytes))  # releases sort before takes at equal times
        for pool, events in by_pool.items():
            level = peak = 0.0
            for _, _, delta in sorted(events):
                level += delta
                peak = max(peak, level)
            peaks[pool] = peak
        return peaks

    def check_memory(self) -> dict[str, float]:
        """Raise SimulationError if any pool's peak exceeds its capacity; return the peaks."""
        peaks = self.peak_memory_bytes()
        for pool, peak in peaks.items():
            cap = self.memory_capacity_bytes.get(pool)
            if cap is not None and peak > cap * (1 + 1e-9):
                raise SimulationError(
                    f"{pool} memory over capacity: peak {peak / 1e9:.2f} GB > {cap / 1e9:.2f} GB "
                    f"(short by {(peak - cap) / 1e9:.2f} GB)"
                )
        return peaks

    # ---- exports ---------------------------------------------------------------------------
    def to_networkx(self):
        """The task DAG as a networkx.DiGraph (dependencies and same-resource order as edges)."""
        import networkx as nx

        graph = nx.DiGraph()
        last: dict[str, int] = {}
        for t in self.tasks:
            graph.add_node(t.id, name=t.name, resource=t.resource, duration_s=t.duration_s)
            for d in t.deps:
                graph.add_edge(d, t.id, kind="dep")
            if t.resource in last:
                graph.add_edge(last[t.resource], t.id, kind="stream")
            last[t.resource] = t.id
        return graph

    def chrome_trace(self) -> dict:
        """Chrome/Perfetto trace-event JSON: one row (thread) per resource, times in microseconds."""
        resources = sorted({t.resource for t in self.tasks})
        tid = {r: i + 1 for i, r in enumerate(resources)}
        events: list[dict] = [
            {"ph": "M", "pid": 1, "tid": tid[r], "name": "thread_name", "args": {"name": r}} for r in resources
        ]
        events.append({"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "moesim"}})
        for t in self.tasks:
            events.append({
                "ph": "X", "pid": 1, "tid": tid[t.resource], "name": t.name, "cat": t.category,
                "ts": t.start_s * 1e6, "dur": t.duration_s * 1e6,
                "args": {"bytes": t.bytes, "flop": t.flop, "deps": list(t.deps)},
            })
        return {"traceEvents": events, "displayTimeUnit": "ms"}

    def write_chrome_trace(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.chrome_trace()))


class BufferRing:
    """A ring of ``slots`` reusable buffers (double buffering when slots=2).

    The i-th use of the ring must wait until the consumer of use i - slots has finished:
    ``acquire()`` returns that consumer (or None), ``release(task)`` records this use's consumer.
    """

    def __init__(self, slots: int):
        if slots < 1:
            raise SimulationError("a buffer ring needs at least one slot")
        self.slots = slots
        self._consumers: list[int] = []

    def acquire(self) -> int | None:
        n = len(self._consumers)
        return self._consumers[n - self.slots] if n >= self.slots else None

    def release(self, consumer_task: int) -> None:
        self._consumers.append(consumer_task)
