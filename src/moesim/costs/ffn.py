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

from dataclasses import replace
from typing import Literal

from ..specs.common import BYTES_PER_ELEMENT
from .gemm import ACT_BYTES, gemm, scatter_add, vector_op
from .roofline import OpCost
from .routing import expected_active_experts

LOOP_LAUNCHES_PER_EXPERT = 7
FUSED_LAUNCHES = 3  # grouped gate_up, activation, grouped down


def expert_ffn(hidden: int, ffn: int, tokens: float, gated: bool = True, weight_dtype: str = "bf16",
               act_launches: int = 1) -> OpCost:
    """One (gated) expert FFN applied to ``tokens`` tokens: the two GEMMs on the GEMM roof, the
    activation after them on its own (memory) roof. ``act_launches=2`` is eager PyTorch's
    ``F.silu(gate) * up``: two kernels, 10 bytes per element (silu reads 2 writes 2; the product
    reads 4 writes 2) instead of one fused kernel's 6."""
    up = gemm(tokens, (2 if gated else 1) * ffn, hidden, weight_dtype, family="expert")
    unfused = gated and act_launches > 1
    act = vector_op(tokens * ffn, flop_per_element=4.0 if gated else 2.0,
                    passes=5.0 if unfused else (3.0 if gated else 2.0), launches=act_launches)
    down = gemm(tokens, hidden, ffn, weight_dtype, family="expert")
    return (up + down).then(act)


def routed_experts(hidden: int, ffn: int, num_active: float, routed_tokens: float, gated: bool = True,
                   weight_dtype: str = "bf16", impl: Literal["fused", "loop"] = "fused",
                   separate_activation: bool = False) -> OpCost:
    """``num_active`` experts sharing ``routed_tokens`` (= T*k) token-expert pairs. With
    ``separate_activation`` only the GEMMs' traffic is counted (the caller adds the activation
    as a kernel of its own); otherwise one fused activation pass is folded in."""
    mats = 3 if gated else 2
    weight_elements = num_active * mats * hidden * ffn
    act_bytes = 0 if separate_activation else (mats - 1) * ffn  # the activation reading h
    acts = routed_tokens * (hidden + (mats - 1) * ffn + ffn + hidden + act_bytes) * ACT_BYTES
    rows = routed_tokens / num_active if num_active else 0.0
    loop_launches = 0 if impl == "fused" else int(round(num_active)) * LOOP_LAUNCHES_PER_EXPERT
    return OpCost(
        family="grouped_expert" if impl == "fused" else "expert",
        flop=2.0 * mats * hidden * ffn * routed_tokens + (0.0 if separate_activation else routed_tokens * ffn * 4.0),
        bytes=weight_elements * BYTES_PER_ELEMENT[weight_dtype] + acts,
        dtype=weight_dtype,
        weight_elements=weight_elements,
        launches=(FUSED_LAUNCHES - (1 if separate_activation else 0)) if impl == "fused" else 0,
        loop_launches=loop_launches,
        syncs=0 if impl == "fused" else 1,
        rows=rows,
        groups=num_active * (mats - 1) if impl == "fused" else 0.0,  # two grouped GEMMs (gate-up, down)
    )


def router(hidden: int, num_experts: int, tokens: float, launches: int = 2, indexed: int = 0) -> OpCost:
    """Router logits, softmax/sigmoid and top-k selection (router weights kept in bf16); ``launches``
    torch calls after the router GEMM, ``indexed`` of them sorting or selecting (top-k)."""
    return gemm(tokens, num_experts, hidden, "bf16") + vector_op(tokens * num_experts, 5.0, 2.0, launches=launches,
                                                                 indexed=indexed)


def harness_routing(hidden: int, num_experts: int, tokens: float) -> OpCost:
    """The router as ``validation/torchbench/kernels.py`` runs it (``ROUTE_CALLS`` torch calls)."""
    return router(hidden, num_experts, tokens, launches=ROUTE_CALLS - 1, indexed=ROUTE_INDEXED)


def sort_by_expert(routed: float) -> OpCost:
    """Routed rows sorted by expert and counted (``SORT_CALLS`` calls); the host then reads the
    counts, a sync the caller accounts for."""
    return vector_op(routed, 4.0, 8.0, launches=SORT_CALLS, indexed=SORT_INDEXED)


def gather_rows(routed: float, hidden: int, launches: int = 1) -> OpCost:
    """``x[token]``: the routed rows gathered, read and written once (an indexing call)."""
    return vector_op(routed * hidden, 0.0, 2.0, launches=launches, indexed=launches)


def dispatch_combine(hidden: int, routed_tokens: float) -> OpCost:
    """Permute tokens to experts and scatter-add them back, weighted."""
    return vector_op(routed_tokens * hidden, 0.0, 2.0, launches=1) + vector_op(routed_tokens * hidden, 2.0, 3.0)


# Counts of torch calls the host issues (each one Python/ATen dispatch, the unit of the host
# launch roof, whether it launches a kernel or only makes a view; kernels a call launches from C++
# inside it cost the host little). From validation/torchbench/kernels.py:
#: routing (route): x @ W_r, .float(), softmax, topk, sum, div, .to
ROUTE_CALLS = 7
#: of them, calls that sort, select or index by a tensor (topk)
ROUTE_INDEXED = 1
#: sorting routed rows by expert (moe_fused): flatten, argsort, floor-divide, bincount (reads its
#: maximum on the host: one sync), cumsum, cast to int32
SORT_CALLS = 6
#: of them, argsort and bincount
SORT_INDEXED = 2
#: the loop's head (moe_loop): one_hot, permute, sum, compare, nonzero, flatten, then the host
#: reads the hit experts (one sync), zeros_like for the output
LOOP_HEAD_CALLS = 7
#: of them, none: one_hot with num_classes given is a scatter into a tensor of known shape, and
#: nonzero's data-dependent cost is the host sync already counted
LOOP_HEAD_INDEXED = 0
#: the activation between the grouped GEMMs (moe_fused): chunk, silu, multiply, contiguous
FUSED_ACT_CALLS = 4
#: after the grouped GEMMs (moe_fused): weights flattened, indexed, y * w, zeros_like, index_add_
COMBINE_CALLS = 5
#: of them (besides index_add_, counted by :func:`scatter_add`): the indexing by ``order``
COMBINE_INDEXED = 1


def weight_rows(routed: float, hidden: int, issued: bool = True) -> OpCost:
    """The expert outputs scaled by their routing weights before the ``index_add_`` (weights
    flattened, indexed by ``order``, ``y * w``, ``zeros_like``: ``COMBINE_CALLS - 1`` calls when
    ``issued`` here, none when a per-expert loop issues them)."""
    return vector_op(routed * hidden, 1.0, 2.0, launches=(COMBINE_CALLS - 1) if issued else 0,
                     indexed=COMBINE_INDEXED if issued else 0)


def moe_layer(hidden: int, ffn: int, num_experts: int, top_k: int, tokens: float, gated: bool = True,
              weight_dtype: str = "bf16", impl: Literal["fused", "loop"] = "fused", zipf_s: float = 0.0) -> OpCost:
    """A routed MoE layer as a whole on ``tokens`` tokens (shared experts not included), as eager
    PyTorch runs it (``validation/torchbench/kernels.py``), R = tokens * top_k routed rows:

        routing: router GEMM, softmax, top-k, renormalise  ROUTE_CALLS calls (merged, small)
        fused: sort rows by expert, count them             SORT_CALLS calls, one sync
        loop: one-hot mask, list the hit experts           LOOP_HEAD_CALLS calls, one sync
        gather x[token]                                    vector, R hidden: read + write
        expert GEMMs                                       grouped (fused) or one per active expert (loop)
        SiLU(gate) * up                                    vector, R ffn, two kernels
        y * routing weight                                 vector, R hidden: read + write
        out.index_add_(0, token, y)                        fused: scatter, R hidden colliding atomic adds;
                                                           loop: one pass, no collisions

    each kind on its own roof, one after the other. Of the host's calls, topk, argsort, bincount,
    ``x[token]``, ``weights[order]`` and ``index_add_`` sort, select or index by a tensor, and cost
    the host more each (``index_call_s``; see :mod:`moesim.costs.roofline`). The loop issues gather, FFN, scale and
    index_add_ once per active expert, each after a ``torch.where`` whose result the host reads
    (a sync per expert): those launches are the loop's (family ``moe_loop``)."""
    active = expected_active_experts(num_experts, top_k, tokens, zipf_s)
    routed = tokens * top_k
    loop = impl == "loop"
    experts = routed_experts(hidden, ffn, active, routed, gated, weight_dtype, impl, separate_activation=True)
    if loop:
        experts = replace(experts, syncs=int(round(active)))
        head = replace(vector_op(tokens * top_k * num_experts, 1.0, 2.0, launches=LOOP_HEAD_CALLS,
                                 indexed=LOOP_HEAD_INDEXED), syncs=1)
    else:
        head = replace(sort_by_expert(routed), syncs=1)
    per_expert = 0 if loop else 1  # launches of the passes below outside the loop
    # One index_add_ of all R rows (fused) adds top_k rows into each output row: the atomics
    # collide and serialise (family ``scatter``). The loop's index_add_ per expert adds at most
    # one row into each output row: no collisions, an ordinary read-modify-write pass.
    combine = vector_op(routed * hidden, 1.0, 3.0, launches=0) if loop else scatter_add(routed, hidden)
    return (
        harness_routing(hidden, num_experts, tokens)
        .then(head)
        .then(gather_rows(routed, hidden, launches=per_expert))
        .then(experts)
        .then(vector_op(routed * ffn, 4.0 if gated else 2.0, 5.0 if gated else 2.0,
                        launches=per_expert * (FUSED_ACT_CALLS if gated else 1)))
        .then(weight_rows(routed, hidden, issued=bool(per_expert)))
        .then(combine)
    )
