"""Dense GEMM: C[m,n] = A[m,k] @ W[k,n].

    flop  = 2 m n k
    bytes = k n b_w + m k b_a + m n b_a     (weights read once, activations in and out)

Elementwise work is memory bound (``vector_op``); a scatter-add of ``rows`` x ``width`` values
into a smaller tensor where several source rows land on one destination row in the same kernel
(``index_add_`` of all routed rows, the MoE combine: top_k rows per token) is bound by colliding
atomic read-modify-writes, which the L2 serialises:

    bytes = rows width (b_a + 2 b_a)        (source read, destination read and written, atomically)

priced through its own family ``scatter`` (its achieved fraction of HBM bandwidth is low and is
fitted; see :mod:`moesim.calibration.fit`).
"""

from __future__ import annotations

from ..specs.common import BYTES_PER_ELEMENT
from .roofline import OpCost

ACT_BYTES = BYTES_PER_ELEMENT["bf16"]  # activations stay in 16-bit in every system modelled


def gemm(m: float, n: float, k: float, weight_dtype: str = "bf16", family: str = "gemm") -> OpCost:
    weight_elements = k * n
    return OpCost(
        family=family,
        flop=2.0 * m * n * k,
        bytes=weight_elements * BYTES_PER_ELEMENT[weight_dtype] + (m * k + m * n) * ACT_BYTES,
        dtype=weight_dtype,
        weight_elements=weight_elements,
        rows=m,
    )


def vector_op(elements: float, flop_per_element: float = 1.0, passes: float = 2.0, launches: int = 1,
              indexed: int = 0) -> OpCost:
    """Elementwise work (norms, activations, softmax): memory bound, ``passes`` reads+writes of bf16;
    ``indexed`` of its ``launches`` torch calls sort, select or index by a tensor (their host cost)."""
    return OpCost(family="vector", flop=elements * flop_per_element, bytes=elements * passes * ACT_BYTES,
                  dtype="fp32", launches=launches, indexed_launches=indexed)


def scatter_add(rows: float, width: float) -> OpCost:
    """``out.index_add_(0, index, src)`` of ``rows`` x ``width`` bf16 values: one atomic add each."""
    elements = rows * width
    return OpCost(family="scatter", flop=elements, bytes=elements * 3 * ACT_BYTES, dtype="fp32", launches=1,
                  indexed_launches=1)
