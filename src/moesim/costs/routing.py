"""How many experts a batch activates, and how tokens spread over them.

Uniform router: each token picks k of E experts uniformly without replacement, so one
expert is missed by one token with probability (1 - k/E) and by T independent tokens with
(1 - k/E)^T. Expected distinct experts:

    E[n_active] = E * (1 - (1 - k/E)^T)

Skewed router (Zipf exponent s): expert i is chosen with popularity p_i ∝ i^-s; a token
includes expert i with probability q_i = min(1, k p_i) (renormalised so sum q_i = k), and

    E[n_active] = sum_i 1 - (1 - q_i)^T ,    E[tokens of expert i] = T q_i.

A measured per-expert histogram can be passed as ``popularity`` instead of a Zipf exponent.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=4096)
def _inclusion(num_experts: int, top_k: int, zipf_s: float,
               popularity: tuple[float, ...] | None = None) -> tuple[float, ...]:
    pop = None if popularity is None else np.asarray(popularity, dtype=float)
    return tuple(inclusion_probabilities(num_experts, top_k, zipf_s=zipf_s, popularity=pop))


def inclusion_probabilities(num_experts: int, top_k: int, zipf_s: float = 0.0,
                            popularity: np.ndarray | None = None) -> np.ndarray:
    """Probability q_i that one token routes to expert i (sums to top_k)."""
    if popularity is None:
        popularity = np.arange(1, num_experts + 1, dtype=float) ** (-zipf_s)
    p = np.asarray(popularity, dtype=float)
    if p.shape != (num_experts,) or (p < 0).any() or p.sum() <= 0:
        raise ValueError("popularity needs one non-negative weight per expert")
    p = p / p.sum()
    q = np.minimum(1.0, top_k * p)
    for _ in range(64):  # water-filling: redistribute mass clipped at 1
        deficit = top_k - q.sum()
        free = q < 1.0
        if deficit <= 1e-12 or not free.any():
            break
        q[free] = np.minimum(1.0, q[free] + deficit * p[free] / p[free].sum())
    return q


def expected_active_experts(num_experts: int, top_k: int, tokens: float, zipf_s: float = 0.0,
                            popularity: tuple[float, ...] | None = None) -> float:
    """Expected number of distinct experts that ``tokens`` tokens activate."""
    if tokens <= 0:
        return 0.0
    if zipf_s == 0.0 and popularity is None:
        return num_experts * (1.0 - (1.0 - top_k / num_experts) ** tokens)
    q = np.asarray(_inclusion(num_experts, top_k, zipf_s, popularity))
    return float(np.sum(1.0 - (1.0 - q) ** tokens))


def expected_tokens_per_expert(num_experts: int, top_k: int, tokens: float, zipf_s: float = 0.0,
                               popularity: tuple[float, ...] | None = None) -> np.ndarray:
    """Expected tokens routed to each expert (in the order of ``popularity``; most popular first for Zipf)."""
    return tokens * np.asarray(_inclusion(num_experts, top_k, zipf_s, popularity))


def load_imbalance(num_experts: int, top_k: int, tokens: float, zipf_s: float = 0.0,
                   popularity: tuple[float, ...] | None = None) -> float:
    """max over experts of expected tokens / mean over active experts (1 = perfectly balanced)."""
    counts = expected_tokens_per_expert(num_experts, top_k, tokens, zipf_s, popularity)
    active = expected_active_experts(num_experts, top_k, tokens, zipf_s, popularity)
    if active <= 0:
        return 1.0
    return float(counts.max() / (tokens * top_k / active))
