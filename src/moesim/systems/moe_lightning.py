"""`moe-lightning`: CGOPipe with an HRM-style policy search (MoE-Lightning, Cao et al., arXiv 2411.11217).

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
from .base import Plan, ServingSystem, StepSim, simpson_decode_time, simulate_pass
from .shared.attention import eager_attention_cost, eager_attention_peak_bytes
from .shared.memory import (activation_bytes, layer_weight_bytes, max_layer_weight_bytes, prefill_logits_bytes,
                            streamed_weight_bytes)
from .shared.search import best_by_bounds, decode_mid, simpson_bound


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


class _PrefillTimes(NamedTuple):
    """Durations of one simulated prefill layer's tasks (per group of chunks) and of the LM head."""

    g: int  # groups of chunks simulated per layer
    kv_bytes: float  # new KV of a group, copied to the host
    gpu: dict  # layer kind -> a group's layer compute
    head_s: float


class MoELightningParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    micro_batch_grid: tuple[int, ...] = Field(default=(16, 64, 256),
                                              description="micro-batch sizes mu enumerated")
    gpu_weight_fraction: float | None = Field(default=None, ge=0, le=1,
                                              description="r_w; None = the largest that fits")
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
        key = ("moe-lightning layer", self.params.prefill_attention, kind, type(tokens), tokens, q_len, type(kv_len),
               kv_len)
        return ctx.memo(key, lambda: self._price_layer(ctx, kind, tokens, q_len, kv_len))

    def _price_layer(self, ctx: Context, kind: LayerKind, tokens: float, q_len: int,
                     kv_len: float) -> tuple[float, float]:
        m = ctx.model
        qkv, out = ctx.attention_proj_split(tokens)
        pre = ctx.gpu_s(qkv)
        if q_len > 1 and self.params.prefill_attention == "eager":
            pre += ctx.gpu_s(eager_attention_cost(ctx, tokens / q_len, q_len, kv_len, kind.windowed, "fp32"))
        elif q_len > 1:
            pre += ctx.gpu_s(ctx.attention_core(tokens / q_len, q_len, kv_len, kind.windowed))
        post = ctx.gpu_s(out)
        if kind.moe:
            post += ctx.gpu_s(ctx.router(tokens)) + ctx.gpu_s(ctx.experts(ctx.active_experts(tokens),
                                                                           tokens * m.moe.top_k))
            shared = ctx.shared_experts(tokens)
            post += ctx.gpu_s(shared) if shared else 0.0
        else:
            post += ctx.gpu_s(ctx.dense_ffn(tokens))
        return pre, post

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

    def _candidates(self, ctx: Context, n_cap: int, fixed_n: int | None) -> list[dict]:
        """(mu, n_ub) pairs: mu on the grid, n_ub powers of two and the most that fit; r_w and n_p for each."""
        if fixed_n is not None:
            keys = {(math.ceil(fixed_n / u), u) for u in (2 ** e for e in range(20)) if u <= fixed_n}
        else:
            keys = set()
            for mu0 in self.params.micro_batch_grid:
                mu = min(mu0, n_cap)
                keys |= {(mu, u) for u in (2 ** e for e in range(20)) if mu * u <= n_cap}
                keys.add((mu, max(1, n_cap // mu)))
        out = []
        for mu, n_ub in sorted(keys):
            n = fixed_n or mu * n_ub
            n_p = self._prefill_prompts(ctx, n)
            work = max(self._decode_work(ctx, n, mu), self._prefill_work(ctx, n_p))
            r_w = self._gpu_fraction(ctx, work)
            if r_w is not None:
                out.append({"mu": mu, "n_ub": n_ub, "n": n, "n_p": n_p, "r_w": r_w, "work": work})
        return out

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
            return _DecodeTimes(g, per, mu * per * d1, mu * per * d2, ctx.d2h_s(mu * per * d1),
                                ctx.h2d_s(mu * per * d2), gpu, {}, page_bytes,
                                {k: ctx.copy_s(v, "pinned") for k, v in page_bytes.items()}, 0.0)

        return ctx.memo(("moe-lightning decode step", self.params.prefill_attention, g, mu, n_ub, r_w), compute)

    def _decode_times(self, ctx: Context, cand: dict, kv_len: int) -> _DecodeTimes:
        """What every simulated layer of a decode step at context ``kv_len`` takes, and the LM head: the n_ub
        micro-batches grouped into g (``max_simulated_micro_batches``), each group standing for n_ub / g of them."""
        t = self._decode_steady(ctx, cand)
        mu, n = cand["mu"], cand["n"]
        return t._replace(cpu={k.windowed: ctx.cpu_s(ctx.cpu_attention(mu * t.per, kv_len, k.windowed))
                               for k in ctx.model.layer_kinds()}, head_s=ctx.gpu_s(ctx.head(n, n)))

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
                pre[j] = eng.add(f"L{i} pre-attention mb{j}", "gpu", gpu[kind][0], [prev_posts[j], ready],
                                 category="attention")
                x = eng.add(f"L{i} QKV D2H mb{j}", "d2h", t.d1_s, [pre[j]], category="transfer", nbytes=t.d1_bytes)
                x = eng.add(f"L{i} CPU attention mb{j}", "cpu", t.cpu[kind.windowed], [x], category="cpu")
                next_page = eng.add(f"L{i + 1} weight page {j}", "h2d", page_s[kind], [state["prev_end"]],
                                    category="transfer", nbytes=page_bytes[kind])
                back[j] = eng.add(f"L{i} attention out H2D mb{j}", "h2d", t.d2_s, [x], category="transfer",
                                  nbytes=t.d2_bytes)

            for j in range(min(2, g)):
                submit_pre(j)
            for j in range(g):
                posts.append(eng.add(f"L{i} post-attention + FFN mb{j}", "gpu", gpu[kind][1], [back[j], ready],
                                     category="experts" if kind.moe else "dense_ffn"))
                if j + 2 < g:
                    submit_pre(j + 2)
            state.update(posts=posts, pages=next_page, prev_end=posts[-1])
            return posts[-1]

        engine = Engine(memory_capacity_bytes={"gpu": ctx.platform.usable_gpu_memory_bytes_per_gpu})
        return simulate_pass(ctx, engine, layer, gpu_holds=self._gpu_bytes(ctx, cand["r_w"], cand["work"]),
                             head_s=t.head_s)

    def _prefill_times(self, ctx: Context, cand: dict) -> _PrefillTimes:
        """What every simulated layer of a prefill pass takes: its chunks grouped into g
        (``max_simulated_micro_batches``), each group standing for n_p / chunk / g of them."""
        s, n_p = ctx.workload.prompt_tokens, cand["n_p"]
        chunk = self._chunk_prompts(ctx, n_p)
        g = min(math.ceil(n_p / chunk), self.params.max_simulated_micro_batches)
        per = n_p / chunk / g  # full chunks per simulated group
        gpu = {k: per * sum(self._layer_gpu_s(ctx, k, chunk * s, s, s)) for k in ctx.model.layer_kinds()}
        return _PrefillTimes(g, per * chunk * s * ctx.kv_bytes_per_token_layer(), gpu,
                             ctx.gpu_s(ctx.head(n_p * s, self._prefill_logit_rows(ctx, n_p))))

    def _prefill_lower_bound(self, ctx: Context, cand: dict) -> float:
        """A lower bound on ``_prefill(ctx, cand).time_s``, without simulating: a layer's g chunks run on the
        GPU one after another, after the previous layer's last chunk (the layer's end; nothing else runs on
        the GPU), so each layer, simulated or extrapolated, adds at least g x its chunk time, and the LM head
        follows the last layer on the GPU."""
        t = self._prefill_times(ctx, cand)
        return t.head_s + sum(count * t.g * t.gpu[kind] for kind, count in ctx.model.layer_kinds().items())

    def _prefill(self, ctx: Context, cand: dict) -> StepSim:
        r_w = cand["r_w"]
        g, kv_bytes, gpu, head_s = self._prefill_times(ctx, cand)
        kv_s = ctx.d2h_s(kv_bytes)
        page_bytes = {k: (1 - r_w) * layer_weight_bytes(ctx, k) / g for k in gpu}
        page_s = {k: ctx.copy_s(v, "pinned") for k, v in page_bytes.items()}
        state: dict = {"pages": None, "prev_end": None}

        def layer(eng: Engine, i: int, kind: LayerKind) -> int:
            if state["pages"] is None:
                state["pages"] = [eng.add(f"L{i} weight page {j}", "h2d", page_s[kind], category="transfer",
                                          nbytes=page_bytes[kind]) for j in range(g)][-1]
            ready = state["pages"]
            last = None
            for j in range(g):
                nxt = eng.add(f"L{i + 1} weight page {j}", "h2d", page_s[kind], [state["prev_end"]],
                              category="transfer", nbytes=page_bytes[kind])
                last = eng.add(f"L{i} layer chunk {j}", "gpu", gpu[kind], [ready, last],
                               category="experts" if kind.moe else "dense_ffn")
                eng.add(f"L{i} KV D2H chunk {j}", "d2h", kv_s, [last], category="transfer", nbytes=kv_bytes)
            state.update(pages=nxt, prev_end=last)
            return last

        engine = Engine(memory_capacity_bytes={"gpu": ctx.platform.usable_gpu_memory_bytes_per_gpu})
        return simulate_pass(ctx, engine, layer, gpu_holds=self._gpu_bytes(ctx, r_w, cand["work"]), head_s=head_s)

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

    def _search(self, ctx: Context, cands: list[dict]) -> tuple[dict, StepSim, float, list]:
        """The candidate of least simulated time for the workload (prefill plus Simpson-integrated decode per
        batch, times the batches; ties: the HRM ranking), its prefill pass, decode time and simulated steps.

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

        def scale(cand: dict) -> tuple[int, int]:
            """(batches of the workload, prefill passes per batch)"""
            return math.ceil(w.num_requests / cand["n"]), math.ceil(cand["n"] / cand["n_p"])

        def bound_any_context(cand: dict) -> float:
            """The bound with every decode step bounded alike (no context-dependent term: cheapest)."""
            b, passes = scale(cand)
            step = self._decode_lower_bound(ctx, cand)
            return b * (passes * self._prefill_lower_bound(ctx, cand) + simpson_bound(lambda c: step, P, G))

        def bound(cand: dict) -> float:
            b, passes = scale(cand)
            return b * (passes * self._prefill_lower_bound(ctx, cand)
                        + simpson_bound(lambda c: self._decode_lower_bound(ctx, cand, c), P, G))

        def bound_simulated(cand: dict) -> float:
            """The bound with the prefill pass and the middle decode step simulated."""
            b, passes = scale(cand)
            return b * (passes * prefill_of(cand).time_s + simpson_bound(
                lambda c: decode(cand, c).time_s if c == mid else self._decode_lower_bound(ctx, cand, c), P, G))

        def exact(cand: dict):
            b, passes = scale(cand)
            decode_s, points = simpson_decode_time(lambda c: decode(cand, c), P, G)
            return b * (passes * prefill_of(cand).time_s + decode_s), decode_s, points

        cand, (_, decode_s, points) = best_by_bounds(cands, (bound_any_context, bound, bound_simulated), exact, rank)
        return cand, prefill_of(cand), decode_s, points

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
        self.refuse_multi_gpu(ctx, "its tensor parallelism is not modelled")
        n_cap, host_max, per_seq = self._batch_cap(ctx)
        cands = self._candidates(ctx, n_cap, w.batch_size)
        if not cands:
            WL = max_layer_weight_bytes(ctx)
            need = ctx.resident_weight_bytes + 2 * WL + self._prefill_work(ctx, 1)
            raise InfeasibleError(
                f"moe-lightning: two layers' weight pages ({fmt_bytes(2 * WL)}, all experts), the resident weights and "
                f"the working set need {fmt_bytes(need)} on {p.gpu.name}, {fmt_bytes(p.usable_gpu_memory_bytes_per_gpu)} "
                f"usable: short by {fmt_bytes(need - p.usable_gpu_memory_bytes_per_gpu)}")
        cand, prefill, decode_s, points = self._search(ctx, cands)
        passes = math.ceil(cand["n"] / cand["n_p"])
        n = cand["n"]
        num_batches = math.ceil(w.num_requests / n)
        notes = [f"CGOPipe policy: N = {n} = {cand['n_ub']} micro-batches x {cand['mu']}, r_w = {cand['r_w']:.3f}, "
                 f"r_c = 0 (attention on the CPU); host memory allows {host_max} sequences",
                 f"prefill in {passes} pass(es) of {cand['n_p']} prompts (prefill_pass_tokens, GPU memory cap)"]
        if n * num_batches > w.num_requests:
            notes.append(f"the last of {num_batches} batches is padded ({n * num_batches - w.num_requests} empty slots)")
        config = {"batch_size": n, "micro_batch_size": cand["mu"], "num_micro_batches": cand["n_ub"],
                  "gpu_weight_fraction": round(cand["r_w"], 4), "gpu_kv_fraction": 0.0,
                  "attention_on_gpu": False, "ffn_on_gpu": True, "prefill_prompts_per_pass": cand["n_p"],
                  "max_batch_host": host_max, "candidates_priced": len(cands),
                  "candidates_simulated": min(len(cands), self.params.candidates_simulated or len(cands))}
        placement = {"weights": f"gpu {cand['r_w']:.0%}, host (pinned) rest, streamed in pages",
                     "kv_cache": "host (pinned), CPU attention"}
        return self.make_plan((n, num_batches), (prefill, passes, cand["n_p"] * w.prompt_tokens), (decode_s, points),
                              config=config, host_mem_bytes=ctx.weight_bytes + n * per_seq, placement=placement,
                              notes=notes, host_decode=HostShare(kv_fraction=1.0))  # decode attention on the CPU
