"""Requests of an online workload: Poisson arrivals and sampled prompt and generation lengths.

One generator, seeded by the workload, draws in a fixed order (inter-arrival gaps, then prompt lengths,
then generation lengths), so a workload and its seed always give the same requests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..specs.workload import LengthDistribution, OnlineWorkload



@dataclass(frozen=True)
class Requests:
    """Requests in arrival order: arrival time (s), prompt and generation lengths (tokens)."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    gen_tokens: np.ndarray

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def context_tokens(self) -> np.ndarray:
        """Prompt + generation: the longest context each request reaches (an upper bound on its KV)."""
        return self.prompt_tokens + self.gen_tokens


def sample_lengths(dist: LengthDistribution, n: int, rng: np.random.Generator, cap: int) -> np.ndarray:
    """``n`` token lengths from ``dist``, clipped to [min_tokens or 1, max_tokens or ``cap``].

    fixed: the mean; uniform: integers on [min, max] (max defaults to 2 mean - min, so the mean
    holds); lognormal: exp(N(mu, sigma^2)) with mu = ln(mean) - sigma^2 / 2 so the mean holds
    (sigma defaults to 1.0), rounded.
    """
    lo = dist.min_tokens or 1
    hi = min(dist.max_tokens or cap, cap)
    if dist.kind == "fixed":
        x = np.full(n, round(dist.mean_tokens), dtype=float)
    elif dist.kind == "uniform":
        top = dist.max_tokens or max(lo, round(2 * dist.mean_tokens - lo))
        x = rng.integers(lo, top + 1, size=n).astype(float)
    else:
        sigma = dist.sigma
        x = np.round(rng.lognormal(math.log(dist.mean_tokens) - sigma**2 / 2, sigma, size=n))
    return np.clip(x, lo, max(lo, hi)).astype(int)


def poisson_arrivals(rate_per_s: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Arrival times (s) of ``n`` requests of a Poisson process: cumulative exponential gaps of mean 1 / rate
    (the first request arrives after one gap, not at 0)."""
    return np.cumsum(rng.exponential(1.0 / rate_per_s, size=n))


def sample_requests(workload: OnlineWorkload, cap: int) -> Requests:
    """The workload's requests; each length is clipped to ``cap`` (the model's context) on its own."""
    rng = np.random.default_rng(workload.seed)
    n = workload.num_requests
    arrivals = poisson_arrivals(workload.arrival_rate_per_s, n, rng)
    prompts = sample_lengths(workload.prompt, n, rng, cap)
    gens = sample_lengths(workload.gen, n, rng, cap)
    return Requests(arrivals, prompts, gens)
