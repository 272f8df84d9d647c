"""Metrics, as MoE-CAP defines them (arXiv 2412.07067, section 4), plus their dense counterparts.

Throughput and latency, for an offline workload of R requests (prompt P, generation G)
processed in batches of B:
    prefill_tok_s    = B P / prefill time of a batch
    decode_tok_s     = B G / decode time of a batch
    throughput_tok_s = R G / total time              (generation throughput)
    TTFT             = prefill time of a batch        TPOT = decode time of a batch / G

Sparsity-aware utilisation of one decode step (batch B, context L, step time = TPOT):
    S-MBU = (S_activated + S_KV) / (TPOT * n_gpu * peak memory bandwidth)            (Eq. 4)
        S_activated = bytes of the weights the step really reads: attention, dense FFNs,
                      shared experts, routers, LM head, and E[n_active(B)] routed experts per
                      MoE layer (expected distinct experts of the batch, see costs.routing)
        S_KV        = B L bytes_KV(token)  (windowed layers capped at their window)
    S-MFU = T_token * F_token / (n_gpu * dense peak FLOP/s)                            (Eq. 5)
        F_token = F_attn + 2 N_router + 2 (k N_expert + N_shared) + 2 N_dense_ffn, per layer summed;
        F_attn  = 2 N_attn + 2 H L_eff (d_qk + d_v)  (projections + core at the step's context)
Dense counterparts (what the dense definitions would say):
    MBU = (all weight bytes + S_KV) / (TPOT * n_gpu * bandwidth);  MFU uses 2 N_total per token.
MBU can exceed 1 for an MoE: that is how far the dense definition misleads.
"""

from __future__ import annotations

from .costs import effective_span
from .modules import Context


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
    from .costs import compute_dtype

    gpu = ctx.platform.gpu
    return gpu.peak_for(compute_dtype(ctx.edtype, gpu))[0] * ctx.platform.num_gpus


def peak_bandwidth_bytes_per_s(ctx: Context) -> float:
    return ctx.platform.gpu.memory_bandwidth_bytes_per_s * ctx.platform.num_gpus


def decode_utilization(ctx: Context, batch: int, context_tokens: int, step_time_s: float) -> dict[str, float]:
    """S-MBU, S-MFU, MBU, MFU of one decode step of ``batch`` sequences at ``context_tokens``."""
    kv = kv_read_bytes(ctx, batch, context_tokens)
    bw = peak_bandwidth_bytes_per_s(ctx) * step_time_s
    tok_s = batch / step_time_s
    peak = peak_flop_per_s(ctx)
    return {
        "s_mbu": (activated_weight_bytes(ctx, batch) + kv) / bw,
        "s_mfu": tok_s * sparse_flop_per_token(ctx, context_tokens) / peak,
        "mbu": (ctx.weight_bytes + kv) / bw,
        "mfu": tok_s * dense_flop_per_token(ctx, context_tokens) / peak,
    }


def prefill_s_mfu(ctx: Context, tokens: float, prompt_tokens: int, time_s: float) -> float:
    """S-MFU of a prefill pass: per-token FLOPs at the mean causal span of the prompt."""
    mean_ctx = max(1, (prompt_tokens + 1) // 2)
    return tokens / time_s * sparse_flop_per_token(ctx, mean_ctx) / peak_flop_per_s(ctx)
