"""Feed-forward work: one gated expert FFN, and a routed MoE layer as a whole.

Expert FFN on T tokens (Shazeer 2020, "GLU Variants", SwiGLU):
    h1 = x @ W13            (hidden -> 2*ffn)      flop 2*T*hidden*2*ffn
    a  = SiLU(gate) * up    (elementwise, ffn)      ~4 flop/element
    y  = a @ W2             (ffn -> hidden)         flop 2*T*ffn*hidden
so flop = 6 T hidden ffn (+ elementwise), weight bytes = 3 hidden ffn b_w.

Routed MoE layer on T tokens with E experts, top-k (as in HF transformers / vLLM FusedMoE):
    router GEMM (T x hidden x E), softmax + top-k, dispatch (gather T*k rows),
    experts on n_active = E[(distinct experts)] (see :mod:`routing`), combine (weighted scatter-add).
Two implementations:
  fused  grouped GEMM: a handful of launches for all experts, no host sync (family
         ``grouped_expert``, which borrows the ``expert`` curve until calibrated on its own);
  loop   Python loop over the activated experts (HF transformers): ~7 launches per expert
         (index, gather, gate_up, act, down, scale, index_add) and one host sync to read which
         experts are hit.
"""

from __future__ import annotations

from typing import Literal

from ..specs.common import BYTES_PER_ELEMENT
from .gemm import ACT_BYTES, gemm, vector_op
from .roofline import OpCost
from .routing import expected_active_experts

LOOP_LAUNCHES_PER_EXPERT = 7
FUSED_LAUNCHES = 3  # grouped gate_up, activation, grouped down


def expert_ffn(hidden: int, ffn: int, tokens: float, gated: bool = True, weight_dtype: str = "bf16") -> OpCost:
    """One (gated) expert FFN applied to ``tokens`` tokens."""
    up = gemm(tokens, (2 if gated else 1) * ffn, hidden, weight_dtype, family="expert")
    act = vector_op(tokens * ffn, flop_per_element=4.0 if gated else 2.0, passes=3.0 if gated else 2.0)
    down = gemm(tokens, hidden, ffn, weight_dtype, family="expert")
    return up + act + down


def routed_experts(hidden: int, ffn: int, num_active: float, routed_tokens: float, gated: bool = True,
                   weight_dtype: str = "bf16", impl: Literal["fused", "loop"] = "fused") -> OpCost:
    """``num_active`` experts sharing ``routed_tokens`` (= T*k) token-expert pairs."""
    mats = 3 if gated else 2
    weight_elements = num_active * mats * hidden * ffn
    acts = routed_tokens * (hidden + (mats - 1) * ffn * 2 + ffn + hidden) * ACT_BYTES
    rows = routed_tokens / num_active if num_active else 0.0
    loop_launches = 0 if impl == "fused" else int(round(num_active)) * LOOP_LAUNCHES_PER_EXPERT
    return OpCost(
        family="grouped_expert" if impl == "fused" else "expert",
        flop=2.0 * mats * hidden * ffn * routed_tokens + routed_tokens * ffn * 4.0,
        bytes=weight_elements * BYTES_PER_ELEMENT[weight_dtype] + acts,
        dtype=weight_dtype,
        weight_elements=weight_elements,
        launches=FUSED_LAUNCHES if impl == "fused" else 0,
        loop_launches=loop_launches,
        syncs=0 if impl == "fused" else 1,
        rows=rows,
    )


def router(hidden: int, num_experts: int, tokens: float) -> OpCost:
    """Router logits, softmax/sigmoid and top-k selection (router weights kept in bf16)."""
    return gemm(tokens, num_experts, hidden, "bf16") + vector_op(tokens * num_experts, 5.0, 2.0, launches=2)


def dispatch_combine(hidden: int, routed_tokens: float) -> OpCost:
    """Permute tokens to experts and scatter-add them back, weighted."""
    return vector_op(routed_tokens * hidden, 0.0, 2.0, launches=1) + vector_op(routed_tokens * hidden, 2.0, 3.0)


def moe_layer(hidden: int, ffn: int, num_experts: int, top_k: int, tokens: float, gated: bool = True,
              weight_dtype: str = "bf16", impl: Literal["fused", "loop"] = "fused", zipf_s: float = 0.0) -> OpCost:
    """A routed MoE layer as a whole on ``tokens`` tokens (shared experts not included)."""
    active = expected_active_experts(num_experts, top_k, tokens, zipf_s)
    return (
        router(hidden, num_experts, tokens)
        + dispatch_combine(hidden, tokens * top_k)
        + routed_experts(hidden, ffn, active, tokens * top_k, gated, weight_dtype, impl)
    )
