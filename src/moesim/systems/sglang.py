"""`sglang`: SGLang's aggregated serving (Zheng et al., "SGLang: Efficient Execution of Structured Language
Model Programs", NeurIPS 2024): continuous batching over a token-granular KV pool, chunked
prefill, CUDA-graph decode and the overlap scheduler.

Scheduling and step pricing are shared with vLLM and TensorRT-LLM (:mod:`.shared.continuous`); what is SGLang's
(its defaults as ``ServerArgs`` sets them, SGLang 0.5; the numbers are in ``systems_db/sglang.yaml``):

- ``chunked_prefill_size`` and ``cuda_graph_max_bs`` by the GPU's memory tier (``memory_tiers``): 2048 tokens and
  24 / 80 graph batches (TP < 4 / TP >= 4) below 35 GiB, 4096 and 32 / 160 below 60 GiB, 8192 and 256 / 512 below
  160 GiB (H100, H20, H200), 16384 and 512 above (B200, B300); with --enable-dp-attention each DP rank's step takes
  chunked_prefill_size // dp prompt tokens (:meth:`SGLang.rank_chunk`); decode batches padded to the next captured
  size, 1, 2, 4, 8, 12, then every 8 to 256, every 16 to 512, every 32 beyond; larger batches run eagerly;
- ``mem_fraction_static`` (weights + KV pool, as a fraction of the GPU's memory M, in MiB)::

      f = (M - R) / M,  R = max(512 + 1.5 max(chunked_prefill_size, 2048) + 2 cuda_graph_max_bs + 1024 TP / 8
                                + DP attention: 3 cuda_graph_max_bs dp (x 1.5 more above 300 graph batches),
                                10240 if M > 60 GiB)  + 2048 with MTP / EAGLE

  and the KV pool is what the weights leave of it::

      kv_pool = min(f M - W / n,  M_usable - W / n - act(chunked_prefill_size))

  (the second term: the rest of the memory must still hold the CUDA context and a chunk's activations);
- ``page_size`` 1 (token-granular pool); running requests per DP worker capped by the request pool SGLang sizes
  from the KV pool (:meth:`SGLang.rank_max_seqs`: 2048-4096 unless the pool is small), or by
  ``--max-running-requests`` split over the DP workers.

Scheduling: SGLang's default prefill-first batches (a step with prompts runs them alone); ``--scheduler-recv-interval
N`` (default 1) polls for new requests every N decode steps only (its ``SchedulerRecvSkipper``), so a request arriving
while others decode waits for the next poll (:mod:`moesim.serving.scheduler`, rule 1).

Execution: decode replays CUDA graphs; prefill ("extend") runs eagerly (piecewise CUDA graphs for extend are opt-in
through 0.5.9, ``--enable-piecewise-cuda-graph``): a long prefill's kernels keep the GPU busy while the host issues
the next (priced GPU-alone, :mod:`.shared.engine_step`), and a short one waits on the host, so an extend forward
takes ``max(GPU time, L x extend_host_s_per_layer)`` for L layers (:meth:`EngineRuntime.prefill_s`,
``systems_db/sglang.yaml``: SGLang PR 12160's eager DeepSeek-V3 forward of one new token). A decode batch above
``cuda_graph_max_bs`` (or every decode with ``cuda_graph_max_bs`` 0) runs eagerly too and pays the same floor
(:meth:`EngineRuntime.decode_floor_s`). The overlap scheduler (default since
v0.4) prepares the next batch on the CPU while the GPU runs the current one; its per-step CPU constants are not
fitted (no fit row of AIConfigurator's file runs SGLang).

Layouts (:meth:`SGLang.parallel_layout`, priced by :mod:`.shared.parallel`; SGLang docs, "Server Arguments" and
"DP, DPA and SGLang DP Router"): ``--tp`` (moesim's ``--gpus``) is the instance's GPUs; ``--dp-size`` with
``--enable-dp-attention`` runs attention data parallel (tp / dp GPUs a rank), the FFN over all tp GPUs;
``--ep-size`` shards the experts (MoE TP tp / ep); ``--moe-a2a-backend deepep`` exchanges tokens by DeepEP's
all-to-all (otherwise DP attention gathers and scatters them); ``--enable-two-batch-overlap`` runs two
micro-batches so one's exchange overlaps the other's computation.

Disaggregated prefill/decode and MTP speculative decoding: SGLang's ``--disaggregation-mode prefill`` / ``decode`` servers and MTP (``--speculative-algorithm NEXTN --speculative-num-steps``), as ``--disaggregate`` with the pools' GPUs, counts and
flags (:mod:`.shared.disaggregation`) and the draft steps (:mod:`.shared.speculative`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from ..errors import InfeasibleError
from ..modules import Context
from .shared.continuous import UNLIMITED, ContinuousBatchingEngine, EngineKnobs
from .shared.disaggregation import DisaggregationParams
from .shared.speculative import SpeculativeParams
from .shared.engine_step import EngineRuntime, engine_execution, graph_sizes, runtime_constants
from .shared.parallel import ParallelLayout, world_gpus

MIB = 2.0**20


class SGLangParams(DisaggregationParams, SpeculativeParams):
    model_config = ConfigDict(extra="forbid", frozen=True)
    mem_fraction_static: float | None = Field(
        default=None, gt=0, le=1, description="fraction of each GPU's memory for weights + KV pool; None = SGLang's "
                                              "default (its reserved-memory rule)")
    max_running_requests: int | None = Field(
        default=None, ge=1, description="most requests running at once over the instance (split over the DP workers); None = "
                    "SGLang's request pool sized from the KV pool (2048-4096 a worker), or 48 with MTP / EAGLE")
    chunked_prefill_size: int | None = Field(
        default=None, ge=1, description="prefill tokens per step; None = SGLang's default for the GPU's memory")
    cuda_graph_max_bs: int | None = Field(
        default=None, ge=0, description="largest decode batch captured in a CUDA graph; None = SGLang's default")
    page_size: int = Field(default=1, ge=1, description="tokens per KV page (SGLang default 1)")
    disable_overlap_schedule: bool = Field(default=False, description="turn the overlap scheduler off")
    enable_piecewise_cuda_graph: bool = Field(
        default=False, description="replay prefill (extend) forwards as piecewise CUDA graphs (SGLang "
                                   "--enable-piecewise-cuda-graph, off by default through 0.5.9): no host-issue floor "
                                   "on a short prefill; otherwise extend runs eagerly and a forward takes at least the "
                                   "host's issue of its kernels (extend_host_s_per_layer per layer)")
    scheduler_recv_interval: int = Field(
        default=1, ge=1, description="decode steps between the scheduler's polls for new requests (SGLang "
                                     "--scheduler-recv-interval, default 1: every step); a request arriving while "
                                     "only decodes run waits for the next poll")
    data_parallel_size: int = Field(
        default=1, ge=1, description="data-parallel ranks (SGLang --data-parallel-size / --dp-size); with "
                                     "enable_dp_attention, attention runs on dp ranks of tp / dp GPUs each")
    enable_dp_attention: bool = Field(
        default=False, description="attention data parallel over the dp ranks, MoE over all tp GPUs (SGLang "
                                   "--enable-dp-attention)")
    expert_parallel_size: int = Field(
        default=1, ge=1, description="expert-parallel size (SGLang --expert-parallel-size / --ep-size); MoE tensor "
                                     "parallel over tp / ep GPUs")
    moe_a2a_backend: Literal["none", "deepep"] = Field(
        default="none", description="MoE token exchange (SGLang --moe-a2a-backend): none (DP-attention gather and "
                                    "scatter: all-gather / reduce-scatter) or deepep (all-to-all: normal kernels for "
                                    "prefill, low-latency for decode, SGLang's deepep_mode auto)")
    enable_expert_parallel: bool = Field(
        default=False, description="vLLM's spelling of a data-parallel + expert-parallel deployment, accepted so one "
                                   "command runs on either engine: read as SGLang's --ep-size tp (its former "
                                   "--enable-ep-moe) and, with --data-parallel-size > 1, --enable-dp-attention "
                                   "(attention on the dp ranks, as vLLM's DP ranks run it)")
    enable_eplb: bool = Field(default=False, description="expert-parallel load balancer (SGLang --enable-eplb)")
    ep_num_redundant_experts: int = Field(
        default=0, ge=0, description="extra expert slots holding copies of hot experts (SGLang "
                                     "--ep-num-redundant-experts); (experts + R) mod ep_size = 0; moesim prices them "
                                     "as EPLB places them (needs --enable-eplb)")
    enable_two_batch_overlap: bool = Field(
        default=False, description="split each batch in two micro-batches so one's all-to-all overlaps the other's "
                                   "computation (SGLang --enable-two-batch-overlap)")
    speculative_num_steps: int = Field(
        default=0, ge=0, description="MTP draft steps per decode step (SGLang --speculative-algorithm NEXTN "
                                     "--speculative-num-steps k --speculative-eagle-topk 1 "
                                     "--speculative-num-draft-tokens k+1); 0 = off")


class SGLang(ContinuousBatchingEngine):
    name = "sglang"
    execution_modes = {"prefill": "graph", "decode": "graph"}  # eager "extend" prefill, priced GPU-alone: the host runs ahead
    summary = ("SGLang: continuous batching with chunked prefill, CUDA-graph decode, overlap scheduler; weights on "
               "the GPUs, tensor parallel; token-granular KV pool in mem_fraction_static")
    Params = SGLangParams

    speculative_flag = "--speculative-num-steps"

    def speculative_steps(self) -> int:
        return self.params.speculative_num_steps

    def _c(self, key: str) -> float:
        return float(self.constants.value(key))

    def memory_tier(self, ctx: Context) -> tuple[int, int, int]:
        """(chunked_prefill_size, cuda_graph_max_bs at TP < 4, at TP >= 4) of the GPU's memory tier
        (``memory_tiers``: SGLang's ``_handle_gpu_memory_settings``, by memory.total in MiB)."""
        mib = ctx.platform.gpu.memory_bytes / MIB
        for tier in str(self.constants.value("memory_tiers")).split(","):
            bound, chunk, small, large = tier.strip().split(":")
            if mib < float(bound):
                return int(chunk), int(small), int(large)
        raise ValueError("systems_db/sglang.yaml memory_tiers: the last tier's bound must be inf")

    def chunk(self, ctx: Context) -> int:
        """``chunked_prefill_size`` as given, or SGLang's default for the GPU's memory (:meth:`memory_tier`)."""
        if self.params.chunked_prefill_size is not None:
            return self.params.chunked_prefill_size
        return self.memory_tier(ctx)[0]

    def rank_chunk(self, ctx: Context) -> int:
        """The prefill tokens of one DP rank's step: with --enable-dp-attention SGLang divides chunked_prefill_size
        by dp_size (``ServerArgs``: ``chunked_prefill_size //= dp_size``, given or default), else the whole."""
        dp = self._parallel(ctx).dp
        return max(1, self.chunk(ctx) // dp) if dp > 1 else self.chunk(ctx)

    def graph_max_bs(self, ctx: Context) -> int:
        """``cuda_graph_max_bs``: the parameter, or SGLang's default for the GPU's memory and the TP size."""
        if self.params.cuda_graph_max_bs is not None:
            return self.params.cuda_graph_max_bs
        _, small, large = self.memory_tier(ctx)
        return large if ctx.platform.num_gpus >= self._c("cuda_graph_max_bs_large_tp") else small

    def capture_sizes(self, ctx: Context) -> tuple[int, ...]:
        """SGLang's captured decode batch sizes up to :meth:`graph_max_bs`."""
        return graph_sizes(str(self.constants.value("cuda_graph_batch_sizes")), self.graph_max_bs(ctx))

    def mem_fraction(self, ctx: Context) -> float:
        """``mem_fraction_static``: the parameter, or SGLang's reserved-memory rule (module docstring)."""
        if self.params.mem_fraction_static is not None:
            return self.params.mem_fraction_static
        m = ctx.platform.gpu.memory_bytes / MIB
        bs = self.graph_max_bs(ctx)
        reserved = (self._c("reserved_base_mib") + self._c("reserved_per_prefill_token_mib")
                    * max(self.chunk(ctx), self._c("reserved_min_prefill_tokens"))
                    + self._c("reserved_per_graph_bs_mib") * bs
                    + self._c("reserved_per_tp_mib") * ctx.platform.num_gpus)
        dp = self._parallel(ctx).dp
        dp_mib = 0.0
        if dp > 1:  # DP attention's gathered buffers
            dp_mib = self._c("reserved_per_dp_graph_bs_mib") * bs * dp
            if bs > self._c("reserved_dp_graph_bs_large_above"):
                dp_mib += self._c("reserved_per_dp_graph_bs_large_mib") * bs * dp
        reserved += dp_mib
        if m > self._c("reserved_floor_above_mib"):
            reserved = max(reserved, self._c("reserved_floor_mib"))
        if self.speculative_steps():
            reserved += self._c("reserved_speculative_mib")
        fraction = round((m - reserved) / m, 3)
        if fraction <= 0:
            raise InfeasibleError(
                f"sglang: its default mem_fraction_static rule reserves {reserved:.0f} MiB of the GPU's {m:.0f} MiB "
                f"({dp_mib:.0f} MiB of it for DP attention: {self._c('reserved_per_dp_graph_bs_mib'):g} MiB x "
                f"cuda_graph_max_bs {bs} x dp {dp}, more above {self._c('reserved_dp_graph_bs_large_above'):g}), "
                f"leaving {fraction:g}: set --mem-fraction-static (as large expert-parallel deployments do) or a "
                f"smaller --cuda-graph-max-bs")
        return fraction

    @property
    def knobs(self) -> EngineKnobs:
        p = self.params
        return EngineKnobs("SGLang", p.max_running_requests or UNLIMITED, p.chunked_prefill_size or 8192, p.page_size,
                           True, "max_running_requests")

    def knobs_for(self, ctx: Context) -> EngineKnobs:
        k = self.knobs
        return EngineKnobs(k.label, k.max_seqs, self.rank_chunk(ctx), k.block_size, True, k.max_seqs_name)

    def rank_max_seqs(self, ctx: Context, lay) -> int:
        """SGLang's cap on running requests per DP worker (``ModelRunner``'s request pool, SGLang 0.5)::

            T = KV tokens of the worker's pool,  L = the model's context length
            cap = min(clip(T / L x 512, 2048, 4096), T // 2)        (default)
            cap = min(max_running_requests // dp, T // 2)           (--max-running-requests, the instance's)

        With speculative decoding (EAGLE / NEXTN, as MTP runs) SGLang sets max_running_requests to 48 when it is
        not given (``ServerArgs``, 0.5.0-0.5.9: ``speculative_max_running_requests``)."""
        tokens = lay.blocks * self.knobs_for(ctx).block_size
        half = max(1, tokens // 2)
        given = self.params.max_running_requests
        if not given and self.speculative_steps():
            given = int(self._c("speculative_max_running_requests"))
        if given:
            return max(1, min(given // self._parallel(ctx).dp, half))
        est = int(tokens / ctx.model.max_context_tokens * self._c("max_running_requests_per_context_len"))
        est = min(max(est, int(self._c("max_running_requests_floor"))), int(self._c("max_running_requests_ceiling")))
        return max(1, min(est, half))

    def recv_interval(self) -> int:
        """``--scheduler-recv-interval``: decode steps between polls for new requests (SGLang's
        ``SchedulerRecvSkipper``, :mod:`moesim.serving.scheduler` rule 1)."""
        return self.params.scheduler_recv_interval

    def runtime(self, ctx: Context) -> EngineRuntime:
        p = self.params
        c = runtime_constants(self.name)
        eager_s = ctx.model.num_layers * self._c("extend_host_s_per_layer")  # an eager forward's host issue
        sizes = self.capture_sizes(ctx)  # none (cuda_graph_max_bs 0): every decode runs eagerly
        return EngineRuntime(self.name, engine_execution("graph" if sizes else "eager"), engine_execution("graph"),
                             c["step_cpu_s"], c["step_cpu_per_seq_s"],
                             bool(c["overlap_scheduler"]) and not p.disable_overlap_schedule, sizes,
                             uncaptured=engine_execution("eager"),
                             prefill_host_s=0.0 if p.enable_piecewise_cuda_graph else eager_s,
                             eager_decode_host_s=eager_s)

    def parallel_layout(self, ctx: Context) -> ParallelLayout:
        """SGLang's layout (``ServerArgs`` checks): --tp is the instance's GPUs; with --enable-dp-attention the
        attention runs on dp ranks of tp / dp GPUs (tp mod dp = 0) and the MoE over all tp GPUs, expert parallel
        over ep of them (tp mod ep = 0), tensor parallel over tp / ep. --dp without dp attention launches dp
        separate replicas (a router in front): predict one replica on its GPUs instead."""
        p = self.params
        g, dp, ep = world_gpus(ctx.platform), p.data_parallel_size, p.expert_parallel_size
        dp_attention = p.enable_dp_attention
        if p.enable_expert_parallel:  # vLLM's spelling: EP over every GPU, DP ranks run the attention
            if ep not in (1, g):
                raise InfeasibleError(f"sglang: --enable-expert-parallel puts the experts on all {g} GPUs "
                                      f"(--ep-size {g}); it conflicts with --expert-parallel-size {ep}")
            ep, dp_attention = g, dp_attention or dp > 1
        if dp > 1 and not dp_attention:
            raise InfeasibleError(
                f"sglang: --dp-size {dp} without --enable-dp-attention runs {dp} independent replicas of the "
                f"model; predict one replica (--gpus per replica), or add --enable-dp-attention")
        if g % dp:
            raise InfeasibleError(f"sglang: tp_size {g} must be divisible by dp_size {dp} (SGLang's rule with "
                                  f"--enable-dp-attention)")
        if g % ep:
            raise InfeasibleError(f"sglang: tp_size {g} must be divisible by ep_size {ep} (SGLang's rule)")
        if p.moe_a2a_backend == "deepep" and ep != g:
            raise InfeasibleError(f"sglang: --moe-a2a-backend deepep needs ep_size = tp_size ({g}), got {ep}")
        if p.enable_two_batch_overlap and ep == 1:
            raise InfeasibleError("sglang: --enable-two-batch-overlap overlaps the expert-parallel all-to-all; it "
                                  "needs --ep-size > 1")
        if p.ep_num_redundant_experts and not p.enable_eplb:
            raise InfeasibleError("sglang: moesim prices --ep-num-redundant-experts as the expert-parallel load "
                                  "balancer places the copies: add --enable-eplb")
        return ParallelLayout(g, g // dp, dp, g // ep, ep, eplb=p.enable_eplb,
                              redundant_experts=p.ep_num_redundant_experts,
                              a2a="deepep" if p.moe_a2a_backend == "deepep" else "allgather",
                              two_batch_overlap=p.enable_two_batch_overlap)

    def mixes_steps(self) -> bool:
        """SGLang's scheduler runs a batch of new prompts ("extend") before it resumes decoding, the decodes waiting,
        unless --enable-mixed-chunk (off by default; ``get_next_batch_to_run``: a prefill batch first, else the
        running decode batch)."""
        return False

    def layout_notes(self, ctx: Context) -> list[str]:
        p = self.params
        if not p.enable_expert_parallel:
            return []
        g, dp = world_gpus(ctx.platform), p.data_parallel_size
        sglang = f"--tp {g}" + (f" --dp {dp} --enable-dp-attention" if dp > 1 else "") + f" --ep-size {g}"
        return [f"--enable-expert-parallel is vLLM's flag; read as SGLang's {sglang}"]

    def _kv_pool_bytes(self, ctx: Context, weights_gpu: float, act: float) -> tuple[float, str]:
        f = self.mem_fraction(ctx)
        p = ctx.platform
        static = f * p.gpu.memory_bytes - weights_gpu
        room = p.usable_gpu_memory_bytes_per_gpu - weights_gpu - act  # what the rest must still hold
        return (min(static, room), f"mem_fraction_static={f:g} of {p.gpu.memory_bytes / 1e9:.1f} GB holds weights and "
                                   f"KV pool (the pool never takes the activations' and CUDA context's memory)")
