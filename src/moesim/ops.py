"""Operation-level API: one operation, one hardware, one predicted time.

So that anyone can check a single prediction against their own measurement::

    import moesim
    from moesim import ops
    hw = moesim.get_hardware("h100-sxm")
    ops.estimate(ops.GEMM(4096, 4096, 4096), hw)          # seconds

Semantics follow the measurement harness in ``validation/harness`` exactly:

* ``ExpertFFN``: x @ W13 (hidden -> 2 ffn), SiLU(gate) * up, @ W2 (ffn -> hidden);
* ``MoELayer``: router GEMM, softmax, top-k, dispatch, the experts, weighted combine, with
  uniform random routing; ``loop`` is the Hugging Face per-expert Python loop (one host sync to
  read which experts are hit), ``fused`` a grouped GEMM;
* ``OffloadedMoELayer``: every expert of the layer copied from pinned host memory, two device
  buffers deep, while the experts before it compute (simulated on the event engine);
* ``Attention``: ``scaled_dot_product_attention`` over GQA heads (flash-style traffic);
* ``MLADecode``: absorbed MLA decode over a cached latent (DeepSeek-V2, section 2.1);
* ``Copy``: host<->device (pinned or pageable) or device-to-device.

Each class is a small frozen dataclass; ``cost()`` gives the FLOPs and bytes, ``estimate`` the time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Union

from . import costs
from .costs import OpCost
from .engine import BufferRing, Engine
from .specs import AttentionSpec, Platform
from .specs.common import BYTES_PER_ELEMENT


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
        return costs.expert_ffn(self.hidden, self.ffn, self.tokens, True, self.dtype)


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
        return costs.attention_core(spec, self.batch, self.q_len, self.kv_len, self.causal, self.dtype)


@dataclass(frozen=True)
class MLADecode:
    batch: int
    heads: int
    kv_len: int
    kv_lora_rank: int = 512
    rope_dim: int = 64
    dtype: str = "bf16"

    def cost(self) -> OpCost:
        spec = AttentionSpec(kind="mla", num_heads=self.heads, num_kv_heads=self.heads, head_dim=128,
                             kv_lora_rank=self.kv_lora_rank, qk_nope_head_dim=128, qk_rope_head_dim=self.rope_dim,
                             v_head_dim=128)
        return costs.attention_core(spec, self.batch, 1, self.kv_len, True, self.dtype, False, True)


@dataclass(frozen=True)
class Copy:
    nbytes: float
    kind: costs.transfer.CopyKind = "h2d_pinned"


@dataclass(frozen=True)
class OffloadedMoELayer:
    hidden: int
    ffn: int
    experts: int
    top_k: int
    tokens: int
    dtype: str = "bf16"
    buffers: int = 2

    def schedule(self, hw: Platform) -> Engine:
        """Copy engine streams expert e+1 (into a free buffer) while the GPU computes expert e."""
        eff = costs.efficiency_for(hw.empirical, hw.calibration)
        expert_bytes = 3 * self.hidden * self.ffn * BYTES_PER_ELEMENT[self.dtype]
        routed = self.tokens * self.top_k
        active = costs.expected_active_experts(self.experts, self.top_k, self.tokens)
        per_expert_tokens = routed / active
        copy_s = estimate(Copy(expert_bytes, "h2d_pinned"), hw)
        compute_s = costs.gpu_time_s(
            costs.routed_experts(self.hidden, self.ffn, 1, per_expert_tokens, True, self.dtype), hw.gpu, eff)
        head_s = costs.gpu_time_s(costs.router(self.hidden, self.experts, self.tokens)
                                  + costs.dispatch_combine(self.hidden, routed), hw.gpu, eff)
        engine = Engine()
        ring = BufferRing(self.buffers)
        last = engine.add("router + dispatch", "gpu", head_s, category="router")
        for e in range(self.experts):
            copy = engine.add(f"expert {e} H2D", "h2d", copy_s, [ring.acquire()], category="transfer",
                              nbytes=expert_bytes)
            if e < math.ceil(active):
                last = engine.add(f"expert {e}", "gpu", compute_s, [copy, last], category="experts")
            else:  # an expert no token chose is still copied (the harness copies every expert)
                last = engine.add(f"expert {e} (no tokens)", "gpu", 0.0, [copy, last], category="experts")
            ring.release(last)
        return engine


Op = Union[GEMM, ExpertFFN, MoELayer, Attention, MLADecode, Copy, OffloadedMoELayer]


def _link(hw: Platform):
    cal = hw.calibration
    if cal is not None and cal.link is not None and cal.link.link == hw.host_link.name and cal.gpu == hw.gpu.name:
        return cal.link
    return hw.host_link


def copy_time_s(nbytes: float, kind: str, hw: Platform) -> float:
    """Host<->device copies use the calibrated link figures when the platform matches the calibration host."""
    if kind == "d2d":
        cost = OpCost(family="copy", flop=0.0, bytes=2.0 * nbytes, dtype="bf16", launches=1)
        return costs.gpu_time_s(cost, hw.gpu, costs.efficiency_for(hw.empirical, hw.calibration))
    link = _link(hw)
    return link.latency_s + nbytes / getattr(link, f"{kind}_bytes_per_s")


def estimate(op: Op, hw: Platform) -> float:
    """Predicted time of ``op`` on one GPU of ``hw``, in seconds."""
    if isinstance(op, Copy):
        return copy_time_s(op.nbytes, op.kind, hw)
    if isinstance(op, OffloadedMoELayer):
        return op.schedule(hw).makespan_s
    return costs.gpu_time_s(op.cost(), hw.gpu, costs.efficiency_for(hw.empirical, hw.calibration))


__all__ = ["GEMM", "Attention", "Copy", "ExpertFFN", "MLADecode", "MoELayer", "OffloadedMoELayer", "Op",
           "copy_time_s", "estimate"]
