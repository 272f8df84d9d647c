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


def solve(t: FlexGenTerms, gbs: int, nb: int, fixed: dict[str, float] | None = None) -> FlexGenChoice | None:
    """FlexGen's LP for (bls = gbs nb, gbs); ``fixed`` pins fractions (its --percent). None if infeasible."""
    c = t.const
    bls = gbs * nb
    s, n, l = t.prompt_tokens, t.gen_tokens, t.layers
    W, K, H, h1, h2, nh = (t.layer_weight_bytes, t.kv_bytes_per_token_layer, t.hidden_bytes_per_token, t.hidden,
                           t.ffn_width, t.num_heads)
    ab = t.act_bytes
    cavg = s + n / 2
    A, F = t.attn_flop_per_token_ctx, t.linear_flop_per_token
    rows, rhs = [], []

    def le(r: np.ndarray, b: float = 0.0) -> None:
        rows.append(r)
        rhs.append(b)

    # prefill: T_pre >= ctog + dtoc, gtoc + ctod, comp
    ctog_p = dict(wc=W / c["ctog_bdw"], wn=W / c["ctog_bdw"], hc=s * H * bls / c["ctog_bdw"],
                  hn=s * H * bls / c["ctog_bdw"])
    dtoc_p = dict(wn=W / c["dtoc_bdw"], hn=s * H * bls / c["dtoc_bdw"])
    gtoc_p = dict(cc=K * (s + 1) * bls / c["gtoc_bdw_cache"], cn=K * (s + 1) * bls / c["gtoc_bdw_cache"],
                  hc=s * H * bls / c["gtoc_bdw_hidden"], hn=s * H * bls / c["gtoc_bdw_hidden"])
    ctod_p = dict(cn=K * (s + 1) * bls / c["ctod_bdw_cache_p"], hn=s * H * bls / c["ctod_bdw_hidden_p"])
    comp_p = bls * s * F / c["mm_flops_p"] + bls * s * s * A / c["bmm_flops_p"]
    le(_row(**ctog_p, Tp=-1) + _row(**dtoc_p))
    le(_row(**gtoc_p, Tp=-1) + _row(**ctod_p))
    le(_row(Tp=-1), -comp_p)
    # decode: T_gen >= ctog + each of gtoc, dtoc, ctod, comp
    ctog_g = _row(wc=W / c["ctog_bdw"], wn=W / c["ctog_bdw"], hc=H * bls / c["ctog_bdw"], hn=H * bls / c["ctog_bdw"])
    gtoc_g = _row(hc=H * bls / c["gtoc_bdw_hidden"], hn=H * bls / c["gtoc_bdw_hidden"])
    dtoc_g = _row(cn=K * bls * cavg / c["dtoc_bdw"], hn=H * bls / c["dtoc_bdw"], wn=W / (0.95 * c["dtoc_bdw"]))
    ctod_g = _row(cn=K * bls / c["ctod_bdw_g"], hn=H * bls / c["ctod_bdw_g"])
    cpu = bls * cavg * A / _cpu_flops(t, gbs)
    comp_g = _row(cg=bls * cavg * A / c["bmm_flops_g"], cc=cpu, cn=cpu)
    for r in (gtoc_g, dtoc_g, ctod_g):
        le(ctog_g + r + _row(Tg=-1))
    le(ctog_g + comp_g + _row(Tg=-1), -bls * F / c["mm_flops_g"])
    # memory, against alpha of each capacity
    gmem, cmem, nmem = (c["alpha"] * x for x in (t.gpu_memory_bytes, t.cpu_memory_bytes, t.disk_bytes))
    inter_p = ab / 2 * (18 * gbs * s * h1 + 2 * gbs * nh * s * s + 2 * gbs * s * h2)
    # GPU prefill: W l wg + s H bls hg + K (s+n) bls l cg + 2 W (1 - wg) + s H gbs (1 - hg) + inter_p
    le(_row(wg=W * l - 2 * W, hg=s * H * bls - s * H * gbs, cg=K * (s + n) * bls * l),
       gmem - 2 * W - s * H * gbs - inter_p)
    # GPU decode: W l wg + H bls hg + K (s+n) bls l cg + 2 W (1 - wg) + H gbs (1 - hg) + K (s+n) gbs cg + inter_g
    inter_g_const = gbs * (7 * H + ab * h2)
    inter_g_cg = gbs * (2 * H + K * (s + n) + ab * nh * (s + n))
    le(_row(wg=W * l - 2 * W, hg=H * bls - H * gbs, cg=K * (s + n) * bls * l + K * (s + n) * gbs + inter_g_cg),
       gmem - 2 * W - H * gbs - inter_g_const)
    # CPU prefill: W l wc + s H bls hc + K s bls l cc + W (1 - wg) + s H gbs (1 - hg)
    le(_row(wc=W * l, wg=-W, hc=s * H * bls, hg=-s * H * gbs, cc=K * s * bls * l), cmem - W - s * H * gbs)
    # CPU decode: W l wc + H bls hc + K (s+n) bls l cc + W wn + 2 H gbs hn + 2 K (s+n) gbs cn + (s+n) gbs nh ab + H gbs
    le(_row(wc=W * l, hc=H * bls, cc=K * (s + n) * bls * l, wn=W, hn=2 * H * gbs, cn=2 * K * (s + n) * gbs),
       cmem - (s + n) * gbs * nh * ab - H * gbs)
    # disk
    le(_row(wn=W * l, hn=s * H * bls, cn=K * (s + n) * bls * l), nmem)

    a_eq = [_row(wg=1, wc=1, wn=1), _row(cg=1, cc=1, cn=1), _row(hg=1, hc=1, hn=1)]
    b_eq = [1.0, 1.0, 1.0]
    for k, v in (fixed or {}).items():
        a_eq.append(_row(**{k: 1.0}))
        b_eq.append(v)
    cost = np.zeros(NVAR)
    cost[TP], cost[TG] = l / bls, l * max(n - 1, 0) / bls
    bounds = [(0.0, 0.0) if v == "hn" else (0.0, 1.0) for v in VARS] + [(0.0, None), (0.0, None)]
    a_ub, b_ub = np.array(rows), np.array(rhs)
    scale = np.maximum(np.abs(a_ub).max(axis=1), np.abs(b_ub))
    scale[scale == 0] = 1.0
    x = lp.solve(cost, a_ub / scale[:, None], b_ub / scale, np.array(a_eq), np.array(b_eq), bounds)
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

    def solved(t_: FlexGenTerms, gbs_: int, nb_: int, fixed_: dict | None) -> FlexGenChoice | None:
        """One LP per (gbs, n_b) of this search: the bisections of the two scans share them."""
        if (gbs_, nb_) not in lps:
            lps[gbs_, nb_] = solve(t_, gbs_, nb_, fixed_)
        return lps[gbs_, nb_]

    def keep(p: FlexGenChoice | None) -> None:
        nonlocal best
        if p is not None and (best is None or p.throughput_tok_s > best.throughput_tok_s):
            best = p

    for gbs in ([gpu_batch] if gpu_batch else gpu_batch_sizes()):
        if num_gpu_batches or batch:
            nb = num_gpu_batches or math.ceil(batch / gbs)
            p = solve(t, gbs, nb, fixed)
            if p is None and (num_gpu_batches or solve(t, gbs, 1, fixed) is None):
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
