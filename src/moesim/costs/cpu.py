"""Work executed on the host CPU: attention over a host-resident KV cache, or experts.

Bounded by DRAM bandwidth and CPU FLOPs (see :func:`moesim.costs.roofline.cpu_time_s`):
decode attention on the CPU reads each sequence's KV once from DRAM (MoE-Gen App. B,
KTransformers' CPU experts likewise stream expert weights from DRAM).
"""

from __future__ import annotations

from ..specs import AttentionSpec
from ..specs.common import BYTES_PER_ELEMENT
from .attention import attention_core
from .ffn import routed_experts
from .roofline import OpCost


def cpu_attention(attn: AttentionSpec, batch: float, q_len: float, kv_len: float, kv_dtype: str = "bf16",
                  windowed: bool = False) -> OpCost:
    core = attention_core(attn, batch, q_len, kv_len, True, kv_dtype, windowed)
    # bf16 data computed in fp32 on CPUs without bf16 arithmetic (MoE-Gen App. B)
    return OpCost(family="cpu_attention", flop=core.flop, bytes=core.bytes, dtype="bf16", launches=0)


def cpu_compute_dtype(weight_dtype: str) -> str:
    """The dtype CPU expert kernels compute in: int8 dot products for int8/int4 weights (llamafile, AMX/VNNI),
    bf16 otherwise."""
    return "int8" if weight_dtype in ("int8", "int4") else "bf16"


def cpu_experts(hidden: int, ffn: int, num_active: float, routed_tokens: float, gated: bool = True,
                weight_dtype: str = "bf16") -> OpCost:
    gpu_like = routed_experts(hidden, ffn, num_active, routed_tokens, gated, weight_dtype)
    return OpCost(family="cpu_expert", flop=gpu_like.flop, bytes=gpu_like.bytes,
                  dtype=cpu_compute_dtype(weight_dtype), launches=0)


def kv_bytes(attn: AttentionSpec, tokens: float, kv_dtype: str = "bf16") -> float:
    return tokens * attn.kv_elements_per_token() * BYTES_PER_ELEMENT[kv_dtype]


def cpu_kernel_time_s(flop: float, nbytes: float, sustained_flop_per_s: float, memory_bytes_per_s: float) -> float:
    """Time of a CPU kernel whose sustained compute rate is measured (not a fraction of a datasheet peak applied
    through the default CPU efficiency): the roofline of that rate and the DRAM bandwidth it streams at::

        t = max(F / R_sustained, B / BW)

    (KTransformers' CPU expert kernels: ``systems_db/ktransformers.yaml`` gives R per kernel and its source)."""
    if sustained_flop_per_s <= 0 or memory_bytes_per_s <= 0:
        raise ValueError("cpu_kernel_time_s: rates must be positive")
    return max(flop / sustained_flop_per_s if flop else 0.0, nbytes / memory_bytes_per_s if nbytes else 0.0)
