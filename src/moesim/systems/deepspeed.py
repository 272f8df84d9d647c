"""`deepspeed`: ZeRO-Inference model-based batching (DeepSpeed-Inference with ZeRO-3 weight offload).

Where data lives
  weights   all in host memory (pageable unless pin_memory); every pass streams each layer's weights to the
            GPU: ZeRO-3 gathers a module's parameters when its forward runs, so the attention block and
            every expert the model code calls - all of them for Mixtral, only those tokens were routed to
            for DeepSeek (its moe_infer skips idle experts); the next modules are prefetched while the
            current one computes. Fetched parameters are released after use: the GPU holds ZeRO-Inference's
            live-parameter cap (stage3_max_live_parameters + prefetch bucket = 4 h^2 elements), not layers.
  KV cache  on the GPU (Hugging Face cache tensors), for the whole batch; MLA cached as per-head K and V
            (the Hugging Face DeepSeek code up-projects the latent before caching).

Batching (model-based): one batch of B sequences goes through the whole model together, prefill
and decode at the same B (Hugging Face ``generate``). B is the largest that GPU memory allows next
to the resident weights (embeddings, LM head) and ZeRO-3's live fetched parameters, at the worse of

  prefill  KV of the prompts + the transient peak of one layer: non-flash (eager) attention
           materialises the B x heads x q_len x kv_len score matrix (its softmax in fp32 or
           bf16, ``attention_score_dtype``) next to the layer's activations; or, at the end of
           the pass, logits over every prompt position (transformers < 4.45, the version
           MoE-Gen's comparison pins, computed them for all positions, in fp32)
  decode   KV of B full contexts + the step's activations

With ``transformers=4.42`` this is why MoE-Gen (arXiv 2503.09716, section 5) reports DeepSpeed's batch as
"only 8" for DeepSeek-V2: its per-head KV is 4.9 MB per token (3.8 GB per 768-token sequence), and 128 heads
of 512 x 512 fp32 scores take 134 MB per prompt.

Defaults (as deployed; ``--policy best`` differs only in pinning host memory):
  batch      DeepSpeed has no batch search: ZeRO-Inference's ``run_model.py`` takes ``--batch-size`` from the
             user, and its README names the batch that memory allows as what limits throughput; the batches
             published for it (MoE-Gen: "only 8" on DeepSeek-V2; MoE-Lightning Table 4: 102 / 156 / 8 / 12,
             one batch through prefill and decode) are the largest that fit, so B is the largest that fits.
  memory     ``offload_param.pin_memory`` is off unless set (DeepSpeed's config default; ZeRO-Inference README,
             "By default, pinned memory is not enabled"): the layer copies are pageable.
  model code the current Hugging Face transformers: SDPA attention where the model has it, logits of the
             last prompt position only (``logits_to_keep``, since 4.45). ``transformers=4.42`` is the release
             MoE-Gen's artifact pins (requirements: transformers==4.42.0, torch 2.3), the environment of its
             DeepSpeed baseline: DeepSeek from remote code (eager attention, fp32 softmax; flash-attention-2 needs
             fp16/bf16 weights ZeRO casts), Mixtral with SDPA, fp32 logits at every prompt position.

Per layer and pass (engine): H2D copy of the layer's weights (buffer ring of 2), then on the GPU:
attention projections, attention core (eager: score-matrix traffic added to the flash-style cost),
router, routed experts on the batch's tokens (only the activated experts compute; all were
copied), shared experts or dense FFN.

The engine keeps a ring of ``layer_buffers`` layers for the copy/compute overlap (module-level prefetch seen
layer by layer).

Host (the Python that runs the model): ZeRO-Inference runs the Hugging Face model's ``generate`` in eager
PyTorch, one batch through every layer per pass, so the host pays the Hugging Face decoder layer's Python once per
(layer, pass) - counted in the code this deployment runs and priced at the ``transformers`` system's measured rates
(:mod:`.shared.hf_host`: torch calls, module calls, host reads, per-layer and per-forward Python): with
``transformers=4.42`` Mixtral's SDPA attention and its ``SparseMoeBlock`` looping over *every* expert with a
``torch.where`` read each (so the loop's Python and its kernels take turns), DeepSeek's remote code (one read of the
tokens per expert, then the experts hit); with the current code transformers 5.17's counts (grouped_mm experts in
prefill, batched_mm in generate's decode loop). Each pass adds the forward's own Python, each decode step
``generate``'s loop around it (its stop check reads the GPU), and the final norm and LM head's. The host runs ahead
of the GPU (a module's kernels start once its first call is issued) except at those reads; the weight copies do not
wait for it. GPU tasks carry the GPU's time alone (the generic per-operation issue cost is this Python's, not
added to it). At the batches ZeRO-Inference runs the copies dominate, so this is a few % of a pass.
Left out: ZeRO-3's own per-module hook Python (parameter fetch and release bookkeeping; not Hugging Face's, and not
counted here), its all-gathers (one GPU), and the transient copy when the Hugging Face cache grows by
concatenation. Constants: ``systems_db/deepspeed.yaml``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..engine import BufferRing, Engine
from ..errors import InfeasibleError
from ..modules import Context
from ..specs import LayerKind
from ..units import fmt_bytes
from .base import Plan, ServingSystem, StepSim, full_batches, simpson_decode_time, simulate_pass
from .shared.attention import eager_attention_cost, eager_attention_peak_bytes
from .shared.hf_host import DecoderPython, Python, PythonThread, bare, context_python, generate_step_python, \
    head_python, context_rates
from .shared.memory import (activation_bytes, layer_weight_bytes, max_layer_weight_bytes,
                            mla_decompressed_kv_bytes_per_token, prefill_logits_bytes)


class DeepSpeedParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    batch_size: int | None = Field(default=None, ge=1,
                                   description="sequences per batch (prefill and decode); None = largest that fits")
    transformers: Literal["current", "4.42"] = Field(
        default="current", description="the Hugging Face transformers release the model code comes from: current "
                                       "(SDPA attention where the model has it, logits of the last prompt position "
                                       "only), or 4.42, the one MoE-Gen's artifact pins (DeepSeek's remote code in eager "
                                       "attention, fp32 logits at every prompt position)")
    attention: Literal["eager", "sdpa"] | None = Field(
        default=None, description="Hugging Face attention implementation: eager materialises the score matrix; "
                                  "sdpa runs fused kernels that do not; None = the transformers release's default "
                                  "for the model")
    attention_score_dtype: Literal["fp32", "bf16"] = Field(
        default="fp32", description="dtype of the materialised prefill softmax (HF eager attention upcasts to fp32)")
    logits_all_positions: bool | None = Field(
        default=None, description="prefill computes fp32 logits for every prompt position (transformers < 4.45); "
                                  "None = as the transformers release does")
    pin_memory: bool | None = Field(
        default=None, description="ZeRO offload_param pin_memory: weights in page-locked host memory (direct DMA) "
                                  "rather than pageable; None = DeepSpeed's default, off (on with --policy best)")
    layer_buffers: int = Field(default=2, ge=1, description="GPU layer-weight buffers (current + prefetched)")

    @field_validator("transformers", mode="before")
    @classmethod
    def _release_as_text(cls, v: object) -> object:
        """A release number the CLI parsed as a number (``--transformers 4.42`` gives 4.42) is the release's name."""
        return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


class DeepSpeed(ServingSystem):
    name = "deepspeed"
    summary = ("ZeRO-Inference model-based batching: one batch for prefill and decode, all weights in host memory "
               "(pageable unless pin_memory) streamed layer by layer (every expert), KV cache on the GPU")
    Params = DeepSpeedParams
    searches_policy = True  # best: pinned host memory where DeepSpeed's default leaves it pageable

    # ---- settings --------------------------------------------------------------------------------
    def _settings(self, ctx: Context) -> dict:
        """The attention implementation, logits rows and host memory this deployment runs with: what the user
        set, else what the software does (module docstring, "Defaults")."""
        prm = self.params
        old = prm.transformers == "4.42"
        remote_code = any(ctx.model.family.startswith(f) for f in self.constants.names("remote_code_families_4_42"))
        attention = prm.attention or ("eager" if old and remote_code else "sdpa")
        logits_all = prm.logits_all_positions if prm.logits_all_positions is not None else old
        pinned = prm.pin_memory if prm.pin_memory is not None else self.policy == "best"
        return {"attention": attention, "logits_all": logits_all, "pinned": pinned}

    # ---- memory --------------------------------------------------------------------------------
    def _score_peak_bytes(self, ctx: Context, q_len: int, kv_len: int) -> float:
        """Score matrix of one sequence held at the attention peak (none with fused SDPA kernels)."""
        if self._settings(ctx)["attention"] == "sdpa":
            return 0.0
        return eager_attention_peak_bytes(ctx, 1, q_len, kv_len, self.params.attention_score_dtype)

    def _weight_working_bytes(self, ctx: Context) -> float:
        """GPU bytes of streamed weights live at once. ZeRO-3 gathers a module's parameters in its pre-forward hook
        and releases them after its forward, prefetching ahead up to a bucket; ZeRO-Inference's launcher caps both
        (``systems_db/deepspeed.yaml``)::

            W_live = min(layer_buffers x W_layer, (c_live + c_prefetch) h^2 b_w)

        with h the hidden size and b_w bytes per weight: a few modules, not whole layers."""
        c, m = self.constants, ctx.model
        zero = ((c.value("zero_max_live_parameters_per_hidden_squared") + c.value("zero_prefetch_bucket_per_hidden_squared"))
                * m.hidden_size ** 2 * ctx.wbytes)
        return min(self.params.layer_buffers * max_layer_weight_bytes(ctx), zero)

    @staticmethod
    def _kv_bytes_per_token(ctx: Context, context_tokens: int) -> float:
        """KV bytes per token of the Hugging Face cache: for MLA the decompressed per-head K and V
        (:func:`~.shared.memory.mla_decompressed_kv_bytes_per_token`), other attention kinds what the model's spec says."""
        if ctx.model.attention.kind != "mla":
            return ctx.kv_bytes_per_token(context_tokens)
        return mla_decompressed_kv_bytes_per_token(ctx)

    def _fixed_bytes(self, ctx: Context) -> float:
        return ctx.resident_weight_bytes + self._weight_working_bytes(ctx)

    def _fetched_layer_bytes(self, ctx: Context, kind: LayerKind, tokens: int) -> float:
        """Weights one pass copies for a layer. ZeRO-3 copies a module's parameters when its forward runs; where the
        model code calls only the experts tokens were routed to (``skips_idle_experts_families``), that is the
        attention, shared experts and the E_active(tokens) routed experts, else every expert (layer_weight_bytes)."""
        m = ctx.model
        families = self.constants.names("skips_idle_experts_families")
        if not (kind.moe and any(m.family.startswith(f) for f in families)):
            return layer_weight_bytes(ctx, kind)
        return ctx.attention_weight_bytes + ctx.shared_weight_bytes + ctx.active_experts(tokens) * ctx.expert_weight_bytes

    def _per_seq_bytes(self, ctx: Context) -> tuple[float, float]:
        """(prefill, decode) GPU bytes per sequence of the batch."""
        w = ctx.workload
        p, total = w.prompt_tokens, w.total_context_tokens
        layer_peak = self._score_peak_bytes(ctx, p, p) + activation_bytes(ctx, p)
        logits = prefill_logits_bytes(ctx, p if self._settings(ctx)["logits_all"] else 1)
        prefill = p * self._kv_bytes_per_token(ctx, p) + max(layer_peak, logits)
        decode = total * self._kv_bytes_per_token(ctx, total) + activation_bytes(ctx, 1)
        return prefill, decode

    def _max_batch(self, ctx: Context) -> int:
        p = ctx.platform
        usable = p.usable_gpu_memory_bytes_per_gpu
        fixed = self._fixed_bytes(ctx)
        experts = ctx.model.moe.num_experts if ctx.model.moe else 0
        self.require_fits(fixed, usable, f"resident weights and ZeRO-3's live fetched parameters "
                          f"({fmt_bytes(self._weight_working_bytes(ctx))}; a layer of {experts} experts is "
                          f"{fmt_bytes(max_layer_weight_bytes(ctx))}) need "
                          f"{fmt_bytes(fixed)} on {p.gpu.name}, {fmt_bytes(usable)} usable")
        per_seq = max(self._per_seq_bytes(ctx))
        self.require_fits(per_seq, usable - fixed, f"not even one sequence fits on the GPU next to the weights: "
                          f"it needs {fmt_bytes(per_seq)} (KV + attention peak), {fmt_bytes(usable - fixed)} is left")
        return int((usable - fixed) // per_seq)

    # ---- one forward pass -------------------------------------------------------------------
    def _python(self, ctx: Context, q_len: int) -> DecoderPython:
        """The counted Python of a decoder layer in the model code this deployment runs (:mod:`.shared.hf_host`):
        transformers 4.42's (Mixtral's loop over every expert, DeepSeek's remote code) with ``transformers=4.42``,
        else the current release's, whose experts run grouped_mm, and batched_mm inside ``generate``'s decode
        loop (transformers 5.17 ``_optimize_model_for_decode``)."""
        if self.params.transformers == "4.42":
            return context_python(ctx, "4.42")
        return context_python(ctx, "5.17", "batched_mm" if q_len == 1 else "grouped_mm")

    def _pass(self, ctx: Context, seqs: int, q_len: int, kv_len: int) -> StepSim:
        p = ctx.platform
        m = ctx.model
        tokens = seqs * q_len
        dtype = self.params.attention_score_dtype
        engine = Engine(memory_capacity_bytes={"gpu": p.usable_gpu_memory_bytes_per_gpu})
        wbytes = {k: self._fetched_layer_bytes(ctx, k, tokens) for k in m.layer_kinds()}
        path = "pinned" if self._settings(ctx)["pinned"] else "pageable"  # ZeRO offload_param pin_memory
        copy = {k: ctx.copy_s(v, path) for k, v in wbytes.items()}
        gpu = lambda cost: ctx.gpu_s(bare(cost))  # noqa: E731  the GPU's time; the host's is the thread's
        proj = gpu(ctx.attention_proj(tokens))
        if self._settings(ctx)["attention"] == "sdpa":
            core = {w: gpu(ctx.attention_core(seqs, q_len, kv_len, w)) for w in (False, True)}
        else:
            core = {w: gpu(eager_attention_cost(ctx, seqs, q_len, kv_len, w, dtype)) for w in (False, True)}
        py = self._python(ctx, q_len)
        if m.moe:
            router = gpu(ctx.router(tokens))
            active = ctx.active_experts(tokens)
            experts = gpu(ctx.experts(active, tokens * m.moe.top_k))
            shared_cost = ctx.shared_experts(tokens)
            shared = gpu(shared_cost) if shared_cost else 0.0
            experts_py = py.experts(active, m.moe.num_experts)
        dense = gpu(ctx.dense_ffn(tokens)) if m.dense_ffn else 0.0
        ring = BufferRing(self.params.layer_buffers)
        host = PythonThread(engine, context_rates(ctx))

        def layer(eng: Engine, i: int, kind: LayerKind) -> int:
            w = eng.add(f"L{i} layer weights H2D", "h2d", copy[kind], [ring.acquire()], category="transfer",
                        nbytes=wbytes[kind])
            last = host.module(f"L{i} attention projections", py.attention_block(), "gpu", proj, [w],
                               category="attention")
            last = eng.add(f"L{i} attention ({self._settings(ctx)['attention']})", "gpu", core[kind.windowed], [last],
                           category="attention")
            if kind.moe:
                last = host.module(f"L{i} router", py.post_norm + py.router, "gpu", router, [last], category="router")
                if py.loop_reads:  # a read per expert: the loop's Python and kernels take turns
                    last = host.serial(f"L{i} experts", experts_py, experts, [last], category="experts")
                else:
                    if py.experts_fixed.reads:  # the loop reads the tokens per expert first (moe_infer's .cpu())
                        host.wait_gpu()
                    last = host.module(f"L{i} experts", experts_py, "gpu", experts, [last], category="experts")
                if shared:
                    last = host.module(f"L{i} shared experts", py.shared + py.shared_gate, "gpu", shared, [last],
                                       category="experts")
            else:
                last = host.module(f"L{i} dense FFN", py.post_norm + py.dense_ffn, "gpu", dense, [last],
                                   category="dense_ffn")
            ring.release(last)
            return last

        def prologue(eng: Engine) -> None:
            """The forward's own Python (masks, positions, rotary table), and in decode ``generate``'s loop around
            it (input preparation, logits processing, stopping criteria; its stop check reads the GPU at the end
            of the previous step, which has drained by then)."""
            step = generate_step_python() + Python(reads=1.0) if q_len == 1 else Python()
            host.python("forward", Python(forwards=1) + step)

        def epilogue(eng: Engine) -> None:
            host.python("final norm + LM head", head_python())

        head = gpu(ctx.head(tokens, tokens if (q_len > 1 and self._settings(ctx)["logits_all"]) else seqs))
        kv = seqs * kv_len * self._kv_bytes_per_token(ctx, kv_len)
        if q_len > 1:
            per_seq_peak = max(self._score_peak_bytes(ctx, q_len, kv_len) + activation_bytes(ctx, q_len),
                               prefill_logits_bytes(ctx, q_len) if self._settings(ctx)["logits_all"] else 0.0)
            transient = seqs * per_seq_peak
        else:
            transient = activation_bytes(ctx, tokens)

        holds = {"resident weights (embeddings, LM head)": ctx.resident_weight_bytes,
                 "fetched weights (ZeRO-3 live parameters)": self._weight_working_bytes(ctx),
                 "kv cache": kv, "activations / attention scores / logits (peak)": transient}

        return simulate_pass(ctx, engine, layer, prologue, epilogue, gpu_holds=holds, head_s=head)

    def plan(self, ctx: Context) -> Plan:
        w = ctx.workload
        p = ctx.platform
        self.refuse_multi_gpu(ctx, "ZeRO-Inference tensor parallelism is not modelled")
        cfg = self._settings(ctx)
        host = ctx.weight_bytes
        if host > p.usable_host_memory_bytes:
            raise InfeasibleError(
                f"deepspeed: {ctx.model.name} ({ctx.wdtype}) needs {fmt_bytes(host)} of pinned host memory for its "
                f"weights, {fmt_bytes(p.usable_host_memory_bytes)} is usable: short by "
                f"{fmt_bytes(host - p.usable_host_memory_bytes)}"
            )
        max_batch = self._max_batch(ctx)
        wanted = w.batch_size or self.params.batch_size
        if wanted and wanted > max_batch:
            raise InfeasibleError(
                f"deepspeed: batch {wanted} does not fit on the GPU; at most {max_batch} sequences "
                f"(KV, attention peak and ZeRO-3's live fetched parameters): short by "
                f"{fmt_bytes((wanted - max_batch) * max(self._per_seq_bytes(ctx)))}"
            )
        # full batches of B, then a last, partial one charged for what it holds (as every system splits requests)
        batch, num_batches, rest = full_batches(w.num_requests, wanted or max_batch)

        def run(seqs: int) -> tuple[StepSim, float, list]:
            pre = self._pass(ctx, seqs, w.prompt_tokens, w.prompt_tokens)
            dec, pts = simpson_decode_time(lambda c: self._pass(ctx, seqs, 1, c), w.prompt_tokens, w.gen_tokens)
            return pre, dec, pts

        prefill, decode_s, points = run(batch)
        last_s = None
        if rest:
            last_pre, last_dec, _ = run(rest)
            last_s = last_pre.time_s + last_dec
        limit = "prefill peak" if self._per_seq_bytes(ctx)[0] >= self._per_seq_bytes(ctx)[1] else "decode KV"
        config = {"batch_size": batch, "max_batch_that_fits": max_batch, "batch_limited_by": limit,
                  "live_weight_bytes": self._weight_working_bytes(ctx),
                  "attention": cfg["attention"], "logits_all_positions": cfg["logits_all"],
                  "pin_memory": cfg["pinned"]}
        if cfg["attention"] == "eager":
            config["attention_score_dtype"] = self.params.attention_score_dtype
        return self.make_plan(
            (batch, num_batches), (prefill, 1, batch * w.prompt_tokens), (decode_s, points), config=config,
            host_mem_bytes=host, placement={"weights": f"host ({'pinned' if cfg['pinned'] else 'pageable'}), "
                                                       "streamed layer by layer incl. all experts",
                                            "kv_cache": "gpu"},
            notes=[f"batch {batch} for prefill and decode (GPU memory allows {max_batch}; limited by the {limit})"],
            last_batch_time_s=last_s)
