"""Choosing among candidate configurations by simulating them (FlexGen's policies, MoE-Lightning's).

Decode time is integrated with Simpson's rule over the first, middle and last step
(:func:`moesim.systems.base.simpson_decode_time`); the middle step alone bounds it from below, which lets
a search skip candidates that cannot win without simulating their other steps.
"""

from __future__ import annotations

from typing import Callable, Sequence

#: relative margin by which a lower bound must exceed the best exact value before it discards a candidate: a
#: bound adds up the same durations as the simulation in another order, so a tight one may round a few ulps
#: above the exact figure (1e-9 is many orders of magnitude above that rounding, and prunes as well)
BOUND_MARGIN = 1e-9


def decode_mid(prompt: int, gen: int) -> int:
    """The middle context at which :func:`~moesim.systems.base.simpson_decode_time` simulates a step."""
    return (2 * prompt + 1 + gen) // 2


def simpson_lower_bound(mid_step_s: float, gen: int) -> float:
    """A lower bound on the Simpson decode time G (t0 + 4 tm + t1) / 6 from the middle step alone
    (other steps >= 0): G 4 tm / 6 (for G <= 2 the steps are summed, and tm is one of them)."""
    return gen * 4.0 * mid_step_s / 6.0 if gen > 2 else mid_step_s


def simpson_bound(step_bound: Callable[[int], float], prompt: int, gen: int) -> float:
    """A lower bound on :func:`~moesim.systems.base.simpson_decode_time` from lower bounds of the steps it
    simulates: the same contexts and the same non-negative weights, so each step's bound bounds its term."""
    first, last = prompt + 1, prompt + gen
    if gen <= 2:
        return sum(step_bound(c) for c in range(first, last + 1))
    mid = (first + last) // 2
    return gen * (step_bound(first) + 4 * step_bound(mid) + step_bound(last)) / 6.0


def best_by_bounds(cands: list, bounds: Sequence[Callable], exact: Callable, rank: Callable | None = None):
    """The candidate with the least ``exact(c)[0]`` (ties: the least ``rank(i)`` of its index i, by default
    list order), calling ``exact`` on as few as it can.

    Each of ``bounds`` maps a candidate to a lower bound of ``exact(c)[0]``, cheapest first (a later one may
    simulate part of the candidate). Candidates are visited in order of their first bound (ties: list order)
    and one is dropped as soon as a bound exceeds the best exact value found so far by more than
    ``BOUND_MARGIN``: its exact value is then larger, so it can neither win nor tie. Once the first bound of
    the next candidate does, so does every later one's, and the search stops. The result is the exact
    minimum over all candidates, as :func:`best_by_simulation`'s; ``rank`` is called only on exact ties.
    """
    rank = rank or (lambda i: i)
    order = sorted((bounds[0](c), i) for i, c in enumerate(cands))
    best = None
    for first, i in order:
        if best is not None and _beaten(first, best[0]):
            break
        if best is not None and any(_beaten(bound(cands[i]), best[0]) for bound in bounds[1:]):
            continue
        value = exact(cands[i])
        if best is None or value[0] < best[0] or (value[0] == best[0] and rank(i) < rank(best[1])):
            best = (value[0], i, value)
    return cands[best[1]], best[2]


def _beaten(bound: float, best: float) -> bool:
    """Whether a lower bound proves a candidate slower than ``best`` (beyond rounding)."""
    return bound > best * (1.0 + BOUND_MARGIN)


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
