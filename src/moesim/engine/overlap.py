"""How much of a resource's work overlaps work on others (transfers hidden behind compute)."""

from __future__ import annotations

from typing import Iterable

from .schedule import Task


def hidden_s(tasks: Iterable[Task], resource: str, behind: Iterable[str] = ("gpu", "cpu")) -> tuple[float, float]:
    """(busy seconds of ``resource``, seconds of it that overlap work on the ``behind`` resources).

    A transfer is hidden where some compute runs at the same time: intervals of the compute
    resources are merged, then intersected with each task of ``resource``.
    """
    tasks = list(tasks)
    behind = set(behind)
    spans = sorted((t.start_s, t.end_s) for t in tasks if t.resource in behind and t.end_s > t.start_s)
    merged: list[list[float]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    busy = hidden = 0.0
    for t in tasks:
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
