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
* ``OffloadedMoELayer``: every expert of the layer copied from pinned host memory, two device
  buffers deep, while the experts before it compute (simulated on the event engine);
* ``Attention``: ``scaled_dot_product_attention`` over GQA heads (flash-style traffic, causal
  prefill computing whole diagonal tiles);
* ``MLADecode``: absorbed MLA decode over a cached latent (DeepSeek-V2, section 2.1);
* ``Copy``: host<->device (pinned or pageable) or device-to-device.

Each class is a small frozen dataclass; ``cost()`` gives the FLOPs and bytes, ``estimate`` the time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal, Union

from . import costs
from .costs import OpCost
from .costs.attention import FLASH_CAUSAL_TILE
from .costs.ffn import gather_rows, harness_routing, sort_by_expert, weight_rows
from .engine import BufferRing, Engine
from .specs import AttentionSpec, Platform
from .specs.common import BYTES_PER_ELEMENT

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


def _gpu(hw: Platform, cost: OpCost) -> float:
    return costs.gpu_time_s(cost, hw.gpu, costs.efficiency_for(hw.empirical, hw.calibration))


def _streamed_experts(engine: Engine, hw: Platform, hidden: int, ffn: int, experts: int, top_k: int, tokens: float,
                      dtype: str, buffers: int, after: int | None) -> int:
    """Router and gather of the routed rows, a host sync for the per-expert counts, then every
    expert's weights streamed through ``buffers`` device slots while the experts before it
    compute, then the combine (concatenate, scale by the routing weights, ``index_add_``: an
    atomic scatter-add of every routed row). Returns the last task."""
    expert_bytes = 3 * hidden * ffn * BYTES_PER_ELEMENT[dtype]
    routed = tokens * top_k
    active = costs.expected_active_experts(experts, top_k, tokens)
    eff = costs.efficiency_for(hw.empirical, hw.calibration)
    route_cost = harness_routing(hidden, experts, tokens).then(sort_by_expert(routed)).then(gather_rows(routed, hidden))
    route = engine.add("router + sort + gather", "gpu", _gpu(hw, route_cost), [after], category="router")
    sync = engine.add("host reads expert counts", "host", eff.host_sync_s, [route], category="sync")
    copy_s = copy_time_s(expert_bytes, "h2d_pinned", hw)
    compute_s = _gpu(hw, costs.expert_ffn(hidden, ffn, routed / active, True, dtype,
                                          act_launches=EAGER_ACT_LAUNCHES)) if active else 0.0
    ring = BufferRing(buffers)
    last = sync
    n_compute = math.ceil(active)
    for e in range(experts):
        copy = engine.add(f"expert {e} H2D", "h2d", copy_s, [ring.acquire(), sync], category="transfer",
                          nbytes=expert_bytes)
        if e < n_compute:  # experts no token chose are copied but not computed (as the harness does)
            # the next expert's copy runs beside this one's compute (the ring has a free slot), and
            # slows it; the last copy has nothing beside it
            beside = copy_s if buffers > 1 and e < experts - 1 else 0.0
            last = engine.add(f"expert {e}", "gpu", eff.beside_copy_s(compute_s, beside), [copy, last],
                              category="experts")
        ring.release(last if e < n_compute else copy)
    combine = (costs.vector_op(routed * hidden, 0.0, 2.0)  # torch.cat of the experts' outputs
               .then(weight_rows(routed, hidden))
               .then(costs.scatter_add(routed, hidden)))  # out.index_add_
    return engine.add("combine", "gpu", _gpu(hw, combine), [last], category="router")


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
        engine = Engine()
        _streamed_experts(engine, hw, self.hidden, self.ffn, self.experts, self.top_k, self.tokens, self.dtype,
                          self.buffers, None)
        return engine


def decode_shape(model: str) -> dict:
    """The layer dimensions a :class:`DecodeStep` uses, read from ``models_db`` (all layers taken as MoE)."""
    from .db.resolve import get_model

    m = get_model(model)
    a, moe = m.attention, m.moe
    shape = dict(hidden=m.hidden_size, heads=a.num_heads, kv_heads=a.num_kv_heads, head_dim=a.out_head_dim,
                 experts=moe.num_experts, top_k=moe.top_k, ffn=moe.expert_intermediate_size,
                 shared_ffn=moe.num_shared_experts * moe.shared_ffn)
    if a.kind == "mla":
        shape.update(mla=True, kv_lora=a.kv_lora_rank, rope=a.qk_rope_head_dim, nope=a.qk_nope_head_dim)
    return shape


@dataclass(frozen=True)
class DecodeStep:
    """A module-based-batching decode step over ``layers`` layers (MoE-Gen, arXiv 2503.09716, section 4),
    exactly as the harness runs it: per layer, the attention weights are prefetched from pinned host
    memory (two slots), QKV projection of all ``batch`` tokens, attention in micro-batches each
    after its KV is copied in (two KV slots), output projection, then the MoE layer with every
    expert streamed (:class:`OffloadedMoELayer`); shared experts are resident."""

    model: str
    layers: int
    batch: int
    kv_len: int
    micro_batch: int
    dtype: str = "bf16"

    @classmethod
    def from_params(cls, p: dict) -> "DecodeStep":
        return cls(p["model"], p["layers"], p["batch"], p["kv_len"], p["micro_batch"], p.get("dtype", "bf16"))

    def schedule(self, hw: Platform) -> Engine:
        s = decode_shape(self.model)
        h, b, L = s["hidden"], self.batch, self.kv_len
        mla = bool(s.get("mla"))
        if mla:
            heads, nope, rope, r, d = s["heads"], s["nope"], s["rope"], s["kv_lora"], s["head_dim"]
            in_dim, o_dim = heads * (nope + rope) + r + rope, heads * d
            absorb = heads * nope * r + heads * r * d
            kv_token_bytes = (r + rope) * 2
        else:
            in_dim = (s["heads"] + 2 * s["kv_heads"]) * s["head_dim"]
            o_dim = s["heads"] * s["head_dim"]
            absorb = 0
            kv_token_bytes = 2 * s["kv_heads"] * s["head_dim"] * 2
        attn_bytes = (h * in_dim + o_dim * h + absorb) * 2
        engine = Engine()
        attn_ring, kv_ring = BufferRing(2), BufferRing(2)
        proj_s = _gpu(hw, costs.gemm(b, in_dim, h))
        out_s = _gpu(hw, costs.gemm(b, h, o_dim))
        n_mb = math.ceil(b / self.micro_batch)

        def attention_s(n: int) -> float:
            if mla:
                core = MLADecode(n, heads, L, r, rope).cost()
                fold = costs.gemm(n * heads, r, nope) + costs.gemm(n * heads, d, r)  # q absorb, output absorb
                return _gpu(hw, core) + _gpu(hw, fold)
            return estimate(Attention(n, s["heads"], s["kv_heads"], s["head_dim"], 1, L), hw)

        prefetch = engine.add("L0 attention weights H2D", "h2d", copy_time_s(attn_bytes, "h2d_pinned", hw),
                              [attn_ring.acquire()], category="transfer", nbytes=attn_bytes)
        last = None
        for layer in range(self.layers):
            current = prefetch
            if layer + 1 < self.layers:
                prefetch = engine.add(f"L{layer + 1} attention weights H2D", "h2d",
                                      copy_time_s(attn_bytes, "h2d_pinned", hw), [attn_ring.acquire()],
                                      category="transfer", nbytes=attn_bytes)
            last = engine.add(f"L{layer} QKV projection", "gpu", proj_s, [current, last], category="attention")
            for m in range(n_mb):
                n = min(self.micro_batch, b - m * self.micro_batch)
                kv_bytes = n * L * kv_token_bytes
                kv = engine.add(f"L{layer} KV H2D mb{m}", "h2d", copy_time_s(kv_bytes, "h2d_pinned", hw),
                                [kv_ring.acquire()], category="transfer", nbytes=kv_bytes)
                last = engine.add(f"L{layer} attention mb{m}", "gpu", attention_s(n), [kv, last],
                                  category="attention")
                kv_ring.release(last)
            last = engine.add(f"L{layer} output projection", "gpu", out_s, [last], category="attention")
            attn_ring.release(last)
            last = _streamed_experts(engine, hw, h, s["ffn"], s["experts"], s["top_k"], b, self.dtype, 2, last)
            if s["shared_ffn"]:
                last = engine.add(f"L{layer} shared experts", "gpu",
                                  _gpu(hw, costs.expert_ffn(h, s["shared_ffn"], b, act_launches=EAGER_ACT_LAUNCHES)),
                                  [last], category="experts")
        return engine


Op = Union[GEMM, ExpertFFN, MoELayer, Attention, MLADecode, ScatterAdd, Copy, OffloadedMoELayer, DecodeStep]


#: a copy on a platform (calibrated link figures where they apply); the same function the systems use
copy_time_s = costs.platform_copy_time_s


def estimate(op: Op, hw: Platform) -> float:
    """Predicted time of ``op`` on one GPU of ``hw``, in seconds."""
    if isinstance(op, Copy):
        return copy_time_s(op.nbytes, op.kind, hw)
    if isinstance(op, (OffloadedMoELayer, DecodeStep)):
        return op.schedule(hw).makespan_s
    return costs.gpu_time_s(op.cost(), hw.gpu, costs.efficiency_for(hw.empirical, hw.calibration))


__all__ = ["GEMM", "Attention", "Copy", "DecodeStep", "ExpertFFN", "MLADecode", "MoELayer", "OffloadedMoELayer", "Op",
           "ScatterAdd",
           "copy_time_s", "estimate"]
