"""FlexGen's own policy search: its cost model, LP and enumeration (FlexLLMGen ``experimental/cost_model.py``).

What the deployed FlexGen's policy script picks, with FlexGen's fitted hardware constants
(``systems_db/flexgen.yaml``: FlexGen's defaults, fitted "using gradient descent by collecting real run data
points" on a Google Cloud T4 for OPT models). For a block of bls = gbs x n_b sequences and GPU batch gbs,
an LP over the placement fractions (weights w_g, w_c, w_n; KV c_g, c_c, c_n; activations h_g, h_c, h_n = 0:
the runtime has no disk activations) minimises T / bls with T = T_pre l + T_gen (n - 1) l and, per layer
(W: a layer's weights, K: a token's KV of one layer, H: a token's hidden state, F: linear FLOP per token,
A: attention FLOP per token per context token, s prompt, n generated, c = s + n / 2)::

    T_pre >= ctog_p + dtoc_p,  gtoc_p + ctod_p,  comp_p       (the code sums the disk legs with the PCIe ones)
    T_gen >= ctog_g + max(gtoc_g, dtoc_g, ctod_g, comp_g)

    ctog_p = [W (w_c + w_n) + s H bls (h_c + h_n)] / B_ctog
    gtoc_p = K (s + 1) bls (c_c + c_n) / B_gtoc,cache + s H bls (h_c + h_n) / B_gtoc,hidden
    dtoc_p = [W w_n + s H bls h_n] / B_dtoc
    ctod_p = K (s + 1) bls c_n / B_ctod,cache,p + s H bls h_n / B_ctod,hidden,p
    comp_p = bls s F / F_mm,p + bls s^2 A / F_bmm,p
    ctog_g = [W (w_c + w_n) + H bls (h_c + h_n)] / B_ctog
    gtoc_g = H bls (h_c + h_n) / B_gtoc,hidden
    dtoc_g = [K bls c c_n + H bls h_n] / B_dtoc + W w_n / (0.95 B_dtoc)
    ctod_g = [K bls c_n + H bls h_n] / B_ctod,g
    comp_g = bls F / F_mm,g + bls c A c_g / F_bmm,g + bls c A (c_c + c_n) / F_cpu(gbs, h1)

F_cpu = cpu_flops max(0.1, 1 + c1 a b - c2 a - c3 b), a = max(0, log2(64 / gbs)), b = max(0, log2(4096 / h1)).
The cost model prices attention over off-GPU KV on the CPU (its policies carry ``cpu_cache_compute=True``);
whether the runtime does so is the user's ``--cpu-cache-compute`` flag (moesim: ``cpu_attention``).

Peak memory, each against alpha = 0.8 of its capacity (GPU, CPU, disk), in prefill and in decode: the homes
(W l w_x + hidden states + K (s + n) bls l c_x), the double-buffered non-resident weights 2 W (1 - w_g), a GPU
batch's activations and the prefill working set 18 gbs s h1 + 2 gbs nh s^2 + 2 gbs s h2 bytes (FlexGen's fp16
tensors: q, k, v, scores, outputs, MLP), with the decode and CPU-side working sets of the script.

Search: gbs = 1, 2, 3, 4, then doubling; for each, the most GPU batches n_b with a feasible LP (doubling then
bisection); n_b = 1, 2, ... scanned until the estimated throughput bls n / T drops; the best kept (ties: the
earlier). FlexGen's sizes are OPT's (8 h1^2 + 4 h1 h2 weights, 4 h1 KV bytes per token); here they are
moesim's for the model (every expert of a layer is loaded: FlexGen is not MoE-aware), the FLOP count the
active one (attention + top-k experts). ``max_batch`` (the requests) bounds bls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .shared import lp

VARS = ("wg", "wc", "wn", "cg", "cc", "cn", "hg", "hc", "hn")
TP, TG = len(VARS), len(VARS) + 1
NVAR = len(VARS) + 2
_IV = {v: i for i, v in enumerate(VARS)}


@dataclass(frozen=True)
class FlexGenTerms:
    layers: int
    prompt_tokens: int
    gen_tokens: int
    layer_weight_bytes: float  # W
    kv_bytes_per_token_layer: float  # K
    hidden_bytes_per_token: float  # H
    act_bytes: float
    hidden: int  # h1
    ffn_width: int  # h2 (the widest FFN activation of a token)
    num_heads: int
    linear_flop_per_token: float  # F
    attn_flop_per_token_ctx: float  # A
    gpu_memory_bytes: float
    cpu_memory_bytes: float
    disk_bytes: float
    const: dict  # FlexGen's fitted constants (bytes/s, FLOP/s, c1..c3, alpha)


@dataclass(frozen=True)
class FlexGenChoice:
    gpu_batch: int
    num_gpu_batches: int
    fractions: dict[str, float]
    throughput_tok_s: float  # the cost model's estimate
    block_time_s: float

    @property
    def block(self) -> int:
        return self.gpu_batch * self.num_gpu_batches


def _row(**coef: float) -> np.ndarray:
    r = np.zeros(NVAR)
    for k, v in coef.items():
        r[TP if k == "Tp" else TG if k == "Tg" else _IV[k]] += v
    return r


def _cpu_flops(t: FlexGenTerms, gbs: int) -> float:
    c = t.const
    a = max(0.0, math.log2(64 / gbs))
    b = max(0.0, math.log2(4096 / t.hidden))
    return c["cpu_flops"] * max(0.1, 1 + c["c1"] * a * b - c["c2"] * a - c["c3"] * b)


_ROWS = 12  # inequality rows of the LP: 3 prefill time, 4 decode time, 4 memory, 1 disk


@dataclass(frozen=True)
class LPStructure:
    """What FlexGen's LP keeps for every (gbs, n_b) of one search (its terms and --percent): the inequality
    matrix's entries that do not depend on the batch, the equality rows and the bounds. :func:`solve` fills in
    the batch-dependent entries of a copy (the same expressions, in the same order, as written row by row)."""

    template: np.ndarray
    a_eq: np.ndarray
    b_eq: np.ndarray
    bounds: tuple[tuple[float, float | None], ...]


def structure(t: FlexGenTerms, fixed: dict[str, float] | None = None) -> LPStructure:
    """The batch-independent part of :func:`solve`'s LP (module docstring)."""
    W, l = t.layer_weight_bytes, t.layers
    c = t.const
    a = np.zeros((_ROWS, NVAR))
    wg, wc, wn = _IV["wg"], _IV["wc"], _IV["wn"]
    a[0, TP] = a[1, TP] = a[2, TP] = -1.0
    a[3:7, TG] = -1.0
    a[0, wc] = W / c["ctog_bdw"]
    a[0, wn] = W / c["ctog_bdw"] + W / c["dtoc_bdw"]
    a[3:7, wc] = W / c["ctog_bdw"]
    a[3:7, wn] = W / c["ctog_bdw"]
    a[4, wn] = W / c["ctog_bdw"] + W / (0.95 * c["dtoc_bdw"])
    a[7, wg] = a[8, wg] = W * l - 2 * W
    a[9, wc] = a[10, wc] = W * l
    a[9, wg] = -W
    a[10, wn] = W
    a[11, wn] = W * l
    a_eq = [_row(wg=1, wc=1, wn=1), _row(cg=1, cc=1, cn=1), _row(hg=1, hc=1, hn=1)]
    b_eq = [1.0, 1.0, 1.0]
    for k, v in (fixed or {}).items():
        a_eq.append(_row(**{k: 1.0}))
        b_eq.append(v)
    bounds = tuple((0.0, 0.0) if v == "hn" else (0.0, 1.0) for v in VARS) + ((0.0, None), (0.0, None))
    return LPStructure(a, np.array(a_eq), np.array(b_eq), bounds)


def solve(t: FlexGenTerms, gbs: int, nb: int, fixed: dict[str, float] | None = None,
          lp_structure: LPStructure | None = None) -> FlexGenChoice | None:
    """FlexGen's LP for (bls = gbs nb, gbs); ``fixed`` pins fractions (its --percent); ``lp_structure``:
    :func:`structure` of (t, fixed), built once by a search. None if infeasible."""
    st = lp_structure or structure(t, fixed)
    c = t.const
    bls = gbs * nb
    s, n, l = t.prompt_tokens, t.gen_tokens, t.layers
    W, K, H, h1, h2, nh = (t.layer_weight_bytes, t.kv_bytes_per_token_layer, t.hidden_bytes_per_token, t.hidden,
                           t.ffn_width, t.num_heads)
    ab = t.act_bytes
    cavg = s + n / 2
    A, F = t.attn_flop_per_token_ctx, t.linear_flop_per_token
    a = st.template.copy()
    b = np.zeros(_ROWS)
    wg, cg, cc, cn, hg, hc, hn = (_IV[v] for v in ("wg", "cg", "cc", "cn", "hg", "hc", "hn"))
    # prefill: T_pre >= ctog + dtoc, gtoc + ctod, comp
    a[0, hc] = s * H * bls / c["ctog_bdw"]
    a[0, hn] = s * H * bls / c["ctog_bdw"] + s * H * bls / c["dtoc_bdw"]
    a[1, cc] = K * (s + 1) * bls / c["gtoc_bdw_cache"]
    a[1, cn] = K * (s + 1) * bls / c["gtoc_bdw_cache"] + K * (s + 1) * bls / c["ctod_bdw_cache_p"]
    a[1, hc] = s * H * bls / c["gtoc_bdw_hidden"]
    a[1, hn] = s * H * bls / c["gtoc_bdw_hidden"] + s * H * bls / c["ctod_bdw_hidden_p"]
    b[2] = -(bls * s * F / c["mm_flops_p"] + bls * s * s * A / c["bmm_flops_p"])
    # decode: T_gen >= ctog + each of gtoc, dtoc, ctod, comp (rows 3-6; ctog's weight terms in the template)
    ctog_h = H * bls / c["ctog_bdw"]
    a[3:7, hc] = ctog_h
    a[3, hc] = ctog_h + H * bls / c["gtoc_bdw_hidden"]
    a[3, hn] = ctog_h + H * bls / c["gtoc_bdw_hidden"]
    a[4, cn] = K * bls * cavg / c["dtoc_bdw"]
    a[4, hn] = ctog_h + H * bls / c["dtoc_bdw"]
    a[5, cn] = K * bls / c["ctod_bdw_g"]
    a[5, hn] = ctog_h + H * bls / c["ctod_bdw_g"]
    cpu = bls * cavg * A / _cpu_flops(t, gbs)
    a[6, cg] = bls * cavg * A / c["bmm_flops_g"]
    a[6, cc] = a[6, cn] = cpu
    a[6, hn] = ctog_h
    b[6] = -bls * F / c["mm_flops_g"]
    # memory, against alpha of each capacity
    gmem, cmem, nmem = (c["alpha"] * x for x in (t.gpu_memory_bytes, t.cpu_memory_bytes, t.disk_bytes))
    inter_p = ab / 2 * (18 * gbs * s * h1 + 2 * gbs * nh * s * s + 2 * gbs * s * h2)
    # GPU prefill: W l wg + s H bls hg + K (s+n) bls l cg + 2 W (1 - wg) + s H gbs (1 - hg) + inter_p
    a[7, hg] = s * H * bls - s * H * gbs
    a[7, cg] = K * (s + n) * bls * l
    b[7] = gmem - 2 * W - s * H * gbs - inter_p
    # GPU decode: W l wg + H bls hg + K (s+n) bls l cg + 2 W (1 - wg) + H gbs (1 - hg) + K (s+n) gbs cg + inter_g
    inter_g_const = gbs * (7 * H + ab * h2)
    inter_g_cg = gbs * (2 * H + K * (s + n) + ab * nh * (s + n))
    a[8, hg] = H * bls - H * gbs
    a[8, cg] = K * (s + n) * bls * l + K * (s + n) * gbs + inter_g_cg
    b[8] = gmem - 2 * W - H * gbs - inter_g_const
    # CPU prefill: W l wc + s H bls hc + K s bls l cc + W (1 - wg) + s H gbs (1 - hg)
    a[9, hc] = s * H * bls
    a[9, hg] = -s * H * gbs
    a[9, cc] = K * s * bls * l
    b[9] = cmem - W - s * H * gbs
    # CPU decode: W l wc + H bls hc + K (s+n) bls l cc + W wn + 2 H gbs hn + 2 K (s+n) gbs cn + (s+n) gbs nh ab + H gbs
    a[10, hc] = H * bls
    a[10, cc] = K * (s + n) * bls * l
    a[10, hn] = 2 * H * gbs
    a[10, cn] = 2 * K * (s + n) * gbs
    b[10] = cmem - (s + n) * gbs * nh * ab - H * gbs
    # disk
    a[11, hn] = s * H * bls
    a[11, cn] = K * (s + n) * bls * l
    b[11] = nmem

    cost = np.zeros(NVAR)
    cost[TP], cost[TG] = l / bls, l * max(n - 1, 0) / bls
    scale = np.maximum(np.abs(a).max(axis=1), np.abs(b))
    scale[scale == 0] = 1.0
    x = lp.solve(cost, a / scale[:, None], b / scale, st.a_eq, st.b_eq, list(st.bounds))
    if x is None:
        return None
    T = x[TP] * l + x[TG] * max(n - 1, 0) * l
    frac = {v: float(min(1.0, max(0.0, x[_IV[v]]))) + 0.0 for v in VARS}
    for group in (("wg", "wc", "wn"), ("cg", "cc", "cn"), ("hg", "hc", "hn")):
        tot = sum(frac[v] for v in group)
        for v in group:
            frac[v] = frac[v] / tot
    return FlexGenChoice(gbs, nb, frac, bls * n / T if T > 0 else math.inf, T)


def gpu_batch_sizes():
    """FlexGen's gbs sequence: 1, 2, 3, 4, then doubling."""
    gbs = 1
    while True:
        yield gbs
        gbs = gbs + 1 if gbs < 4 else gbs * 2


def max_gpu_batches(t: FlexGenTerms, gbs: int, limit: int, fixed: dict | None = None, solver=None) -> int:
    """The most GPU batches of ``gbs`` with a feasible LP (doubling then bisection), at most ``limit``
    (``solver``: :func:`solve` or a memoised one sharing its LPs with :func:`first_drop`)."""
    solver = solver or solve
    if solver(t, gbs, 1, fixed) is None:
        return 0
    lo = 1
    while lo < limit and solver(t, gbs, min(2 * lo, limit), fixed) is not None:
        lo = min(2 * lo, limit)
    if lo >= limit:
        return limit
    hi = min(2 * lo, limit)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if solver(t, gbs, mid, fixed) is not None else (lo, mid)
    return lo


def first_drop(t: FlexGenTerms, gbs: int, nb_ub: int, fixed: dict | None = None, solver=None) -> FlexGenChoice:
    """Where FlexGen's scan n_b = 1, 2, ..., nb_ub stops: the last n_b before the estimated throughput first
    drops (nb_ub if it never does). Found by bisection on "the next n_b is worse", which gives the scan's stop
    wherever the estimate rises and then falls (unimodal in n_b, as FlexGen's block time is: one more GPU batch
    shares the weight traffic further but adds its own I/O and compute); a few LPs instead of up to nb_ub."""
    memo: dict[int, FlexGenChoice] = {}
    solver = solver or solve

    def at(nb: int) -> FlexGenChoice:
        if nb not in memo:
            memo[nb] = solver(t, gbs, nb, fixed)
        return memo[nb]

    def drops(nb: int) -> bool:
        return nb < nb_ub and at(nb + 1).throughput_tok_s < at(nb).throughput_tok_s

    lo, hi = 1, nb_ub  # the answer is in [lo, hi]: the least nb with drops(nb), or nb_ub
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if drops(mid) else (mid + 1, hi)
    return at(lo)


def search(t: FlexGenTerms, max_batch: int, gpu_batch: int | None = None, num_gpu_batches: int | None = None,
           fixed: dict[str, float] | None = None, batch: int | None = None) -> FlexGenChoice | None:
    """FlexGen's policy search (module docstring); ``gpu_batch`` / ``num_gpu_batches`` / ``fixed`` as its
    --gpu-batch-size / --num-gpu-batches / --percent; ``batch`` fixes bls (n_b = ceil(bls / gbs))."""
    best: FlexGenChoice | None = None
    lps: dict[tuple[int, int], FlexGenChoice | None] = {}
    st = structure(t, fixed)  # one LP structure for every (gbs, n_b) of this search

    def solved(t_: FlexGenTerms, gbs_: int, nb_: int, fixed_: dict | None) -> FlexGenChoice | None:
        """One LP per (gbs, n_b) of this search: the bisections of the two scans share them."""
        if (gbs_, nb_) not in lps:
            lps[gbs_, nb_] = solve(t_, gbs_, nb_, fixed_, st)
        return lps[gbs_, nb_]

    def keep(p: FlexGenChoice | None) -> None:
        nonlocal best
        if p is not None and (best is None or p.throughput_tok_s > best.throughput_tok_s):
            best = p

    for gbs in ([gpu_batch] if gpu_batch else gpu_batch_sizes()):
        if num_gpu_batches or batch:
            nb = num_gpu_batches or math.ceil(batch / gbs)
            p = solved(t, gbs, nb, fixed)
            if p is None and (num_gpu_batches or solved(t, gbs, 1, fixed) is None):
                break
            keep(p)
            if gpu_batch or (batch and gbs >= batch):
                break
            continue
        nb_ub = max_gpu_batches(t, gbs, max(1, max_batch // gbs), fixed, solved)
        if nb_ub == 0:
            break
        keep(first_drop(t, gbs, nb_ub, fixed, solved))
        if gpu_batch or gbs >= max_batch:
            break
    return best
