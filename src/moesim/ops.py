"""Operation-level API: one operation, one hardware, one predicted time.

So that anyone can check a single prediction against their own measurement::

    import moesim
    from moesim import ops
    hw = moesim.get_hardware("h100-sxm")
    ops.estimate(ops.GEMM(4096, 4096, 4096), hw)          # seconds

Semantics follow the measurement harness in ``validation/torchbench`` exactly:

* ``ExpertFFN``: x @ W13 (hidden -> 2 ffn), SiLU(gate) * up, @ W2 (ffn -> hidden);
* ``MoELayer``: router GEMM, softmax, top-k, dispatch, the experts, weighted combine, with
  uniform random routing; ``loop`` is the Hugging Face per-expert Python loop (one host sync to
  read which experts are hit), ``fused`` a grouped GEMM;
* ``Attention``: ``scaled_dot_product_attention`` over GQA heads (flash-style traffic, causal
  prefill computing whole diagonal tiles);
* ``MLADecode``: absorbed MLA decode over a cached latent (DeepSeek-V2, section 2.1);
* ``Copy``: host<->device (pinned or pageable) or device-to-device.

The harness's end-to-end compositions (an MoE layer with its experts streamed from host memory,
a module-based-batching decode step) are not operations: ``moesim.calibration`` predicts them
with the serving system that runs them (``moesim.systems.moe_gen``).

Each class is a small frozen dataclass; ``cost()`` gives the FLOPs and bytes, ``estimate`` the time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Union

from . import costs
from .costs import OpCost
from .costs.attention import FLASH_CAUSAL_TILE
from .specs import AttentionSpec, Platform

#: torch calls of the harness's expert activation: ``h.chunk(2)``, ``F.silu(gate)``, ``* up``
#: (two kernels, 10 bytes per element)
EAGER_ACT_LAUNCHES = 3


@dataclass(frozen=True)
class GEMM:
    m: int
    n: int
    k: int
    dtype: str = "bf16"

    def cost(self) -> OpCost:
        return costs.gemm(self.m, self.n, self.k, self.dtype)


@dataclass(frozen=True)
class ExpertFFN:
    hidden: int
    ffn: int
    tokens: int
    dtype: str = "bf16"

    def cost(self) -> OpCost:
        return costs.expert_ffn(self.hidden, self.ffn, self.tokens, True, self.dtype, act_launches=EAGER_ACT_LAUNCHES)


@dataclass(frozen=True)
class MoELayer:
    hidden: int
    ffn: int
    experts: int
    top_k: int
    tokens: int
    impl: Literal["loop", "fused"] = "fused"
    dtype: str = "bf16"
    zipf_s: float = 0.0

    def cost(self) -> OpCost:
        return costs.moe_layer(self.hidden, self.ffn, self.experts, self.top_k, self.tokens, True, self.dtype,
                               self.impl, self.zipf_s)


@dataclass(frozen=True)
class Attention:
    batch: int
    q_heads: int
    kv_heads: int
    head_dim: int
    q_len: int
    kv_len: int
    causal: bool = True
    dtype: str = "bf16"

    def cost(self) -> OpCost:
        spec = AttentionSpec(kind="gqa" if self.kv_heads < self.q_heads else "mha", num_heads=self.q_heads,
                             num_kv_heads=self.kv_heads, head_dim=self.head_dim)
        core = costs.attention_core(spec, self.batch, self.q_len, self.kv_len, self.causal, self.dtype,
                                    causal_tile=FLASH_CAUSAL_TILE)
        return replace(core, launches=1)  # one torch call: its kernels issue from C++ inside it


@dataclass(frozen=True)
class MLADecode:
    """Absorbed MLA decode; ``fused=False`` (default) is the plain-torch version the harness runs,
    ``fused=True`` a FlashMLA-style kernel (one pass over the latent, as serving systems model it)."""

    batch: int
    heads: int
    kv_len: int
    kv_lora_rank: int = 512
    rope_dim: int = 64
    dtype: str = "bf16"
    fused: bool = False

    def cost(self) -> OpCost:
        if not self.fused:
            return costs.mla_decode_unfused(self.batch, self.heads, self.kv_len, self.kv_lora_rank, self.rope_dim)
        spec = AttentionSpec(kind="mla", num_heads=self.heads, num_kv_heads=self.heads, head_dim=128,
                             kv_lora_rank=self.kv_lora_rank, qk_nope_head_dim=128, qk_rope_head_dim=self.rope_dim,
                             v_head_dim=128)
        return costs.attention_core(spec, self.batch, 1, self.kv_len, True, self.dtype, False, True)


@dataclass(frozen=True)
class ScatterAdd:
    """``out.index_add_(0, index, src)`` of ``rows`` x ``width`` bf16 values, top_k rows landing on
    each output row (the fused MoE layer's combine)."""

    rows: int
    width: int

    def cost(self) -> OpCost:
        return costs.scatter_add(self.rows, self.width)


@dataclass(frozen=True)
class Copy:
    nbytes: float
    kind: costs.transfer.CopyKind = "h2d_pinned"


Op = Union[GEMM, ExpertFFN, MoELayer, Attention, MLADecode, ScatterAdd, Copy]


#: a copy on a platform (calibrated link figures where they apply); the same function the systems use
copy_time_s = costs.platform_copy_time_s


def estimate(op: Op, hw: Platform) -> float:
    """Predicted time of ``op`` on one GPU of ``hw``, in seconds."""
    if isinstance(op, Copy):
        return copy_time_s(op.nbytes, op.kind, hw)
    return costs.gpu_time_s(op.cost(), hw.gpu, costs.efficiency_for(hw.empirical, hw.calibration))


__all__ = ["GEMM", "Attention", "Copy", "ExpertFFN", "MLADecode", "MoELayer", "Op", "ScatterAdd", "copy_time_s",
           "estimate"]
