"""Dense GEMM: C[m,n] = A[m,k] @ W[k,n].

    flop  = 2 m n k
    bytes = k n b_w + m k b_a + m n b_a     (weights read once, activations in and out)
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


def vector_op(elements: float, flop_per_element: float = 1.0, passes: float = 2.0, launches: int = 1) -> OpCost:
    """Elementwise work (norms, activations, softmax): memory bound, ``passes`` reads+writes of bf16."""
    return OpCost(family="vector", flop=elements * flop_per_element, bytes=elements * passes * ACT_BYTES,
                  dtype="fp32", launches=launches)
