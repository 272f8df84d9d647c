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
    return "int8" if weight_dtype in ("int8", "int4", "int4_g32") else "bf16"


def cpu_experts(hidden: int, ffn: int, num_active: float, routed_tokens: float, gated: bool = True,
                weight_dtype: str = "bf16", weight_bytes_per_element: float | None = None) -> OpCost:
    """``num_active`` experts read from DRAM for ``routed_tokens`` token-expert pairs; with
    ``weight_bytes_per_element`` (a GGUF file's mean, :func:`gguf_expert_bytes_per_weight`) the weights are read at
    that size instead of ``weight_dtype``'s."""
    gpu_like = routed_experts(hidden, ffn, num_active, routed_tokens, gated, weight_dtype)
    nbytes = gpu_like.bytes
    if weight_bytes_per_element is not None:
        nbytes += gpu_like.weight_elements * (weight_bytes_per_element - BYTES_PER_ELEMENT[weight_dtype])
    return OpCost(family="cpu_expert", flop=gpu_like.flop, bytes=nbytes,
                  dtype=cpu_compute_dtype(weight_dtype), launches=0)


#: llama.cpp's file types for the expert tensors (``llama_tensor_get_type`` in src/llama-quant.cpp): the ggml type
#: of ffn_gate / ffn_up, of ffn_down, and of ffn_down in the layers ``use_more_bits`` picks (None: no such rule)
GGUF_EXPERT_TYPES: dict[str, tuple[str, str, str | None]] = {
    "q8_0": ("q8_0", "q8_0", None),
    "q6_k": ("q6_k", "q6_k", None),
    "q5_k_m": ("q5_k", "q5_k", "q6_k"),
    "q4_k_m": ("q4_k", "q4_k", "q6_k"),
}


def gguf_use_more_bits(layer: int, num_layers: int) -> bool:
    """llama.cpp's ``use_more_bits``: the first and last eighth of the layers and every third one between, whose
    ffn_down the _M file types store one k-quant higher::

        layer < n/8  or  layer >= 7n/8  or  (layer - n/8) mod 3 == 2      (integer division)

    For an MoE model the layer is parsed from the tensor's name (``layer_info``) and n is ``hparams.n_layer``
    (``qs.n_ffn_down = n_layer``), so DeepSeek-V3 (61 layers) has its ffn_down in Q6_K in layers 0-6, 9, 12, ..., 51
    and 53-60."""
    eighth = num_layers // 8
    return layer < eighth or layer >= 7 * num_layers // 8 or (layer - eighth) % 3 == 2


def gguf_expert_bytes_per_weight(file_type: str, moe_layers: list[int], num_layers: int,
                                 type_bytes: dict[str, float]) -> float:
    """Mean bytes per weight of the routed experts of a GGUF of ``file_type`` over the MoE layers ``moe_layers``
    (gate, up and down have equal sizes)::

        b = mean over MoE layers l of (b_gate + b_up + b_down(l)) / 3

    with ``type_bytes`` the ggml block sizes per weight (``systems_db/ktransformers.yaml``: Q4_K 144 bytes per 256
    weights, Q6_K 210 per 256, ...). DeepSeek-V3 Q4_K_M: Q6_K ffn_down in 27 of its 58 MoE layers -> 0.6025 bytes
    (4.82 bits) a weight, against 0.5 for a plain int4."""
    if file_type not in GGUF_EXPERT_TYPES:
        raise ValueError(f"GGUF file type {file_type!r}: expected one of {', '.join(GGUF_EXPERT_TYPES)}")
    if not moe_layers:
        raise ValueError("gguf_expert_bytes_per_weight: no MoE layer")
    gate, down, down_more = GGUF_EXPERT_TYPES[file_type]
    downs = [type_bytes[down_more if down_more and gguf_use_more_bits(i, num_layers) else down] for i in moe_layers]
    return (2 * type_bytes[gate] + sum(downs) / len(downs)) / 3


def kv_bytes(attn: AttentionSpec, tokens: float, kv_dtype: str = "bf16") -> float:
    return tokens * attn.kv_elements_per_token() * BYTES_PER_ELEMENT[kv_dtype]


def cpu_kernel_time_s(flop: float, nbytes: float, sustained_flop_per_s: float, memory_bytes_per_s: float,
                      call_s: float = 0.0) -> float:
    """Time of a CPU kernel whose sustained compute rate is measured (not a fraction of a datasheet peak applied
    through the default CPU efficiency): the roofline of that rate and the DRAM bandwidth it streams at, after a
    fixed time per call (hand-off to the worker threads, their barriers)::

        t = t_call + max(F / R_sustained, B / BW)

    (KTransformers' CPU expert kernels: ``systems_db/ktransformers.yaml`` gives R, BW and t_call per kernel and
    their sources)."""
    if sustained_flop_per_s <= 0 or memory_bytes_per_s <= 0 or call_s < 0:
        raise ValueError("cpu_kernel_time_s: rates must be positive and the call time non-negative")
    return call_s + max(flop / sustained_flop_per_s if flop else 0.0, nbytes / memory_bytes_per_s if nbytes else 0.0)
