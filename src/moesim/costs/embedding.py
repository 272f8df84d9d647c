"""Token embedding lookup and the LM head.

    embedding: read T rows of the table:   bytes = T hidden b_w
    LM head:   GEMM (rows x hidden x vocab), rows = sequences that need logits
               (one per sequence in prefill and decode; not every prompt token)
"""

from __future__ import annotations

from ..specs.common import BYTES_PER_ELEMENT
from .gemm import ACT_BYTES, gemm
from .roofline import OpCost


def embedding_lookup(hidden: int, tokens: float, weight_dtype: str = "bf16") -> OpCost:
    return OpCost(family="vector", flop=0.0,
                  bytes=tokens * hidden * (BYTES_PER_ELEMENT[weight_dtype] + ACT_BYTES), dtype="fp32")


def lm_head(hidden: int, vocab: int, rows: float, weight_dtype: str = "bf16") -> OpCost:
    return gemm(rows, vocab, hidden, weight_dtype)
