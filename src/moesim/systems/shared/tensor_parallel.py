"""A tensor-parallel transformer layer (Megatron-LM, Shoeybi et al. 2019, section 3), shared by
the systems that keep all weights on the GPUs (``gpu-resident``, ``vllm``).

Attention heads and each expert's FFN columns are split over the n GPUs, so each does 1/n of
the FLOPs and reads 1/n of the weights and KV; two all-reduces per layer combine the partial
outputs. A ring all-reduce of S bytes takes a latency growing with n + 2 (n-1)/n * S / link bandwidth
(:func:`allreduce_s`).

Which n a model allows is vLLM's rule (:func:`require_tensor_parallel`): the query heads split evenly, and the
KV heads either split evenly or, when there are fewer of them than GPUs, are replicated evenly.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...costs import Execution
from ...db import system_constants
from ...engine import Engine
from ...errors import InfeasibleError
from ...modules import Context
from ...specs import LayerKind


def require_tensor_parallel(ctx: Context, system: str) -> None:
    """Refuse a tensor-parallel size n = the platform's GPUs that vLLM refuses for the model, in vLLM's words (the
    other engines split the heads over their tensor-parallel GPUs alike; the message names the system).

    vLLM (``ModelConfig.verify_with_parallel_config``) requires the attention heads H to split evenly::

        H mod n = 0        "Total number of attention heads (H) must be divisible by tensor parallel size (n)."

    and its ``QKVParallelLinear`` splits the K/V heads H_kv of MHA/GQA (``divide``, which asserts divisibility)::

        H_kv >= n:  H_kv mod n = 0   (each GPU holds H_kv / n of them)
        H_kv <  n:  n mod H_kv = 0   (each K/V head replicated on n / H_kv GPUs)

    MLA's compressed KV is not split over heads (DeepSeek's ``kv_a_proj_with_mqa`` is replicated), so only the
    first rule applies to it. n = 1 always passes."""
    n = ctx.platform.num_gpus
    a = ctx.model.attention
    if n == 1:
        return
    rule = "vLLM's rule" if system == "vllm" else f"vLLM's rule, which {system} shares"
    if a.num_heads % n:
        raise InfeasibleError(
            f"{system}: Total number of attention heads ({a.num_heads}) must be divisible by tensor parallel size "
            f"({n}) ({ctx.model.name}; {rule}: use --gpus among "
            f"{', '.join(str(d) for d in _tensor_parallel_sizes(a.num_heads, a.num_kv_heads, a.kind))})")
    if a.kind == "mla":
        return
    kv = a.num_kv_heads
    if (kv >= n and kv % n) or (kv < n and n % kv):
        relation = (f"{kv} KV heads are not divisible by tensor parallel size {n}" if kv >= n else
                    f"tensor parallel size {n} is not divisible by the {kv} KV heads it would replicate")
        raise InfeasibleError(
            f"{system}: {relation} ({ctx.model.name}; vLLM's QKVParallelLinear splits K/V heads evenly over the GPUs "
            f"or replicates them evenly: use --gpus among "
            f"{', '.join(str(d) for d in _tensor_parallel_sizes(a.num_heads, kv, a.kind))})")


def _tensor_parallel_sizes(heads: int, kv_heads: int, kind: str) -> list[int]:
    """Every n that :func:`require_tensor_parallel` accepts for the heads."""
    def ok(n: int) -> bool:
        if heads % n:
            return False
        return kind == "mla" or (kv_heads % n == 0 if kv_heads >= n else n % kv_heads == 0)
    return [n for n in range(1, heads + 1) if ok(n)]


def measured_collective_s(ctx: Context, family: str, nbytes: float, timing: str) -> float | None:
    """One collective on this platform from its measured profile (``hardware_db/collectives/``, fitted on
    ``validation/torchbench/multi_gpu.py`` runs; ``timing``: eager, burst or graph), or None where the platform
    has none or the profile does not cover the GPU count (the caller's model then applies)."""
    from ...db import collective_profile

    profile = collective_profile(ctx.platform.name)
    if profile is None:
        return None
    return profile.time_s(family, nbytes, ctx.platform.num_gpus, timing)


def allreduce_s(ctx: Context, tokens: float) -> float:
    """NCCL all-reduce of ``tokens`` hidden states (activation dtype) over the platform's n GPUs (NVLink, else
    PCIe), as eager PyTorch issues it (``torch.distributed.all_reduce``)::

        t = max(link latency, a) + b (n - 1) + 2 (n - 1) / n x bytes / link bandwidth

    The latency grows with the GPUs in the ring (each of its 2 (n - 1) steps waits on a peer): a and b are the
    line through NCCL's measured small-message all-reduce latency on 2, 4 and 8 GPUs (``systems_db/shared.yaml``,
    from AIConfigurator's NCCL tables: 6.2, 10.0 and 17.4 us on H200). A platform whose collectives were measured
    (:func:`measured_collective_s`) takes the measured all-reduce instead."""
    p = ctx.platform
    n = p.num_gpus
    if n == 1:
        return 0.0
    measured = measured_collective_s(ctx, "all_reduce", ctx.hidden_state_bytes(tokens), "eager")
    if measured is not None:
        return measured
    link = p.gpu_link or p.host_link
    nbytes = ctx.hidden_state_bytes(tokens)
    return nccl_latency_s(link, n) + 2.0 * (n - 1) / n * nbytes / link.h2d_pinned_bytes_per_s


#: the collectives whose small-message latency line ``systems_db/shared.yaml`` holds (key stem of each)
NCCL_LATENCY_KEYS = {"all_reduce": "allreduce", "all_gather": "allgather", "reduce_scatter": "reducescatter",
                     "all_to_all": "alltoall"}


def nccl_latency_s(link, n: int, family: str = "all_reduce") -> float:
    """NCCL's small-message latency of collective ``family`` (all_reduce, all_gather, reduce_scatter, all_to_all)
    over ``n`` GPUs: a + b (n - 1), the line through that collective's measured latency on 2, 4 and 8 GPUs
    (``systems_db/shared.yaml``, AIConfigurator's NCCL tables: an all-gather or reduce-scatter of a small message on
    8 H200s takes 10-11 us, an all-reduce 17), never below the link's own latency."""
    c = system_constants("shared")
    stem = NCCL_LATENCY_KEYS[family]
    return max(link.latency_s, float(c.value(f"nccl_{stem}_base_s"))) + float(
        c.value(f"nccl_{stem}_per_peer_s")) * (n - 1)


def kv_share_per_gpu(ctx: Context, latent_cache: bool = True) -> float:
    """The share of one token's KV (all heads) that each of the n tensor-parallel GPUs caches::

        MLA (latent cached):  1                       (the latent is replicated on every rank)
        MHA/GQA:              max(1, H_kv / n) / H_kv  (a K/V head is never split; fewer heads than GPUs are
                                                       replicated, vLLM's QKVParallelLinear)"""
    n = ctx.platform.num_gpus
    a = ctx.model.attention
    if a.kind == "mla":
        return 1.0 if latent_cache else 1.0 / n
    kv = a.num_kv_heads
    return max(1.0, kv / n) / kv


def per_gpu_attention(ctx: Context, cost):
    """One GPU's share of an attention core under tensor parallelism: 1/n of the heads' FLOPs and weights, but the
    KV it reads is what that GPU caches, :func:`kv_share_per_gpu` of it (MLA's latent whole on every GPU; K/V heads
    replicated beyond their count), not 1/n."""
    inv = 1.0 / ctx.platform.num_gpus
    share = kv_share_per_gpu(ctx)

    def one(c):
        return c.with_(flop=c.flop * inv, bytes=c.bytes * share, weight_elements=c.weight_elements * inv,
                       serial=tuple(one(p) for p in c.serial))
    return one(cost)


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
    def of(cls, ctx: Context, tokens: float, attention: list[tuple[float, float, float]],
           execution: Execution | None = None) -> "LayerTimes":
        """``attention`` lists (sequences, new tokens, context) groups that share the step; ``execution`` is how
        the kernels run (default eager, :mod:`moesim.costs.execution`)."""
        inv = 1.0 / ctx.platform.num_gpus
        m = ctx.model
        ex = execution

        def gpu(cost) -> float:
            return ctx.gpu_s(cost, ex)

        core = {w: sum(gpu(per_gpu_attention(ctx, ctx.attention_core(s, q, kv, w))) for s, q, kv in attention
                       if s > 0) for w in (False, True)}
        router = experts = shared = 0.0
        if m.moe:
            router = gpu(ctx.router(tokens))
            experts = gpu(ctx.experts(ctx.active_experts(tokens), tokens * m.moe.top_k).scaled(inv))
            shared_cost = ctx.shared_experts(tokens)
            shared = gpu(shared_cost.scaled(inv)) if shared_cost else 0.0
        dense = gpu(ctx.dense_ffn(tokens).scaled(inv)) if m.dense_ffn else 0.0
        return cls(gpu(ctx.attention_proj(tokens).scaled(inv)), core, allreduce_s(ctx, tokens), router,
                   experts, shared, dense)

    def add(self, eng: Engine, i: int, kind: LayerKind, after: int | None = None,
            dispatch: tuple[str, float] | None = None, combine: tuple[str, float] | None = None) -> int:
        """Submit layer ``i``'s tasks after task ``after``; returns its last task. ``dispatch`` / ``combine``: the
        MoE exchange of an expert-parallel layout (name, seconds on the GPU link) around the routed experts."""
        last = eng.add(f"L{i} attn proj", "gpu", self.attn_proj, [after], category="attention")
        last = eng.add(f"L{i} attention", "gpu", self.core[kind.windowed], [last], category="attention")
        if self.allreduce:
            last = eng.add(f"L{i} all-reduce", "gpu-link", self.allreduce, [last], category="communication")
        if kind.moe:
            last = eng.add(f"L{i} router", "gpu", self.router, [last], category="router")
            if dispatch and dispatch[1]:
                last = eng.add(f"L{i} {dispatch[0]}", "gpu-link", dispatch[1], [last], category="communication")
            last = eng.add(f"L{i} experts", "gpu", self.experts, [last], category="experts")
            if combine and combine[1]:
                last = eng.add(f"L{i} {combine[0]}", "gpu-link", combine[1], [last], category="communication")
            if self.shared:
                last = eng.add(f"L{i} shared experts", "gpu", self.shared, [last], category="experts")
        else:
            last = eng.add(f"L{i} dense ffn", "gpu", self.dense, [last], category="dense_ffn")
        if self.allreduce:
            last = eng.add(f"L{i} all-reduce 2", "gpu-link", self.allreduce, [last], category="communication")
        return last
