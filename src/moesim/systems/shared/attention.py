"""Eager attention (Hugging Face ``eager``, FlexGen): the score matrix is materialised.

Per score element (S = sequences x heads x q_len x kv_len of one layer), with b_a the activation
dtype's bytes and b_s those of the softmax (``score_dtype``):

  held at the peak   b_a (scores) + b_s (their softmax)
  moved              write scores b_a, softmax read b_a / write b_s, [cast back: read b_s, write b_a
                     when b_s != b_a], read for P @ V b_a:  3 b_a + b_s (+ b_s + b_a)
  FLOPs              5 (scale, max, subtract, exp, sum) on top of the flash-style core

so fp32 softmax over bf16 scores holds 6 B and moves 16 B per score; bf16 throughout 4 B and 8 B.
"""

from __future__ import annotations

from ...costs import OpCost
from ...modules import Context
from ...specs.common import BYTES_PER_ELEMENT

EAGER_FLOP_PER_SCORE = 5.0  # scale, running max, subtract, exp, sum: the softmax's arithmetic per score
EAGER_LAUNCHES = 3  # scores (Q K^T), softmax, P @ V as separate kernels


def eager_scores(ctx: Context, seqs: float, q_len: float, kv_len: float) -> float:
    """Elements of the materialised attention score matrix of one layer."""
    return seqs * ctx.model.attention.num_heads * q_len * kv_len


def eager_attention_peak_bytes(ctx: Context, seqs: float, q_len: float, kv_len: float, score_dtype: str) -> float:
    """Scores and their softmax held together: S (b_a + b_s)."""
    return eager_scores(ctx, seqs, q_len, kv_len) * (ctx.abytes + BYTES_PER_ELEMENT[score_dtype])


def eager_traffic_bytes_per_score(ctx: Context, score_dtype: str) -> float:
    """DRAM bytes moved per score element: 3 b_a + b_s, plus b_s + b_a for the cast back when they differ."""
    a, s = ctx.abytes, BYTES_PER_ELEMENT[score_dtype]
    return 3.0 * a + s + (s + a if s != a else 0.0)


def eager_attention_cost(ctx: Context, seqs: float, q_len: float, kv_len: float, windowed: bool,
                         score_dtype: str) -> OpCost:
    """Attention core without flash fusion: the flash-style cost plus the score matrix's round trips."""
    n = eager_scores(ctx, seqs, q_len, kv_len)
    extra = OpCost(family="attention", flop=EAGER_FLOP_PER_SCORE * n,
                   bytes=n * eager_traffic_bytes_per_score(ctx, score_dtype), launches=EAGER_LAUNCHES)
    return ctx.attention_core(seqs, q_len, kv_len, windowed) + extra
