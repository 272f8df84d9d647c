"""Exports of a schedule: Chrome/Perfetto trace events and a networkx task graph."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .schedule import Task


def to_networkx(tasks: Sequence[Task]):
    """The task DAG as a networkx.DiGraph (dependencies and same-resource order as edges)."""
    import networkx as nx

    graph = nx.DiGraph()
    last: dict[str, int] = {}
    for t in tasks:
        graph.add_node(t.id, name=t.name, resource=t.resource, duration_s=t.duration_s)
        for d in t.deps:
            graph.add_edge(d, t.id, kind="dep")
        if t.resource in last:
            graph.add_edge(last[t.resource], t.id, kind="stream")
        last[t.resource] = t.id
    return graph


def chrome_trace(tasks: Sequence[Task]) -> dict:
    """Chrome/Perfetto trace-event JSON: one row (thread) per resource, times in microseconds."""
    resources = sorted({t.resource for t in tasks})
    tid = {r: i + 1 for i, r in enumerate(resources)}
    events: list[dict] = [
        {"ph": "M", "pid": 1, "tid": tid[r], "name": "thread_name", "args": {"name": r}} for r in resources
    ]
    events.append({"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "moesim"}})
    for t in tasks:
        events.append({
            "ph": "X", "pid": 1, "tid": tid[t.resource], "name": t.name, "cat": t.category,
            "ts": t.start_s * 1e6, "dur": t.duration_s * 1e6,
            "args": {"bytes": t.bytes, "flop": t.flop, "deps": list(t.deps)},
        })
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_chrome_trace(tasks: Sequence[Task], path: str | Path) -> None:
    Path(path).write_text(json.dumps(chrome_trace(tasks)))
