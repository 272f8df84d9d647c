"""MoE-Lightning's own policy optimizer, as its artifact runs it (``fastmoe/backend/optimizer.py``).

What the deployed MoE-Lightning picks, not what moesim's physics would pick: the artifact enumerates the
micro-batch size mu (its ``gbs``: 1, 2, 3, 4, then +32 each step), finds for each mu the most micro-batches
that fit in memory (its doubling + bisection, i.e. the largest feasible n_ub, memory growing with N), scans
n_ub = 1, 2, ... up to it and stops at the first drop of its estimated throughput, and keeps the best (ties:
the later one). Every (N = mu n_ub, mu) is priced by a per-layer decode estimate with the artifact's own
hardware constants (``HardwareConfig``; ``systems_db/moe-lightning.yaml``) and weight placement w_g solved
for that (N, mu); the KV cache always lives on the CPU (``gattn = 0``: c_g = 0, c_c = 1).

Per layer, decode (their Eq. 12-14 as the artifact codes them)::

    ctog  = W_e (1 - w_g) / B_ctog                                   expert weights streamed
    gpu_T = n_ub max( 2 mu k P_e / F_gpu,  (W_e + b mu (h1 + h2)) / B_gpu )   MoE FFN per micro-batch,
                                                                    reading ALL experts' weights
    cpu_T = n_ub max( A_flop(mu, s + n) / F_cpu,  A_byte(mu, s + n) / B_cpu ) CPU attention
    T     = max(ctog, gpu_T, cpu_T),      throughput = N n / (T (n - 1) l)

Memory (bytes; W_a: attention weights of all layers, W_e: one layer's experts, H: one token's hidden
state, K: one token's KV of one layer; the artifact's fp16 sizes)::

    GPU  W_a + W_e l w_g + max(2 H mu s + H N s + 2 K mu s,  2 H N)          (prefill, decode homes)
         + 2 W_e (1 - w_g) + f b mu k s (h1 + 3 h2)                          <= g_cap M_gpu
    CPU  W_e l (1 - w_g) + K (s + n) N l + H N s + 2 W_e (1 - w_g)           <= c_cap M_cpu

with g_cap = 0.86, c_cap = 0.8, f = 1.2 (the prefill working set of the fused MoE kernel, which caps mu),
the weights' pinned staging (two layers' CPU part) counted beside their home. T falls as w_g rises, so the
LP's optimum is the largest feasible w_g (a closed form here, no solver).

The sizes come from moesim's model spec (for Mixtral they are the artifact's formulas); the artifact's
pure constants (caps, f, the mu grid) are in ``systems_db/moe-lightning.yaml`` with their source.
Requests beyond one batch are not the optimizer's concern: ``max_batch`` (the requests) bounds N here so a
batch holds no more sequences than there are.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HRMTerms:
    """The sizes and rates the optimizer sees (bytes, FLOP, bytes/s, FLOP/s)."""

    layers: int
    prompt_tokens: int
    gen_tokens: int
    attention_bytes_all_layers: float  # W_a
    expert_bytes_per_layer: float  # W_e (every expert of a layer)
    hidden_bytes_per_token: float  # H
    kv_bytes_per_token_layer: float  # K
    act_bytes: float  # b, bytes per activation element
    hidden: int  # h1
    expert_intermediate: int  # h2
    top_k: int
    ffn_flop_per_token: float  # 2 k P_e (+ shared experts)
    attn_flop_per_token_ctx: float  # CPU attention FLOP per sequence per context token
    attn_bytes_per_seq_fixed: float  # query + output bytes per sequence
    gpu_memory_bytes: float
    cpu_memory_bytes: float
    ctog_bytes_per_s: float
    gpu_bytes_per_s: float
    cpu_bytes_per_s: float
    gpu_flop_per_s: float
    cpu_flop_per_s: float
    gpu_cap: float = 0.86
    cpu_cap: float = 0.8
    prefill_working_factor: float = 1.2


@dataclass(frozen=True)
class HRMPolicy:
    micro_batch: int
    num_micro_batches: int
    gpu_weight_fraction: float
    throughput_tok_s: float  # the optimizer's estimate (decode only)
    layer_time_s: float

    @property
    def batch(self) -> int:
        return self.micro_batch * self.num_micro_batches


def weight_fraction_range(t: HRMTerms, mu: int, n_ub: int) -> tuple[float, float] | None:
    """[w_g low, w_g high] allowed by the GPU and CPU rows for (mu, n_ub); None when empty."""
    s, n, l = t.prompt_tokens, t.gen_tokens, t.layers
    N = mu * n_ub
    H, K, We = t.hidden_bytes_per_token, t.kv_bytes_per_token_layer, t.expert_bytes_per_layer
    inter = t.prefill_working_factor * t.act_bytes * mu * t.top_k * s * (t.hidden + 3 * t.expert_intermediate)
    home = max(2 * H * mu * s + H * N * s + 2 * K * mu * s, 2 * H * N)
    gpu_room = t.gpu_cap * t.gpu_memory_bytes - t.attention_bytes_all_layers - home - 2 * We - inter
    # GPU: W_e (l - 2) w_g <= gpu_room
    if l > 2:
        hi = min(1.0, gpu_room / (We * (l - 2))) if We > 0 else (1.0 if gpu_room >= 0 else -1.0)
    else:
        hi = 1.0 if gpu_room >= 0 else -1.0
    cpu_room = t.cpu_cap * t.cpu_memory_bytes - K * (s + n) * N * l - H * N * s
    # CPU: W_e (l + 2) (1 - w_g) <= cpu_room
    lo = max(0.0, 1.0 - cpu_room / (We * (l + 2))) if We > 0 else (0.0 if cpu_room >= 0 else 2.0)
    if hi < lo or hi < 0:
        return None
    return lo, hi


def layer_time_s(t: HRMTerms, mu: int, n_ub: int, w_g: float) -> float:
    """T = max(ctog, gpu_T, cpu_T) of one decode layer (see the module docstring)."""
    c = t.prompt_tokens + t.gen_tokens
    ctog = t.expert_bytes_per_layer * (1 - w_g) / t.ctog_bytes_per_s
    mlp = max(mu * t.ffn_flop_per_token / t.gpu_flop_per_s,
              (t.expert_bytes_per_layer + t.act_bytes * mu * (t.hidden + t.expert_intermediate)) / t.gpu_bytes_per_s)
    attn = max(mu * c * t.attn_flop_per_token_ctx / t.cpu_flop_per_s,
               mu * (t.attn_bytes_per_seq_fixed + c * t.kv_bytes_per_token_layer) / t.cpu_bytes_per_s)
    return max(ctog, n_ub * mlp, n_ub * attn)


def evaluate(t: HRMTerms, mu: int, n_ub: int) -> HRMPolicy | None:
    """The optimizer's LP for (N = mu n_ub, mu): the largest feasible w_g and the throughput; None if infeasible."""
    rng = weight_fraction_range(t, mu, n_ub)
    if rng is None:
        return None
    w_g = rng[1]
    T = layer_time_s(t, mu, n_ub, w_g)
    n = t.gen_tokens
    tput = mu * n_ub * n / (T * max(n - 1, 1) * t.layers)
    return HRMPolicy(mu, n_ub, w_g, tput, T)


def max_micro_batches(t: HRMTerms, mu: int, limit: int) -> int:
    """The most micro-batches of mu that fit (memory grows with N), at most ``limit``; 0 if not one."""
    if evaluate(t, mu, 1) is None:
        return 0
    lo, hi = 1, 1
    while hi < limit and evaluate(t, mu, min(2 * hi, limit)) is not None:
        lo = hi = min(2 * hi, limit)
    if hi >= limit:
        return limit
    hi = min(2 * hi, limit)  # infeasible
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if evaluate(t, mu, mid) is not None else (lo, mid)
    return lo


def micro_batch_sizes(first: tuple[int, ...], step: int):
    """The artifact's mu sequence: the ``first`` values, then +``step`` from the last of them."""
    yield from first
    mu = first[-1]
    while True:
        mu += step
        yield mu


def search(t: HRMTerms, max_batch: int, first: tuple[int, ...] = (1, 2, 3, 4), step: int = 32,
           micro_batch: int | None = None, num_micro_batches: int | None = None,
           batch: int | None = None) -> HRMPolicy | None:
    """The optimizer's choice (see the module docstring). ``micro_batch`` / ``num_micro_batches`` fix mu /
    n_ub as the artifact's ``--gbs`` / ``--num-gb`` do; ``batch`` fixes N (n_ub = ceil(N / mu) for each mu
    tried). None when no mu fits."""
    best: HRMPolicy | None = None

    def keep(p: HRMPolicy | None) -> None:
        nonlocal best
        if p is not None and (best is None or p.throughput_tok_s >= best.throughput_tok_s):
            best = p

    sizes = [micro_batch] if micro_batch else micro_batch_sizes(first, step)
    for mu in sizes:
        if batch is not None or num_micro_batches is not None:
            nb = num_micro_batches or -(-batch // mu)
            p = evaluate(t, mu, nb)
            if p is None and (num_micro_batches or evaluate(t, mu, 1) is None):
                break  # as the artifact with --num-gb: the first infeasible mu ends the scan
            keep(p)
            if micro_batch or (batch is not None and mu >= batch):
                break
            continue
        limit = max(1, max_batch // mu)
        nb_ub = max_micro_batches(t, mu, limit)
        if nb_ub == 0:
            break
        prev = 0.0
        for nb in range(1, nb_ub + 1):
            p = evaluate(t, mu, nb)
            if p.throughput_tok_s < prev:
                break
            prev = p.throughput_tok_s
            keep(p)
        if mu >= max_batch:
            break
    return best
