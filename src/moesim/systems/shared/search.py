"""Choosing among candidate configurations by simulating them (FlexGen's policies, MoE-Lightning's).

Decode time is integrated with Simpson's rule over the first, middle and last step
(:func:`moesim.systems.base.simpson_decode_time`); the middle step alone bounds it from below, which lets
a search skip candidates that cannot win without simulating their other steps.
"""

from __future__ import annotations

from typing import Callable


def decode_mid(prompt: int, gen: int) -> int:
    """The middle context at which :func:`~moesim.systems.base.simpson_decode_time` simulates a step."""
    return (2 * prompt + 1 + gen) // 2


def simpson_lower_bound(mid_step_s: float, gen: int) -> float:
    """A lower bound on the Simpson decode time G (t0 + 4 tm + t1) / 6 from the middle step alone
    (other steps >= 0): G 4 tm / 6 (for G <= 2 the steps are summed, and tm is one of them)."""
    return gen * 4.0 * mid_step_s / 6.0 if gen > 2 else mid_step_s


def best_by_simulation(cands: list, quick: Callable, exact: Callable):
    """The candidate with the least ``exact(c)[0]`` (ties: the earliest), evaluated lazily.

    ``quick(c)`` returns (lower bound of exact(c)[0], ranking estimate); candidates are evaluated in
    order of the estimate and skipped once their bound cannot beat the best found, so the result is
    the exact minimum over all candidates: with a candidate set that depends on memory only, more
    bandwidth or FLOP/s can never select a slower plan.
    """
    scored = sorted(((quick(c), i) for i, c in enumerate(cands)), key=lambda x: (x[0][1], x[1]))
    best = None
    for (bound, _), i in scored:
        if best is not None and bound > best[0]:
            continue
        value = exact(cands[i])
        if best is None or (value[0], i) < (best[0], best[1]):
            best = (value[0], i, value)
    return cands[best[1]], best[2]
