"""`transformers`: Hugging Face transformers ``model.generate`` (5.17) on one GPU, eager PyTorch.

What it runs (transformers 5.17, ``systems_db/transformers.yaml`` cites the code):
  batches   static: the requests are cut into batches of B (the last one holds what is left and is
            priced at its own size); each batch is one ``generate`` call, greedy, all prompts of equal
            length (no padding), DynamicCache (K/V on the GPU, grown by ``torch.cat`` every step: each
            decode step reads and rewrites the whole cache of every layer), sdpa attention, prefill logits
            for the last position only (``logits_to_keep=1``). DeepSeek's MLA is cached decompressed
            (per-head K of qk_nope + qk_rope and V), as the Hugging Face code does.
  experts   ``experts_implementation``: ``eager`` (a Python loop over the experts hit, five host reads each),
            ``grouped_mm`` (the default; one grouped GEMM per projection) or ``batched_mm`` (the weights of
            every (token, expert) pair gathered, then one bmm: T k x an expert's weights written, read).
            Inside ``generate`` transformers switches grouped_mm to batched_mm for the decode loop.
  weights   on the GPU; with ``cpu_offload`` (accelerate's ``cpu_offload``) all of them stay in pageable host
            memory and every module's weights are copied to the GPU when it runs (a blocking pageable copy,
            nothing overlapped) and dropped after it.

Time of one forward pass: the host and the GPU as two clocks. Each module the host runs costs it
``calls x torch_call_s + modules x module_call_s`` (calls counted in the 5.17 modelling code), each decoder
layer ``decoder_layer_host_s`` more (its Python beyond the counted torch calls: argument plumbing, the cache's
and the attention interface's bookkeeping), each forward ``forward_host_s``; its kernels
start once the host issued the first of them and the GPU is free, and take their roofline time on the
calibrated curves (:func:`moesim.costs.gpu_time_s` with no launches: the GPU's time alone), except the grouped_mm
and batched_mm experts forwards, whose GPU time is a kernel family measured on transformers' own call
(:func:`grouped_mm_layer_s`, :func:`batched_mm_layer_s`; grouped_mm's host time is measured whole,
``grouped_mm_host_s``)::

    gpu_start = max(G, H + torch_call_s);  H += host_s;  G = gpu_start + gpu_s
    host sync: H = max(H, G) + host_sync_s            blocking copy: H = G = max(H, G) + copy_s
    pass time = max(H, G)

Attention graph builds (``attention_graph_cache``): on GPUs where PyTorch's sdpa runs cuDNN attention
(``attention_graph_build_gpus``: compute capability 9.x / 10.x, PyTorch's backend selection), the first forward at an
attention shape (batch, query length, KV length, the model's heads and head dims) the process has not run builds a
cuDNN graph, ``attention_graph_build_s`` of host time before its attention runs (the host is busy: nothing overlaps).
A run of N requests in batches of B, prompt P, G generated tokens meets 1 + G shapes per batch size (the prefill,
then one per decode step: moesim's G decode steps); batches of the same size find them cached. Cold (default, a fresh
process)::

    builds = (1 + G) x (number of distinct batch sizes: B, and the last partial batch's when N mod B > 0)

charged to the batches that meet them: the full batches share theirs (each step of a full batch carries
attention_graph_build_s / full batches, so the run's total and the mean per batch are right), a partial batch pays its
own whole. ``warm`` (the process already ran these shapes) and other GPUs: none.

A decode step of ``generate`` adds its own loop after the forward: ``generate_step_calls`` torch calls (input
preparation, logits to fp32, logits processors, argmax, EOS handling, the ids and mask concatenations, stopping
criteria) plus ``generate_step_host_s`` of Python beyond them, then one host read (``bool(unfinished.max() == 0)``)
that waits for the GPU. The eager experts loop reads the GPU five times per expert hit (``eager_expert_syncs``);
each read costs ``host_read_s`` beyond the call that makes it, and nothing of an iteration overlaps the next.
The fitted constants and what they were fitted on are in the YAML; validation in
``validation/published/transformers_h200.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field

from .. import costs
from ..costs import OpCost
from ..costs.gemm import gemm, vector_op
from ..engine import Engine
from ..errors import InfeasibleError
from ..modules import Context
from ..specs.common import BYTES_PER_ELEMENT
from ..units import fmt_bytes
from .base import Plan, ServingSystem, StepSim, full_batches, simpson_decode_time
from .shared.hf_host import Python, bare, generate_step_python, head_python, host_rates, transformers_517
from .shared.memory import activation_bytes, mla_decompressed_kv_bytes_per_token

ExpertsImpl = Literal["eager", "grouped_mm", "batched_mm"]


class TransformersParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # transformers 5.17 modeling_utils.get_correct_experts_implementation: no request becomes "grouped_mm" (eager only
    # where grouped_mm cannot dispatch; on an SM80+ GPU with torch >= 2.10 it can)
    experts_implementation: ExpertsImpl = Field(
        default="grouped_mm", description="transformers 5 experts backend: eager (Python loop over experts), "
                                          "grouped_mm (default) or batched_mm; generate decodes grouped_mm as batched_mm")
    cpu_offload: bool = Field(default=False, description="accelerate cpu_offload: all weights in pageable host memory, "
                                                         "each module's copied to the GPU when it runs")
    batch_size: int | None = Field(default=None, ge=1, description="sequences per generate call; None = all requests "
                                                                   "in one call if they fit, else the largest that fits")
    attention_graph_cache: Literal["cold", "warm"] = Field(
        default="cold", description="cuDNN attention graphs (GPUs where PyTorch's sdpa runs cuDNN: H100/H200, B200/B300): "
                                    "cold = a fresh process builds one per new attention shape (prefill and every "
                                    "decode step of the first batch of a size; what a fresh generate run does); "
                                    "warm = the process already ran these shapes (pre-warmed)")


@dataclass
class TwoClocks:
    """Host clock ``h`` and GPU clock ``g`` of an eager pass, and where the time went."""

    call_s: float
    sync_s: float
    h: float = 0.0
    g: float = 0.0
    host_busy_s: float = 0.0
    gpu_busy_s: float = 0.0
    copy_busy_s: float = 0.0
    copy_bytes: float = 0.0
    by_category: dict[str, float] = field(default_factory=dict)

    @property
    def now(self) -> float:
        return max(self.h, self.g)

    def snapshot(self) -> tuple:
        return (self.h, self.g, self.host_busy_s, self.gpu_busy_s, self.copy_busy_s, self.copy_bytes,
                dict(self.by_category))

    def repeat_last(self, snap: tuple, times: int) -> None:
        """Repeat ``times`` more the work done since ``snap`` (a layer identical to the last one): both clocks
        and every total advance by that layer's increment (its steady state: the second of a run)."""
        if times <= 0:
            return
        h, g, hb, gb, cb, cbytes, cats = snap
        dh, dg = self.h - h, self.g - g
        step = max(dh, dg)
        self.h += times * step
        self.g += times * step
        self.host_busy_s += times * (self.host_busy_s - hb)
        self.gpu_busy_s += times * (self.gpu_busy_s - gb)
        self.copy_busy_s += times * (self.copy_busy_s - cb)
        self.copy_bytes += times * (self.copy_bytes - cbytes)
        for k, v in list(self.by_category.items()):
            self.by_category[k] = v + times * (v - cats.get(k, 0.0))

    def _charge(self, category: str, before: float) -> None:
        self.by_category[category] = self.by_category.get(category, 0.0) + self.now - before

    def run(self, category: str, host_s: float, gpu_s: float, syncs: int = 0) -> None:
        """A module: its host work, its kernels after the first call is issued, ``syncs`` reads of a GPU result
        at its end."""
        before = self.now
        if gpu_s > 0:
            start = max(self.g, self.h + min(self.call_s, host_s))
            self.g = start + gpu_s
        self.h += host_s
        self.host_busy_s += host_s
        self.gpu_busy_s += gpu_s
        for _ in range(syncs):
            self.h = max(self.h, self.g) + self.sync_s
        self._charge(category, before)

    def serial(self, category: str, host_s: float, gpu_s: float, repeats: float) -> None:
        """``repeats`` iterations whose host reads of GPU results (five per iteration in the eager experts loop) leave
        nothing to overlap: each costs its host time plus its kernels' time."""
        before = self.now
        t = repeats * (host_s + gpu_s)
        self.h = self.now + t
        self.g = self.h
        self.host_busy_s += repeats * host_s
        self.gpu_busy_s += repeats * gpu_s
        self._charge(category, before)

    def copy(self, category: str, host_s: float, copy_s: float, nbytes: float) -> None:
        """A blocking host-to-device copy of pageable memory after ``host_s`` of hook work: it waits for the
        GPU's queue and the host waits for it."""
        before = self.now
        self.h += host_s
        self.host_busy_s += host_s
        end = max(self.h, self.g) + copy_s
        self.h = self.g = end
        self.copy_busy_s += copy_s
        self.copy_bytes += nbytes
        self._charge(category, before)


def _runs(kinds: list[bool]) -> list[tuple[bool, int]]:
    """Consecutive equal layer kinds as (kind, count)."""
    out: list[tuple[bool, int]] = []
    for k in kinds:
        if out and out[-1][0] == k:
            out[-1] = (k, out[-1][1] + 1)
        else:
            out.append((k, 1))
    return out


@dataclass(frozen=True)
class GroupedMMKernels:
    """Kernel family of transformers 5.17's ``grouped_mm_experts_forward`` on the GPU (YAML ``grouped_mm_*``,
    fitted by ``validation/published/transformers_grouped_mm_kernels.py`` on kernel measurements)."""

    flop_efficiency: float  # achieved fraction of the dense peak of torch's grouped GEMM on full tiles
    rows_per_group: float  # row-equivalents each active expert's group costs beyond its rows (tile, prologue)
    weight_bw_efficiency: float  # achieved fraction of HBM bandwidth reading the active experts' weights
    call_s: float  # fixed GPU time of one grouped GEMM launch
    glue_bw_efficiency: float  # achieved fraction of HBM bandwidth of the sort/gather/mask/gate/scatter/sum kernels
    glue_s: float  # fixed GPU time of those ~28 small kernels together
    glue_passes_hidden: float  # bytes-passes over the routed rows x hidden (counted in the 5.17 code)
    glue_passes_ffn: float  # bytes-passes over the routed rows x expert width (gated; counted)
    glue_passes_ffn_plain: float  # the same without a gate


def grouped_mm_layer_s(hidden: int, ffn: int, tokens: float, routed: float, active: float, gated: bool,
                       weight_bytes_per_element: float, act_bytes_per_element: float, peak_flop_per_s: float,
                       hbm_bytes_per_s: float, k: GroupedMMKernels) -> tuple[float, float]:
    """GPU seconds of one MoE layer's ``grouped_mm_experts_forward`` (transformers 5.17): (grouped GEMMs, the rest).

    Two grouped GEMMs (``torch.nn.functional.grouped_mm`` on the transposed weight views: gate+up with
    N = 2I (I without a gate), K = H; down with N = H, K = I), each over S = routed rows in A active groups::

        t_gemm(N, K) = call_s + max(2 N K (S + rows_per_group A) / (flop_efficiency P),
                                    A N K b_w / (weight_bw_efficiency B))

    (the flop term sums over groups: each group's rows plus a fixed row-equivalent for its tiles, which is
    linear in the rows, so mean rows per group suffice); the rest (sort, gather of the rows, histc, cumsum,
    masks, gate, routing-weight multiply, inverse permutation, top-k sum) as passes over the routed rows::

        t_glue = glue_s + (passes_hidden S H + passes_ffn S I + T H) b_a / (glue_bw_efficiency B)

    P dense peak FLOP/s, B HBM bytes/s, b_w / b_a bytes per weight / activation element, T tokens.
    """
    if routed <= 0 or active <= 0:
        return 0.0, 0.0
    up_n = (2 if gated else 1) * ffn

    def gemm(n: int, kk: int) -> float:
        flop_s = 2.0 * n * kk * (routed + k.rows_per_group * active) / (k.flop_efficiency * peak_flop_per_s)
        bytes_s = active * n * kk * weight_bytes_per_element / (k.weight_bw_efficiency * hbm_bytes_per_s)
        return k.call_s + max(flop_s, bytes_s)

    passes_ffn = k.glue_passes_ffn if gated else k.glue_passes_ffn_plain
    glue = k.glue_s + ((k.glue_passes_hidden * hidden + passes_ffn * ffn) * routed + tokens * hidden) \
        * act_bytes_per_element / (k.glue_bw_efficiency * hbm_bytes_per_s)
    return gemm(up_n, hidden) + gemm(hidden, ffn), glue


@dataclass(frozen=True)
class BatchedMMKernels:
    """Kernel family of transformers 5.17's ``batched_mm_experts_forward`` on the GPU (YAML ``batched_mm_*``,
    fitted by ``validation/published/transformers_batched_mm_kernels.py`` on kernel measurements)."""

    copy_bw_efficiency: float  # achieved fraction of HBM bandwidth of a large device-to-device copy (read + write)
    gather_passes: float  # HBM passes over the gathered bytes of the index gather: 1 write + the reads L2 misses
    bmm_bw_efficiency: float  # achieved fraction of HBM bandwidth of the batched GEMV reading the gathered weights
    glue_s: float  # fixed GPU time of the whole call's ~15 kernels (launch to finish at the smallest sizes)
    glue_passes_hidden: float  # 2-byte passes over the routed rows x hidden (counted in the 5.17 code)
    glue_passes_ffn: float  # 2-byte passes over the routed rows x expert width (gated; counted)
    glue_passes_ffn_plain: float  # the same without a gate


def batched_mm_layer_s(hidden: int, ffn: int, routed: float, gated: bool, weight_bytes_per_element: float,
                       act_bytes_per_element: float, hbm_bytes_per_s: float, k: BatchedMMKernels) -> tuple[float, float, float]:
    """GPU seconds of one MoE layer's ``batched_mm_experts_forward`` (transformers 5.17): (gathers, bmms, the rest).

    For each projection (gate+up: N = 2I (I without a gate) rows of K = H; down: N = H, K = I) the code indexes the
    stacked expert weights by the expert id of every one of the S = routed (token, expert) pairs, materialising
    S x N x K weights (``self.gate_up_proj[expert_ids]``), then runs one ``torch.bmm`` of those with each pair's
    activation row (a batched GEMV: S matrix-vector products)::

        W_g = S N K b_w                                   gathered bytes of a projection
        t_gather = gather_passes W_g / (copy_bw_efficiency B)
        t_bmm    = W_g / (bmm_bw_efficiency B)   (2 flop per weight element: bandwidth-bound)

    ``gather_passes`` lies between 1 (the gather's writes only: every read of the source weights served by L2)
    and 2 (each gathered byte read from HBM and written back). The rest (repeat_interleave of the hidden rows,
    clamp, gate, routing-weight multiply, top-k sum, cast) and the fixed time of all ~15 kernels::

        t_glue = glue_s + (passes_hidden S H + passes_ffn S I) b_a / (copy_bw_efficiency B)

    B HBM bytes/s, b_w / b_a bytes per weight / activation element.
    """
    if routed <= 0:
        return 0.0, 0.0, 0.0
    up_n = (2 if gated else 1) * ffn
    gathers = bmms = 0.0
    for n, kk in ((up_n, hidden), (hidden, ffn)):
        w = routed * n * kk * weight_bytes_per_element
        gathers += k.gather_passes * w / (k.copy_bw_efficiency * hbm_bytes_per_s)
        bmms += w / (k.bmm_bw_efficiency * hbm_bytes_per_s)
    passes_ffn = k.glue_passes_ffn if gated else k.glue_passes_ffn_plain
    glue = k.glue_s + (k.glue_passes_hidden * hidden + passes_ffn * ffn) * routed * act_bytes_per_element \
        / (k.copy_bw_efficiency * hbm_bytes_per_s)
    return gathers, bmms, glue


class Transformers(ServingSystem):
    name = "transformers"
    summary = ("Hugging Face transformers generate: static batches, eager PyTorch with Python per module, "
               "DynamicCache on the GPU, experts eager / grouped_mm / batched_mm, optional accelerate cpu_offload")
    Params = TransformersParams

    def __init__(self, params: BaseModel | dict | None = None, policy: str = "as-deployed",
                 constants_override: Mapping[str, float] | None = None):
        """``constants_override``: numeric constants of ``systems_db/transformers.yaml`` replaced for this instance
        (a fit scoring candidate values); each key must be one the YAML has."""
        super().__init__(params, policy)
        self._consts: dict[str, float] = {}
        for key, value in (constants_override or {}).items():
            self.constants.value(key)  # KeyError naming the YAML's keys when it has no such constant
            self._consts[key] = float(value)

    # ---- constants -------------------------------------------------------------------------------
    def _c(self, key: str) -> float:
        cache = self._consts
        if key not in cache:
            cache[key] = float(self.constants.value(key))
        return cache[key]

    def _families(self, key: str) -> set[str]:
        cache = self.__dict__.setdefault("_fams", {})
        if key not in cache:
            cache[key] = set(self.constants.names(key))
        return cache[key]

    def grouped_mm_kernels(self) -> GroupedMMKernels:
        """The grouped_mm kernel family at the YAML's constants (also what its validation script scores)."""
        return GroupedMMKernels(**{f: self._c("grouped_mm_" + f) for f in GroupedMMKernels.__dataclass_fields__})

    def batched_mm_kernels(self) -> BatchedMMKernels:
        """The batched_mm kernel family at the YAML's constants (also what its validation script scores)."""
        return BatchedMMKernels(**{f: self._c("batched_mm_" + f) for f in BatchedMMKernels.__dataclass_fields__})

    def attention_graph_build_s(self, ctx: Context) -> float:
        """Host seconds of one cuDNN attention graph build on this platform's GPU: ``attention_graph_build_s`` where
        PyTorch's sdpa runs cuDNN attention (``attention_graph_build_gpus``), else 0 (flash / memory-efficient
        attention build nothing)."""
        if ctx.platform.gpu.name not in self._families("attention_graph_build_gpus"):
            return 0.0
        return self._c("attention_graph_build_s")

    def attention_graph_builds(self, num_requests: int, batch: int, gen_tokens: int) -> int:
        """Graph builds of a cold run: (1 + G) per distinct batch size (B, and a last partial batch's)."""
        sizes = 1 + (1 if num_requests % batch and num_requests > batch else 0)
        return sizes * (1 + gen_tokens)

    def _is_mla(self, ctx: Context) -> bool:
        """The model runs Hugging Face's DeepSeek MLA attention (the one test of MLA in this system: the cache,
        sdpa shapes and call counts all follow it). An MLA model of a family whose modelling code was not
        counted (``mla_families``) is refused rather than priced as another's."""
        m = ctx.model
        if m.attention.kind != "mla":
            return False
        if m.family not in self._families("mla_families"):
            raise InfeasibleError(f"transformers: {m.name} ({m.family}) has MLA attention; its modelling code is "
                                  f"counted only for {', '.join(sorted(self._families('mla_families')))}")
        return True

    # ---- memory ------------------------------------------------------------------------------------
    def kv_bytes_per_token(self, ctx: Context) -> float:
        """DynamicCache bytes per token, all layers: per-head K and V (MLA decompressed, as HF caches it:
        :func:`~.shared.memory.mla_decompressed_kv_bytes_per_token`), else 2 L H_kv d b_kv."""
        if self._is_mla(ctx):
            return mla_decompressed_kv_bytes_per_token(ctx)
        a = ctx.model.attention
        return ctx.model.num_layers * 2 * a.num_kv_heads * a.head_dim * BYTES_PER_ELEMENT[ctx.options.kv_dtype]

    def _batched_gather_bytes(self, ctx: Context, tokens: float) -> float:
        m = ctx.model
        if not m.moe:
            return 0.0
        return tokens * m.moe.top_k * ctx.expert_weight_bytes

    def _impl(self, phase: str) -> str:
        impl = self.params.experts_implementation
        if phase == "decode" and impl == "grouped_mm" and self._c("decode_switches_grouped_to_batched"):
            return "batched_mm"
        return impl

    def _pass_bytes(self, ctx: Context, seqs: int, q_len: int, kv_len: int, impl: str) -> dict[str, float]:
        tokens = seqs * q_len
        holds = {"kv cache (DynamicCache)": seqs * kv_len * self.kv_bytes_per_token(ctx),
                 "activations": activation_bytes(ctx, tokens)}
        if q_len == 1:  # torch.cat builds the grown layer cache beside the old one
            holds["cache concatenation (one layer)"] = seqs * kv_len * self.kv_bytes_per_token(ctx) / ctx.model.num_layers
        if impl == "batched_mm":
            holds["batched_mm gathered expert weights"] = self._batched_gather_bytes(ctx, tokens)
        if self.params.cpu_offload:
            holds["weights of the running module (cpu_offload)"] = max(
                ctx.attention_weight_bytes, ctx.model.moe.num_experts * ctx.expert_weight_bytes if ctx.model.moe else 0.0,
                ctx.dense_ffn_weight_bytes, max(ctx.model.embedding_params, ctx.model.lm_head_params) * ctx.wbytes)
        else:
            holds["weights"] = ctx.weight_bytes
        return holds

    # ---- one forward pass --------------------------------------------------------------------------
    def forward_s(self, ctx: Context, seqs: int, q_len: int, kv_len: int, impl: str,
                  generate_step: bool = False, graph_build_s: float = 0.0) -> TwoClocks:
        """Two-clock time of one forward of ``seqs`` x ``q_len`` new tokens over ``kv_len`` context (module docstring);
        ``graph_build_s``: host seconds of cuDNN attention graph building this forward carries."""
        m, a = ctx.model, ctx.model.attention
        c = self._c
        rates = host_rates(c)  # the per-call, per-module, per-layer and per-forward host rates (shared.hf_host)
        host = rates.seconds
        py = transformers_517(m, impl, c, self.constants.names)  # the counted Python of a decoder layer
        clk = TwoClocks(call_s=rates.torch_call_s, sync_s=ctx.eff.host_sync_s)
        tokens = seqs * q_len
        gpu = lambda cost: ctx.gpu_s(bare(cost))  # noqa: E731
        offload = self.params.cpu_offload

        def fetch(nbytes: float, tensors: int) -> None:
            """accelerate's hook copies a module's ``tensors`` weights, each a blocking pageable copy: the link
            time of ``tensors`` pageable copies (the clock makes them blocking; the host work per tensor,
            ``offload_module_s``, was fitted with this link time, so no per-parameter sync is added)."""
            if offload and nbytes > 0:
                clk.copy("cpu_offload copy", tensors * c("offload_module_s"),
                         ctx.copy_s(nbytes, "pageable", copies=tensors), nbytes)

        if graph_build_s > 0:  # the first layer's sdpa builds the shape's graph; later layers find it cached
            clk.run("attention graph build", graph_build_s, 0.0)
        # once per pass: embedding, positions and rotary table, mask, final norm, LM head on the last position
        fetch(m.embedding_params * ctx.wbytes, 1)
        clk.run("embedding", host(Python(forwards=1)), gpu(costs.embedding_lookup(m.hidden_size, tokens, ctx.wdtype)))
        mla = self._is_mla(ctx)
        qk_norm = m.family in self._families("qk_norm_families")
        hd_qk = a.qk_head_dim if mla else a.head_dim
        hd_v = a.v_head_dim if mla else a.head_dim
        kv_heads = a.num_heads if mla else a.num_kv_heads
        cache_row = kv_heads * (hd_qk + hd_v) * BYTES_PER_ELEMENT[ctx.options.kv_dtype]  # one token, one layer
        norm_passes = c("rmsnorm_bytes_per_element") / 2.0  # vector_op counts 2-byte passes
        norm = lambda n, width=m.hidden_size: gpu(vector_op(n * width, 4.0, norm_passes))  # noqa: E731
        residual = gpu(vector_op(tokens * m.hidden_size, 1.0, 3.0))
        attn_tensors = int(c("attention_weight_tensors") + (c("qk_norm_weight_tensors") if qk_norm else 0)
                           + (c("mla_extra_weight_tensors") if mla else 0))
        attn_gpu = (gpu(ctx.attention_proj(tokens))
                    + gpu(vector_op(tokens * (a.num_heads + kv_heads) * hd_qk, c("rotary_flop_per_element"),
                                    c("rotary_passes")))  # rotary
                    + gpu(self._sdpa(ctx, seqs, q_len, kv_len))
                    + gpu(vector_op(seqs * (kv_len - q_len) * cache_row / 2 + tokens * cache_row / 2, 0.0, 2.0)))  # cat
        if qk_norm:
            attn_gpu += norm(tokens, a.num_heads * a.head_dim) + norm(tokens, kv_heads * a.head_dim)
        if mla:
            attn_gpu += norm(tokens, a.kv_lora_rank)
        def layer(is_moe: bool) -> None:
            fetch(m.hidden_size * ctx.wbytes, 1)
            clk.run("norms", host(py.pre_norm), norm(tokens))
            fetch(ctx.attention_weight_bytes, attn_tensors)
            clk.run("attention", host(py.attention), attn_gpu)
            fetch(m.hidden_size * ctx.wbytes, 1)
            clk.run("norms", host(py.post_norm), norm(tokens) + 2 * residual)
            if is_moe:
                self._moe(ctx, clk, tokens, impl, gpu, fetch, py, host)
            else:
                fetch(ctx.dense_ffn_weight_bytes, 3)
                clk.run("dense_ffn", host(py.dense_ffn), gpu(ctx.dense_ffn(tokens)))

        for is_moe, count in _runs([m.is_moe_layer(i) for i in range(m.num_layers)]):
            for _ in range(min(count, 2)):
                snap = clk.snapshot()
                layer(is_moe)
            clk.repeat_last(snap, count - min(count, 2))  # identical layers: the second one's increments again
        fetch(m.hidden_size * ctx.wbytes + m.lm_head_params * ctx.wbytes, 2)
        clk.run("head", host(head_python(c)),
                norm(seqs) + gpu(costs.lm_head(m.hidden_size, m.vocab_size, seqs, ctx.wdtype)))
        if generate_step:  # generate's own loop after the forward, ending in its stop check's host read
            clk.run("generate step", host(generate_step_python(c)), 0.0, syncs=int(c("generate_step_syncs")))
        return clk

    def _sdpa(self, ctx: Context, seqs: int, q_len: int, kv_len: int) -> OpCost:
        """sdpa over the cached per-head K/V (for MLA the decompressed cache HF keeps: d_qk = nope + rope)."""
        a = ctx.model.attention
        if not self._is_mla(ctx):
            return ctx.attention_core(seqs, q_len, kv_len, False)
        span = costs.effective_span(q_len, kv_len, True)
        d = a.qk_head_dim + a.v_head_dim
        return OpCost(family="attention", flop=2.0 * seqs * a.num_heads * q_len * span * d,
                      bytes=(seqs * kv_len * a.num_heads * d + 2 * seqs * q_len * a.num_heads * d) * ctx.abytes)

    def _moe(self, ctx: Context, clk: TwoClocks, tokens: int, impl: str, gpu, fetch, py, host) -> None:
        m, moe = ctx.model, ctx.model.moe
        routed = tokens * moe.top_k
        h, f = m.hidden_size, moe.expert_intermediate_size
        fetch(ctx.router_weight_bytes, 1)
        clk.run("router", host(py.router), gpu(costs.router(h, moe.num_experts, tokens)))
        fetch(moe.num_experts * ctx.expert_weight_bytes, 2)
        active = ctx.active_experts(tokens)
        mats = 3 if moe.gated else 2
        if impl == "grouped_mm":
            peak, _ = ctx.platform.gpu.peak_for(ctx.edtype)
            g = sum(grouped_mm_layer_s(h, f, tokens, routed, active, moe.gated, ctx.ebytes, ctx.abytes, peak,
                                       ctx.platform.gpu.memory_bandwidth_bytes_per_s, self.grouped_mm_kernels()))
            clk.run("experts", host(py.experts_fixed), g)
        elif impl == "batched_mm":
            g = sum(batched_mm_layer_s(h, f, routed, moe.gated, ctx.ebytes, ctx.abytes,
                                       ctx.platform.gpu.memory_bandwidth_bytes_per_s, self.batched_mm_kernels()))
            clk.run("experts", host(py.experts_fixed), g)
        else:  # eager: the loop head (its nonzero reads the hit list), then one iteration per expert hit
            clk.run("experts", host(py.experts_fixed), gpu(vector_op(routed * moe.num_experts, 1.0, 2.0)), syncs=1)
            rows = routed / active if active else 0.0
            one = (gpu(gemm(rows, (mats - 1) * f, h, ctx.edtype, family="expert"))
                   + gpu(gemm(rows, h, f, ctx.edtype, family="expert"))
                   + gpu(vector_op(rows * f, 4.0, 5.0)) + 4 * gpu(vector_op(rows * h, 1.0, 2.0)))
            clk.serial("experts", host(py.expert), one, active)
        shared = ctx.shared_experts(tokens)
        if shared is not None:
            fetch(ctx.shared_weight_bytes, 3 * max(1, moe.num_shared_experts))
            host_s = host(py.shared)
            g = gpu(shared)
            if py.shared_gate.modules:
                host_s += host(py.shared_gate)
                g += gpu(gemm(tokens, 1, h)) + gpu(vector_op(tokens * h, 1.0, 3.0))
            clk.run("shared experts", host_s, g)
        clk.run("experts", host(py.experts_tail), gpu(vector_op(tokens * h, 1.0, 3.0)))  # the block's reshape / residual

    # ---- plan ------------------------------------------------------------------------------------
    def _step(self, ctx: Context, seqs: int, q_len: int, kv_len: int, phase: str, build_s: float = 0.0) -> StepSim:
        impl = self._impl(phase)
        clk = self.forward_s(ctx, seqs, q_len, kv_len, impl, generate_step=(phase == "decode"), graph_build_s=build_s)
        engine = Engine(memory_capacity_bytes={"gpu": ctx.platform.usable_gpu_memory_bytes_per_gpu})
        for label, nbytes in self._pass_bytes(ctx, seqs, q_len, kv_len, impl).items():
            engine.hold("gpu", nbytes, label)
        last = None
        for cat, t in clk.by_category.items():
            if t > 0:
                last = engine.add(cat, "gpu" if cat != "cpu_offload copy" else "h2d", t,
                                  [] if last is None else [last], category=cat)
        peaks = engine.check_memory()
        busy = {"gpu": clk.gpu_busy_s, "host": clk.host_busy_s}
        if clk.copy_busy_s:
            busy["h2d"] = clk.copy_busy_s
        return StepSim(time_s=clk.now, engine=engine, simulated_layers=ctx.model.num_layers,
                       total_layers=ctx.model.num_layers, busy_s=busy, category_s=dict(clk.by_category),
                       peak_memory_bytes=peaks)

    def _need_bytes(self, ctx: Context, seqs: int) -> float:
        """GPU bytes a batch of ``seqs`` needs: the larger of its prefill pass and its last decode step."""
        w = ctx.workload
        return max(sum(self._pass_bytes(ctx, seqs, w.prompt_tokens, w.prompt_tokens, self._impl("prefill")).values()),
                   sum(self._pass_bytes(ctx, seqs, 1, w.total_context_tokens, self._impl("decode")).values()))

    def _fits(self, ctx: Context, seqs: int) -> bool:
        return self._need_bytes(ctx, seqs) <= ctx.platform.usable_gpu_memory_bytes_per_gpu

    def _max_batch(self, ctx: Context) -> int:
        w = ctx.workload
        hi = max(1, w.num_requests)
        if not self._fits(ctx, 1):
            usable = ctx.platform.usable_gpu_memory_bytes_per_gpu
            need = self._need_bytes(ctx, 1)
            where = "host memory and one module on the GPU" if self.params.cpu_offload else "the weights on the GPU"
            raise InfeasibleError(f"transformers: one sequence does not fit with {where}: needs {fmt_bytes(need)} "
                                  f"on {ctx.platform.gpu.name}, {fmt_bytes(usable)} usable: short by "
                                  f"{fmt_bytes(need - usable)}")
        lo = 1
        while lo < hi:  # largest batch that fits (memory grows with the batch)
            mid = (lo + hi + 1) // 2
            if self._fits(ctx, mid):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def plan(self, ctx: Context) -> Plan:
        w = ctx.workload
        self.refuse_multi_gpu(ctx, "device_map layer splits across GPUs are not modelled")
        if ctx.model.moe is None:
            raise InfeasibleError("transformers: modelled for MoE models only")
        p = self.params
        if p.cpu_offload and ctx.weight_bytes > ctx.platform.usable_host_memory_bytes:
            raise InfeasibleError(f"transformers: cpu_offload keeps {fmt_bytes(ctx.weight_bytes)} of weights in host "
                                  f"memory, {fmt_bytes(ctx.platform.usable_host_memory_bytes)} usable: short by "
                                  f"{fmt_bytes(ctx.weight_bytes - ctx.platform.usable_host_memory_bytes)}")
        max_batch = self._max_batch(ctx)
        wanted = w.batch_size or p.batch_size
        if wanted and wanted > max_batch:
            raise InfeasibleError(f"transformers: batch {wanted} does not fit on the GPU; at most {max_batch} sequences "
                                  f"of {w.total_context_tokens} tokens ({p.experts_implementation} experts"
                                  f"{', cpu_offload' if p.cpu_offload else ''})")
        batch, num_batches, rest = full_batches(w.num_requests, wanted or max_batch)
        last = rest or batch
        full = num_batches - (1 if last != batch else 0)
        build = self.attention_graph_build_s(ctx) if p.attention_graph_cache == "cold" else 0.0

        def run(b: int, build_s: float) -> tuple[StepSim, float, list]:
            """Prefill and decode of a batch of ``b``; every pass carries ``build_s`` of graph building."""
            pre = self._step(ctx, b, w.prompt_tokens, w.prompt_tokens, "prefill", build_s)
            dec, points = simpson_decode_time(lambda cx: self._step(ctx, b, 1, cx, "decode", build_s),
                                              w.prompt_tokens, w.gen_tokens)
            return pre, dec, points

        prefill, decode_s, points = run(batch, build / full)  # the full batches share the first one's builds
        notes = [f"transformers {p.experts_implementation} experts (prefill {self._impl('prefill')}, decode "
                 f"{self._impl('decode')}){', accelerate cpu_offload (pageable copies, module by module)' if p.cpu_offload else ''}"]
        if build > 0:
            n = self.attention_graph_builds(w.num_requests, batch, w.gen_tokens)
            notes.append(f"cold cuDNN attention graphs (PyTorch sdpa on {ctx.platform.gpu.name}): {n} builds of "
                         f"{build * 1e3:.0f} ms on the host (1 + {w.gen_tokens} per batch size; the full batches' "
                         f"shared over {full}); attention_graph_cache=warm if the process already ran these shapes")
        last_s = None
        if last != batch:
            lp, ld, _ = run(last, build)  # a new batch size: its own shapes, its own builds
            last_s = lp.time_s + ld  # predict's notes say so (Plan.last_batch_partial)
        config = {"batch_size": batch, "max_batch_that_fits": max_batch, "experts_implementation": p.experts_implementation,
                  "decode_experts_implementation": self._impl("decode"), "cpu_offload": p.cpu_offload,
                  "attention_graph_cache": p.attention_graph_cache,
                  "attention_graph_builds": self.attention_graph_builds(w.num_requests, batch, w.gen_tokens)
                  if build > 0 else 0,
                  "kv_bytes_per_token": self.kv_bytes_per_token(ctx)}
        return self.make_plan(
            (batch, num_batches), (prefill, 1, batch * w.prompt_tokens), (decode_s, points), config=config,
            host_mem_bytes=ctx.weight_bytes if p.cpu_offload else 0.0,
            placement={"weights": "host (pageable), copied module by module" if p.cpu_offload else "gpu",
                       "kv_cache": "gpu (DynamicCache)"},
            notes=notes, last_batch_time_s=last_s)

