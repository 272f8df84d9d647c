"""`moe-lightning`: CGOPipe with an HRM-style policy search (MoE-Lightning, Cao et al., arXiv 2411.11217).

Policy. ``policy="as-deployed"`` (default): the (mu, n_ub, w_g) MoE-Lightning's own optimizer picks (its
artifact's ``optimizer.py`` with its ``HardwareConfig`` constants, GPU <= 0.86 and CPU <= 0.8 of memory, the
prefill working set of the fused MoE kernel capping mu: :mod:`._moe_lightning_optimizer`), simulated with
moesim's physics below (e.g. 36 x 14 = 504 for Mixtral-8x7B, MTBench padded to 418, on a T4 with 192 GB,
as published). ``policy="best"``: the search described below (it also tries the optimizer's pick unless a
grid is given). ``micro_batch_size`` + ``num_micro_batches`` run a given policy exactly; a fixed batch N
(``--batch``) keeps mu as the cap of a micro-batch (ceil(N / mu) micro-batches sharing N evenly). Requests
beyond a batch: full batches, then a last one whose n_ub micro-batches share the rest evenly, charged for
what it holds. MoE-Gen's re-implementation (``one_prefill_pass``) sizes its batch by GPU memory (best).

Where data lives
  weights   pinned host memory; a fraction r_w of every layer stays on the GPU, the rest is
            streamed each forward pass in pages (as many pages as micro-batches) into a GPU
            buffer of two layers' CPU-resident part (section 4.1). Not MoE-aware: every
            expert's pages are streamed.
  KV cache  host memory (r_c = 0): decode attention runs on the CPU (A_g = 0), reading it in
            place; "for our major setting, we always get A_g = 0 and F_g = 1" (section 4.2).

Decode (CGOPipe, Algorithm 1): the batch of N = n_ub x mu sequences goes layer by layer in
n_ub micro-batches of mu. Per layer and micro-batch j:

  GPU  pre-attention (norm + QKV) of j          D2H  Q/K/V of j (new K/V appended on the host)
  CPU  attention of j over its host KV           H2D  one weight page of the next layer, then
  GPU  post-attention of j (O proj + router +        the attention output of j
       MoE FFN on mu tokens, F_g = 1)

with the GPU issuing post-attention of j before pre-attention of j + 2, so the CPU works two
micro-batches ahead; copies in one direction are sequential, opposite directions concurrent.

Prefill: all on the GPU (flash attention), layer by layer over the prompts of a pass, the new
KV copied D2H; weights streamed once per pass. A pass holds the hidden states of n_p prompts
on the GPU (``prefill_pass_tokens`` of them, capped by GPU memory): enough that the pass is
compute-bound, as MoE-Lightning assumes ("prefill is normally compute-bound").

Policy (N, mu, r_w, r_c): enumerate mu on a grid and n_ub (powers of two and the most that host
memory allows: N x KV(prompt + gen) next to the weights); r_w is the largest fraction of the
weights that fits on the GPU next to the page buffers and the working set; r_c = 0. Each
candidate is priced with the HRM per-layer estimate (their Eq. 12-14)

    T_layer = max( comm_h2d, comm_d2h, T_cpu(attention of N), T_gpu(n_ub micro-batches) )

using moesim's module costs (the ranking; it breaks ties), and the fastest on the engine (prefill
plus decode per request, padding of the last batch counted) is kept: a candidate is simulated unless
a lower bound of its time (``_prefill_lower_bound``, ``_decode_lower_bound``) shows it slower than
one simulated already, so the choice is that of simulating them all.
The candidate set depends on memory only, so more bandwidth or FLOP/s never lowers
throughput. Memory caps: the platform's
usable GPU memory and usable host memory (MoE-Lightning's artifact uses 0.86 and 0.8 of them).
Host: with ``model_code=hf`` (MoE-Gen's MoE-Lightning*, a re-implementation on the Hugging Face pipeline of
transformers 4.42) each (layer, micro-batch) pays the Hugging Face decoder layer's Python, priced at the
``transformers`` system's measured rates (:mod:`.shared.hf_host`): the input norm and attention block before the
micro-batch's pre-attention kernels, the post-attention norm and MoE block (Mixtral's loop over every expert, a read
per iteration: its Python and kernels take turns) before its post-attention kernels, each prefill chunk the whole
layer's; and per micro-batch forward the forward's and the LM head's Python. GPU tasks then carry the GPU's time
alone. With ``model_code=moe-lightning`` (default) MoE-Lightning's own runtime (its Python pipeline over vLLM /
SGLang kernels) is not counted: each operation keeps moesim's generic eager issue cost.
Left out: request bucketing by length (all prompts padded, the "(p)" setting), tensor
parallelism, and the weight-memory double counting of the artifact's pinned staging.
"""

from __future__ import annotations

import math
from typing import Callable, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from ..engine import Engine
from ..errors import InfeasibleError
from ..metrics import HostShare
from ..modules import Context
from ..specs import LayerKind
from ..units import fmt_bytes
from .base import Plan, ServingSystem, StepSim, balanced_batches, simpson_decode_time, simulate_pass
from .shared.attention import eager_attention_cost, eager_attention_peak_bytes
from .shared.hf_host import PythonThread, bare, context_python, head_python, context_rates
from .shared.memory import (activation_bytes, layer_weight_bytes, max_layer_weight_bytes, prefill_logits_bytes,
                            streamed_weight_bytes)
from .shared.search import best_by_bounds, decode_mid, simpson_bound
from . import _moe_lightning_optimizer as opt


class _DecodeTimes(NamedTuple):
    """Durations of one simulated decode layer's tasks (per group of micro-batches) and of the LM head."""

    g: int  # groups of micro-batches simulated per layer
    per: float  # micro-batches per group
    d1_bytes: float  # Q/K/V of a group to the host
    d2_bytes: float  # attention output of a group back to the GPU
    d1_s: float
    d2_s: float
    gpu: dict  # layer kind -> (pre-attention, post-attention + FFN) of a group
    cpu: dict  # windowed? -> CPU attention of a group
    page_bytes: dict  # layer kind -> one weight page
    page_s: dict
    head_s: float
    host: dict | None = None  # model_code hf: layer kind -> host seconds of (pre-attention, post-attention + FFN) of a group


class _PrefillTimes(NamedTuple):
    """Durations of one simulated prefill layer's tasks (per group of chunks) and of the LM head."""

    g: int  # groups of chunks simulated per layer
    kv_bytes: float  # new KV of a group, copied to the host
    gpu: dict  # layer kind -> a group's layer compute
    head_s: float
    host: dict | None = None  # model_code hf: layer kind -> host seconds of a group's layer Python


class MoELightningParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    policy: Literal["as-deployed", "best"] = Field(
        default="as-deployed",
        description="as-deployed: the (mu, micro-batches) MoE-Lightning's own optimizer picks (its artifact's "
                    "optimizer.py, constants and memory caps); best: the fastest candidate on moesim's engine")
    micro_batch_size: int | None = Field(default=None, ge=1,
                                         description="mu, sequences per micro-batch (a published policy); None = searched")
    num_micro_batches: int | None = Field(default=None, ge=1,
                                          description="micro-batches per batch, N / mu; None = searched")
    micro_batch_grid: tuple[int, ...] = Field(default=(16, 64, 256),
                                              description="micro-batch sizes mu enumerated by policy=best")
    gpu_weight_fraction: float | None = Field(default=None, ge=0, le=1,
                                              description="r_w; None = the optimizer's (as-deployed) or the largest "
                                                          "that fits (best)")
    prefill_chunk_tokens: int = Field(default=8192, ge=1, description="prompt tokens per prefill kernel launch")
    prefill_pass_tokens: int = Field(
        default=32768, ge=1,
        description="prompt tokens whose hidden states one prefill pass keeps on the GPU (weights streamed once per "
                    "pass); enough for a pass's compute to cover its weight transfer over PCIe for the models here")
    candidates_simulated: int | None = Field(default=None, ge=1,
                                             description="best HRM candidates timed on the engine; None = all")
    prefill_attention: Literal["flash", "eager"] = Field(
        default="flash", description="prefill attention kernel: flash (MoE-Lightning's, on vLLM/SGLang kernels) or "
                                     "eager with an fp32 softmax (Hugging Face code without SDPA, e.g. DeepSeek's)")
    logits_all_positions: bool = Field(
        default=False, description="prefill computes fp32 logits at every prompt position (Hugging Face generation "
                                   "code of transformers < 4.45)")
    one_prefill_pass: bool = Field(
        default=False,
        description="model-based batching as MoE-Gen re-implemented MoE-Lightning (its MoE-Lightning*): the whole "
                    "decode batch is prefilled in one pass, each module over all its prompts at once, so the batch "
                    "is what GPU memory holds at prefill (MoE-Gen's Table 1 gives its batch as DeepSpeed's)")
    model_code: Literal["moe-lightning", "hf"] = Field(
        default="moe-lightning",
        description="the code that runs each (layer, micro-batch): moe-lightning, its own runtime (its generic eager "
                    "cost per operation); hf, Hugging Face's modelling code (transformers 4.42) as MoE-Gen's "
                    "MoE-Lightning* re-implementation runs it: the decoder layer's Python per micro-batch, priced at the "
                    "transformers system's measured host rates")
    max_simulated_micro_batches: int = Field(default=4, ge=2,
                                             description="engine groups micro-batches beyond this many per layer")


class MoELightning(ServingSystem):
    name = "moe-lightning"
    summary = ("CGOPipe: batch of micro-batches layer by layer, weights in pinned host memory streamed in pages "
               "(a GPU-resident fraction r_w), KV in host memory with decode attention on the CPU, MoE FFN on the GPU")
    Params = MoELightningParams

    # ---- sizes -----------------------------------------------------------------------------------------
    @staticmethod
    def _qkv_bytes(ctx: Context) -> tuple[float, float]:
        """Bytes per token per layer of (Q + new K/V to the host, attention output back to the GPU)."""
        a = ctx.model.attention
        if a.kind == "mla":  # absorbed MLA on the latent
            q = a.num_heads * (a.kv_lora_rank + a.qk_rope_head_dim)
            out = a.num_heads * a.kv_lora_rank
        else:
            q = a.num_heads * a.head_dim
            out = a.num_heads * a.head_dim
        return (q + a.kv_elements_per_token()) * ctx.abytes, out * ctx.abytes

    def _resident_hidden_bytes(self, ctx: Context, seqs: float) -> float:
        """Hidden states the GPU keeps per sequence between layers (``hidden_tensors_per_token`` of them)."""
        return ctx.hidden_state_bytes(seqs) * self.constants.value("hidden_tensors_per_token")

    def _kv_per_seq(self, ctx: Context) -> float:
        total = ctx.workload.total_context_tokens
        return total * ctx.kv_bytes_per_token(total)

    def _decode_work(self, ctx: Context, n: int, mu: int) -> float:
        d1, d2 = self._qkv_bytes(ctx)
        return self._resident_hidden_bytes(ctx, n) + 2 * (activation_bytes(ctx, mu) + mu * (d1 + d2))

    def _chunk_prompts(self, ctx: Context, n_p: int) -> int:
        """Prompts per prefill kernel launch in a pass of ``n_p`` prompts."""
        if self.params.one_prefill_pass:
            return n_p
        return min(n_p, max(1, self.params.prefill_chunk_tokens // ctx.workload.prompt_tokens))

    def _chunk_transient_bytes(self, ctx: Context, prompts: int) -> float:
        """GPU transients of one prefill kernel chunk of ``prompts`` prompts: the worse of a layer's
        (activations, new KV, eager scores) and the logits at the pass's end."""
        s = ctx.workload.prompt_tokens
        scores = (eager_attention_peak_bytes(ctx, prompts, s, s, "fp32")
                  if self.params.prefill_attention == "eager" else 0.0)
        logits = prompts * prefill_logits_bytes(ctx, s) if self.params.logits_all_positions else 0.0
        return max(activation_bytes(ctx, prompts * s) + 2 * prompts * s * ctx.kv_bytes_per_token_layer() + scores,
                   logits)

    def _prefill_logit_rows(self, ctx: Context, n_p: int) -> int:
        return n_p * ctx.workload.prompt_tokens if self.params.logits_all_positions else n_p

    def _prefill_work(self, ctx: Context, n_p: int) -> float:
        """GPU working set of a prefill pass of ``n_p`` prompts: their hidden states and one chunk's transients."""
        s = ctx.workload.prompt_tokens
        return (self._resident_hidden_bytes(ctx, n_p * s)
                + self._chunk_transient_bytes(ctx, self._chunk_prompts(ctx, n_p)))

    def _layer_gpu_s(self, ctx: Context, kind: LayerKind, tokens: float, q_len: int,
                     kv_len: float) -> tuple[float, float]:
        """(pre-attention, post-attention incl. FFN) GPU seconds for ``tokens`` tokens; prefill core in pre (a
        decode step, ``q_len`` 1, has no attention core on the GPU: ``kv_len`` does not matter then). Kept on the
        context: the HRM ranking, the bounds and the simulations of a search ask for the same few."""
        if q_len == 1:
            kv_len = 0
        key = ("moe-lightning layer", self.params.prefill_attention, self.params.model_code, kind, type(tokens), tokens,
               q_len, type(kv_len), kv_len)
        return ctx.memo(key, lambda: self._price_layer(ctx, kind, tokens, q_len, kv_len))

    def _price_layer(self, ctx: Context, kind: LayerKind, tokens: float, q_len: int,
                     kv_len: float) -> tuple[float, float]:
        m = ctx.model
        gpu = self._gpu(ctx)
        qkv, out = ctx.attention_proj_split(tokens)
        pre = gpu(qkv)
        if q_len > 1 and self.params.prefill_attention == "eager":
            pre += gpu(eager_attention_cost(ctx, tokens / q_len, q_len, kv_len, kind.windowed, "fp32"))
        elif q_len > 1:
            pre += gpu(ctx.attention_core(tokens / q_len, q_len, kv_len, kind.windowed))
        post = gpu(out)
        if kind.moe:
            post += gpu(ctx.router(tokens)) + gpu(ctx.experts(ctx.active_experts(tokens), tokens * m.moe.top_k))
            shared = ctx.shared_experts(tokens)
            post += gpu(shared) if shared else 0.0
        else:
            post += gpu(ctx.dense_ffn(tokens))
        return pre, post

    def _gpu(self, ctx: Context):
        """GPU seconds of an operation: the GPU's time alone where the host's Python is charged on its own
        (``model_code`` hf: :func:`~.shared.hf_host.bare`), else with moesim's generic eager issue cost."""
        if self.params.model_code == "hf":
            return lambda cost: ctx.gpu_s(bare(cost))
        return ctx.gpu_s

    def _layer_host_s(self, ctx: Context, kind: LayerKind, tokens: float) -> tuple[float, float]:
        """Host seconds of the Hugging Face decoder layer's Python on one micro-batch of ``tokens`` tokens (model_code
        hf, :mod:`~.shared.hf_host`, transformers 4.42's code): (input norm and attention, post-attention norm and the
        MoE block or dense FFN)."""
        m = ctx.model
        rates = context_rates(ctx)
        py = context_python(ctx, "4.42")
        active = ctx.active_experts(tokens) if kind.moe else 0.0
        return (rates.seconds(py.attention_block()),
                rates.seconds(py.ffn_block(kind.moe, active, m.moe.num_experts if m.moe else 0)))

    def _loop_reads(self, ctx: Context) -> bool:
        """Whether the Hugging Face experts loop reads the GPU every iteration (its Python and kernels take turns)."""
        return context_python(ctx, "4.42").loop_reads

    # ---- policy -------------------------------------------------------------------------------------
    def _prefill_prompts(self, ctx: Context, n: int) -> int:
        """Prompts per prefill pass: ``prefill_pass_tokens`` worth, capped by GPU memory and N, balanced over passes."""
        if self.params.one_prefill_pass:
            return n
        s = ctx.workload.prompt_tokens
        chunk = self._chunk_prompts(ctx, n)
        p = ctx.platform
        room = (p.usable_gpu_memory_bytes_per_gpu - ctx.resident_weight_bytes - 2 * max_layer_weight_bytes(ctx)
                - self._chunk_transient_bytes(ctx, chunk))
        cap = int(room // self._resident_hidden_bytes(ctx, s))
        n_p = max(1, min(n, self.params.prefill_pass_tokens // s, cap))
        passes = math.ceil(n / n_p)
        return math.ceil(n / passes)

    def _gpu_fraction(self, ctx: Context, work: float) -> float | None:
        """Largest r_w that fits next to the page buffers and ``work``; None if even r_w = 0 does not fit."""
        p = ctx.platform
        W, WL = streamed_weight_bytes(ctx), max_layer_weight_bytes(ctx)
        room = p.usable_gpu_memory_bytes_per_gpu - ctx.resident_weight_bytes - 2 * WL - work
        if room < 0:
            return None
        r = 1.0 if W <= 2 * WL else min(1.0, room / (W - 2 * WL))
        if self.params.gpu_weight_fraction is not None:
            if self.params.gpu_weight_fraction > r + 1e-12:
                return None
            r = self.params.gpu_weight_fraction
        return r

    def _gpu_bytes(self, ctx: Context, r_w: float, work: float) -> dict[str, float]:
        W, WL = streamed_weight_bytes(ctx), max_layer_weight_bytes(ctx)
        return {"resident weights (embeddings, LM head, routers)": ctx.resident_weight_bytes,
                "weights kept on the GPU (r_w)": r_w * W,
                "weight page buffers (2 layers' streamed part)": 2 * (1 - r_w) * WL,
                "hidden states, micro-batch and prefill working set": work}

    def _hrm_time(self, ctx: Context, n: int, mu: int, n_ub: int, r_w: float, n_p: int) -> float:
        """HRM estimate (Eq. 12-14) of one batch's prefill + decode time."""
        w = ctx.workload
        s, c = w.prompt_tokens, w.prompt_tokens + w.gen_tokens / 2.0
        d1, d2 = self._qkv_bytes(ctx)
        step = ctx.gpu_s(ctx.head(n, n))
        passes = math.ceil(n / n_p)
        prefill = passes * ctx.gpu_s(ctx.head(n_p * s, self._prefill_logit_rows(ctx, n_p)))
        chunk = self._chunk_prompts(ctx, n_p)
        for kind, count in ctx.model.layer_kinds().items():
            stream = ctx.copy_s((1 - r_w) * layer_weight_bytes(ctx, kind), "pinned")
            pre, post = self._layer_gpu_s(ctx, kind, mu, 1, c)
            t_cpu = ctx.cpu_s(ctx.cpu_attention(n, c, kind.windowed))
            step += count * max(stream + ctx.h2d_s(n * d2), ctx.d2h_s(n * d1), t_cpu, n_ub * (pre + post))
            pre_p, post_p = self._layer_gpu_s(ctx, kind, chunk * s, s, s)
            prefill += passes * count * max(stream, n_p / chunk * (pre_p + post_p),
                                            ctx.d2h_s(n_p * s * ctx.kv_bytes_per_token_layer()))
        return prefill + w.gen_tokens * step

    def _one_pass_cap(self, ctx: Context, n_cap: int) -> int:
        """Largest batch (at most ``n_cap``) whose one-pass prefill working set fits on the GPU (bisection;
        the working set grows with the batch)."""
        def fits(n: int) -> bool:
            return self._gpu_fraction(ctx, max(self._decode_work(ctx, n, n), self._prefill_work(ctx, n))) is not None
        lo, hi = 0, n_cap
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        return max(lo, 1)

    def _cand(self, ctx: Context, mu: int, n_ub: int, n: int | None = None, r_w: float | None = None) -> dict | None:
        """A candidate batch: n sequences (default mu n_ub) in n_ub micro-batches of mu, its prefill passes of
        n_p prompts, GPU working set and weight fraction r_w (``r_w``, else the parameter, else the largest that
        fits; None when the working set does not fit, or ``r_w`` does not fit beside it)."""
        n = n or mu * n_ub
        n_p = self._prefill_prompts(ctx, n)
        work = max(self._decode_work(ctx, n, mu), self._prefill_work(ctx, n_p))
        fit = self._gpu_fraction(ctx, work)
        if fit is None or (r_w is not None and r_w > fit + 1e-12):
            return None
        return {"mu": mu, "n_ub": n_ub, "n": n, "n_p": n_p, "r_w": fit if r_w is None else r_w, "work": work}

    def _partial(self, ctx: Context, cand: dict, r: int) -> dict:
        """The last batch of r < N sequences under ``cand``'s policy: its n_ub micro-batches (fewer if r is
        smaller) share the r sequences evenly; the weight placement r_w is the full batch's (or what fits beside
        the partial batch's prefill pass, which may hold more prompts when fewer passes are balanced)."""
        n_ub = min(cand["n_ub"], r)
        mu = math.ceil(r / n_ub)
        part = self._cand(ctx, mu, n_ub, r, None)
        if part is None:  # not expected: its prefill passes hold at most the GPU-memory cap of prompts, like the full one's
            raise InfeasibleError(
                f"moe-lightning: the last batch of {r} sequences ({n_ub} micro-batches of up to {mu}) does not fit "
                f"its working set on the {ctx.platform.gpu.name} beside the resident weights, although the full "
                f"batch of {cand['n']} does; set --batch or micro_batch_size")
        part["r_w"] = min(part["r_w"], cand["r_w"])  # the full batch's placement (less if its passes are larger)
        return part

    def _candidates(self, ctx: Context, n_cap: int, fixed_n: int | None) -> list[dict]:
        """Candidates of policy=best: mu on the grid (or ``micro_batch_size``), n_ub powers of two and the most
        that fit (or ``num_micro_batches``); with a fixed batch N, n_ub = ceil(N / mu) micro-batches sharing the
        N sequences evenly (mu is the cap of a micro-batch, never changed to fit N)."""
        prm = self.params
        grid = (prm.micro_batch_size,) if prm.micro_batch_size else prm.micro_batch_grid
        keys = set()
        for mu0 in grid:
            if fixed_n is not None:
                mu, n_ub = balanced_batches(fixed_n, min(mu0, fixed_n))
                if prm.num_micro_batches and prm.num_micro_batches != n_ub:
                    continue
                keys.add((mu, n_ub, fixed_n))
                continue
            mu = min(mu0, n_cap) if not prm.micro_batch_size else mu0
            if prm.num_micro_batches:
                keys.add((mu, prm.num_micro_batches, mu * prm.num_micro_batches))
                continue
            keys |= {(mu, u, mu * u) for u in (2 ** e for e in range(20)) if mu * u <= n_cap}
            keys.add((mu, max(1, n_cap // mu), mu * max(1, n_cap // mu)))
        out = []
        for mu, n_ub, n in sorted(keys):
            c = self._cand(ctx, mu, n_ub, n, None)
            if c is not None:
                out.append(c)
        return out

    # ---- MoE-Lightning's own optimizer (policy=as-deployed) ------------------------------------------
    def _hrm_terms(self, ctx: Context) -> opt.HRMTerms:
        """What MoE-Lightning's optimizer sees: moesim's sizes of the model, its own hardware constants for the
        GPUs it lists (``optimizer_gpus``: T4, L4, matched by exact name; ``systems_db/moe-lightning.yaml``, artifact
        ``HardwareConfig.init``), else the platform's
        datasheet figures (what a user passes it), the host's memory and DRAM bandwidth (its --cpu-mem and
        --cpu-mem-bdw)."""
        m, p, w, k = ctx.model, ctx.platform, ctx.workload, self.constants
        l = m.num_layers
        kinds = m.layer_kinds()
        ffn_bytes = sum(c * (layer_weight_bytes(ctx, kk) - ctx.attention_weight_bytes) for kk, c in kinds.items()) / l
        a = m.attention
        if m.moe:
            h2, top_k = m.moe.expert_intermediate_size, m.moe.top_k
            ffn_flop = 2 * (top_k * m.expert_params + m.shared_expert_params)
        else:
            h2, top_k = m.dense_ffn.intermediate_size, 1
            ffn_flop = 2 * m.dense_ffn_params
        tag = p.gpu.name if p.gpu.name in k.names("optimizer_gpus") else None
        if tag:
            gib = 2 ** 30
            gpu_mem = k.value(f"optimizer_{tag}_gpu_memory_gib") * gib
            ctog = k.value(f"optimizer_{tag}_ctog_gib_per_s") * gib
            g_bdw = k.value(f"optimizer_{tag}_gpu_memory_gib_per_s") * gib
            g_flops = k.value(f"optimizer_{tag}_gpu_tflop_per_s") * 1e12
            c_flops = k.value(f"optimizer_{tag}_cpu_tflop_per_s") * 1e12
        else:
            gpu_mem, ctog = p.gpu.memory_bytes, p.host_link.theoretical_bytes_per_s
            g_bdw, g_flops = p.gpu.memory_bandwidth_bytes_per_s, p.gpu.peak_for(ctx.wdtype)[0]
            c_flops = p.cpu.peak_for("fp32") * p.num_cpus
        return opt.HRMTerms(
            layers=l, prompt_tokens=w.prompt_tokens, gen_tokens=w.gen_tokens,
            attention_bytes_all_layers=ctx.attention_weight_bytes * l, expert_bytes_per_layer=ffn_bytes,
            hidden_bytes_per_token=ctx.hidden_state_bytes(1), kv_bytes_per_token_layer=ctx.kv_bytes_per_token_layer(),
            act_bytes=ctx.abytes, hidden=m.hidden_size, expert_intermediate=h2, top_k=top_k,
            ffn_flop_per_token=ffn_flop, attn_flop_per_token_ctx=a.num_heads * (2 * a.qk_head_dim + 2),
            attn_bytes_per_seq_fixed=ctx.abytes * a.num_heads * (a.qk_head_dim + a.out_head_dim),
            gpu_memory_bytes=gpu_mem, cpu_memory_bytes=p.host_memory_bytes,
            ctog_bytes_per_s=ctog, gpu_bytes_per_s=g_bdw, cpu_bytes_per_s=p.host_memory_bandwidth_bytes_per_s,
            gpu_flop_per_s=g_flops, cpu_flop_per_s=c_flops,
            gpu_cap=k.value("optimizer_gpu_memory_fraction"), cpu_cap=k.value("optimizer_cpu_memory_fraction"),
            prefill_working_factor=k.value("optimizer_prefill_working_factor"))

    def deployed_policy(self, ctx: Context, max_batch: int) -> opt.HRMPolicy | None:
        """MoE-Lightning's optimizer's (mu, n_ub, w_g) for this workload (see :mod:`._moe_lightning_optimizer`)."""
        k = self.constants
        first = tuple(range(1, int(k.value("optimizer_micro_batch_first")) + 1))
        return opt.search(self._hrm_terms(ctx), max_batch, first, int(k.value("optimizer_micro_batch_step")),
                          self.params.micro_batch_size, self.params.num_micro_batches, ctx.workload.batch_size)

    # ---- engine ------------------------------------------------------------------------------------
    def _decode_steady(self, ctx: Context, cand: dict) -> _DecodeTimes:
        """What every simulated layer of a decode step takes, whatever the context: :meth:`_decode_times`
        without the CPU attention (left empty) and the LM head (0). Kept on the context: the bounds and the
        simulated steps of a candidate share it."""
        mu, n_ub, r_w = cand["mu"], cand["n_ub"], cand["r_w"]
        g = min(n_ub, self.params.max_simulated_micro_batches)

        def compute() -> _DecodeTimes:
            per = n_ub / g  # micro-batches per simulated group
            d1, d2 = self._qkv_bytes(ctx)
            kinds = ctx.model.layer_kinds()
            gpu = {k: tuple(per * t for t in self._layer_gpu_s(ctx, k, mu, 1, 0)) for k in kinds}
            page_bytes = {k: (1 - r_w) * layer_weight_bytes(ctx, k) / g for k in kinds}
            host = ({k: tuple(per * t for t in self._layer_host_s(ctx, k, mu)) for k in kinds}
                    if self.params.model_code == "hf" else None)
            return _DecodeTimes(g, per, mu * per * d1, mu * per * d2, ctx.d2h_s(mu * per * d1),
                                ctx.h2d_s(mu * per * d2), gpu, {}, page_bytes,
                                {k: ctx.copy_s(v, "pinned") for k, v in page_bytes.items()}, 0.0, host)

        return ctx.memo(("moe-lightning decode step", self.params.prefill_attention, self.params.model_code, g, mu, n_ub,
                         r_w), compute)

    def _decode_times(self, ctx: Context, cand: dict, kv_len: int) -> _DecodeTimes:
        """What every simulated layer of a decode step at context ``kv_len`` takes, and the LM head: the n_ub
        micro-batches grouped into g (``max_simulated_micro_batches``), each group standing for n_ub / g of them."""
        t = self._decode_steady(ctx, cand)
        mu, n = cand["mu"], cand["n"]
        return t._replace(cpu={k.windowed: ctx.cpu_s(ctx.cpu_attention(mu * t.per, kv_len, k.windowed))
                               for k in ctx.model.layer_kinds()}, head_s=self._gpu(ctx)(ctx.head(n, n)))

    def _decode_lower_bound(self, ctx: Context, cand: dict, kv_len: int | None = None) -> float:
        """A lower bound on ``_decode(ctx, cand, kv_len).time_s``, without simulating; with ``kv_len`` None,
        one for every context (the CPU chain and the LM head left out: they only add).

        Let E_i be the end of layer i (its last post-attention task, the id :meth:`_decode`'s layer
        returns). Every layer i >= 1 of kind k, with pre/post its GPU tasks, page/d1/d2 its copies and cpu
        its CPU attention per group (:meth:`_decode_times`), satisfies E_i - E_{i-1} >= delta_k with

            delta_k = max( g (pre + post),             the GPU runs in order, and layer i's GPU tasks
                                                       are submitted after layer i-1's last one, E_{i-1}
                           g (page + d2) + post,       its H2D copies (next layer's pages, attention
                                                       outputs) start after its first page, which waits
                                                       for E_{i-1}; its last post waits for the last copy
                           pre + d1 + g cpu + d2 + post )  the CPU runs in order after the first group's
                                                       pre-attention and Q/K/V copy

        and E_0 >= delta_k0 (each chain also holds from time 0). ``simulate_layers`` extrapolates a layer not
        simulated by max(E_n - E_{n-1}, 0) >= delta_k, and the LM head runs on the GPU after the last layer,
        so time_s >= head + sum over kinds of count_k delta_k."""
        t = self._decode_steady(ctx, cand) if kv_len is None else self._decode_times(ctx, cand, kv_len)
        g, total = t.g, t.head_s
        for kind, count in ctx.model.layer_kinds().items():
            pre, post = t.gpu[kind]
            delta = max(g * (pre + post), g * (t.page_s[kind] + t.d2_s) + post)
            if kv_len is not None:
                delta = max(delta, pre + t.d1_s + g * t.cpu[kind.windowed] + t.d2_s + post)
            total += count * delta
        return total

    def _decode(self, ctx: Context, cand: dict, kv_len: int) -> StepSim:
        t = self._decode_times(ctx, cand, kv_len)
        g, gpu, page_bytes, page_s = t.g, t.gpu, t.page_bytes, t.page_s
        state: dict = {"posts": None, "pages": None, "prev_end": None}
        engine = Engine(memory_capacity_bytes={"gpu": ctx.platform.usable_gpu_memory_bytes_per_gpu})
        host = PythonThread(engine, context_rates(ctx)) if t.host is not None else None
        serial_ffn = host is not None and self._loop_reads(ctx)

        def layer(eng: Engine, i: int, kind: LayerKind) -> int:
            if state["pages"] is None:  # cold start: this layer's pages
                state["pages"] = [eng.add(f"L{i} weight page {j}", "h2d", page_s[kind], category="transfer",
                                          nbytes=page_bytes[kind]) for j in range(g)][-1]
            ready = state["pages"]
            prev_posts = state["posts"] or [None] * g
            pre, back, posts = {}, {}, []
            next_page = None

            def submit_pre(j: int) -> None:
                nonlocal next_page
                if host is None:
                    pre[j] = eng.add(f"L{i} pre-attention mb{j}", "gpu", gpu[kind][0], [prev_posts[j], ready],
                                     category="attention")
                else:
                    pre[j] = host.module(f"L{i} pre-attention mb{j}", t.host[kind][0], "gpu", gpu[kind][0],
                                         [prev_posts[j], ready], category="attention")
                x = eng.add(f"L{i} QKV D2H mb{j}", "d2h", t.d1_s, [pre[j]], category="transfer", nbytes=t.d1_bytes)
                x = eng.add(f"L{i} CPU attention mb{j}", "cpu", t.cpu[kind.windowed], [x], category="cpu")
                next_page = eng.add(f"L{i + 1} weight page {j}", "h2d", page_s[kind], [state["prev_end"]],
                                    category="transfer", nbytes=page_bytes[kind])
                back[j] = eng.add(f"L{i} attention out H2D mb{j}", "h2d", t.d2_s, [x], category="transfer",
                                  nbytes=t.d2_bytes)

            for j in range(min(2, g)):
                submit_pre(j)
            for j in range(g):
                cat, label = "experts" if kind.moe else "dense_ffn", f"L{i} post-attention + FFN mb{j}"
                if host is None:
                    posts.append(eng.add(label, "gpu", gpu[kind][1], [back[j], ready], category=cat))
                elif serial_ffn and kind.moe:  # the experts loop reads the GPU every iteration
                    posts.append(host.serial(label, t.host[kind][1], gpu[kind][1], [back[j], ready], category=cat))
                else:
                    posts.append(host.module(label, t.host[kind][1], "gpu", gpu[kind][1], [back[j], ready],
                                             category=cat))
                if j + 2 < g:
                    submit_pre(j + 2)
            state.update(posts=posts, pages=next_page, prev_end=posts[-1])
            return posts[-1]

        return simulate_pass(ctx, engine, layer, *self._host_ends(host, cand["n_ub"]),
                             gpu_holds=self._gpu_bytes(ctx, cand["r_w"], cand["work"]), head_s=t.head_s)

    @staticmethod
    def _host_ends(host: PythonThread | None, forwards: float) -> tuple:
        """(prologue, epilogue) of a pass with the Hugging Face code's Python: the model forward's own Python and the
        final norm and LM head's, once per micro-batch forward; (None, None) without it."""
        if host is None:
            return None, None
        rates = host.rates
        return (lambda eng: host.python("forward", forwards * rates.forward_host_s),
                lambda eng: host.python("final norm + LM head", forwards * rates.seconds(head_python())))

    def _prefill_times(self, ctx: Context, cand: dict) -> _PrefillTimes:
        """What every simulated layer of a prefill pass takes: its chunks grouped into g
        (``max_simulated_micro_batches``), each group standing for n_p / chunk / g of them."""
        s, n_p = ctx.workload.prompt_tokens, cand["n_p"]
        chunk = self._chunk_prompts(ctx, n_p)
        g = min(math.ceil(n_p / chunk), self.params.max_simulated_micro_batches)
        per = n_p / chunk / g  # full chunks per simulated group
        gpu = {k: per * sum(self._layer_gpu_s(ctx, k, chunk * s, s, s)) for k in ctx.model.layer_kinds()}
        host = ({k: per * sum(self._layer_host_s(ctx, k, chunk * s)) for k in ctx.model.layer_kinds()}
                if self.params.model_code == "hf" else None)
        return _PrefillTimes(g, per * chunk * s * ctx.kv_bytes_per_token_layer(), gpu,
                             self._gpu(ctx)(ctx.head(n_p * s, self._prefill_logit_rows(ctx, n_p))), host)

    def _prefill_lower_bound(self, ctx: Context, cand: dict) -> float:
        """A lower bound on ``_prefill(ctx, cand).time_s``, without simulating: a layer's g chunks run on the
        GPU one after another, after the previous layer's last chunk (the layer's end; nothing else runs on
        the GPU), so each layer, simulated or extrapolated, adds at least g x its chunk time, and the LM head
        follows the last layer on the GPU."""
        t = self._prefill_times(ctx, cand)
        return t.head_s + sum(count * t.g * t.gpu[kind] for kind, count in ctx.model.layer_kinds().items())

    def _prefill(self, ctx: Context, cand: dict) -> StepSim:
        r_w = cand["r_w"]
        times = self._prefill_times(ctx, cand)
        g, kv_bytes, gpu, head_s = times.g, times.kv_bytes, times.gpu, times.head_s
        kv_s = ctx.d2h_s(kv_bytes)
        page_bytes = {k: (1 - r_w) * layer_weight_bytes(ctx, k) / g for k in gpu}
        page_s = {k: ctx.copy_s(v, "pinned") for k, v in page_bytes.items()}
        state: dict = {"pages": None, "prev_end": None}
        engine = Engine(memory_capacity_bytes={"gpu": ctx.platform.usable_gpu_memory_bytes_per_gpu})
        host = PythonThread(engine, context_rates(ctx)) if times.host is not None else None
        serial = host is not None and self._loop_reads(ctx)

        def layer(eng: Engine, i: int, kind: LayerKind) -> int:
            if state["pages"] is None:
                state["pages"] = [eng.add(f"L{i} weight page {j}", "h2d", page_s[kind], category="transfer",
                                          nbytes=page_bytes[kind]) for j in range(g)][-1]
            ready = state["pages"]
            last = None
            cat = "experts" if kind.moe else "dense_ffn"
            for j in range(g):
                nxt = eng.add(f"L{i + 1} weight page {j}", "h2d", page_s[kind], [state["prev_end"]],
                              category="transfer", nbytes=page_bytes[kind])
                if host is None:
                    last = eng.add(f"L{i} layer chunk {j}", "gpu", gpu[kind], [ready, last], category=cat)
                elif serial and kind.moe:  # the experts loop reads the GPU every iteration
                    last = host.serial(f"L{i} layer chunk {j}", times.host[kind], gpu[kind], [ready, last],
                                       category=cat)
                else:
                    last = host.module(f"L{i} layer chunk {j}", times.host[kind], "gpu", gpu[kind], [ready, last],
                                       category=cat)
                eng.add(f"L{i} KV D2H chunk {j}", "d2h", kv_s, [last], category="transfer", nbytes=kv_bytes)
            state.update(pages=nxt, prev_end=last)
            return last

        chunks = cand["n_p"] / self._chunk_prompts(ctx, cand["n_p"])
        return simulate_pass(ctx, engine, layer, *self._host_ends(host, chunks),
                             gpu_holds=self._gpu_bytes(ctx, r_w, cand["work"]), head_s=head_s)

    # ---- search ------------------------------------------------------------------------------------
    def _hrm_rank(self, ctx: Context, cands: list[dict]) -> Callable[[int], tuple[float, int]]:
        """The HRM ranking (their search's order) as a key of a candidate's index: its HRM estimate for the
        workload, then its place in ``cands`` (the order of a stable sort by the estimate)."""
        w = ctx.workload

        def rank(i: int) -> tuple[float, int]:
            c = cands[i]
            return (math.ceil(w.num_requests / c["n"])
                    * self._hrm_time(ctx, c["n"], c["mu"], c["n_ub"], c["r_w"], c["n_p"]), i)

        return rank

    def _search(self, ctx: Context, cands: list[dict]) -> tuple[dict, dict, StepSim, float, list, float | None]:
        """The candidate of least simulated time for the workload (prefill plus Simpson-integrated decode of
        each batch: the full batches, then a last, partial one charged for what it holds; ties: the HRM
        ranking); the batch reported (the candidate's, or the partial one when it is the only batch), its
        prefill pass, decode time and simulated steps, and the time of a partial last batch (None: none).

        With ``candidates_simulated`` only the best so many of the HRM ranking compete. The HRM ranking
        decides nothing else, so without that cap it is worked out only for candidates that tie.

        Exact over every candidate, simulating few (:func:`best_by_bounds`): a candidate is simulated only
        while its lower bounds can still beat the best simulated so far, tried cheapest first: decode steps
        bounded alike at every context, then at each Simpson context (:meth:`_decode_lower_bound`), then with
        the prefill pass and the middle step simulated. Prefill passes depend on (n_p, r_w, working set) only
        and are shared by the candidates that agree on them."""
        rank = self._hrm_rank(ctx, cands)
        if self.params.candidates_simulated:
            cands = [cands[i] for i in sorted(range(len(cands)), key=rank)][: self.params.candidates_simulated]
            rank = None  # list order is the HRM ranking
        w = ctx.workload
        P, G = w.prompt_tokens, w.gen_tokens
        mid = decode_mid(P, G)
        steps: dict = {}  # (candidate, context) -> decode step
        prefills: dict = {}  # (n_p, r_w, working set) -> prefill pass

        def decode(cand: dict, c: int) -> StepSim:
            key = (id(cand), c)
            if key not in steps:
                steps[key] = self._decode(ctx, cand, c)
            return steps[key]

        def prefill_of(cand: dict) -> StepSim:
            key = (cand["n_p"], cand["r_w"], cand["work"])
            if key not in prefills:
                prefills[key] = self._prefill(ctx, cand)
            return prefills[key]

        parts_of: dict = {}  # candidate -> [(batch, how many such batches)]: full batches, then a partial one

        def parts(cand: dict) -> list[tuple[dict, int]]:
            if id(cand) not in parts_of:  # full batches, then a last, partial one (charged for what it holds)
                full, rest = divmod(w.num_requests, cand["n"])
                parts_of[id(cand)] = (([(cand, full)] if full else [])
                                      + ([(self._partial(ctx, cand, rest), 1)] if rest else []))
            return parts_of[id(cand)]

        def passes(c: dict) -> int:
            return math.ceil(c["n"] / c["n_p"])

        def bound_any_context(cand: dict) -> float:
            """The bound with every decode step bounded alike (no context-dependent term: cheapest)."""
            total = 0.0
            for c, k in parts(cand):
                step = self._decode_lower_bound(ctx, c)
                total += k * (passes(c) * self._prefill_lower_bound(ctx, c) + simpson_bound(lambda _: step, P, G))
            return total

        def bound(cand: dict) -> float:
            return sum(k * (passes(c) * self._prefill_lower_bound(ctx, c)
                            + simpson_bound(lambda x, c=c: self._decode_lower_bound(ctx, c, x), P, G))
                       for c, k in parts(cand))

        def bound_simulated(cand: dict) -> float:
            """The bound with the prefill pass and the middle decode step simulated."""
            return sum(k * (passes(c) * prefill_of(c).time_s + simpson_bound(
                lambda x, c=c: decode(c, x).time_s if x == mid else self._decode_lower_bound(ctx, c, x), P, G))
                for c, k in parts(cand))

        def exact(cand: dict):
            total, out = 0.0, None
            for c, k in parts(cand):
                decode_s, points = simpson_decode_time(lambda x, c=c: decode(c, x), P, G)
                total += k * (passes(c) * prefill_of(c).time_s + decode_s)
                out = out or (decode_s, points)
            return total, out[0], out[1]

        cand, (_, decode_s, points) = best_by_bounds(cands, (bound_any_context, bound, bound_simulated), exact, rank)
        last = None
        pl = parts(cand)
        if pl[-1][0] is not cand:  # a partial last batch: its own prefill and decode
            c = pl[-1][0]
            last = passes(c) * prefill_of(c).time_s + simpson_decode_time(lambda x: decode(c, x), P, G)[0]
        return cand, pl[0][0], prefill_of(pl[0][0]), decode_s, points, last

    # ---- plan ----------------------------------------------------------------------------------------
    def _batch_cap(self, ctx: Context) -> tuple[int, int, float]:
        """(the most sequences a batch may hold, the most host memory allows, host KV bytes per sequence);
        InfeasibleError when host memory cannot hold the weights and one sequence's KV, or the batch asked."""
        w, host, weights = ctx.workload, ctx.platform.usable_host_memory_bytes, ctx.weight_bytes
        if weights > host:
            raise InfeasibleError(
                f"moe-lightning: {ctx.model.name} ({ctx.wdtype}) needs {fmt_bytes(weights)} of pinned host memory for "
                f"its weights, {fmt_bytes(host)} is usable: short by {fmt_bytes(weights - host)}")
        per_seq = self._kv_per_seq(ctx)
        host_max = int((host - weights) // per_seq)
        if host_max < 1:
            raise InfeasibleError(
                f"moe-lightning: host memory cannot hold one sequence's KV ({fmt_bytes(per_seq)}) next to the weights "
                f"({fmt_bytes(max(host - weights, 0.0))} left): short by {fmt_bytes(per_seq - (host - weights))}")
        wanted = w.batch_size
        if wanted and wanted > host_max:
            raise InfeasibleError(
                f"moe-lightning: batch {wanted} needs {fmt_bytes(wanted * per_seq)} of host KV, "
                f"{fmt_bytes(host - weights)} is left next to the weights: short by "
                f"{fmt_bytes(wanted * per_seq - (host - weights))}")
        n_cap = min(host_max, w.num_requests) if not wanted else wanted
        if self.params.one_prefill_pass and not wanted:
            n_cap = self._one_pass_cap(ctx, n_cap)
        return n_cap, host_max, per_seq

    def plan(self, ctx: Context) -> Plan:
        w, p = ctx.workload, ctx.platform
        prm = self.params
        self.refuse_multi_gpu(ctx, "its tensor parallelism is not modelled")
        n_cap, host_max, per_seq = self._batch_cap(ctx)
        how = "explicit" if prm.micro_batch_size and prm.num_micro_batches else prm.policy
        if prm.one_prefill_pass and how == "as-deployed":
            how = "best"  # MoE-Gen's re-implementation (MoE-Lightning*) sizes its batch by GPU memory, no optimizer
        deployed = None
        if how == "best":
            cands = self._candidates(ctx, n_cap, w.batch_size)
            if not prm.one_prefill_pass and "micro_batch_grid" not in prm.model_fields_set:
                # MoE-Lightning's own pick competes too (unless a grid was given): best is never slower than it
                extra, _, _ = self._deployed_candidates(ctx, n_cap, host_max)
                seen = {(c["mu"], c["n_ub"], c["n"], c["r_w"]) for c in cands}
                cands += [c for c in extra if (c["mu"], c["n_ub"], c["n"], c["r_w"]) not in seen]
        else:
            cands, why, deployed = self._deployed_candidates(ctx, n_cap, host_max)
            if not cands:
                raise InfeasibleError(why)
        if not cands:
            WL = max_layer_weight_bytes(ctx)
            need = ctx.resident_weight_bytes + 2 * WL + self._prefill_work(ctx, 1)
            raise InfeasibleError(
                f"moe-lightning: two layers' weight pages ({fmt_bytes(2 * WL)}, all experts), the resident weights and "
                f"the working set need {fmt_bytes(need)} on {p.gpu.name}, {fmt_bytes(p.usable_gpu_memory_bytes_per_gpu)} "
                f"usable: short by {fmt_bytes(need - p.usable_gpu_memory_bytes_per_gpu)}")
        cand, shown, prefill, decode_s, points, last = self._search(ctx, cands)
        passes = math.ceil(shown["n"] / shown["n_p"])
        n = shown["n"]
        num_batches = math.ceil(w.num_requests / cand["n"])
        source = {"as-deployed": "MoE-Lightning's optimizer (its artifact's constants and memory caps)",
                  "best": "moesim's search (policy=best)", "explicit": "given"}[how]
        notes = [f"CGOPipe policy ({source}): N = {cand['n']} = {cand['n_ub']} micro-batches x {cand['mu']}, "
                 f"r_w = {cand['r_w']:.3f}, r_c = 0 (attention on the CPU); host memory allows {host_max} sequences",
                 f"prefill in {passes} pass(es) of {shown['n_p']} prompts (prefill_pass_tokens, GPU memory cap)"]
        if last is not None:
            r = w.num_requests - (num_batches - 1) * cand["n"]
            notes.append(f"the last of {num_batches} batches holds {r} sequences, charged as such")
        elif shown is not cand:
            notes.append(f"{w.num_requests} requests fill {shown['n_ub']} micro-batches of {shown['mu']} of the "
                         f"policy's {cand['n_ub']} x {cand['mu']}")
        config = {"policy": how, "batch_size": n, "micro_batch_size": shown["mu"], "num_micro_batches": shown["n_ub"],
                  "policy_batch_size": cand["n"], "policy_micro_batch_size": cand["mu"],
                  "policy_num_micro_batches": cand["n_ub"],
                  "gpu_weight_fraction": round(cand["r_w"], 4), "gpu_kv_fraction": 0.0,
                  "attention_on_gpu": False, "ffn_on_gpu": True, "prefill_prompts_per_pass": shown["n_p"],
                  "max_batch_host": host_max, "candidates_priced": len(cands),
                  "candidates_simulated": min(len(cands), self.params.candidates_simulated or len(cands))}
        if deployed is not None:
            config["optimizer_decode_tok_s_estimate"] = round(deployed.throughput_tok_s, 3)
            config["optimizer_gpu_weight_fraction"] = round(deployed.gpu_weight_fraction, 4)
        placement = {"weights": f"gpu {cand['r_w']:.0%}, host (pinned) rest, streamed in pages",
                     "kv_cache": "host (pinned), CPU attention"}
        return self.make_plan((n, num_batches), (prefill, passes, shown["n_p"] * w.prompt_tokens), (decode_s, points),
                              config=config, host_mem_bytes=ctx.weight_bytes + n * per_seq, placement=placement,
                              notes=notes, host_decode=HostShare(kv_fraction=1.0),  # decode attention on the CPU
                              last_batch_time_s=last)

    def _deployed_candidates(self, ctx: Context, n_cap: int, host_max: int
                             ) -> tuple[list[dict], str, opt.HRMPolicy | None]:
        """The one candidate of policy=as-deployed (or of an explicit mu and n_ub): MoE-Lightning's optimizer's
        (mu, n_ub, w_g), N = mu n_ub (a fixed batch: n_ub = ceil(N / mu) micro-batches sharing N evenly),
        simulated with r_w = its w_g where moesim's GPU memory holds that much beside the working set (else
        the most it holds); ([], why) when moesim's GPU memory cannot hold the policy's working set."""
        w, prm = ctx.workload, self.params
        if prm.micro_batch_size and prm.num_micro_batches:
            pol = None
            mu, n_ub, w_g = prm.micro_batch_size, prm.num_micro_batches, prm.gpu_weight_fraction
            n = w.batch_size or mu * n_ub
            if n > host_max:
                return [], (f"moe-lightning: the policy {n_ub} x {mu} = {n} sequences needs "
                            f"{fmt_bytes(n * self._kv_per_seq(ctx))} of host KV; host memory holds {host_max} "
                            f"sequences next to the weights"), None
        else:
            pol = self.deployed_policy(ctx, max(1, min(n_cap, w.num_requests)))
            if pol is None:
                return [], (f"moe-lightning: MoE-Lightning's optimizer finds no feasible policy for "
                            f"{ctx.model.name} on {ctx.platform.name}: even one micro-batch of one sequence exceeds "
                            f"its caps (GPU <= {self.constants.value('optimizer_gpu_memory_fraction')}, CPU <= "
                            f"{self.constants.value('optimizer_cpu_memory_fraction')} of memory); try policy=best"), None
            mu, n_ub, w_g = pol.micro_batch, pol.num_micro_batches, prm.gpu_weight_fraction
            w_g = pol.gpu_weight_fraction if w_g is None else w_g
            n = w.batch_size or mu * n_ub
            n = min(n, host_max)
        if w.batch_size:
            mu_eff, n_ub = balanced_batches(n, mu)
        else:
            mu_eff = mu
        c = self._cand(ctx, mu_eff, n_ub, n, None)
        if c is None:
            need = max(self._decode_work(ctx, n, mu_eff), self._prefill_work(ctx, self._prefill_prompts(ctx, n)))
            return [], (f"moe-lightning: the policy {n_ub} x {mu_eff} needs a GPU working set of {fmt_bytes(need)} "
                        f"beside two layers' weight pages in moesim's memory model, more than "
                        f"{ctx.platform.gpu.name} holds; set a smaller micro_batch_size / num_micro_batches "
                        f"or policy=best"), None
        if w_g is not None:
            c["r_w"] = min(c["r_w"], w_g)
        return [c], "", (pol if not (prm.micro_batch_size and prm.num_micro_batches) else None)
