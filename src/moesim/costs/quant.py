"""Quantized weights: which dtype the math runs in, and what dequantization costs.

A weight dtype the tensor cores support natively (fp8 on Hopper/Ada, int8 on Ampere+) is computed in that
dtype (W8A8). The FP4 formats (fp4; mxfp4, 32-element blocks with an e8m0 scale, gpt-oss's experts; nvfp4,
16-element blocks with an e4m3 scale) run on FP4 tensor cores only where the GPU has them (Blackwell). Any other
dtype (int4; fp4/mxfp4/nvfp4 on H100/H200, which have no FP4 tensor cores; fp8 on Ampere) is dequantized to bf16
in the kernel (weight-only quantization, as in Marlin/AWQ kernels), costing ``dequant_flop_per_weight`` vector
operations per weight element read, at the GPU's fp32 (CUDA-core) rate (engines' kernels hide it under the
weight stream: :mod:`moesim.costs.execution`). Block-scaled fp8 (``fp8_block``, DeepSeek's 128x128 scales) is
stored and computed as fp8; the kind is the model's ``quant_kind``, which picks the engines' measured kernel tables.
"""

from __future__ import annotations

from ..specs import AcceleratorSpec

_WIDE = ("bf16", "fp16", "fp32", "tf32")


def compute_dtype(weight_dtype: str, gpu: AcceleratorSpec) -> str:
    """The dtype matrix math runs in for weights stored as ``weight_dtype``."""
    if weight_dtype in _WIDE:
        return weight_dtype if weight_dtype in gpu.peak_flop_per_s or weight_dtype == "fp32" else "fp16"
    if weight_dtype in ("fp8", "int8") and weight_dtype in gpu.native_dtypes and weight_dtype in gpu.peak_flop_per_s:
        return weight_dtype
    if weight_dtype in ("fp4", "mxfp4", "nvfp4") and "fp4" in gpu.native_dtypes and "fp4" in gpu.peak_flop_per_s:
        return "fp4"
    return "bf16" if "bf16" in gpu.peak_flop_per_s else "fp16"


def needs_dequant(weight_dtype: str, gpu: AcceleratorSpec) -> bool:
    return weight_dtype not in _WIDE and compute_dtype(weight_dtype, gpu) in _WIDE
