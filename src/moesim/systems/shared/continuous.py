"""Continuous batching over a paged KV cache, tensor parallel on the GPUs: the scheduling and step pricing that
vLLM, SGLang and TensorRT-LLM share (their systems subclass :class:`ContinuousBatchingEngine`; systems never
import one another).

What differs between engines is data: their names for the knobs and their defaults (:class:`EngineKnobs`), how
they size the KV pool (``_kv_pool_bytes``), and how they run a step (:class:`~.engine_step.EngineRuntime`:
execution mode per phase, per-step CPU work and its overlap, CUDA-graph batch sizes). The scheduling model
(chunked prefill in the token budget, staggered steady state, ramp-up and drain) is the one documented in
:mod:`moesim.systems.vllm`.

KV cache per GPU (:func:`kv_share_per_gpu`): with tensor parallelism each GPU holds the K/V heads of its query
heads: kv_heads_per_gpu = max(1, H_kv / n) of the H_kv heads, i.e. a share max(1 / n, 1 / H_kv) of the per-token
KV (a K/V head is replicated when there are fewer of them than GPUs); MLA's compressed latent is not split over
heads, so every GPU caches all of it (share 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import numpy as np

from ...costs import EAGER
from ...engine import Engine
from ...errors import InfeasibleError
from ...modules import Context, expected_tokens_per_step
from ...specs import LayerKind
from ...units import fmt_bytes
from ..base import (Plan, ServingSystem, StepSim, balanced_batches, sequential_steps, simpson_decode_time,
                    simulate_pass)
from .engine_step import (EngineRuntime, engine_layer_times, kernel_tables_used, moe_kernel_note, with_decode_host,
                          with_engine_cpu, with_prefill_host)
from .memory import activation_bytes
from .speculative import speculation, speculative_decode_step
from .parallel import (ParallelLayout, parallel_layer_times, rank_context, require_experts_divisible,
                       weight_bytes_per_gpu, world_gpus)
from .tensor_parallel import LayerTimes, kv_share_per_gpu, require_tensor_parallel

#: a limit on running sequences that an engine does not set (SGLang's max_running_requests None: the KV pool decides)
UNLIMITED = 1 << 30


@dataclass(frozen=True)
class EngineKnobs:
    """An engine's scheduling knobs under common names (each engine's own names in ``*_name``)."""

    label: str  # the engine's name in messages ("vLLM")
    max_seqs: int  # most sequences running at once
    token_budget: int  # tokens one step may schedule (decode tokens + prefill chunks)
    block_size: int  # tokens per KV page
    chunked_prefill: bool = True
    max_seqs_name: str = "max_num_seqs"
    mla_latent_cache: bool = True


@dataclass
class ContinuousPlan(Plan):
    """A plan whose phases run mixed in the same steps once the run is under way.

    ``prefill`` and ``decode_points`` describe pure phases (their rates are what a burst of prompts,
    or decoding alone, would get); ``mixed_step`` is the steady-state step that repeats ``steps_per_batch``
    times per B requests. The run of W = ``num_batches`` waves of B requests is ramp-up, steady state, drain::

        T_total = T_ramp + (W - 1) S T_mixed + T_drain

    T_ramp = TTFT: at the start nothing runs, so the first B prompts are prefilled as a burst, full token
    budgets and then the rest (``prefill_last``); T_drain = ``drain_s``: after the last prompt the last B
    sequences only decode (G pure decode steps). The W - 1 other waves' prompts and decodes share the steady
    state's mixed steps. One wave (W = 1) is then a burst of prefill and G decode steps, never shorter than its
    TTFT; many waves tend to the steady state, W S T_mixed.
    """

    mixed_step: StepSim | None = None
    steps_per_batch: float = 0.0
    prefill_last: StepSim | None = None  # the last prefill pass of a batch, over what the full passes leave
    drain_s: float = 0.0

    @property
    def prefill_time_per_batch_s(self) -> float:
        """(passes - 1) full passes of ``prefill_tokens_per_pass`` prompt tokens, then the pass of the rest."""
        if self.prefill_last is None:
            return super().prefill_time_per_batch_s
        return (self.prefill_passes_per_batch - 1) * self.prefill.time_s + self.prefill_last.time_s

    @property
    def total_time_s(self) -> float:
        if self.mixed_step is None:
            return super().total_time_s
        return (self.prefill_time_per_batch_s + (self.num_batches - 1) * self.steps_per_batch * self.mixed_step.time_s
                + self.drain_s)


@dataclass(frozen=True)
class _Layout:
    """Per-GPU memory layout."""

    budget: float
    weights_gpu: float  # per GPU, after offload
    offload: float  # bytes per GPU in host memory
    activations: float
    block_bytes: float
    blocks: int



class ContinuousBatchingEngine(ServingSystem):
    """Continuous batching with chunked prefill; weights on the GPUs, tensor parallel; a paged KV pool.

    Subclasses give :attr:`knobs`, :meth:`runtime` and :meth:`_kv_pool_bytes` (or override :meth:`_layout`).

    Several nodes (``--nodes``): attention DP and expert parallelism span them, the MoE exchange's remote share over
    the platform's scale-out network (:func:`.parallel.all_to_all_s`); tensor-parallel groups stay inside a node."""

    multi_node = True
    serves_dense = True  # a dense model plans as a reference (AIConfigurator measured the engines on dense models too)
    supports_speculative = True  # MTP from the engine's own flag, a draft model from --draft (.speculative)

    @property
    def knobs(self) -> EngineKnobs:
        raise NotImplementedError

    def knobs_for(self, ctx: Context) -> EngineKnobs:
        """The knobs on ``ctx``'s platform (an engine whose defaults depend on the GPU overrides this)."""
        return self.knobs

    def runtime(self, ctx: Context) -> EngineRuntime:
        raise NotImplementedError

    #: the engine's own flag for the number of MTP draft steps (messages)
    speculative_flag: str = "--speculative-num-steps"

    def speculative_steps(self) -> int:
        """MTP draft tokens per decode step from the engine's own parameter (0: no speculative decoding)."""
        return 0

    # ---- online serving ----------------------------------------------------------------------------
    def online_model(self, ctx: Context, plan: Plan, max_context_tokens: int):
        """The engine's steps for :mod:`moesim.serving` (:mod:`.online`): its KV pool on ``ctx``'s platform and its
        own caps, steps priced from a table of this engine's simulated passes. Tensor parallel, experts tensor or
        expert parallel, and attention data parallel (one DP rank's scheduler, its steps matched by every rank:
        :class:`.online.EngineStepModel` ``ranks``), with or without speculative decoding (its decode steps verify
        k + 1 tokens after k draft steps); aggregated: disaggregated pools are priced offline only (refused, saying
        so)."""
        from .online import EngineStepModel

        label = self.knobs_for(ctx).label
        if getattr(self.params, "disaggregate", False):
            raise InfeasibleError(f"{label} online serving: disaggregated prefill/decode is priced offline only; use "
                                  "an offline workload (--batch C for C requests in flight)")
        if plan.config.get("params") != self.params.model_dump():
            raise ValueError(f"online serving: the plan was made by a {self.name} with other parameters "
                             f"({plan.config.get('params')}) than this one ({self.params.model_dump()})")
        spec, rates, kind = speculation(self, ctx)
        return EngineStepModel(self, ctx, self._layout(ctx), max_context_tokens, ranks=self._parallel(ctx).dp,
                               spec=(spec, rates, kind) if spec else None)

    def parallel_layout(self, ctx: Context) -> ParallelLayout:
        """The engine's layout on ``ctx``'s GPUs from its flags (default: tensor parallel over all of them)."""
        g = world_gpus(ctx.platform)
        return ParallelLayout(g, g)

    def _parallel(self, ctx: Context) -> ParallelLayout:
        return ctx.memo(("parallel layout", self.name, repr(self.params)), lambda: self._checked_layout(ctx))

    def _checked_layout(self, ctx: Context) -> ParallelLayout:
        lay = self.parallel_layout(ctx)
        lay.check(self.name)
        per_node = ctx.platform.num_gpus
        if lay.gpus > per_node and (lay.attn_tp > per_node or lay.moe_tp > per_node):
            raise InfeasibleError(
                f"{self.name}: over {lay.gpus // per_node} nodes a tensor-parallel group must stay inside one node "
                f"({per_node} GPUs on {ctx.platform.gpu_link.name if ctx.platform.gpu_link else 'its link'}); "
                f"attention TP {lay.attn_tp}, MoE TP {lay.moe_tp} span nodes (their all-reduce over the network is "
                f"not modelled): use --data-parallel-size and expert parallelism across nodes")
        if not lay.tensor_parallel_only:
            require_experts_divisible(ctx, lay, self.name)
        return lay

    def rank_max_seqs(self, ctx: Context, lay: _Layout) -> int:
        """The most sequences one DP rank's scheduler runs at once, given its KV pool ``lay`` (default: the engine's
        ``max_seqs`` knob; an engine that sizes its cap from the pool overrides this)."""
        return self.knobs_for(ctx).max_seqs

    def instance_max_seqs(self, ctx: Context, lay: _Layout) -> int:
        """The most sequences the instance runs at once: every attention-DP rank's cap (:meth:`rank_max_seqs`)."""
        return self.rank_max_seqs(ctx, lay) * self._parallel(ctx).dp

    def group_knobs(self, ctx: Context) -> EngineKnobs:
        """The knobs of the whole instance: each of the dp attention ranks schedules its own sequences and token
        budget (one scheduler per DP rank), so the instance runs dp x max_seqs sequences in dp x budget tokens."""
        k = self.knobs_for(ctx)
        dp = self._parallel(ctx).dp
        if dp == 1:
            return k
        return EngineKnobs(k.label, k.max_seqs * dp, k.token_budget * dp, k.block_size, k.chunked_prefill,
                           k.max_seqs_name, k.mla_latent_cache)

    # ---- memory ------------------------------------------------------------------------------
    def _kv_bytes_per_token(self, ctx: Context, ctx_len: int, knobs: EngineKnobs | None = None) -> float:
        """KV-cache bytes per token over all layers and all heads as this engine stores them (``knobs``: the
        engine's, default :meth:`knobs_for`).

        MLA without a latent cache (vLLM before 0.7.1, ``deepseek_v2.py``): K of qk_head_dim and V padded
        to qk_head_dim per head, i.e. 2 x heads x qk_head_dim elements per layer, instead of the latent.
        """
        a = ctx.model.attention
        if a.kind != "mla" or (knobs or self.knobs_for(ctx)).mla_latent_cache:
            return ctx.kv_bytes_per_token(ctx_len)
        return ctx.kv_bytes_per_token(ctx_len) * (2 * a.num_heads * a.qk_head_dim) / a.kv_elements_per_token()

    def _block_bytes(self, ctx: Context, ctx_len: int, knobs: EngineKnobs | None = None) -> float:
        """Bytes of one KV page on one GPU (:func:`kv_share_per_gpu` of the per-token KV); ``knobs``: the
        engine's, default :meth:`knobs_for` (a caller resolving those knobs passes the platform-free ones)."""
        k = knobs or self.knobs_for(ctx)
        rctx = rank_context(ctx, self._parallel(ctx).attn_tp)  # a DP rank's tensor-parallel group caches its KV
        return k.block_size * self._kv_bytes_per_token(ctx, ctx_len, k) * kv_share_per_gpu(rctx, k.mla_latent_cache)

    def _kv_pool_bytes(self, ctx: Context, weights_gpu: float, act: float) -> tuple[float, str]:
        """(bytes per GPU left for the KV pool, how the engine sized it in words)."""
        raise NotImplementedError

    def _layout(self, ctx: Context) -> _Layout:
        """Weights, activations of one full token budget and the KV pool per GPU (no CPU offload)."""
        k = self.knobs_for(ctx)
        pl = self._parallel(ctx)
        rctx = rank_context(ctx, pl.attn_tp)
        require_tensor_parallel(rctx, self.name)
        n = ctx.platform.num_gpus
        ctx_len = ctx.workload.total_context_tokens
        weights_gpu = weight_bytes_per_gpu(ctx, pl)
        act = activation_bytes(rctx, k.token_budget)
        block_bytes = self._block_bytes(ctx, ctx_len)
        one_seq = math.ceil(ctx_len / k.block_size) * block_bytes
        pool, how = self._kv_pool_bytes(ctx, weights_gpu, act)
        if pool < one_seq:
            raise InfeasibleError(
                f"{self.name}: model weights need {fmt_bytes(weights_gpu)} per GPU ({ctx.model.name}, {ctx.wdtype}, "
                f"{n} x {ctx.platform.gpu.name}); {how}, the KV pool gets {fmt_bytes(max(pool, 0.0))} per GPU, one "
                f"sequence of {ctx_len} tokens needs {fmt_bytes(one_seq)}: short by {fmt_bytes(one_seq - pool)}; "
                f"use more GPUs")
        return _Layout(weights_gpu + act + pool, weights_gpu, 0.0, act, block_bytes, int(pool // block_bytes))

    # ---- one step ----------------------------------------------------------------------------
    def _pass(self, ctx: Context, lay: _Layout, tokens: float, rows: float,
              attention: list[tuple[float, float, float]], width: int = 1, phase: str | None = None,
              host_floor: bool = True) -> StepSim:
        """One step over ``tokens`` batched tokens; ``attention`` lists (sequences, new tokens, context) groups;
        ``rows`` = tokens whose logits are computed (one per decoding sequence and per completed prompt).

        Priced as the engine runs it (:attr:`runtime`, :mod:`.engine_step`): a decode-only step replays the
        CUDA graph of its padded batch, a step with prompt tokens runs the prefill execution; then the engine's
        per-step CPU work, overlapped with the GPU's or not (:meth:`EngineRuntime.step_s`). ``width``: tokens per
        sequence of a decode step (k + 1 when speculative decoding verifies k draft tokens, :mod:`.speculative`):
        the engines capture its graph per batch of sequences, each carrying ``width`` tokens. ``phase`` ("decode" or
        "prefill") states the step's kind where ``attention`` does not show it (a step priced without attention).
        ``host_floor`` False: a step with prompt tokens priced without the host's issue floor of an eager prefill
        (:meth:`EngineRuntime.prefill_s`; the online step table composes GPU times and applies it per step)."""
        pl = self._parallel(ctx)
        n, dp = pl.attn_tp, pl.dp
        inv = 1.0 / n
        m = ctx.model
        rt = self.runtime(ctx)
        decode_only = phase == "decode" if phase else all(q == width for s, q, _ in attention if s > 0)
        if decode_only:  # each DP rank replays the graph of its own padded batch
            execution, rank_rows = rt.decode_execution(tokens / width / dp)
            gemm_tokens = rank_rows * dp * width
        else:
            execution, gemm_tokens = rt.prefill, tokens
        engine = Engine(memory_capacity_bytes={"gpu": ctx.platform.usable_gpu_memory_bytes_per_gpu})

        def rank_times(c: Context, t: float, att, g):
            if execution == EAGER:
                return LayerTimes.of(c, t, att)
            return engine_layer_times(c, t, att, execution, rt.backend, g, width)

        if pl.tensor_parallel_only:
            times = rank_times(ctx, tokens, attention, gemm_tokens)
        else:
            key = ("parallel layer times", pl, execution, rt.backend, tokens, tuple(attention), gemm_tokens, width)
            times = ctx.memo(key, lambda: parallel_layer_times(ctx, pl, tokens, attention, execution, rt.backend,
                                                               gemm_tokens, rank_times, width))
        offload_layer = lay.offload / m.num_layers
        copy = ctx.h2d_s(offload_layer)

        def layer(eng: Engine, i: int, kind: LayerKind) -> int:
            last = len(eng.tasks) - 1 if eng.tasks else None
            if copy:  # on the compute stream: waits for the previous layer, blocks this one
                last = eng.add(f"L{i} offloaded weights H2D", "h2d", copy, [last], category="transfer",
                               nbytes=offload_layer)
            return times.add(eng, i, kind, last)

        hctx = rank_context(ctx, n)
        head = hctx.gpu_s(hctx.head(gemm_tokens / dp, max(rows / dp, 1.0)).scaled(inv), execution)

        holds = {"weights": lay.weights_gpu, "paged KV pool": lay.blocks * lay.block_bytes,
                 "activations (profiled peak) + one offloaded layer's GPU copy": lay.activations}

        step = simulate_pass(ctx, engine, layer, gpu_holds=holds, head_s=head)
        if not decode_only and host_floor:  # an eagerly launched prefill forward waits on the host's issue
            step = with_prefill_host(step, rt)
        elif decode_only and host_floor:  # ... and so does a decode batch no captured graph takes
            step = with_decode_host(step, rt, tokens / width / dp)
        return with_engine_cpu(step, rt, max(rows / dp, 1.0))

    def _mixed(self, ctx: Context, lay: _Layout, dec: float, dec_ctx: float, pre_tokens: float, pre_seqs: float,
               prompt: int) -> StepSim:
        attention = [(dec, 1, dec_ctx), (pre_seqs, prompt, prompt)]
        # stated, not read off the groups: a one-token prompt is still a prefill forward (SGLang's extend)
        return self._pass(ctx, lay, dec + pre_tokens, dec + pre_seqs, attention,
                          phase="prefill" if pre_tokens > 0 else "decode")

    def _v1_steady_state(self, ctx: Context, lay: _Layout, batch: int) -> tuple[float, StepSim, str]:
        """vLLM V1 (chunked prefill), staggered sequences in steady state.

        Per B requests, S = max(G, B (P + G) / N) steps schedule B G decode tokens and B P prompt tokens.
        When the budget binds (S > G) or prompts enter at least once a step (B >= G), every step carries
        prompt tokens and each is the average step: B G / S decodes and B P / S prompt tokens. Otherwise a
        prompt enters whole, in chunks of q = min(P, N - B) tokens (V1 fills the budget left by the running
        decodes): m = B P / q of the G steps carry B decodes and a chunk, the other G - m only decode::

            T_per_batch = m T(B decodes + q prompt tokens) + (G - m) T(B decodes)

        Spreading the prompt tokens evenly over the G steps instead misprices a sparse model at small B:
        its step time is concave in the tokens (a step of 3 Mixtral tokens reads about 4.6 of the 8 experts
        of a layer, a step of 1 reads 2), so at batch 1 an average step of 1 decode + 2 prompt tokens cost
        19.0 ms against 11.0 ms for the decode alone, and the throughput fell far below what TTFT and TPOT
        imply. Returns (steps per batch, the mean step as one StepSim, what the steps hold, in words).
        """
        w, k = ctx.workload, self.group_knobs(ctx)
        P, G, N = w.prompt_tokens, w.gen_tokens, k.token_budget
        mid = P + (G + 1) / 2.0
        steps = max(float(G), batch * (P + G) / N)
        if steps > G or batch >= G:
            mixed = self._mixed(ctx, lay, batch * G / steps, mid, batch * P / steps, batch / steps, P)
            return steps, mixed, (f"each step decodes {batch * G / steps:.4g} tokens and prefills "
                                  f"{batch * P / steps:.4g} prompt tokens")
        q = min(P, N - batch)
        m = batch * P / q
        carry = self._mixed(ctx, lay, batch, mid, q, q / P, P)
        decode = self._mixed(ctx, lay, batch, mid, 0, 0, P)
        return steps, sequential_steps([(carry, m / G), (decode, 1.0 - m / G)]), (
            f"of every {G} steps, {m:.4g} carry {batch} decodes and a {q}-token prompt chunk, {G - m:.4g} only "
            f"decode")

    def _v0_steady_state(self, ctx: Context, lay: _Layout, batch: int, mid_ctx: int, prefill: StepSim,
                         passes: int, prefill_last: StepSim) -> tuple[float, StepSim, float]:
        """vLLM V0 without chunked prefill (``Scheduler._schedule_default``): a step is all prefill or all decode,
        and waiting prompts go first, as many as the token budget, ``max_num_seqs`` and the free KV blocks admit.

        The offline workload's requests all have the same prompt P and generation G and arrive together, so the B
        sequences of a wave start in the same burst and finish in the same step; the next wave's B prompts are then
        prefilled as a burst too, in ceil(B P / N) passes of the token budget N (the last one of the rest), and the
        waves stay in lockstep. Per decode step that is ``passes / G`` prefill-only passes::

            T_per_token = T_decode(B) + T_burst / G,     T_burst = (passes - 1) T_prefill(N) + T_prefill(rest)

        (Pricing instead one prefill step per finishing sequence, as if the sequences were staggered, charged B / G
        passes per decode step: with offloaded weights each pass copies every weight, and Mixtral-8x7B's decode at
        B = 145, G = 256 paid 1.57 passes per token step where a simulation of V0's scheduler, preemption by
        recompute included, pays 1.04; this model pays 1.01.)

        Returns (steps per batch, the repeating step as one StepSim, the refill time per decode step).
        """
        G = ctx.workload.gen_tokens
        decode = self._mixed(ctx, lay, batch, mid_ctx, 0, 0, ctx.workload.prompt_tokens)
        refill = [(decode, 1.0), (prefill_last, 1.0 / G)] + ([(prefill, (passes - 1) / G)] if passes > 1 else [])
        refill_s = ((passes - 1) * prefill.time_s + prefill_last.time_s) / G
        return float(G), sequential_steps(refill), refill_s

    def running_by_kv(self, ctx: Context, lay: _Layout, block_size: int) -> tuple[float, int]:
        """(mean KV blocks a running sequence holds, its generation position uniform over 1..G; the sequences the
        KV pools hold together, every DP rank's pool its own)."""
        P, G = ctx.workload.prompt_tokens, ctx.workload.gen_tokens
        blocks_per_seq = float(np.mean(np.ceil((P + np.arange(1, G + 1)) / block_size)))
        return blocks_per_seq, int(lay.blocks // blocks_per_seq) * self._parallel(ctx).dp

    def eager_host_source(self, ctx: Context) -> str:
        """Where the host-issue floor of this engine's eager forwards comes from, as the prediction's note says it."""
        return f"{self.name}'s figure per layer x {ctx.model.num_layers} layers, systems_db/{self.name}.yaml"

    def recv_interval(self) -> int:
        """Decode-only steps between the scheduler's polls for new requests (1: every step, the engines' default;
        SGLang's ``--scheduler-recv-interval`` overrides this)."""
        return 1

    def ctx_release_iters(self, ctx: Context) -> int:
        """Iterations between releases of waiting prompts (:class:`moesim.serving.model.Capacity`
        ``ctx_release_iters``; 1: every iteration, the engines' default; TensorRT-LLM's attention-DP balance
        overrides this)."""
        return 1

    # ---- offline plan --------------------------------------------------------------------------
    def mixes_steps(self) -> bool:
        """Whether one step carries prompt chunks and decodes together (chunked prefill mixed into decode steps, as
        vLLM V1 and TensorRT-LLM's in-flight batching do); an engine that runs prompts in steps of their own says
        False."""
        return True

    def layout_notes(self, ctx: Context) -> list[str]:
        """How the engine read its layout flags, where that needs saying (none by default)."""
        return []

    def plan(self, ctx: Context) -> Plan:
        from .disaggregation import check_aggregated, disaggregated_plan

        check_aggregated(self.params)
        if getattr(self.params, "disaggregate", False):
            return disaggregated_plan(self, ctx)
        w, k, prm = ctx.workload, self.group_knobs(ctx), self.params
        P, G, R = w.prompt_tokens, w.gen_tokens, w.num_requests
        lay = self._layout(ctx)
        pl = self._parallel(ctx)
        bs, budget_tokens = k.block_size, k.token_budget
        blocks_per_seq, by_kv = self.running_by_kv(ctx, lay, bs)
        max_seqs = self.instance_max_seqs(ctx, lay)
        cap = w.batch_size or max_seqs  # a fixed workload batch acts as max_num_seqs
        notes = []
        by_kv = max(by_kv, 1)  # one full sequence always fits (checked in _layout)
        if w.batch_size and max_seqs < UNLIMITED and w.batch_size > max_seqs:
            notes.append(f"batch {w.batch_size} asked: taken as {k.max_seqs_name}, above {k.label}'s own "
                         f"{max_seqs} (without --batch it runs at most {max_seqs})")
        if w.batch_size and w.batch_size > by_kv:
            notes.append(f"batch {w.batch_size} asked, but the KV pool holds {by_kv} running sequences; "
                         f"{k.label} runs {by_kv}")
        batch, num_batches = balanced_batches(R, max(1, min(cap, by_kv, R)))
        chunk = min(budget_tokens, batch * P)
        prefill = self._mixed(ctx, lay, 0, 0, chunk, chunk / P, P)
        passes = math.ceil(batch * P / chunk)
        rest = batch * P - (passes - 1) * chunk  # the last pass prefills what the full budgets leave
        prefill_last = prefill if rest == chunk else self._mixed(ctx, lay, 0, 0, rest, rest / P, P)
        spec, rates, kind = speculation(self, ctx)
        if spec:  # G / tau steps of verification + drafts (.speculative); waves in lockstep (no mixed steps)
            tau = expected_tokens_per_step(rates)
            decode_s, points = simpson_decode_time(
                lambda c: speculative_decode_step(self, ctx, lay, batch, c, P, spec, kind), P, G)
            decode_s /= tau
        else:
            decode_s, points = simpson_decode_time(lambda c: self._mixed(ctx, lay, batch, c, 0, 0, P), P, G)
        drain_s = decode_s  # the last wave's G steps, decodes only
        if spec:
            steps, mixed, per_step = G / tau, None, "each wave prefills its prompts, then decodes"
            what = "MTP" if kind == "mtp" else f"draft model {ctx.options.speculative.draft_model}"
            notes.append(f"speculative decoding ({what}): {spec} draft step(s) a decode step, {tau:.3g} tokens per "
                         f"step (acceptance {', '.join(f'{a:g}' for a in rates)}); waves priced in lockstep, prefill "
                         f"then decode (the mixed steady state is not priced with speculative decoding)")
        elif k.chunked_prefill:
            steps, mixed, per_step = self._v1_steady_state(ctx, lay, batch)
        else:
            steps, mixed, refill_s = self._v0_steady_state(ctx, lay, batch, P + (G + 1) / 2.0, prefill, passes,
                                                           prefill_last)  # the mean context, as V1's
            per_step = "each step decodes or prefills"
            decode_s += G * refill_s
            notes.append(f"V0 scheduler: prefill steps do not carry decodes; the {batch} sequences of a wave finish "
                         f"together and the next {batch} prompts are prefilled in {passes} pass(es) of up to "
                         f"{chunk} tokens, counted in the decode rate")
        n = ctx.platform.num_gpus
        notes.append(
            f"continuous batching steady state: {batch} running sequences (KV pool of {lay.blocks} blocks of {bs} "
            f"tokens holds {by_kv} at a mean of {blocks_per_seq:.1f} blocks; {k.max_seqs_name} "
            f"{max_seqs if max_seqs < UNLIMITED else 'unlimited'}); "
            f"{per_step}; the run = ramp-up (the first {batch} prompts prefilled as a burst) + "
            f"{num_batches - 1} wave(s) of {batch} requests in steady state + drain (the last {batch} decode alone)")
        notes.append("prefill and decode rates are those of pure phases; the total time uses the mixed steps"
                     if mixed else "prefill and decode rates are those of pure phases")
        if not pl.tensor_parallel_only:
            notes.append(f"parallel layout on {pl.gpus} GPUs: {pl.words()}; each DP rank runs 1/{pl.dp} of the "
                         f"sequences with its own KV pool; the most loaded EP rank sets the MoE's pace")
        notes.extend(self.layout_notes(ctx))
        rt = self.runtime(ctx)
        kernel_note = moe_kernel_note(ctx, rt.backend)
        if kernel_note:
            notes.append(kernel_note)
        host_s = rt.prefill_host_s
        source = self.eager_host_source(ctx)
        if host_s > 0:
            notes.append(f"prefill forwards launched eagerly, kernel by kernel: each takes at least {host_s * 1e3:.1f} "
                         f"ms of host issue ({source}); "
                         + ("this prefill pass is host-bound" if prefill.category_s.get("host issue (eager prefill)")
                            else "this prefill pass is GPU-bound"))
        if rt.decode_floor_s(batch / pl.dp) > 0:
            notes.append(f"a decode batch of {batch / pl.dp:g} sequences per rank has no captured CUDA graph and runs "
                         f"eagerly: each step takes at least {rt.eager_decode_host_s * 1e3:.1f} ms of host issue "
                         f"({source})")
        if lay.offload:
            notes.append(f"cpu_offload_gb={prm.cpu_offload_gb:g}: {fmt_bytes(lay.offload)} of weights per GPU copied "
                         f"from pinned host memory every pass, serialized with compute")
        config = {"batch_size": batch, "max_running_by_kv": by_kv, "kv_blocks": lay.blocks, "block_size": bs,
                  "tensor_parallel": pl.attn_tp, "data_parallel": pl.dp, "moe_tensor_parallel": pl.moe_tp,
                  "expert_parallel": pl.moe_ep, "steps_per_batch": steps, "mixed_step_s": mixed.time_s if mixed else None,
                  "prefill_tokens_per_pass": chunk, "kv_pool_bytes_per_gpu": lay.blocks * lay.block_bytes,
                  "weights_on_gpu_bytes_per_gpu": lay.weights_gpu, "offloaded_bytes_per_gpu": lay.offload,
                  "kernel_tables": kernel_tables_used(ctx, self.runtime(ctx)), "params": prm.model_dump(),
                  "recv_interval": self.recv_interval(), "prefill_host_s": host_s,
                  "speculative_acceptance": _acceptance_given(spec, kind, prm)}
        placement = {"weights": "gpu" + (" + pinned host (copied every pass)" if lay.offload else ""),
                     "kv_cache": "gpu (paged)"}
        return self.make_plan((batch, num_batches), (prefill, passes, chunk), (decode_s, points), config=config,
                              host_mem_bytes=lay.offload * n, placement=placement, notes=notes,
                              also_run=tuple(x for x in (mixed, prefill_last) if x is not None), plan_type=ContinuousPlan, mixed_step=mixed,
                              steps_per_batch=steps, prefill_last=prefill_last, drain_s=drain_s)


def _acceptance_given(spec: int, kind: str, params) -> str | None:
    """Where a plan's speculative acceptance rates come from, for its uncertainty band: None without speculation;
    "assumed" for MTP without ``--speculative-acceptance`` (moesim's sourced default priced it); "given" otherwise
    (a draft model's ``--spec-accept``: the scenario's rate, default included, is not banded apart yet)."""
    if not spec:
        return None
    return "assumed" if kind == "mtp" and not getattr(params, "speculative_acceptance", None) else "given"
