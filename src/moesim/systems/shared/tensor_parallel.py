"""A tensor-parallel transformer layer (Megatron-LM, Shoeybi et al. 2019, section 3), shared by
the systems that keep all weights on the GPUs (``gpu-resident``, ``vllm``).

Attention heads and each expert's FFN columns are split over the n GPUs, so each does 1/n of
the FLOPs and reads 1/n of the weights and KV; two all-reduces per layer combine the partial
outputs. A ring all-reduce of S bytes takes latency + 2 (n-1)/n * S / link bandwidth.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...engine import Engine
from ...modules import Context
from ...specs import LayerKind


def allreduce_s(ctx: Context, tokens: float) -> float:
    """Ring all-reduce of ``tokens`` hidden states (activation dtype) over the platform's GPUs (NVLink, else
    PCIe): latency + 2 (n - 1) / n x bytes / link bandwidth."""
    p = ctx.platform
    n = p.num_gpus
    if n == 1:
        return 0.0
    link = p.gpu_link or p.host_link
    nbytes = ctx.hidden_state_bytes(tokens)
    return link.latency_s + 2.0 * (n - 1) / n * nbytes / link.h2d_pinned_bytes_per_s


@dataclass(frozen=True)
class LayerTimes:
    """Seconds of each module of one tensor-parallel layer, per GPU."""

    attn_proj: float
    core: dict[bool, float]  # windowed? -> attention core
    allreduce: float
    router: float = 0.0
    experts: float = 0.0
    shared: float = 0.0
    dense: float = 0.0

    @classmethod
    def of(cls, ctx: Context, tokens: float, attention: list[tuple[float, float, float]]) -> "LayerTimes":
        """``attention`` lists (sequences, new tokens, context) groups that share the step."""
        inv = 1.0 / ctx.platform.num_gpus
        m = ctx.model
        core = {w: sum(ctx.gpu_s(ctx.attention_core(s, q, kv, w).scaled(inv)) for s, q, kv in attention if s > 0)
                for w in (False, True)}
        router = experts = shared = 0.0
        if m.moe:
            router = ctx.gpu_s(ctx.router(tokens))
            experts = ctx.gpu_s(ctx.experts(ctx.active_experts(tokens), tokens * m.moe.top_k).scaled(inv))
            shared_cost = ctx.shared_experts(tokens)
            shared = ctx.gpu_s(shared_cost.scaled(inv)) if shared_cost else 0.0
        dense = ctx.gpu_s(ctx.dense_ffn(tokens).scaled(inv)) if m.dense_ffn else 0.0
        return cls(ctx.gpu_s(ctx.attention_proj(tokens).scaled(inv)), core, allreduce_s(ctx, tokens), router,
                   experts, shared, dense)

    def add(self, eng: Engine, i: int, kind: LayerKind, after: int | None = None) -> int:
        """Submit layer ``i``'s tasks after task ``after``; returns its last task."""
        last = eng.add(f"L{i} attn proj", "gpu", self.attn_proj, [after], category="attention")
        last = eng.add(f"L{i} attention", "gpu", self.core[kind.windowed], [last], category="attention")
        if self.allreduce:
            last = eng.add(f"L{i} all-reduce", "gpu-link", self.allreduce, [last], category="communication")
        if kind.moe:
            last = eng.add(f"L{i} router", "gpu", self.router, [last], category="router")
            last = eng.add(f"L{i} experts", "gpu", self.experts, [last], category="experts")
            if self.shared:
                last = eng.add(f"L{i} shared experts", "gpu", self.shared, [last], category="experts")
        else:
            last = eng.add(f"L{i} dense ffn", "gpu", self.dense, [last], category="dense_ffn")
        if self.allreduce:
            last = eng.add(f"L{i} all-reduce 2", "gpu-link", self.allreduce, [last], category="communication")
        return last
