"""Metrics, as MoE-CAP defines them (arXiv 2412.07067, section 4), plus their dense counterparts.

Throughput and latency, for an offline workload of R requests (prompt P, generation G)
processed in batches of B:
    prefill_tok_s    = B P / prefill time of a batch
    decode_tok_s     = B G / decode time of a batch
    throughput_tok_s = R G / total time              (generation throughput)
    TTFT             = prefill time of a batch        TPOT = decode time of a batch / G

Sparsity-aware utilisation of one decode step (batch B, context L, step time = TPOT):
    S-MBU = (S_activated + S_KV) / (TPOT * BW_peak)                                     (Eq. 4)
        S_activated = bytes of the weights the step really reads: attention, dense FFNs,
                      shared experts, routers, LM head, and E[n_active(B)] routed experts per
                      MoE layer (expected distinct experts of the batch, see costs.routing)
        S_KV        = B L bytes_KV(token)  (windowed layers capped at their window)
    S-MFU = T_token * F_token / F_peak                                                  (Eq. 5)
        F_token = F_attn + 2 N_router + 2 (k N_expert + N_shared) + 2 N_dense_ffn, per layer summed;
        F_attn  = 2 N_attn + 2 H L_eff (d_qk + d_v)  (projections + core at the step's context)
The peaks are those of the devices that do the reading and the computing (:class:`HostShare` says what
the host CPU does; the GPUs do the rest):
    BW_peak = n_gpu B_gpu [GPUs read]  + B_host [CPU reads]       (B_host: host DRAM bandwidth)
    F_peak  = n_gpu F_gpu [GPUs compute] + F_cpu [CPU computes]   (dense peaks of the compute dtypes)
For a GPU-only system this is MoE-CAP's n_gpu * B_peak and n_gpu * F_peak. Each device reads at most its
peak bandwidth times the step time and computes at most its peak FLOP/s times it, so the sum of what the
devices read (compute) over the sum of their peaks is in (0, 1]: S-MBU and S-MFU are utilisations of
the hardware that does the work. Dividing the CPU's reads by the GPU's bandwidth instead (as before)
gave S-MBU up to 1.2 for KTransformers on an L4, whose host DRAM is faster than its GPU memory.
Dense-equivalent counterparts (what the dense definitions would say, same peaks):
    MBU = (all weight bytes + S_KV) / (TPOT * BW_peak);  MFU uses 2 N_total per token.
They count every expert, read or not, so for an MoE they can exceed 1 (MBU up to 7 in the fuzz): that is
how far the dense definitions mislead; they are reported as dense-equivalent, never clamped.
"""

from __future__ import annotations

from dataclasses import dataclass

from .costs import cpu_compute_dtype, effective_span
from .modules import Context


@dataclass(frozen=True)
class HostShare:
    """The part of a pass the host CPU reads and computes (the GPUs do the rest), for S-MBU and S-MFU.

    ``layers``: layers the CPU runs whole, their weights and their KV (llama.cpp's CPU layers);
    ``routed_experts``: every MoE layer's routed experts run on the CPU (KTransformers);
    ``routed_expert_layers``: the MoE layers whose routed experts alone run on the CPU (llama.cpp's dense-only
    layers: attention, router and shared experts on the GPU, routed experts in host memory);
    ``kv_fraction``: the share of the other layers' KV the CPU attends over (CPU attention: FlexGen(c),
    MoE-Gen's omega, MoE-Lightning), with the attention core's FLOPs; ``lm_head``: the output layer on the CPU.
    """

    layers: tuple[int, ...] = ()
    routed_experts: bool = False
    routed_expert_layers: tuple[int, ...] = ()
    kv_fraction: float = 0.0
    lm_head: bool = False

    def gpu_idle(self, ctx: Context) -> bool:
        """Whether the CPU does the whole pass (the GPUs neither read nor compute any of it)."""
        return self.lm_head and len(set(self.layers)) == ctx.model.num_layers


GPU_ONLY = HostShare()


def activated_weight_bytes(ctx: Context, tokens: float) -> float:
    """Weight bytes a forward pass over ``tokens`` tokens reads (MoE-CAP's S_activated, extended
    with routers and LM head which are read too; the embedding table is only gathered from)."""
    m = ctx.model
    total = m.num_layers * ctx.attention_weight_bytes + m.num_dense_layers * ctx.dense_ffn_weight_bytes
    total += m.lm_head_params * ctx.wbytes
    if m.moe:
        total += m.num_moe_layers * (
            ctx.shared_weight_bytes + ctx.router_weight_bytes + ctx.active_experts(tokens) * ctx.expert_weight_bytes
        )
    return total


def kv_read_bytes(ctx: Context, seqs: float, context_tokens: int) -> float:
    return seqs * context_tokens * ctx.kv_bytes_per_token(context_tokens)


def attention_core_flop_per_token(ctx: Context, context_tokens: int) -> float:
    m = ctx.model
    a = m.attention
    total = 0.0
    for i in range(m.num_layers):
        windowed = a.is_windowed(i)
        span = effective_span(1, context_tokens, True, a.window_kind if windowed else None,
                              a.window_tokens if windowed else None)
        total += 2.0 * a.num_heads * span * (a.qk_head_dim + a.out_head_dim)
    return total


def sparse_flop_per_token(ctx: Context, context_tokens: int) -> float:
    """MoE-CAP's S-F_token (Eq. 5) at a given context length."""
    m = ctx.model
    flop = 2.0 * m.num_layers * m.attention_params + attention_core_flop_per_token(ctx, context_tokens)
    flop += 2.0 * m.num_dense_layers * m.dense_ffn_params
    if m.moe:
        flop += m.num_moe_layers * 2.0 * (m.router_params + m.moe.top_k * m.expert_params + m.shared_expert_params)
    return flop


def dense_flop_per_token(ctx: Context, context_tokens: int) -> float:
    m = ctx.model
    return 2.0 * (m.total_params - m.embedding_params) + attention_core_flop_per_token(ctx, context_tokens)


def peak_flop_per_s(ctx: Context) -> float:
    """Dense peak FLOP/s of the platform's GPUs in the dtype the experts compute in."""
    from .costs import compute_dtype

    gpu = ctx.platform.gpu
    return gpu.peak_for(compute_dtype(ctx.edtype, gpu))[0] * ctx.platform.num_gpus


def peak_bandwidth_bytes_per_s(ctx: Context) -> float:
    return ctx.platform.gpu.memory_bandwidth_bytes_per_s * ctx.platform.num_gpus


def cpu_peak_flop_per_s(ctx: Context) -> float:
    """Dense peak FLOP/s of the host CPUs in the dtype their expert kernels compute in."""
    p = ctx.platform
    return p.cpu.peak_for(cpu_compute_dtype(ctx.edtype)) * p.num_cpus


def host_part(ctx: Context, host: HostShare, seqs: float, context_tokens: int) -> tuple[float, float]:
    """(bytes read, FLOPs per token) of a pass of ``seqs`` sequences, one new token each, at ``context_tokens``,
    that ``host`` puts on the CPU: the parts of :func:`activated_weight_bytes` + :func:`kv_read_bytes` and of
    :func:`sparse_flop_per_token` it names, layer by layer (the FLOPs per token do not depend on ``seqs``)."""
    if host == GPU_ONLY:
        return 0.0, 0.0
    m = ctx.model
    a = m.attention
    kv_layer = ctx.kv_bytes_per_token_layer()
    active = ctx.active_experts(seqs) if m.moe else 0.0
    cpu_layers = set(host.layers)
    expert_layers = set(host.routed_expert_layers)
    nbytes = flop = 0.0
    for i in range(m.num_layers):
        windowed = a.is_windowed(i)
        span = effective_span(1, context_tokens, True, a.window_kind if windowed else None,
                              a.window_tokens if windowed else None)
        core_flop = 2.0 * a.num_heads * span * (a.qk_head_dim + a.out_head_dim)
        kv = seqs * (min(context_tokens, a.window_tokens) if windowed and a.window_tokens else context_tokens) * kv_layer
        moe = m.is_moe_layer(i)
        routed_bytes = active * ctx.expert_weight_bytes if moe else 0.0
        routed_flop = 2.0 * m.moe.top_k * m.expert_params if moe else 0.0
        if i in cpu_layers:
            nbytes += ctx.attention_weight_bytes + kv + routed_bytes
            nbytes += ctx.shared_weight_bytes + ctx.router_weight_bytes if moe else ctx.dense_ffn_weight_bytes
            flop += 2.0 * m.attention_params + core_flop + routed_flop
            flop += 2.0 * (m.router_params + m.shared_expert_params) if moe else 2.0 * m.dense_ffn_params
            continue
        if host.routed_experts or i in expert_layers:
            nbytes += routed_bytes
            flop += routed_flop
        nbytes += host.kv_fraction * kv
        flop += host.kv_fraction * core_flop
    if host.lm_head:
        nbytes += m.lm_head_params * ctx.wbytes
    return nbytes, flop


def peaks(ctx: Context, host: HostShare, cpu_bytes: float, cpu_flop: float) -> tuple[float, float]:
    """(peak bandwidth, peak FLOP/s) of the devices that do a pass's reading and computing: the GPUs' unless
    ``host`` gives them nothing, plus the host's DRAM bandwidth where the CPU reads and its peak where it computes."""
    gpu = not host.gpu_idle(ctx)
    bw = (peak_bandwidth_bytes_per_s(ctx) if gpu else 0.0) + (
        ctx.platform.host_memory_bandwidth_bytes_per_s if cpu_bytes > 0 else 0.0)
    fl = (peak_flop_per_s(ctx) if gpu else 0.0) + (cpu_peak_flop_per_s(ctx) if cpu_flop > 0 else 0.0)
    return bw, fl


def decode_utilization(ctx: Context, batch: int, context_tokens: int, step_time_s: float,
                       host: HostShare = GPU_ONLY) -> dict[str, float]:
    """S-MBU, S-MFU, MBU, MFU of one decode step of ``batch`` sequences at ``context_tokens`` (module docstring),
    over the peaks of the devices that read and compute (``host``: what the CPU does)."""
    kv = kv_read_bytes(ctx, batch, context_tokens)
    cpu_bytes, cpu_flop = host_part(ctx, host, batch, context_tokens)
    peak_bw, peak = peaks(ctx, host, cpu_bytes, cpu_flop)
    bw = peak_bw * step_time_s
    tok_s = batch / step_time_s
    return {
        "s_mbu": (activated_weight_bytes(ctx, batch) + kv) / bw,
        "s_mfu": tok_s * sparse_flop_per_token(ctx, context_tokens) / peak,
        "mbu": (ctx.weight_bytes + kv) / bw,
        "mfu": tok_s * dense_flop_per_token(ctx, context_tokens) / peak,
    }


def prefill_s_mfu(ctx: Context, tokens: float, prompt_tokens: int, time_s: float,
                  host: HostShare = GPU_ONLY) -> float:
    """S-MFU of a prefill pass: per-token FLOPs at the mean causal span of the prompt, over the peak FLOP/s of
    the devices that compute it (``host``: what the CPU does in a prefill pass)."""
    mean_ctx = max(1, (prompt_tokens + 1) // 2)
    _, cpu_flop = host_part(ctx, host, 1, mean_ctx)
    _, peak = peaks(ctx, host, 0.0, cpu_flop)
    return tokens / time_s * sparse_flop_per_token(ctx, mean_ctx) / peak
