"""`moe-gen`: module-based batching with weights and KV in host memory (MoE-Gen, arXiv 2503.09716).

Where data lives (section 4.2): all weights in pinned host memory (overflow on disk), the
whole KV cache in host memory; the GPU keeps embeddings, LM head and routers resident plus
three reserved buffers: a dense-module buffer (attention and shared experts of one layer,
double-buffered), an expert buffer (S_Expert; whatever GPU memory is left), and a KV buffer
for attention micro-batches.

One decode step, per layer (Figure 6 DAG):
  H2D  copy the layer's attention (+ shared expert) weights
  GPU  pre-attention projections for the accumulated batch B
  H2D  copy the KV of each GPU attention micro-batch (b_a sequences)  -> GPU attention
  CPU  attention for the fraction omega of B, reading host KV directly (not with MLA, where
       MoE-Gen keeps omega = 0: the latent would need a 71x up-projection, section 5.3)
  D2H  write back the new tokens' KV
  GPU  post-attention projection, router; shared experts
  H2D  stream each activated expert's weights on the copy engine, overlapped with
  GPU  the previous experts' compute on the whole accumulated batch (experts run one by one)
The copy engine serves requests in submission order, and buffers are rings: a copy waits for
the compute that frees its slot. Prefill is the same without KV copies (KV goes D2H).

Batch sizes. As deployed (the released repository, which has no scheduler or search: shared/reference/
offload-systems.md 1.6): decode B is the most sequences the host KV cache holds (MoE-Gen's
``host_kv_cache_size``, by default the host memory the weights leave), capped by the workload;
b_a and the prompts per prefill pass are the model's initializer defaults (``systems_db/moe-gen.yaml``,
scaled by context and GPU memory as the initializers scale them); omega is 0.6 for moe-gen (MoE-Gen's
mode-2 split) and 0 for moe-gen-gpu and MLA models. A model MoE-Gen has no initializer for gets moesim's
search. ``--policy best`` (section 4.3's search, which the paper describes and the release lacks): b_a and
omega chosen by enumeration, each candidate timed by simulating the DAG; the prefill accumulation the
largest number of prompts whose hidden states fit on the GPU next to the buffers; a model larger than host
memory runs with its overflow paged from disk.
Simplifications (documented): experts are grouped into at most ``max_tasks_per_module``
copy/compute tasks per layer and micro-batches likewise; no S_Params caching of experts.

Host (the Python that drives the GPU): MoE-Gen runs transformers 4.42's modelling code with its own wrappers
(EfficientMoE/MoE-Gen ``models/Wrapper.py``, ``core/Hetero_Attn``, ``engine.py``), so the host pays, per pass, layer
and micro-batch, Python counted in that code (``systems_db/moe-gen.yaml``, ``systems_db/shared.yaml``) and priced
at the ``transformers`` system's measured rates (:mod:`.shared.hf_host`): the decoder layer's norms, router and
expert loop (Mixtral's over every expert, a ``torch.where`` read each; DeepSeek's over the experts hit after one
read); the attention wrapper (it waits for the layer's attention weights, and syncs the stream at its end); per GPU
attention micro-batch ``decoding_attn`` and a stream sync (mode 1, MoE-Gen(G)) or the QK^T-softmax and AV calls
without one (mode 2, whose QKV and O projections run once per layer and wait for the CPU part); per expert called an
``Expert_Wrapper`` (it waits for the expert's copy and syncs the stream after each chunk of at most 2048 tokens), so
the experts' Python and kernels take turns; per decode step MoE-Gen's own loop (masks, positions, argmax and a few
calls per sequence). GPU tasks carry the GPU's time alone (the generic per-operation issue cost is this Python's,
not added to it). ``host_python=false`` drops it and prices each GPU operation with moesim's generic eager issue
cost instead: what the calibration's end-to-end harness (a plain PyTorch loop, not MoE-Gen's driver) is predicted
with. Not counted: the ATen calls MoE-Gen's C++ makes itself (index, index_put_, cat).

``moe-gen-gpu`` is MoE-Gen(G): the same policy with omega fixed at 0 (MoE-Gen reports two variants,
Table 6: (G) keeps every attention micro-batch on the GPU, its KV copied over PCIe; (H) runs a
searched fraction omega on the CPU). GPU working-set rules: ``systems_db/moe-gen.yaml``.
"""

from __future__ import annotations

import math
from typing import Callable, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from ..engine import BufferRing, Engine
from ..errors import InfeasibleError
from ..metrics import HostShare
from ..modules import Context
from ..specs import LayerKind
from ..specs.common import BYTES_PER_ELEMENT
from ..units import fmt_bytes
from .base import Plan, ServingSystem, StepSim, full_batches, simpson_decode_time, simulate_pass
from .shared.hf_host import (NONE, Python, PythonThread, attention_weight_tensors, bare, context_python,
                             context_rates, head_python)


class _HostTimes(NamedTuple):
    """Host seconds of the Python of a pass's tasks (MoE-Gen's driver on transformers 4.42's code)."""

    pass_s: float  # once per pass: the forward's Python, and in decode MoE-Gen's per-step loop
    pre_attn: float  # input norm, the attention wrapper's head (waits for the attention weights), QKV (mode 2)
    mb_group: float  # a GPU attention group's micro-batches
    mb_serial: bool  # each micro-batch ends in a stream sync (prefill, mode 1): Python and kernels take turns
    post_attn: float  # O projection (mode 2); after the wrapper's sync: its clean-up and the post-attention norm
    router: float  # the MoE block's router and loop head
    router_read: bool  # the loop head reads the GPU (DeepSeek's tokens per expert)
    shared: float  # shared experts through their wrapper (a sync at the end)
    chunk: float  # an expert chunk: its loop iterations and wrapper calls (a sync per call)
    dense_ffn: float
    head: float


class _PassTimes(NamedTuple):
    """Durations (s) and sizes (bytes) of the tasks of one pass's layers, by MoE layer or not (``dense_*``) and
    by windowed attention or not (``core``, ``cpu_core``)."""

    tokens: int
    decode: bool
    cpu_seqs: int  # sequences whose attention runs on the CPU (omega of the batch)
    state: float  # GPU working set: hidden states, KV buffers, attention and FFN temporaries
    slots: int  # experts the expert buffer holds
    dense_bytes: dict  # attention (+ streamed shared experts or dense FFN) weights of a layer
    dense_copy: dict
    dense_disk: dict
    pre_attn: float
    post_attn: float
    mb_groups: int  # GPU attention micro-batches, grouped into at most max_tasks_per_module
    kv_group_bytes: float
    kv_group_s: float
    core: dict  # attention of a micro-batch group
    cpu_core: dict
    kv_write_bytes: float
    kv_write_s: float
    dense_ffn: float


class MoEGenParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    batch_size: int | None = Field(default=None, ge=1, description="accumulated decode batch B; None = what the host KV cache holds")
    attention_micro_batch: int | None = Field(default=None, ge=1, description="b_a; None = MoE-Gen's per-model initializer value "
                                                                                  "(searched with --policy best)")
    cpu_attention_fraction: float | None = Field(default=None, ge=0, le=1, description="omega; None = 0.6 (MoE-Gen's mode-2 split; "
                                                                                          "0 for MLA), searched with --policy best")
    prefill_batch: int | None = Field(default=None, ge=1, description="prompts per prefill pass; None = MoE-Gen's per-model "
                                                                               "initializer value (searched with --policy best)")
    attention_micro_batch_grid: tuple[int, ...] = Field(
        default=(32, 128, 512), description="attention micro-batch sizes b_a the policy search tries")
    cpu_attention_grid: tuple[float, ...] = Field(
        default=(0.0, 0.2, 0.4, 0.6, 0.8), description="CPU attention fractions omega the policy search tries")
    kv_buffer_slots: int = Field(default=2, ge=1, description="GPU KV buffers the attention micro-batches rotate "
                                                             "through (current + prefetched)")
    kv_copy: Literal["context", "reserved"] = Field(
        default="context", description="KV tokens copied per sequence for GPU attention: its current context (the "
                                       "released code), or its whole reserved host slot, prompt + max decode length")
    max_tasks_per_module: int = Field(default=16, ge=1, description="engine tasks a module's experts or "
                                                                   "micro-batches are grouped into (a simulation detail, "
                                                                   "not MoE-Gen's)")
    host_kv_bytes: float | None = Field(
        default=None, gt=0, description="host memory reserved for the KV cache, in bytes (MoE-Gen's "
                                        "host_kv_cache_size, which MoE-Gen gives in GiB, for GQA models to K and V "
                                        "each); None = all host memory left after the weights. Weights that no "
                                        "longer fit are read from disk")
    host_python: bool = Field(
        default=True, description="charge the host's Python as MoE-Gen runs it (its driver and wrappers on transformers "
                                  "4.42's modelling code: calls, module calls and stream syncs per layer, attention "
                                  "micro-batch and expert, priced at the transformers system's measured rates); off: "
                                  "each GPU operation with moesim's generic eager issue cost instead (what the "
                                  "calibration's plain-PyTorch harness is predicted with)")
    resident_shared_experts: bool = Field(
        default=False, description="keep every MoE layer's shared experts on the GPU for the whole run instead of "
                                   "copying them into the dense-module buffer with the layer's attention weights "
                                   "(MoE-Gen copies them; a GPU with room to spare can hold them, as the "
                                   "validation harness's decode step does)")


class MoEGen(ServingSystem):
    name = "moe-gen"
    searches_policy = True
    summary = ("module-based batching: weights and KV in host memory, attention in GPU micro-batches "
               "(optionally part on the CPU), experts on the accumulated batch with weights streamed over PCIe")
    Params = MoEGenParams

    # ---- memory ------------------------------------------------------------------------------
    def _dense_module_bytes(self, ctx: Context) -> float:
        shared = 0.0 if self.params.resident_shared_experts else ctx.shared_weight_bytes
        per_layer = ctx.attention_weight_bytes + max(shared, ctx.dense_ffn_weight_bytes)
        return per_layer

    def _resident_shared_bytes(self, ctx: Context) -> float:
        return ctx.model.num_moe_layers * ctx.shared_weight_bytes if self.params.resident_shared_experts else 0.0

    def _host_bytes_per_seq(self, ctx: Context) -> float:
        """Host memory one decode sequence takes: its KV at the full context (prompt + generation) and the host
        copies of its hidden states (``hidden_tensors_per_token``)::

            M_seq = (P + G) kv_bytes_per_token + hidden_tensors_per_token d b_act"""
        ctx_len = ctx.workload.total_context_tokens
        return ctx_len * ctx.kv_bytes_per_token(ctx_len) + self._hidden_bytes(ctx, 1)

    def _host_layout(self, ctx: Context) -> tuple[float, float, float]:
        """(weight bytes in host memory, weight bytes on disk, host bytes left for the sequences).

        The sequences' room is ``host_kv_bytes`` when given (MoE-Gen's ``host_kv_cache_size``), else what the
        weights leave; weights that do not fit next to it spill to disk. Without ``host_kv_bytes``, room for one
        sequence (:meth:`_host_bytes_per_seq`, KV and hidden-state copies: what the batch size is divided by) is
        kept before any weight spills, so a model larger than host memory runs at batch 1 with its overflow paged
        from disk, as MoE-Gen runs it; ``host_kv_bytes`` reserves room for a larger batch instead."""
        p = ctx.platform
        usable = p.usable_host_memory_bytes
        weights = ctx.weight_bytes
        per_seq = self._host_bytes_per_seq(ctx)
        reserved = min(self.params.host_kv_bytes, usable) if self.params.host_kv_bytes else per_seq
        in_host = min(weights, max(0.0, usable - reserved))
        on_disk = weights - in_host
        if on_disk > p.disk.capacity_bytes:
            raise InfeasibleError(
                f"moe-gen: {ctx.model.name} ({ctx.wdtype}) needs {fmt_bytes(weights)} of weights; host memory holds "
                f"{fmt_bytes(in_host)} and the disk {fmt_bytes(p.disk.capacity_bytes)}: short by "
                f"{fmt_bytes(on_disk - p.disk.capacity_bytes)}"
            )
        if self.params.host_kv_bytes:
            return in_host, on_disk, min(usable - in_host, self.params.host_kv_bytes)
        # what the weights leave; when they spill, exactly the one sequence reserved (usable - (usable - M_seq)
        # can round below M_seq)
        return in_host, on_disk, min(reserved, usable) if on_disk else usable - in_host

    def _gpu_fixed_bytes(self, ctx: Context) -> float:
        return ctx.resident_weight_bytes + self._resident_shared_bytes(ctx) + 2 * self._dense_module_bytes(ctx)

    def _hidden_bytes(self, ctx: Context, tokens: float) -> float:
        """Hidden-sized tensors live per accumulated token (``hidden_tensors_per_token``), activation dtype."""
        return ctx.hidden_state_bytes(tokens) * self.constants.value("hidden_tensors_per_token")

    def _gpu_state_bytes(self, ctx: Context, tokens: float, attn_seqs: float, kv_len: int, q_len: int) -> float:
        """Hidden states of the accumulated tokens + KV buffers + one attention micro-batch + FFN temporaries
        (``ffn_temporaries_per_row`` FFN-wide tensors for at most ``ffn_temporary_rows_max`` routed rows)
        + logits (``logits_dtype``)."""
        m, c = ctx.model, self.constants
        a = m.attention
        kv_buf = self.params.kv_buffer_slots * attn_seqs * kv_len * ctx.kv_bytes_per_token_layer() if q_len == 1 else 0
        attn_tmp = attn_seqs * q_len * a.num_heads * (a.qk_head_dim + a.out_head_dim) * ctx.abytes
        rows = min(tokens * (m.moe.top_k if m.moe else 1), c.value("ffn_temporary_rows_max"))
        ffn = max(m.moe.expert_intermediate_size if m.moe else 0, m.dense_ffn.intermediate_size if m.dense_ffn else 0)
        ffn_tmp = rows * c.value("ffn_temporaries_per_row") * ffn * ctx.abytes
        logit_rows = min(tokens, attn_seqs if q_len > 1 else tokens)
        logits = logit_rows * m.vocab_size * BYTES_PER_ELEMENT[c.value("logits_dtype")]
        return self._hidden_bytes(ctx, tokens) + kv_buf + attn_tmp + ffn_tmp + logits

    def _expert_slots(self, ctx: Context, state_bytes: float) -> int:
        free = ctx.platform.usable_gpu_memory_bytes_per_gpu - self._gpu_fixed_bytes(ctx) - state_bytes
        if not ctx.model.moe:
            return 0
        return int(min(2 * ctx.model.moe.num_experts, free // ctx.expert_weight_bytes))

    def _fits(self, ctx: Context, seqs: int, kv_len: int, b_a: int, omega: float) -> bool:
        """Whether a decode configuration leaves room for two experts at context ``kv_len``."""
        gpu_seqs = seqs - int(round(omega * seqs))
        state = self._gpu_state_bytes(ctx, seqs, min(b_a, max(gpu_seqs, 1)), kv_len, 1)
        return not ctx.model.moe or self._expert_slots(ctx, state) >= 2

    def _prefill_fits(self, ctx: Context, prompts: int) -> bool:
        q = ctx.workload.prompt_tokens
        state = self._gpu_state_bytes(ctx, prompts * q, prompts, q, q)
        return not ctx.model.moe or self._expert_slots(ctx, state) >= 2

    # ---- one forward pass ----------------------------------------------------------------------
    def _pass(self, ctx: Context, seqs: int, q_len: int, kv_len: int, b_a: int, omega: float,
              disk_fraction: float) -> StepSim:
        """One simulated pass; memoised on the context, so moe-gen and moe-gen-gpu share the passes they both run."""
        key = ("moe-gen pass", self.params.kv_buffer_slots, self.params.kv_copy, self.params.max_tasks_per_module,
               self.params.resident_shared_experts, self.params.host_python, seqs, q_len, kv_len, b_a, 0.0 if q_len > 1 else omega, disk_fraction)
        return ctx.memo(key, lambda: self._simulate(ctx, seqs, q_len, kv_len, b_a, omega, disk_fraction))

    def _pass_times(self, ctx: Context, seqs: int, q_len: int, kv_len: int, b_a: int, omega: float,
                    disk_fraction: float) -> _PassTimes:
        """The durations and sizes of a pass's tasks (computed once, reused by every simulated layer);
        InfeasibleError when the GPU has no room for two experts next to the pass's working set."""
        p, m = ctx.platform, ctx.model
        gpu = self._gpu(ctx)
        tokens = seqs * q_len
        decode = q_len == 1
        gpu_seqs = seqs if not decode else seqs - int(round(omega * seqs))
        cpu_seqs = seqs - gpu_seqs
        state = self._gpu_state_bytes(ctx, tokens, min(b_a, max(gpu_seqs, 1)), kv_len, q_len)
        slots = self._expert_slots(ctx, state)
        if m.moe and slots < 2:
            raise InfeasibleError(
                f"moe-gen: no room for two experts' weights on the GPU: {p.gpu.name} has "
                f"{fmt_bytes(p.usable_gpu_memory_bytes_per_gpu)} usable, resident weights and buffers take "
                f"{fmt_bytes(self._gpu_fixed_bytes(ctx) + state)}, two experts need {fmt_bytes(2 * ctx.expert_weight_bytes)}"
            )
        streamed_shared = 0.0 if self.params.resident_shared_experts else ctx.shared_weight_bytes
        dense_bytes = {k: ctx.attention_weight_bytes + (streamed_shared if k else ctx.dense_ffn_weight_bytes)
                       for k in (True, False)}
        n_mb = math.ceil(gpu_seqs / b_a) if gpu_seqs else 0
        mb_groups = min(n_mb, self.params.max_tasks_per_module)
        seqs_per_group = gpu_seqs / mb_groups if mb_groups else 0
        copy_len = kv_len if self.params.kv_copy == "context" else ctx.workload.total_context_tokens
        kv_group_bytes = seqs_per_group * copy_len * ctx.kv_bytes_per_token_layer() if decode else 0.0
        return _PassTimes(
            tokens, decode, cpu_seqs, state, slots, dense_bytes, {k: ctx.copy_s(v, "pinned") for k, v in dense_bytes.items()},
            {k: ctx.disk_s(v) * disk_fraction for k, v in dense_bytes.items()},
            *(gpu(c) for c in ctx.attention_proj_split(tokens)), mb_groups, kv_group_bytes,
            ctx.h2d_s(kv_group_bytes),
            {w: ((self._decode_attention_s(ctx, gpu_seqs, b_a, kv_len, w, gpu) / mb_groups if mb_groups else 0.0)
                 if decode else gpu(ctx.attention_core(seqs_per_group, q_len, kv_len, w))) for w in (False, True)},
            {w: ctx.cpu_s(ctx.cpu_attention(cpu_seqs, kv_len, w)) if cpu_seqs else 0.0 for w in (False, True)},
            tokens * ctx.kv_bytes_per_token_layer(), ctx.d2h_s(tokens * ctx.kv_bytes_per_token_layer()),
            gpu(ctx.dense_ffn(tokens)) if m.dense_ffn else 0.0)

    def _gpu(self, ctx: Context):
        """GPU seconds of an operation: the GPU's time alone where the host's Python is charged on its own
        (``host_python``: :func:`~.shared.hf_host.bare`), else with moesim's generic eager issue cost."""
        if self.params.host_python:
            return lambda cost: ctx.gpu_s(bare(cost))
        return ctx.gpu_s

    def _host_times(self, ctx: Context, t: _PassTimes, seqs: int, q_len: int, b_a: int) -> _HostTimes:
        """Host seconds of the Python of a pass's tasks, as MoE-Gen's driver runs its model (module docstring,
        "Host"): transformers 4.42's decoder-layer code (:func:`~.shared.hf_host.decoder_python`) with MoE-Gen's
        attention and expert wrappers (``systems_db/moe-gen.yaml``), at the transformers system's measured rates."""
        m, k = ctx.model, self.constants.value
        sec = context_rates(ctx).seconds
        py = context_python(ctx, "4.42")
        decode = q_len == 1
        mla = m.attention.kind == "mla"
        wrapper = Python(calls=k("attention_wrapper_calls") + 3 * attention_weight_tensors(m), modules=1)
        gpu_seqs = seqs - t.cpu_seqs
        per_group = (math.ceil(gpu_seqs / b_a) / t.mb_groups) if (decode and t.mb_groups) else 1.0
        if not decode:  # prefill: the model's attention forward per attention micro-batch, then a sync
            mb = py.attention + Python(calls=1.0, reads=1.0)
            pre, post = py.pre_norm + wrapper, NONE
        elif t.cpu_seqs:  # mode 2: QKV for the batch, each GPU micro-batch's QK^T-softmax and AV, O for the batch
            mb = Python(calls=k("gpu_attention_calls"))
            pre, post = py.pre_norm + wrapper + Python(calls=k("qkv_proj_calls")), Python(calls=k("o_proj_calls"))
        else:  # mode 1: decoding_attn per GPU micro-batch (projections to O), then a sync
            mb = Python(calls=k("decode_attention_calls_mla" if mla else "decode_attention_calls"), modules=5, reads=1.0)
            pre, post = py.pre_norm + wrapper, NONE
        sync = Python(reads=1.0) if decode else NONE  # the attention wrapper's stream sync after core_engine.attn
        step = NONE
        if decode:  # MoE-Gen's own loop around the forward: masks and positions, argmax, per-sequence bookkeeping
            step = Python(calls=k("step_calls") + seqs * k("step_calls_per_sequence"), reads=1.0)
        moe = self._moe_host_times(ctx, t.tokens, t.slots) if m.moe else (0.0, False, 0.0, 0.0)
        return _HostTimes(
            pass_s=sec(Python(forwards=1.0) + step), pre_attn=sec(pre), mb_group=sec(per_group * mb),
            mb_serial=bool(mb.reads), post_attn=sec(post + sync), router=moe[0], router_read=moe[1], shared=moe[2],
            chunk=moe[3], dense_ffn=sec(py.post_norm + py.dense_ffn), head=sec(head_python()))

    def _moe_host_times(self, ctx: Context, tokens: float, slots: int) -> tuple[float, bool, float, float]:
        """Host seconds of an MoE block's Python on ``tokens`` tokens: (post-attention norm, router and loop head;
        whether that head reads the GPU; shared experts through their wrapper; one expert chunk of the engine:
        the loop's iterations and an expert wrapper per expert called, its token chunks each ending in a sync)."""
        m, k = ctx.model, self.constants.value
        sec = context_rates(ctx).seconds
        py = context_python(ctx, "4.42")
        active = ctx.active_experts(tokens)
        n_chunks = self._expert_chunks(ctx, tokens, slots)[0]
        per_expert = tokens * m.moe.top_k / active if active else 0.0
        calls_per_expert = max(1, math.ceil(per_expert / k("expert_tokens_per_call")))
        wrapper = Python(calls=k("expert_wrapper_calls"), modules=1) \
            + calls_per_expert * Python(calls=k("expert_wrapper_chunk_calls"), reads=1.0)
        iterations = py.loop_iterations(active, m.moe.num_experts)
        shared = sec(py.shared + py.shared_gate + wrapper) if py.shared != NONE else 0.0
        return (sec(py.post_norm + py.router + py.experts_fixed), bool(py.experts_fixed.reads), shared,
                sec((iterations / n_chunks) * (py.expert + wrapper)))

    @staticmethod
    def _decode_attention_s(ctx: Context, gpu_seqs: int, b_a: int, kv_len: int, windowed: bool, gpu=None) -> float:
        """GPU time of one layer's decode attention over ``gpu_seqs`` sequences in micro-batches of ``b_a``:
        floor(n / b_a) full micro-batches and one of the remainder, as MoE-Gen runs them::

            t = floor(n / b_a) t_attn(b_a) + t_attn(n mod b_a)

        (the engine spreads it evenly over its micro-batch groups, a simulation detail that must not change
        the work: rounding each group up to whole micro-batches priced up to twice the micro-batches run)."""
        gpu = gpu or ctx.gpu_s
        full, rest = divmod(gpu_seqs, b_a)
        t = full * gpu(ctx.attention_core(b_a, 1, kv_len, windowed)) if full else 0.0
        return t + (gpu(ctx.attention_core(rest, 1, kv_len, windowed)) if rest else 0.0)

    def _simulate(self, ctx: Context, seqs: int, q_len: int, kv_len: int, b_a: int, omega: float,
                  disk_fraction: float) -> StepSim:
        t = self._pass_times(ctx, seqs, q_len, kv_len, b_a, omega, disk_fraction)
        m = ctx.model
        engine = Engine(memory_capacity_bytes={"gpu": ctx.platform.usable_gpu_memory_bytes_per_gpu})
        host = PythonThread(engine, context_rates(ctx)) if self.params.host_python else None
        hp = self._host_times(ctx, t, seqs, q_len, b_a) if host is not None else None
        if m.moe:
            moe_block, expert_buffer_bytes = self._moe_block(ctx, t.tokens, t.slots, disk_fraction)
        dense_ring = BufferRing(2)
        kv_ring = BufferRing(self.params.kv_buffer_slots)
        groups = range(t.mb_groups)
        # Weights beyond host memory are paged in from disk as the copy engine touches them: each read waits
        # for the previous weight copy (the faulting copy thread), so disk and H2D time add up for that part.
        prev_copy: list[int | None] = [None]

        def run(eng: Engine, label: str, host_s: float, duration: float, deps: list, category: str,
                host_deps: tuple = (), read_after: bool = False, serial: bool = False) -> int:
            """A GPU task, issued by the host's Python where it is charged (:class:`~.shared.hf_host.PythonThread`)."""
            if host is None:
                return eng.add(label, "gpu", duration, deps, category=category)
            if serial:
                return host.serial(label, host_s, duration, deps, category=category, host_deps=host_deps)
            return host.module(label, host_s, "gpu", duration, deps, category=category, host_deps=host_deps,
                               read_after=read_after)

        def layer(eng: Engine, i: int, kind: LayerKind) -> int:
            add, moe, disk_dep = eng.add, kind.moe, None
            if t.dense_disk[moe]:
                disk_dep = add(f"L{i} dense weights from disk", "disk", t.dense_disk[moe], [prev_copy[0]],
                               category="transfer")
            w_copy = prev_copy[0] = add(f"L{i} attention weights H2D", "h2d", t.dense_copy[moe],
                                        [dense_ring.acquire(), disk_dep], category="transfer",
                                        nbytes=t.dense_bytes[moe])
            # the attention wrapper's get_weights waits for the layer's attention weights
            pre = run(eng, f"L{i} pre-attention", hp.pre_attn if hp else 0.0, t.pre_attn, [w_copy], "attention",
                      host_deps=(w_copy,))
            attn_done = [pre]
            cpu = None
            if t.cpu_seqs:
                cpu = add(f"L{i} CPU attention ({t.cpu_seqs} seq)", "cpu", t.cpu_core[kind.windowed], [pre],
                          category="cpu")
                attn_done.append(cpu)
            core = t.core[kind.windowed]
            for g in groups:
                if t.decode:
                    kv = add(f"L{i} KV H2D mb{g}", "h2d", t.kv_group_s, [kv_ring.acquire()], category="transfer",
                             nbytes=t.kv_group_bytes)
                    # Hetero_Attn's get_k waits for the micro-batch's KV copy
                    a = run(eng, f"L{i} attention mb{g}", hp.mb_group if hp else 0.0, core, [pre, kv], "attention",
                            host_deps=(kv,), serial=bool(hp and hp.mb_serial))
                    kv_ring.release(a)
                else:
                    a = run(eng, f"L{i} attention mb{g}", hp.mb_group if hp else 0.0, core, [pre], "attention",
                            serial=bool(hp and hp.mb_serial))
                attn_done.append(a)
            add(f"L{i} KV D2H", "d2h", t.kv_write_s, [attn_done[-1]], category="transfer", nbytes=t.kv_write_bytes)
            # the O projection waits for the CPU part's future (mode 2); the wrapper then syncs the stream
            post = run(eng, f"L{i} post-attention", hp.post_attn if hp else 0.0, t.post_attn, attn_done, "attention",
                       host_deps=(cpu,), read_after=bool(hp and t.decode))
            if not moe:
                last = run(eng, f"L{i} dense FFN", hp.dense_ffn if hp else 0.0, t.dense_ffn, [post], "dense_ffn")
                dense_ring.release(last)
                return last
            return moe_block(eng, i, post, prev_copy, dense_ring.release, host, hp)

        def prologue(eng: Engine) -> None:
            if host is not None:
                host.python("forward (MoE-Gen step)", hp.pass_s)

        def epilogue(eng: Engine) -> None:
            if host is not None:
                host.python("final norm + LM head", hp.head)

        holds = {"resident weights (embeddings, LM head, routers)": ctx.resident_weight_bytes,
                 "dense-module buffer (2 layers)": 2 * self._dense_module_bytes(ctx),
                 "hidden states, KV buffers, attention and FFN temporaries": t.state}
        if m.moe:
            holds["expert buffer"] = expert_buffer_bytes
        if self._resident_shared_bytes(ctx):
            holds["shared experts (resident)"] = self._resident_shared_bytes(ctx)
        return simulate_pass(ctx, engine, layer, prologue, epilogue, gpu_holds=holds,
                             head_s=self._gpu(ctx)(ctx.head(t.tokens, seqs)))

    def _expert_chunks(self, ctx: Context, tokens: float, slots: int) -> tuple[int, float, int]:
        """(chunks, experts per chunk, chunks the ring holds) of a layer's activated experts: at most
        ``max_tasks_per_module`` chunks, but never one larger than the ring's ``slots`` experts (the ring holds whole
        chunks, and the fit check reserved room for ``slots`` experts only)."""
        active = ctx.active_experts(tokens)
        n_chunks = max(1, min(self.params.max_tasks_per_module, math.ceil(active)), math.ceil(active / slots))
        per_chunk = active / n_chunks
        return n_chunks, per_chunk, max(1, int(slots // math.ceil(per_chunk)))

    def _moe_block(self, ctx: Context, tokens: float, slots: int, disk_fraction: float):
        """The MoE part of every MoE layer of a pass on ``tokens`` tokens: router (with dispatch and
        combine), shared experts, then the activated experts in at most ``max_tasks_per_module`` chunks,
        (more where a chunk would not fit the ring), each chunk's weights copied into the expert ring (room for
        ``slots`` experts) while the chunk
        before it computes on the whole batch. Returns ``(build, expert ring bytes)``;
        ``build(eng, i, after, prev_copy, on_routed, host=None, hp=None)`` submits layer ``i``'s tasks after task
        ``after``, calls ``on_routed(task)`` once the router and shared experts are submitted (the dense-module
        buffer is free then) and returns the last task; ``prev_copy[0]`` is the last weight copy (a
        disk read waits for it), updated. With a host thread (``host``, its Python ``hp``: :meth:`_host_times`) the
        router and shared experts are issued by the host, and each chunk's Python (the loop's iterations and the
        expert wrapper's calls, which wait for the chunk's copy and end in a stream sync) takes turns with its
        kernels."""
        m = ctx.model
        gpu = self._gpu(ctx)
        routed = tokens * m.moe.top_k
        n_chunks, per_chunk, chunk_slots = self._expert_chunks(ctx, tokens, slots)
        chunk_bytes = per_chunk * ctx.expert_weight_bytes
        chunk_copy = ctx.copy_s(chunk_bytes, "pinned")  # weights in pinned host memory (section 4.2)
        chunk_disk = ctx.disk_s(chunk_bytes) * disk_fraction
        chunk_compute = gpu(ctx.experts(per_chunk, routed / n_chunks))
        router = gpu(ctx.router(tokens))
        shared_cost = ctx.shared_experts(tokens)
        shared = gpu(shared_cost) if shared_cost else 0.0
        expert_ring = BufferRing(chunk_slots)
        beside_copy_s = ctx.eff.beside_copy_s  # compute slowed by a copy beside it (calibrated GPUs)

        def build(eng: Engine, i: int, after: int | None, prev_copy: list[int | None], on_routed,
                  host: PythonThread | None = None, hp: _HostTimes | None = None) -> int:
            if host is None:
                last = eng.add(f"L{i} router", "gpu", router, [after], category="router")
            else:  # the block's Python up to its loop (DeepSeek's reads the tokens per expert there)
                last = host.module(f"L{i} router", hp.router, "gpu", router, [after], category="router",
                                   read_after=hp.router_read)
            if shared:
                if host is None:
                    last = eng.add(f"L{i} shared experts", "gpu", shared, [last], category="experts")
                else:  # through an expert wrapper: a stream sync at its end
                    last = host.module(f"L{i} shared experts", hp.shared, "gpu", shared, [last], category="experts",
                                       read_after=True)
            on_routed(last)
            routed_dep = last
            for c in range(n_chunks):
                disk = None
                if chunk_disk:
                    disk = eng.add(f"L{i} experts {c} from disk", "disk", chunk_disk, [prev_copy[0]],
                                   category="transfer")
                copy = prev_copy[0] = eng.add(f"L{i} experts {c} H2D", "h2d", chunk_copy,
                                              [expert_ring.acquire(), disk], category="transfer", nbytes=chunk_bytes)
                # the next chunk's copy runs beside this chunk's compute when the ring has a free slot,
                # and slows it (copy_compute_slowdown where calibrated, none otherwise)
                beside = chunk_copy if chunk_slots > 1 and c < n_chunks - 1 else 0.0
                if host is None:
                    last = eng.add(f"L{i} experts {c}", "gpu", beside_copy_s(chunk_compute, beside),
                                   [copy, routed_dep, last], category="experts")
                else:  # the wrappers' get_weights wait for the chunk's copy
                    last = host.serial(f"L{i} experts {c}", hp.chunk, beside_copy_s(chunk_compute, beside),
                                       [copy, routed_dep, last], category="experts", host_deps=(copy,))
                expert_ring.release(last)
            return last

        return build, chunk_slots * math.ceil(per_chunk) * ctx.expert_weight_bytes

    # ---- explicit settings (no search) ------------------------------------------------------------
    def simulate_pass(self, ctx: Context, seqs: int, q_len: int, kv_len: int, attention_micro_batch: int,
                      cpu_attention_fraction: float = 0.0, disk_fraction: float = 0.0) -> StepSim:
        """One forward pass of ``seqs`` sequences, ``q_len`` new tokens each (1: a decode step) at
        context ``kv_len``, attention in GPU micro-batches of ``attention_micro_batch`` sequences with
        the fraction ``cpu_attention_fraction`` (omega) of the sequences on the CPU, ``disk_fraction``
        of the weights read from disk: what :meth:`plan` simulates for each configuration it tries,
        without the search (the system's other settings are its Params). Includes the LM head."""
        return self._pass(ctx, seqs, q_len, kv_len, attention_micro_batch, cpu_attention_fraction, disk_fraction)

    def simulate_moe_layer(self, ctx: Context, tokens: int) -> Engine:
        """The MoE part of one layer on ``tokens`` tokens alone, with nothing before it: the tasks every
        MoE layer of a pass submits after its attention (:meth:`_moe_block`), the expert ring sized as
        for a decode pass of ``tokens`` sequences. Its ``makespan_s`` is the layer's time."""
        state = self._gpu_state_bytes(ctx, tokens, 1, 1, 1)
        slots = self._expert_slots(ctx, state)
        if slots < 2:
            raise InfeasibleError(f"moe-gen: no room for two experts' weights on the GPU beside {tokens} tokens")
        build, _ = self._moe_block(ctx, tokens, slots, 0.0)
        engine = Engine()
        if self.params.host_python:
            router, read, shared, chunk = self._moe_host_times(ctx, tokens, slots)
            hp = _HostTimes(0.0, 0.0, 0.0, False, 0.0, router, read, shared, chunk, 0.0, 0.0)
            build(engine, 0, None, [None], lambda task: None, PythonThread(engine, context_rates(ctx)), hp)
        else:
            build(engine, 0, None, [None], lambda task: None)
        return engine

    # ---- search ------------------------------------------------------------------------------
    def _decode_search(self, ctx: Context, batch: int, disk_fraction: float) -> tuple[int, float, dict]:
        """(b_a, omega, the decode configurations simulated): b_a first (omega = 0), then omega at the best b_a
        (coordinate search), each configuration timed by its step at the middle context."""
        w = ctx.workload
        mid = w.prompt_tokens + max(1, w.gen_tokens // 2)
        is_mla = ctx.model.attention.kind == "mla"
        grid_a = ([self.params.attention_micro_batch] if self.params.attention_micro_batch
                  else [b for b in self.params.attention_micro_batch_grid if b < batch] + [batch])
        trials: dict[tuple[int, float], StepSim] = {}
        omega0 = self.params.cpu_attention_fraction if self.params.cpu_attention_fraction is not None else 0.0
        if is_mla:
            omega0 = 0.0
        last = w.prompt_tokens + w.gen_tokens  # the KV buffer must still fit at the last step
        for b_a in sorted(set(grid_a)):
            if not self._fits(ctx, batch, last, b_a, omega0):
                continue
            sim = _unless_infeasible(lambda: self._pass(ctx, batch, 1, mid, b_a, omega0, disk_fraction))
            if sim:
                trials[(b_a, omega0)] = sim
        if not trials:
            # the accumulated batch itself does not fit on the GPU: report the smallest configuration's reason
            self._pass(ctx, batch, 1, last, min(grid_a), omega0, disk_fraction)
        best_a = min(trials, key=lambda k: trials[k].time_s)[0]
        if self.params.cpu_attention_fraction is None and not is_mla:
            for omega in self.params.cpu_attention_grid:
                if (best_a, omega) not in trials and self._fits(ctx, batch, last, best_a, omega):
                    sim = _unless_infeasible(lambda: self._pass(ctx, batch, 1, mid, best_a, omega, disk_fraction))
                    if sim:
                        trials[(best_a, omega)] = sim
        b_a, omega = min(trials, key=lambda k: trials[k].time_s)
        return b_a, omega, trials

    def _prefill_search(self, ctx: Context, batch: int, disk_fraction: float) -> tuple[StepSim, int, int]:
        """(the best prefill pass, its prompts, the pass sizes tried): the most prompts per pass that fit
        (section 4.3), over powers of two up to B. Memory is checked first (cheaply); the three largest that
        fit are simulated (a larger pass amortises the weight stream over more prompts, so the best lies among
        the largest) and the one of most prompts per second kept."""
        w, p = ctx.workload, ctx.platform
        if self.params.prefill_batch:
            candidates = [min(self.params.prefill_batch, batch)]
        else:
            candidates = sorted({min(batch, 2 ** e) for e in range(0, 20) if 2 ** e <= 2 * batch})
            fitting = [pb for pb in candidates if self._prefill_fits(ctx, pb)]
            candidates = fitting[-3:] or candidates[:1]
        best_prefill, best_rate, best_pb = None, 0.0, None
        for pb in candidates:
            sim = _unless_infeasible(
                lambda: self._pass(ctx, pb, w.prompt_tokens, w.prompt_tokens, pb, 0.0, disk_fraction))
            if sim is None:
                break
            rate = pb / sim.time_s
            if rate > best_rate:
                best_prefill, best_rate, best_pb = sim, rate, pb
        if best_prefill is None:
            what = (f"a prefill pass of {candidates[0]} prompts of {w.prompt_tokens} tokens does not fit"
                    if self.params.prefill_batch else f"not even one prompt of {w.prompt_tokens} tokens fits")
            raise InfeasibleError(
                f"moe-gen: {what} on the GPU for prefill "
                f"({p.gpu.name}, {fmt_bytes(p.usable_gpu_memory_bytes_per_gpu)} usable)"
            )
        return best_prefill, best_pb, len(candidates)

    # ---- policies ------------------------------------------------------------------------------
    def released_defaults(self, ctx: Context) -> dict[str, int | float] | None:
        """MoE-Gen's own settings for ``ctx``'s model, as its repository's per-model initializer sets them
        (``systems_db/moe-gen.yaml``, shared/reference/offload-systems.md 1.6), or None where MoE-Gen has no
        initializer for the model. With C = prompt + generated tokens (the reserved slot), c0 the model's
        ``context_base`` and g the GPU-memory factor (x2 at 47-49 GiB, x3 from 78 GiB, for the models the
        initializer scales, else 1)::

            prefill_batch         = g * (moe_prefill      if C <= c0 else floor(moe_prefill      * c0 / C))
            attention_micro_batch = g * (attn_decode      if C <= c0 else floor(attn_decode_long * c0 / C))

        each at least 1; ``cpu_attention_fraction`` (omega) is MoE-Gen's CPU share of attention mode 2, 0.6,
        for GQA models, 0 for MLA models (their initializers force GPU attention)."""
        c, key = self.constants, ctx.model.name.lower()
        if f"{key}.attn_decode" not in c.constants:
            return None
        span, base = ctx.workload.total_context_tokens, int(c.value(f"{key}.context_base"))

        def scaled(short: str, long: str) -> int:
            return int(c.value(f"{key}.{short}")) if span <= base else int(c.value(f"{key}.{long}") * base // span)

        gib = ctx.platform.gpu.memory_bytes / 2 ** 30
        factor = 1
        if c.value(f"{key}.gpu_scaled"):
            if c.value("gpu_scale_double_min_gib") <= gib < c.value("gpu_scale_double_max_gib"):
                factor = 2
            elif gib >= c.value("gpu_scale_triple_min_gib"):
                factor = 3
        omega = 0.0 if ctx.model.attention.kind == "mla" else float(c.value("cpu_attention_fraction_default"))
        return {"prefill_batch": max(1, factor * scaled("moe_prefill", "moe_prefill")),
                "attention_micro_batch": max(1, factor * scaled("attn_decode", "attn_decode_long")),
                "cpu_attention_fraction": omega}

    def plan(self, ctx: Context) -> Plan:
        """As deployed: MoE-Gen's released per-model settings (:meth:`released_defaults`) where the user set none,
        B the most sequences the host KV cache holds, that cache all host memory the weights leave (MoE-Gen's
        ``host_kv_cache_size`` default: free memory minus the parameter server), so a model larger than host
        memory fails as MoE-Gen fails unless ``host_kv_bytes`` reserves room (weights then page from disk).
        Where the model has no MoE-Gen initializer, or with ``--policy best``, moesim's search chooses b_a, omega
        and the prefill batch; ``best`` keeps the as-deployed plan where that is faster."""
        self.refuse_multi_gpu(ctx, "data parallelism over GPUs is not modelled yet")
        released = self.released_defaults(ctx)
        if self.policy == "best":
            searched = self._searched_plan(ctx)
            if released is None:
                return searched
            try:
                deployed = self._deployed_plan(ctx, released)
            except InfeasibleError:
                return searched
            return deployed if deployed.total_time_s < searched.total_time_s else searched
        if not self.params.host_kv_bytes:
            usable, per_seq = ctx.platform.usable_host_memory_bytes, self._host_bytes_per_seq(ctx)
            if ctx.weight_bytes + per_seq > usable:
                raise InfeasibleError(
                    f"moe-gen: its default host KV cache (host memory left by the {fmt_bytes(ctx.weight_bytes)} of "
                    f"weights) cannot hold one sequence ({fmt_bytes(per_seq)}): {fmt_bytes(usable)} of host memory "
                    f"usable, short by {fmt_bytes(ctx.weight_bytes + per_seq - usable)}; set host_kv_bytes (MoE-Gen's "
                    "host_kv_cache_size) to reserve host KV and page weights from disk, or --policy best")
        if released is None:
            plan = self._searched_plan(ctx)
            plan.notes.append(f"MoE-Gen has no initializer for {ctx.model.name} (it ships Mixtral and DeepSeek ones): "
                              "its attention micro-batch, CPU share and prefill batch are moesim's search")
            return plan
        return self._deployed_plan(ctx, released)

    def _deployed_plan(self, ctx: Context, released: dict[str, int | float]) -> Plan:
        """The plan with MoE-Gen's released settings where the user gave none. MoE-Gen sizes its GPU buffers from
        them (its initializer's ``_default_engine_config``; the release has no search and nothing that shrinks
        them, shared/reference/offload-systems.md 1.6), so settings that do not fit are an InfeasibleError naming
        what does not fit; ``--policy best`` searches settings that do."""
        wanted = {k: v for k, v in released.items() if getattr(self.params, k) is None}
        shown = ", ".join(f"{k} {v:g}" for k, v in wanted.items())
        deployed = type(self)(self.params.model_copy(update=wanted), policy=self.policy)
        try:
            plan = deployed._searched_plan(ctx)
        except InfeasibleError as e:
            raise InfeasibleError(
                f"moe-gen: MoE-Gen's released settings for {ctx.model.name} ({shown or 'all given'}) do not fit: "
                f"{str(e).removeprefix('moe-gen: ')} "
                "(MoE-Gen sizes its buffers from them and does not shrink them; set them, or --policy best)") from e
        plan.notes.append(f"as deployed: MoE-Gen's released settings for {ctx.model.name} ({shown or 'all given'})")
        return plan

    def _searched_plan(self, ctx: Context) -> Plan:
        w = ctx.workload
        p = ctx.platform
        in_host, on_disk, kv_room = self._host_layout(ctx)
        disk_fraction = on_disk / ctx.weight_bytes
        per_seq_host = self._host_bytes_per_seq(ctx)
        host_max = int(kv_room // per_seq_host)
        if host_max < 1:
            where = (f"the host_kv_bytes reservation of {fmt_bytes(self.params.host_kv_bytes)}"
                     if self.params.host_kv_bytes else "host memory")
            raise InfeasibleError(
                f"moe-gen: {where} cannot hold one sequence's KV and hidden states "
                f"({fmt_bytes(per_seq_host)} needed, {fmt_bytes(max(kv_room, 0))} there): short by "
                f"{fmt_bytes(per_seq_host - max(kv_room, 0))}"
            )
        wanted = w.batch_size or self.params.batch_size
        if wanted and wanted > host_max:
            raise InfeasibleError(
                f"moe-gen: batch {wanted} needs {fmt_bytes(wanted * per_seq_host)} of host KV; "
                f"{fmt_bytes(kv_room)} is left next to the weights (at most {host_max} sequences)"
            )
        # MoE-Gen's generate() runs model batches of B sequences: full ones, then a last, partial one, charged for
        # what it holds (as every system splits requests)
        batch, num_batches, rest = full_batches(w.num_requests, wanted or host_max)
        kv_limit = (f"the {fmt_bytes(self.params.host_kv_bytes)} host KV reservation allows"
                    if self.params.host_kv_bytes else "host memory allows")
        notes = [f"decode batch B = {batch} sequences ({kv_limit} {host_max})"]
        if on_disk:
            notes.append(f"{fmt_bytes(on_disk)} of weights do not fit in host memory and are read from "
                         f"{p.disk.name} every forward pass"
                         + ("" if self.params.host_kv_bytes else "; host memory keeps room for one sequence "
                            "(host_kv_bytes reserves more, spilling more weights)"))
        b_a, omega, trials = self._decode_search(ctx, batch, disk_fraction)
        if ctx.model.attention.kind == "mla":
            notes.append("MLA: all attention on the GPU (omega = 0), as MoE-Gen does for DeepSeek (section 5.3)")
        best_prefill, best_pb, prefill_tried = self._prefill_search(ctx, batch, disk_fraction)
        passes = math.ceil(batch / best_pb)

        def decode_of(seqs: int) -> tuple[float, list]:
            return simpson_decode_time(lambda c: self._pass(ctx, seqs, 1, c, b_a, omega, disk_fraction),
                                       w.prompt_tokens, w.gen_tokens)

        decode_s, points = decode_of(batch)
        last_s = None
        if rest:  # the last model batch: the same b_a and omega, prefill passes of at most best_pb of its prompts
            pb = min(best_pb, rest)
            last_prefill = self._pass(ctx, pb, w.prompt_tokens, w.prompt_tokens, pb, 0.0, disk_fraction)
            last_s = math.ceil(rest / pb) * last_prefill.time_s + decode_of(rest)[0]
        config = {"batch_size": batch, "max_batch_host": host_max, "attention_micro_batch": b_a,
                  "cpu_attention_fraction": omega, "prefill_batch": best_pb,
                  "configurations_simulated": len(trials) + prefill_tried}
        placement = {"weights": "host (pinned)" + (" + disk" if on_disk else ""), "kv_cache": "host (pinned)"}
        # the CPU attends over the KV of round(omega B) of the B sequences in decode (_pass_times); prefill on the GPU
        cpu_seqs = int(round(omega * batch))
        return self.make_plan((batch, num_batches), (best_prefill, passes, best_pb * w.prompt_tokens),
                              (decode_s, points), config=config, host_mem_bytes=in_host + batch * per_seq_host,
                              placement=placement, notes=notes, host_decode=HostShare(kv_fraction=cpu_seqs / batch),
                              last_batch_time_s=last_s)


def _unless_infeasible(simulate: Callable[[], StepSim]) -> StepSim | None:
    """``simulate()``, or None when the configuration does not fit."""
    try:
        return simulate()
    except InfeasibleError:
        return None


class MoEGenGPUParams(MoEGenParams):
    cpu_attention_fraction: float | None = Field(default=0.0, ge=0, le=0, description="always 0 in MoE-Gen(G)")


class MoEGenGPU(MoEGen):
    """MoE-Gen(G): module-based batching with all attention on the GPU (omega = 0)."""

    name = "moe-gen-gpu"
    summary = ("MoE-Gen(G): module-based batching with weights and KV in host memory, all attention on the GPU "
               "in micro-batches (KV copied over PCIe), experts on the accumulated batch")
    Params = MoEGenGPUParams
