"""`gpu-resident`: every weight and the whole KV cache on the GPU(s); static batches.

With n GPUs the model is tensor-parallel (:mod:`moesim.systems.shared.tensor_parallel`).

The batch is the largest that memory allows (weights/n + KV/n + activations within the
usable GPU memory): full waves of that batch, then a last, partial wave of the requests left, priced at
its own size; prefill runs a wave's prompts in chunks of at most ``prefill_chunk_tokens`` tokens.
"""

from __future__ import annotations

import math
from dataclasses import replace

from pydantic import BaseModel, ConfigDict, Field

from ..engine import Engine
from ..errors import InfeasibleError
from ..modules import Context
from ..specs import LayerKind
from ..units import fmt_bytes
from .base import Plan, ServingSystem, StepSim, full_batches, simpson_decode_time, simulate_pass
from .shared.memory import activation_bytes
from .shared.tensor_parallel import LayerTimes, require_tensor_parallel


class GpuResidentParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    batch_size: int | None = Field(default=None, ge=1, description="None = largest that fits")
    prefill_chunk_tokens: int = Field(default=8192, ge=1, description="prompt tokens per prefill pass")


class GpuResident(ServingSystem):
    name = "gpu-resident"
    summary = ("static batches, all weights and the KV cache in GPU memory "
               "(tensor-parallel over the platform's GPUs)")
    Params = GpuResidentParams

    supports_speculative = True

    # ---- memory --------------------------------------------------------------------------------
    def _per_gpu_fixed_bytes(self, ctx: Context) -> float:
        draft = ctx.draft_context()
        return (ctx.weight_bytes + (draft.weight_bytes if draft else 0.0)) / ctx.platform.num_gpus

    def _kv_per_seq_bytes(self, ctx: Context) -> float:
        ctx_len = ctx.workload.total_context_tokens
        draft = ctx.draft_context()
        per_token = ctx.kv_bytes_per_token(ctx_len) + (draft.kv_bytes_per_token(ctx_len) if draft else 0.0)
        return ctx_len * per_token / ctx.platform.num_gpus

    def _max_batch(self, ctx: Context) -> int:
        """The most sequences whose KV and activations fit next to the weights and the prefill's activations."""
        p = ctx.platform
        usable = p.usable_gpu_memory_bytes_per_gpu
        weights = self._per_gpu_fixed_bytes(ctx)
        self.require_fits(
            weights, usable,
            f"{ctx.model.name} weights ({ctx.wdtype}) need {fmt_bytes(weights)} per GPU on "
            f"{p.num_gpus} x {p.gpu.name}, but only {fmt_bytes(usable)} is usable per GPU ({fmt_bytes(p.gpu.memory_bytes)} minus "
            f"{fmt_bytes(p.empirical.gpu_memory_reserved_bytes)} reserved)",
            ". Use more GPUs (--gpus), a smaller dtype, or an offloading system.")
        prefill_tokens = max(self.params.prefill_chunk_tokens, ctx.workload.prompt_tokens)
        free = usable - weights - activation_bytes(ctx, prefill_tokens)
        per_seq = self._kv_per_seq_bytes(ctx) + activation_bytes(ctx, 1)
        self.require_fits(per_seq, free, f"weights fit but not even one sequence of "
                          f"{ctx.workload.total_context_tokens} tokens: needs {fmt_bytes(per_seq)} of KV and "
                          f"activations per GPU, {fmt_bytes(max(free, 0))} left")
        return int(free // per_seq)

    # ---- schedule -----------------------------------------------------------------------------
    def _pass(self, ctx: Context, seqs: float, q_len: int, kv_len: int) -> StepSim:
        n = ctx.platform.num_gpus
        tokens = seqs * q_len
        inv = 1.0 / n
        engine = Engine(memory_capacity_bytes={"gpu": ctx.platform.usable_gpu_memory_bytes_per_gpu})
        times = LayerTimes.of(ctx, tokens, [(seqs, q_len, kv_len)])

        def layer(eng: Engine, i: int, kind: LayerKind) -> int:
            return times.add(eng, i, kind)

        head = ctx.gpu_s(ctx.head(tokens, seqs).scaled(inv))

        holds = {"weights": self._per_gpu_fixed_bytes(ctx),
                 "kv cache": seqs * kv_len * ctx.kv_bytes_per_token(kv_len) / n,
                 "activations": activation_bytes(ctx, tokens)}

        return simulate_pass(ctx, engine, layer, gpu_holds=holds, head_s=head)

    def plan(self, ctx: Context) -> Plan:
        w = ctx.workload
        require_tensor_parallel(ctx, self.name)
        max_batch = self._max_batch(ctx)
        wanted = w.batch_size or self.params.batch_size
        notes = []
        if wanted and wanted > max_batch:
            raise InfeasibleError(
                f"gpu-resident: batch {wanted} does not fit; at most {max_batch} sequences of "
                f"{w.total_context_tokens} tokens fit in GPU memory next to the weights"
            )
        # full waves of B, then a last, partial one charged for what it holds (as every system splits requests)
        batch, num_batches, rest = full_batches(w.num_requests, wanted or max_batch)
        spec, draft = ctx.options.speculative, ctx.draft_context()

        def prefill_of(seqs: int) -> tuple[StepSim, int, int]:
            """(one prefill pass, passes, prompts per pass) of a wave of ``seqs`` sequences."""
            per_pass = max(1, min(seqs, self.params.prefill_chunk_tokens // w.prompt_tokens))
            return self._pass(ctx, per_pass, w.prompt_tokens, w.prompt_tokens), math.ceil(seqs / per_pass), per_pass

        def decode_of(seqs: int) -> tuple[float, list]:
            if spec is not None and draft is not None:
                # one target pass verifies k+1 tokens per sequence after k draft steps; it yields tau tokens
                k, tau = spec.num_tokens, spec.tokens_per_step

                def step(c: int) -> StepSim:
                    target = self._pass(ctx, seqs, k + 1, c)
                    return replace(target, time_s=target.time_s + k * self._pass(draft, seqs, 1, c).time_s)

                steps_s, pts = simpson_decode_time(step, w.prompt_tokens, w.gen_tokens)
                return steps_s / tau, pts
            return simpson_decode_time(lambda c: self._pass(ctx, seqs, 1, c), w.prompt_tokens, w.gen_tokens)

        prefill, passes, seqs_per_pass = prefill_of(batch)
        decode_s, points = decode_of(batch)
        if spec is not None and draft is not None:
            notes.append(f"speculative decoding: {spec.draft_model} drafts {spec.num_tokens} tokens, acceptance "
                         f"{spec.acceptance_rate:.2f} -> {spec.tokens_per_step:.2f} tokens per target step "
                         "(Leviathan et al. 2023)")
        last_s = None
        if rest:
            last_pre, last_passes, _ = prefill_of(rest)
            last_s = last_passes * last_pre.time_s + decode_of(rest)[0]
        config = {"batch_size": batch, "max_batch_that_fits": max_batch, "tensor_parallel": ctx.platform.num_gpus,
                  "prefill_sequences_per_pass": seqs_per_pass}
        return self.make_plan((batch, num_batches), (prefill, passes, seqs_per_pass * w.prompt_tokens),
                              (decode_s, points), config=config, host_mem_bytes=0.0,
                              placement={"weights": "gpu", "kv_cache": "gpu"}, notes=notes, last_batch_time_s=last_s)
