"""Attention: projections, and the core (QK^T, softmax, AV) for prefill and decode.

Core, flash-style (Dao et al. 2022, arXiv 2205.14135): no quadratic memory traffic; K/V of
the context are read once per call and Q/O once.  For B sequences, q new tokens each,
attending to kv cached+new tokens, H query heads:

    flop  = 2 B H q kv_eff (d_qk + d_v)
    bytes = B kv_read c b_kv  +  B q H (d_qk + d_v) b_a  +  B q c b_kv (append new KV)

with c the cached elements per token per layer and, under causal masking,
kv_eff = kv - (q - 1)/2 (the mean span of the q new queries). A sliding window caps the
span at W; a chunked window (Llama 4) caps it at W with mean W/2 once the context is long.

MLA (DeepSeek-V2, arXiv 2405.04434, section 2.1 and Appendix C): the cache holds the latent
c_KV (kv_lora_rank) plus the rope key.  *Absorbed* decoding folds W_UK into the query and
W_UV into the output, so attention runs on the latent: d_qk = kv_lora + rope, d_v = kv_lora,
and only the latent is read.  *Not absorbed*, every step first up-projects the whole cached
latent to per-head K and V (a GEMM of B*kv rows), which is what makes it costly in decode.
"""

from __future__ import annotations

from ..specs import AttentionSpec
from ..specs.common import BYTES_PER_ELEMENT
from .gemm import ACT_BYTES, gemm
from .roofline import OpCost


def effective_span(q_len: float, kv_len: float, causal: bool, window_kind: str | None = None,
                   window_tokens: int | None = None) -> float:
    """Mean number of keys each new query attends to."""
    span = kv_len - (q_len - 1) / 2.0 if causal else kv_len
    if window_kind == "sliding" and window_tokens:
        span = min(span, float(window_tokens))
    elif window_kind == "chunked" and window_tokens:
        span = min(span, window_tokens / 2.0) if kv_len > window_tokens else span
    return max(span, 1.0)


#: query/key tile of FlashAttention-2's forward kernel for head_dim 128 (Dao, arXiv 2307.08691,
#: section 3.1.1: under a causal mask, tiles above the diagonal are skipped and tiles on the
#: diagonal are computed whole, masked inside), which SDPA's flash backend runs
FLASH_CAUSAL_TILE = 128


def attention_core(attn: AttentionSpec, batch: float, q_len: float, kv_len: float, causal: bool = True,
                   kv_dtype: str = "bf16", windowed: bool = False, mla_absorbed: bool = True,
                   causal_tile: int = 0) -> OpCost:
    """The attention mechanism of one layer for ``batch`` sequences. With ``causal_tile`` (a tiled
    kernel's tile, e.g. :data:`FLASH_CAUSAL_TILE`), a causal prefill computes whole diagonal
    tiles: each query attends on average to (tile - 1) / 2 more keys than the mask keeps."""
    h = attn.num_heads
    span = effective_span(q_len, kv_len, causal, attn.window_kind if windowed else None,
                          attn.window_tokens if windowed else None)
    if causal and causal_tile and q_len > 1:
        span = min(span + (min(causal_tile, q_len) - 1) / 2.0, kv_len)
    kv_read_tokens = min(kv_len, span + q_len) if windowed else kv_len
    cache_elems = attn.kv_elements_per_token()
    b_kv = BYTES_PER_ELEMENT[kv_dtype]
    extra = OpCost(family="attention", flop=0.0, bytes=0.0, launches=0)
    if attn.kind == "mla" and (mla_absorbed and q_len == 1):
        d_qk = attn.kv_lora_rank + attn.qk_rope_head_dim
        d_v = attn.kv_lora_rank
    elif attn.kind == "mla":
        d_qk, d_v = attn.qk_head_dim, attn.v_head_dim
        if q_len == 1:  # decode without absorption: re-expand the cached latent every step
            extra = gemm(batch * kv_read_tokens, h * (attn.qk_nope_head_dim + attn.v_head_dim),
                         attn.kv_lora_rank, "bf16", family="attention")
            extra = OpCost(family="attention", flop=extra.flop,
                           bytes=extra.bytes + batch * kv_read_tokens * h * (d_qk + d_v) * ACT_BYTES, launches=1,
                           rows=extra.rows)
    else:
        d_qk = d_v = attn.head_dim
    core = OpCost(
        family="attention",
        flop=2.0 * batch * h * q_len * span * (d_qk + d_v),
        bytes=batch * kv_read_tokens * cache_elems * b_kv
        + batch * q_len * h * (d_qk + d_v) * ACT_BYTES
        + batch * q_len * cache_elems * b_kv,
        dtype="bf16",
        launches=2,
    )
    return core + extra if extra.flop else core


def attention_projections(params: float, hidden: int, tokens: float, weight_dtype: str = "bf16") -> OpCost:
    """Q/K/V (or MLA down/up) and output projections of one layer on ``tokens`` tokens.

    flop = 2 * tokens * params; weights read once; activations ~ 4 hidden-sized tensors per token.
    """
    base = gemm(tokens, params / hidden, hidden, weight_dtype)
    return OpCost(family="gemm", flop=base.flop, bytes=base.bytes + tokens * hidden * 2 * ACT_BYTES,
                  dtype=weight_dtype, weight_elements=params, launches=4, rows=tokens)


def mla_decode_unfused(batch: float, heads: int, kv_len: float, kv_lora_rank: int, rope_dim: int) -> OpCost:
    """Absorbed MLA decode written as plain tensor ops (the validation harness; Hugging Face style),
    eight kernels (ten torch calls with the two transposes), with the bytes each moves per score
    (S = b h L scores):

        q_lat @ latent^T, q_rope @ k_rope^T   two batched GEMMs: write 2 + 2 (and read the latent)
        (s1 + s2) * scale                      add: read 4 write 2; scale: read 2 write 2
        .float(), softmax, .to(bf16)           read 2 write 4; read 4 write 4; read 4 write 2
        probs @ latent                         read 2 (and read the latent a second time)

    so 36 bytes per score beside twice the latent. Unlike a fused (FlashMLA-style) kernel, the
    score matrix makes several round trips to memory; family ``mla`` (borrows the ``attention`` curve).
    """
    scores = batch * heads * kv_len
    latent = batch * kv_len * (kv_lora_rank + rope_dim) * ACT_BYTES
    flop = 2.0 * scores * (2 * kv_lora_rank + rope_dim) + 5.0 * scores
    nbytes = 2 * latent + MLA_UNFUSED_BYTES_PER_SCORE * scores + batch * heads * (2 * kv_lora_rank + rope_dim) * ACT_BYTES
    return OpCost(family="mla", flop=flop, bytes=nbytes, dtype="bf16", launches=MLA_UNFUSED_CALLS, rows=heads)


#: torch calls the host issues for it: the eight kernels and the two transposes (views)
MLA_UNFUSED_CALLS = 10
#: bytes per score of the eager MLA decode's eight kernels (see :func:`mla_decode_unfused`)
MLA_UNFUSED_BYTES_PER_SCORE = (2 + 2) + (4 + 2) + (2 + 2) + (2 + 4) + (4 + 4) + (4 + 2) + 2
