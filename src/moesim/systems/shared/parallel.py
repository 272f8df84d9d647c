"""Parallel layouts of the datacenter engines: attention data parallelism and expert parallelism.

A layout (:class:`ParallelLayout`) of an instance on G GPUs (the platform's GPUs, ``total_gpus`` of a multi-node
platform where it has one)::

    attention / dense:  DP ranks, each a tensor-parallel group of attn_tp GPUs       G = attn_tp x dp
    MoE experts:        moe_ep expert-parallel ranks, each a TP group of moe_tp GPUs  G = moe_tp x moe_ep

How each engine's flags map onto it is the engine's (``vllm.py``, ``sglang.py``, ``trtllm.py``); the pricing is
shared here. A step of the whole instance with T tokens (all DP ranks together) is priced as one DP rank's step
(every rank steps in lockstep: the MoE layer is a collective across them):

- attention, dense FFN, shared experts: the busiest DP rank over its share of the tokens and sequences (B / dp
  decodes; a prompt whole on one rank, :func:`busiest_rank_sequences`), tensor parallel over attn_tp GPUs (its
  all-reduces over attn_tp GPUs); its KV pool holds only its own sequences;
- routed experts: each EP rank holds E / moe_ep experts, each 1 / moe_tp of the expert width, and runs the tokens
  routed to them; the most loaded rank sets the pace (:func:`ep_load_factor`);
- dispatch and combine: how the engine moves the tokens (``ParallelLayout.a2a``): by default every DP rank's
  tokens are all-gathered on every GPU and the MoE output reduce-scattered back (vLLM's default all2all
  backend ``allgather_reducescatter``, SGLang's DP-attention gather/scatter without DeepEP); with DeepEP (or an
  NCCL all-to-all) each token goes only to the ranks of its experts and back (:func:`all_to_all_s`); none when
  attention is tensor parallel over every GPU (the tokens are already everywhere).

Layout with dp = 1, moe_ep = 1, moe_tp = attn_tp = G is tensor parallelism, priced by the existing path
(:mod:`.continuous`, :mod:`.engine_step`) unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from statistics import NormalDist

import numpy as np

from ...costs import Execution
from ...costs.routing import _inclusion
from ...db import system_constants
from ...engine import Engine
from ...errors import InfeasibleError
from ...modules import Context
from ...specs import LayerKind
from .tensor_parallel import LayerTimes, nccl_latency_s


def world_gpus(platform) -> int:
    """GPUs of the instance: the platform's ``total_gpus`` (a multi-node platform) where it has one, else its
    ``num_gpus``."""
    return int(platform.total_gpus)


@dataclass(frozen=True)
class ParallelLayout:
    """attn_tp x dp = moe_tp x moe_ep = gpus (checked by :meth:`check`)."""

    gpus: int
    attn_tp: int
    dp: int = 1
    moe_tp: int = 0  # 0 = attn_tp x dp (experts tensor parallel over every GPU)
    moe_ep: int = 1
    eplb: bool = False  # expert placement balanced by measured load (EPLB / redundant experts)
    #: how the MoE's tokens move between ranks: "allgather" (every rank gathers every DP rank's tokens, the output
    #: is reduce-scattered back: the engines' default), "nccl" (an all-to-all of each token to its experts' ranks),
    #: "deepep" (DeepEP's all-to-all: normal kernels for prefill, low-latency for decode), "deepep_normal",
    #: "deepep_ll" (one kind of DeepEP kernel for both phases)
    a2a: str = "allgather"
    two_batch_overlap: bool = False
    #: prompts spread evenly over the DP ranks (TensorRT-LLM's attention_dp_config.enable_balance: context requests
    #: held until every rank has one); else a prompt runs whole on one rank (:func:`busiest_rank_sequences`)
    prompts_balanced: bool = False
    #: extra expert slots holding copies of hot experts (SGLang --ep-num-redundant-experts, vLLM
    #: num_redundant_experts): E + R slots spread over the EP ranks, placed by EPLB
    redundant_experts: int = 0

    def __post_init__(self):
        if not self.moe_tp:
            object.__setattr__(self, "moe_tp", self.gpus // max(self.moe_ep, 1))

    @property
    def tensor_parallel_only(self) -> bool:
        return self.dp == 1 and self.moe_ep == 1 and self.moe_tp == self.attn_tp == self.gpus

    def check(self, engine: str) -> None:
        if self.attn_tp * self.dp != self.gpus:
            raise InfeasibleError(f"{engine}: attention layout {self.attn_tp} (TP) x {self.dp} (DP) = "
                                  f"{self.attn_tp * self.dp} GPUs, the instance has {self.gpus}")
        if self.moe_tp * self.moe_ep != self.gpus:
            raise InfeasibleError(f"{engine}: MoE layout {self.moe_tp} (MoE TP) x {self.moe_ep} (EP) = "
                                  f"{self.moe_tp * self.moe_ep} GPUs, the instance has {self.gpus}")

    def words(self) -> str:
        parts = [f"attention TP {self.attn_tp} x DP {self.dp}", f"experts EP {self.moe_ep} x MoE TP {self.moe_tp}"]
        if self.moe_ep > 1:
            parts.append(("all-gather / reduce-scatter" if self.a2a == "allgather" else f"all-to-all {self.a2a}")
                         + (", EPLB" if self.eplb else "")
                         + (f" with {self.redundant_experts} redundant experts" if self.redundant_experts else ""))
        if self.two_batch_overlap:
            parts.append("two-batch overlap")
        if self.prompts_balanced and self.dp > 1:
            parts.append("prompts balanced over the DP ranks")
        return ", ".join(parts)


def require_experts_divisible(ctx: Context, lay: ParallelLayout, engine: str) -> None:
    """Expert slots split evenly over the EP ranks (every engine asserts (E + redundant) mod ep = 0), and a model
    without experts has no expert parallelism."""
    m = ctx.model
    if lay.moe_ep > 1 and not m.moe:
        raise InfeasibleError(f"{engine}: expert parallelism needs an MoE model; {m.name} has no experts")
    if m.moe and (m.moe.num_experts + lay.redundant_experts) % lay.moe_ep:
        e, r = m.moe.num_experts, lay.redundant_experts
        need = (-e) % lay.moe_ep
        extra = f" + {r} redundant" if r else ""
        raise InfeasibleError(f"{engine}: {e}{extra} experts of {m.name} do not split evenly over expert parallel "
                              f"size {lay.moe_ep} ((experts + redundant experts) mod EP must be 0; "
                              f"{need} redundant experts would give {(e + need) // lay.moe_ep} slots per rank)")
    if m.moe and m.moe.expert_intermediate_size % lay.moe_tp:
        raise InfeasibleError(f"{engine}: expert width {m.moe.expert_intermediate_size} of {m.name} does not split "
                              f"over MoE tensor parallel size {lay.moe_tp}")


def rank_context(ctx: Context, gpus: int, nodes: int = 1) -> Context:
    """``ctx`` on ``gpus`` GPUs of its platform per node over ``nodes`` nodes (default: one DP rank's tensor-parallel
    group on one node), memoised on ``ctx``: the existing tensor-parallel pricing then prices that group."""
    p = ctx.platform
    if gpus == p.num_gpus and nodes == p.num_nodes:
        return ctx
    return ctx.memo(("rank context", gpus, nodes), lambda: Context(
        ctx.model, p.model_copy(update={"num_gpus": gpus, "num_nodes": nodes}), ctx.workload, ctx.options))


def weight_bytes_per_gpu(ctx: Context, lay: ParallelLayout) -> float:
    """Weights one GPU holds: the routed experts split over moe_tp x moe_ep GPUs (E / moe_ep experts, 1 / moe_tp
    of each), everything else (attention, dense FFN, shared experts, routers, embeddings, head) over the attn_tp
    GPUs of a DP rank (replicated on every DP rank)."""
    if lay.tensor_parallel_only:
        return ctx.weight_bytes / lay.gpus
    m = ctx.model
    experts = m.num_moe_layers * m.moe.num_experts * ctx.expert_weight_bytes if m.moe else 0.0  # one expert's bytes
    slots = (m.moe.num_experts + lay.redundant_experts) / m.moe.num_experts if m.moe else 1.0  # copies held too
    return (ctx.weight_bytes - experts) / lay.attn_tp + experts * slots / (lay.moe_tp * lay.moe_ep)


# ---- expert load imbalance ---------------------------------------------------------------------

#: random placements of experts on ranks averaged for a skewed router (fixed seed: deterministic)
PLACEMENTS = 64


@lru_cache(maxsize=256)
def expected_max_standard_normal(n: int) -> float:
    """E[max of n independent standard normals] = integral of x n phi(x) Phi(x)^(n-1) dx, by the trapezoid rule
    on [-10, 10] (1.4236 for n = 8, 1 / sqrt(pi) for 2); 0 for n = 1."""
    if n <= 1:
        return 0.0
    x = np.linspace(-10.0, 10.0, 4001)
    nd = NormalDist()
    cdf = np.array([nd.cdf(v) for v in x])
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return float(np.trapezoid(x * n * pdf * cdf ** (n - 1), x))


@lru_cache(maxsize=1024)
def _rank_loads(num_experts: int, top_k: int, ranks: int, zipf_s: float, popularity, eplb: bool):
    """(mean, variance per token) of each rank's routed slots over random expert placements: array
    [placements, ranks] of sum q_i and sum q_i (1 - q_i) over the rank's experts."""
    q = np.asarray(_inclusion(num_experts, top_k, zipf_s, popularity))
    per = num_experts // ranks
    if eplb or (zipf_s == 0.0 and popularity is None):
        # uniform router, or placement balanced by load: every rank carries k / ranks on average
        mean = np.full((1, ranks), top_k / ranks)
        var = np.full((1, ranks), float(np.sum(q * (1 - q))) / ranks)
        return mean, var
    rng = np.random.default_rng(0)
    perms = np.stack([rng.permutation(num_experts) for _ in range(PLACEMENTS)])
    qq = q[perms].reshape(PLACEMENTS, ranks, per)
    return qq.sum(axis=2), (qq * (1 - qq)).sum(axis=2)


def ep_load_factor(num_experts: int, top_k: int, tokens: float, ranks: int, zipf_s: float = 0.0,
                   popularity: tuple[float, ...] | None = None, eplb: bool = False) -> float:
    """Expected routed slots of the most loaded of ``ranks`` EP ranks over the mean (T k / ranks), for T tokens.

    Expert i is included in a token's top-k with probability q_i (:func:`moesim.costs.routing.inclusion_probabilities`,
    the router's skew); tokens route independently, so rank r's slots L_r = sum over its experts of Binomial(T, q_i)
    have mean mu_r = T sum q_i and variance s_r^2 = T sum q_i (1 - q_i) (inclusions of one token treated as
    independent). The expected maximum over ranks is approximated as::

        E[max_r L_r] ~ E_placement[ max_r (mu_r + s_r z_n) ],   z_n = E[max of n standard normals]

    Experts sit on ranks in id order, which is unrelated to their popularity: the placement is averaged over
    random permutations (:data:`PLACEMENTS`). Uniform router: mu_r = T k / n and s_r^2 = T (E / n)(k / E)(1 - k / E).
    ``eplb`` (EPLB / redundant experts placed by measured load): every mu_r = T k / n, only the sampling spread is
    left. One rank (or no tokens) gives 1."""
    if ranks <= 1 or tokens <= 0:
        return 1.0
    mean, var = _rank_loads(num_experts, top_k, ranks, float(zipf_s), popularity, eplb)
    z = expected_max_standard_normal(ranks)
    peak = np.max(tokens * mean + np.sqrt(tokens * var) * z, axis=1).mean()
    return float(max(1.0, peak / (tokens * top_k / ranks)))


# ---- all-to-all ----------------------------------------------------------------------------------


def _c(key: str) -> float:
    return float(system_constants("engines").value(key))


def destinations_per_token(num_experts: int, top_k: int, ranks: int, slots: int | None = None) -> float:
    """Expected distinct EP ranks among a token's k experts (uniform routing; a token goes once to each rank that
    holds any of its experts), with e = slots / n experts per rank (slots = E, or E + redundant copies)::

        d = n (1 - C(E - e, k) / C(E, k))"""
    if ranks <= 1:
        return 1.0
    per = (slots or num_experts) // ranks
    miss = 1.0
    for j in range(top_k):
        miss *= max(num_experts - per - j, 0) / (num_experts - j)
    return ranks * (1.0 - miss)


def all_to_all_s(ctx: Context, nbytes_per_gpu: float, ranks: int, a2a: str = "nccl", phase: str = "decode",
                 family: str = "all_to_all") -> float:
    """One collective over ``ranks`` GPUs of ``nbytes_per_gpu`` bytes per GPU (nccl-tests' size: an all-to-all's
    send buffer, all destinations together; an all-gather's gathered output; a reduce-scatter's input)::

        t = alpha(n) + (n - 1) / n x bytes / (eta x B_link)

    alpha(n) = a + b (n - 1), NCCL's small-message latency line of that collective on NVSwitch
    (:func:`~.tensor_parallel.nccl_latency_s`: ``systems_db/shared.yaml``, AIConfigurator's measured NCCL
    all-gather, reduce-scatter and all-to-all on H200, each its own line); B_link the platform's measured GPU-GPU bandwidth per direction (``gpu_link``);
    eta the fraction of it the collective reaches (``systems_db/engines.yaml``: DeepEP's normal kernels reach
    153 of ~160 GB/s of NVLink on H800, EP8; taken for NCCL's all-gather / reduce-scatter too). DeepEP's
    low-latency kernels have a latency floor of their own (``deepep_ll_latency_s``). ``family`` (all_to_all,
    all_gather, reduce_scatter): a platform with a measured collectives profile (``hardware_db/collectives``)
    takes its measured time instead (graph timing)."""
    if ranks <= 1 or nbytes_per_gpu <= 0:
        return 0.0
    from ...db import collective_profile

    profile = collective_profile(ctx.platform.name)
    if profile is not None:
        t = profile.time_s(family, nbytes_per_gpu, ranks, "graph")
        if t is not None:
            return t
    p = ctx.platform
    link = p.gpu_link or p.host_link
    bw = link.h2d_pinned_bytes_per_s * _c("all_to_all_link_efficiency")
    alpha = nccl_latency_s(link, ranks, family)
    if ranks > p.num_gpus and p.scale_out is not None:  # across nodes: the remote share over the NICs
        bw = min(bw, p.scale_out.per_gpu_bytes_per_s)
        alpha = max(alpha, p.scale_out.latency_s)
    if a2a == "deepep_ll" or (a2a == "deepep" and phase == "decode"):
        alpha = max(alpha, _c("deepep_ll_latency_s"))
    return alpha + (ranks - 1) / ranks * nbytes_per_gpu / bw


# ---- one layer under a layout -------------------------------------------------------------------


@dataclass(frozen=True)
class ParallelLayerTimes:
    """One layer of one DP rank's GPU under a layout: the rank's tensor-parallel modules (``rank``, its
    all-reduces over attn_tp GPUs) with the routed experts replaced by the most loaded EP rank's, and the
    dispatch / combine all-to-alls."""

    rank: LayerTimes
    dispatch: float
    combine: float
    two_batch_overlap: bool = False
    gathered: bool = False  # dispatch is an all-gather and combine a reduce-scatter (else all-to-alls)

    @property
    def _names(self) -> tuple[str, str]:
        if self.gathered:
            return "MoE dispatch (all-gather)", "MoE combine (reduce-scatter)"
        return "MoE dispatch (all-to-all)", "MoE combine (all-to-all)"

    def add(self, eng: Engine, i: int, kind: LayerKind, after: int | None = None) -> int:
        if self.two_batch_overlap and kind.moe:
            return self._add_two_batches(eng, i, kind, after)
        dname, cname = self._names
        return self.rank.add(eng, i, kind, after, dispatch=(dname, self.dispatch), combine=(cname, self.combine))

    def _add_two_batches(self, eng: Engine, i: int, kind: LayerKind, after: int | None) -> int:
        """SGLang's two-batch overlap: the step's batch as two micro-batches (``rank``, ``dispatch`` and
        ``combine`` are one micro-batch's), each running its own kernels; one's all-to-all runs on the link while
        the other's attention or experts run on the GPU (the engine serialises each resource and overlaps the two)."""
        r = self.rank
        dname, cname = self._names
        ends = []
        ready: list[int | None] = []
        for mb in "ab":
            last = eng.add(f"L{i}{mb} attn proj", "gpu", r.attn_proj, [after], category="attention")
            last = eng.add(f"L{i}{mb} attention", "gpu", r.core[kind.windowed], [last], category="attention")
            if r.allreduce:
                last = eng.add(f"L{i}{mb} all-reduce", "gpu-link", r.allreduce, [last], category="communication")
            last = eng.add(f"L{i}{mb} router", "gpu", r.router, [last], category="router")
            ready.append(eng.add(f"L{i}{mb} {dname}", "gpu-link", self.dispatch, [last], category="communication"))
        for mb, d in zip("ab", ready):
            last = eng.add(f"L{i}{mb} experts", "gpu", r.experts, [d], category="experts")
            last = eng.add(f"L{i}{mb} {cname}", "gpu-link", self.combine, [last], category="communication")
            if r.shared:
                last = eng.add(f"L{i}{mb} shared experts", "gpu", r.shared, [last], category="experts")
            if r.allreduce:
                last = eng.add(f"L{i}{mb} all-reduce 2", "gpu-link", r.allreduce, [last], category="communication")
            ends.append(last)
        return eng.add(f"L{i} micro-batches joined", "gpu", 0.0, ends, category="experts")


def busiest_rank_sequences(seqs: float, dp: int) -> float:
    """Sequences of a group (decodes, or prompts / prompt chunks) on the busiest of ``dp`` attention-DP ranks::

        s_rank = max(s / dp, min(s, 1))

    A request lives on one DP rank (vLLM's DP engines, SGLang's DP attention, TensorRT-LLM's attention DP each
    schedule their own requests), so a prompt is not split over the ranks: with fewer prompts in a step than
    ranks, the rank that has one runs all of its tokens' attention and dense layers while the others, whose step
    is lighter, wait for it at the MoE layer's collective (every rank steps in lockstep). ``s`` below 1 is a chunk
    (a fraction of a prompt), on one rank. With at least dp of them the ranks share them evenly (the engines send
    a request to the rank with the fewest)."""
    if dp <= 1:
        return seqs
    return max(seqs / dp, min(seqs, 1.0))


#: halvings tried when a token count lies beyond a kernel table's largest measured size (2^6 = 64 x)
_TABLE_HALVINGS = 6


def _table_moe_beyond(ctx: Context, tables, tokens: float, tp: int, ep: int, lookup) -> float | None:
    """The measured fused-MoE time of ``tokens`` tokens, carried linearly past the table's largest size::

        t(T) = 2^j t(T / 2^j),   j the fewest halvings (<= 6) that bring T inside the table

    A step of every DP rank's tokens together (dp x the engine's token budget: 65,536 for TensorRT-LLM's 8192 on
    8 ranks) lies beyond the tables' sizes (AIConfigurator's MoE tables stop at 65,536 tokens), where the lookup
    finds nothing and the roofline, at half the measured time there, took over (DeepSeek-R1 EP8 on H200: 5.3 ms a
    layer against the table's 11.0 ms at 65,536). At such sizes the grouped GEMMs are compute-bound and linear in
    the tokens (the tables' last doubling, 32,768 to 65,536 tokens, takes 2.04 x the time)."""
    t = lookup(ctx, tables, tokens, tp=tp, ep=ep)
    j = 0
    while t is None and j < _TABLE_HALVINGS and tokens / 2 ** (j + 1) >= 1.0:
        j += 1
        t = lookup(ctx, tables, tokens / 2 ** j, tp=tp, ep=ep)
        if t is not None:
            t *= 2 ** j
    return t


def parallel_layer_times(ctx: Context, lay: ParallelLayout, tokens: float,
                         attention: list[tuple[float, float, float]], execution: Execution | None, backend: str,
                         gemm_tokens: float | None, rank_times, decode_width: int = 1) -> ParallelLayerTimes:
    """One layer under ``lay`` for a step of the whole instance: ``tokens`` and ``attention`` (sequences, new
    tokens, context) are the instance's; the busiest of the dp ranks holds :func:`busiest_rank_sequences` of each
    group (decodes evenly, a prompt or chunk whole on one rank; prompts evenly where ``lay.prompts_balanced``) and
    as large a share of the tokens; ``rank_times(rank_ctx, tokens, attention, gemm_tokens)`` prices that rank's
    tensor-parallel layer (the engine's path).

    Routed experts on the most loaded EP rank, for the instance's T tokens (all DP ranks route to every EP rank),
    f = :func:`ep_load_factor` (E, k, T, moe_ep)::

        t_experts = table.moe_s(f T, h, inter, E, k, tp=moe_tp, ep=moe_ep)     (measured table, where it covers:
                    the balanced kernel at the load of the most loaded rank)
                  = roofline of (min(E, f A(T)) / moe_ep experts, f T k / moe_ep slots) / moe_tp   (otherwise)

    Dispatch and combine (dp > 1), all-gather / reduce-scatter (the default): the whole T-token hidden state
    (activation dtype) over all G GPUs each way. All-to-all (DeepEP, NCCL): each GPU sends its T / G tokens' hidden
    states once to each distinct destination rank (:func:`destinations_per_token`) and to every GPU of that rank's
    MoE TP group; combine returns as many; both :func:`all_to_all_s` over moe_ep ranks. With dp = 1 (attention TP over every
    GPU) the tokens are already on every GPU: no all-to-all, the layer's all-reduce combines (TensorRT-LLM's and
    vLLM's EP under full attention TP)."""
    m = ctx.model
    if lay.two_batch_overlap and m.moe and tokens >= 2:
        # two micro-batches of half the tokens and sequences each (ParallelLayerTimes._add_two_batches)
        half = parallel_layer_times(ctx, replace(lay, two_batch_overlap=False), tokens / 2,
                                    [(s / 2, q, kv) for s, q, kv in attention], execution, backend,
                                    None if gemm_tokens is None else gemm_tokens / 2, rank_times, decode_width)
        return replace(half, two_batch_overlap=True)
    dp = lay.dp
    rctx = rank_context(ctx, lay.attn_tp)
    r_att = [(s / dp if lay.prompts_balanced and q > 1 else busiest_rank_sequences(s, dp), q, kv)
             for s, q, kv in attention]
    spread = sum(s * q for s, q, _ in attention)
    r_tokens = tokens * sum(s * q for s, q, _ in r_att) / spread if spread > 0 else tokens / dp
    r_gemm = None if gemm_tokens is None else max(gemm_tokens / dp, r_tokens)
    base = rank_times(rctx, r_tokens, r_att, r_gemm)
    if not m.moe:
        return ParallelLayerTimes(base, 0.0, 0.0, lay.two_batch_overlap)
    E, k = m.moe.num_experts, m.moe.top_k
    rows = tokens if gemm_tokens is None else gemm_tokens
    f = ep_load_factor(E, k, rows, lay.moe_ep, ctx.options.zipf_s, ctx.options.expert_popularity, lay.eplb)
    experts = None
    if execution is not None and execution.engine_kernels:
        from .engine_step import _kernel_tables, routed_table_moe_s, table_moe_allowed
        tables = _kernel_tables(ctx, backend)
        if tables is not None and table_moe_allowed(backend):
            # the most loaded rank runs its kernel as if every rank carried its load: the balanced table at f T
            experts = _table_moe_beyond(ctx, tables, rows * f, lay.moe_tp, lay.moe_ep, routed_table_moe_s)
    from .engine_step import engine_router_s
    # the rank's router over its own rows, charged the permute/combine unless the table above priced the experts
    router = engine_router_s(rctx, r_tokens if r_gemm is None else r_gemm, execution, fused_table=experts is not None)
    if experts is None:
        active = min((E + lay.redundant_experts) / lay.moe_ep, ctx.active_experts(rows) / lay.moe_ep * f)
        from .engine_step import router_logits_s, trtllm_gen_call_s, trtllm_gen_moe_kernels
        kernels = trtllm_gen_moe_kernels(ctx, backend) if execution is not None and execution.engine_kernels else 0
        if kernels:  # the engine's fused MoE on this GPU is TensorRT-LLM-Gen's (engine_step.trtllm_gen_moe_kernels)
            router = router_logits_s(rctx, r_tokens if r_gemm is None else r_gemm, execution)
            experts = trtllm_gen_call_s(ctx, execution, kernels, active, rows * k / lay.moe_ep * f, lay.moe_tp)
        else:
            cost = ctx.experts(active, rows * k / lay.moe_ep * f).scaled(1.0 / lay.moe_tp)
            experts = ctx.gpu_s(cost, execution)
    rank = LayerTimes(base.attn_proj, base.core, base.allreduce, router, experts, base.shared, base.dense)
    # a decode step (each sequence carries decode_width tokens: k + 1 when speculative decoding verifies k drafts)
    # takes the exchange's decode kernels (DeepEP low-latency)
    phase = "decode" if all(q == decode_width for s, q, _ in attention if s > 0) else "prefill"
    per_gpu_tokens = tokens / lay.gpus
    if dp == 1:
        # attention tensor parallel over every GPU: each GPU already holds all the tokens (after the attention's
        # all-reduce); each EP rank picks its experts' tokens locally and the layer's second all-reduce sums the
        # ranks' partial outputs, as in tensor parallelism: no all-to-all
        a2a = 0.0
    elif lay.moe_ep > 1 and lay.a2a != "allgather":
        # each GPU's send buffer: its tokens once per destination rank (local included; all_to_all_s sends
        # (n - 1) / n of it over the links), to every GPU of that rank's MoE TP group
        nbytes = per_gpu_tokens * ctx.hidden_state_bytes(1.0) * destinations_per_token(E, k, lay.moe_ep, E + lay.redundant_experts) * lay.moe_tp
        dispatch = combine = all_to_all_s(ctx, nbytes, lay.moe_ep, lay.a2a, phase)
        return ParallelLayerTimes(rank, dispatch, combine, lay.two_batch_overlap)
    else:
        # every DP rank's tokens gathered on every GPU for the MoE, its output reduce-scattered back (the engines'
        # default: vLLM's allgather_reducescatter all2all backend, SGLang's DP-attention gather/scatter,
        # TensorRT-LLM's attention-DP all-gather): the whole T-token hidden state over all G GPUs
        whole = tokens * ctx.hidden_state_bytes(1.0)
        dispatch = all_to_all_s(ctx, whole, lay.gpus, lay.a2a, phase, "all_gather")
        combine = all_to_all_s(ctx, whole, lay.gpus, lay.a2a, phase, "reduce_scatter")
        return ParallelLayerTimes(rank, dispatch, combine, lay.two_batch_overlap, gathered=True)
    return ParallelLayerTimes(rank, a2a, a2a, lay.two_batch_overlap)
