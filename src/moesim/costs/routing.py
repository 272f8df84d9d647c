"""How many experts a batch activates, and how tokens spread over them.

Uniform router: each token picks k of E experts uniformly without replacement, so one
expert is missed by one token with probability (1 - k/E) and by T independent tokens with
(1 - k/E)^T. Expected distinct experts:

    E[n_active] = E * (1 - (1 - k/E)^T)

Skewed router (Zipf exponent s): expert i is chosen with popularity p_i ∝ i^-s; a token
includes expert i with probability q_i = min(1, lambda p_i), lambda such that sum q_i = k (no expert can be
picked twice by one token: the mass above 1 goes to the others in proportion to their popularity), and

    E[n_active] = sum_i 1 - (1 - q_i)^T ,    E[tokens of expert i] = T q_i.

A measured per-expert histogram can be passed as ``popularity`` instead of a Zipf exponent.

lambda in closed form: with the experts sorted by popularity (p_(1) >= p_(2) >= ...), the m most popular are
saturated (q = 1) for the least m such that (k - m) p_(m+1) <= sum_{j>m} p_(j); then

    q_(i) = 1 (i <= m),    q_(i) = (k - m) r_i / sum_{j>m} r_j  (i > m),    r_i = p_(i) / p_(m+1) <= 1,

and m <= k - 1 always holds (at m = k - 1 the condition reads p_(k) <= p_(k) + ...). The ratios r_i are
computed from log-popularities, for Zipf exp(-s (ln i - ln(m+1))), so no p_i under- or overflows: for s -> inf
(and 1e308 is a valid exponent) r_i -> 0 for i > m + 1 and the limit comes out exactly, every token on the k
most popular experts (q = 1 for them, 0 for the rest: E[n_active] = k). Experts a histogram never saw
(p_i = 0) share what is left equally among themselves, the limit of an infinitesimal uniform floor.
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
    """Probability q_i that one token routes to expert i (sums to top_k; closed form in the module docstring)."""
    if popularity is None:
        # log-popularity of Zipf up to a constant; the differences below are formed as s (ln i - ln j)
        log_rank = np.log(np.arange(1, num_experts + 1, dtype=float))
        order = np.arange(num_experts)

        def log_ratio(ref: int) -> np.ndarray:  # ln(p_i / p_ref) for the experts after ref, in order
            if not zipf_s:
                return np.zeros(num_experts - ref)
            with np.errstate(over="ignore"):  # -inf where s ln(i / ref) overflows: a ratio of 0, exactly the limit
                return -zipf_s * (log_rank[ref:] - log_rank[ref])
    else:
        p = np.asarray(popularity, dtype=float)
        if p.shape != (num_experts,) or np.isnan(p).any() or (p < 0).any() or p.sum() <= 0:
            raise ValueError("popularity needs one non-negative weight per expert")
        if np.isinf(p).any():  # infinitely popular experts outweigh every finite one (the limit), equally
            p = np.isinf(p).astype(float)
        order = np.argsort(-p, kind="stable")
        with np.errstate(divide="ignore"):
            log_p = np.log(p[order])

        def log_ratio(ref: int) -> np.ndarray:
            if np.isneginf(log_p[ref]):  # only unseen experts from here on: equally (un)popular
                return np.zeros(num_experts - ref)
            return log_p[ref:] - log_p[ref]
    if not 0 < top_k <= num_experts:
        raise ValueError(f"top_k must be in 1..{num_experts}, got {top_k}")
    q_sorted = np.ones(num_experts)
    for m in range(top_k):
        r = np.exp(log_ratio(m))  # r[0] = 1, the rest in [0, 1]
        total = r.sum()
        if top_k - m <= total:
            q_sorted[m:] = (top_k - m) * r / total
            break
    q = np.empty(num_experts)
    q[order] = np.minimum(q_sorted, 1.0)
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
