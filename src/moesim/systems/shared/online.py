"""The continuous-batching engines' step-time model for online serving (:mod:`moesim.serving`): a table of
simulated steps, for vLLM, SGLang and TensorRT-LLM alike (each priced by its own :meth:`_pass`).

The online scheduler asks for thousands of step times; simulating each step in the engine would be slow,
so a few steps are simulated and the rest interpolated (:class:`StepTable`). :class:`EngineStepModel`
adapts the table to the :class:`~moesim.serving.StepTimeModel` interface, with the engine's own capacity (its
KV pool, its cap on running requests and its token budget, under the engine's names).
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from ...modules import Context
from ...serving.model import Capacity, Step
from ...units import fmt_bytes

if TYPE_CHECKING:
    from .continuous import ContinuousBatchingEngine, _Layout


class StepTable:
    """Step time of any batch from a few simulated steps (no engine run per iteration).

        decode-only step of n sequences:  T(n, c) = T_n(c_lo) + a_n n (c - c_lo)            (c: mean context)
        any other step:                   T(step) = T_lin(n) + h (rows - 1) + alpha * sum(decode contexts)
                                                    + beta * sum(prefill q-k pairs)

    A decode-only step (the engine's CUDA graph of the padded batch, up to the running-request cap) is simulated at
    grid sizes n (powers of two and the engine's captured graph sizes) at a short and a long context, each size when
    a step first needs it: T_n(c_lo) and a_n, the attention time per (sequence x context token) at that batch;
    linear in n between grid sizes. T_lin(n): a step of n batched tokens with one logit row and no attention in the
    engine's prefill execution, simulated on powers of two up to the token budget and interpolated linearly in n;
    h: lm-head time per extra row; alpha: decode attention per (sequence x context token) at 64 sequences; beta:
    prefill attention time per causal query-key pair, from a one-prompt prefill step. Offload copies and launch
    overheads are inside T_lin and T_n. With speculative decoding (``spec`` = (k, "mtp" / "draft")) T_n is the
    engine's speculative step: the verification of k + 1 tokens a sequence after k draft steps
    (:func:`.speculative.speculative_decode_step`).
    """

    def __init__(self, system: ContinuousBatchingEngine, ctx: Context, lay: _Layout, max_tokens: int, max_seqs: int,
                 max_ctx: int, ranks: int = 1, spec: tuple[int, str] | None = None):
        p0 = system._pass if ranks == 1 else _rank_pass(system, ranks)

        def p(*args, **kw):  # GPU times: the host floor of an eager prefill is applied per step (:meth:`time_s`)
            return p0(*args, host_floor=False, **kw)

        #: host issue floor of a step with prompt tokens (:meth:`EngineRuntime.prefill_s`; 0 without one)
        self.prefill_host_s = float(system.runtime(ctx).prefill_host_s)
        self._runtime = system.runtime(ctx)  # its decode_floor_s: an uncaptured decode batch's eager host issue
        grid = sorted({1, *[2**e for e in range(0, 30) if 2**e < max_tokens], max_tokens})
        self.grid = np.array(grid, dtype=float)
        self.t_lin = np.array([p(ctx, lay, n, 1, [], phase="prefill").time_s for n in grid])
        # decode-only steps: at the engine's captured CUDA-graph sizes (a batch runs padded to the next one, so
        # the step is nearly flat between them) and powers of two, each simulated when a step first needs it
        runtime = system.runtime(ctx)
        sizes = runtime.graph_sizes
        self._padded = set(sizes) if runtime.pad_to_graph else set()  # a batch between two runs the upper one's graph
        dgrid = sorted({g for g in grid if g <= max_seqs} | {g for g in sizes if g <= max_seqs} | {max_seqs})
        self.decode_grid = np.array(dgrid, dtype=float)
        self._decode: dict[int, tuple[float, float]] = {}
        c_lo, c_hi = 16, max(32, max_ctx)
        self._ctx_lo = c_lo

        def decode_s(n: int, c: int) -> float:  # one decode step of n sequences (per rank) at context c
            if spec:  # speculative decoding: verification of k + 1 tokens a sequence and k draft steps
                from .speculative import speculative_decode_step

                return speculative_decode_step(system, ctx, lay, n * ranks, c, 1, spec[0], spec[1]).time_s
            return p(ctx, lay, n, n, [(n, 1, c)], phase="decode").time_s

        def decode_line(n: int) -> tuple[float, float]:  # (step at n sequences of context c_lo, slope per context token)
            t_lo, t_hi = decode_s(n, c_lo), decode_s(n, c_hi)
            return t_lo, max(0.0, (t_hi - t_lo) / (n * (c_hi - c_lo)))

        self._decode_line = decode_line
        n_ref = max(2, min(max_tokens, 256))
        self.head_row_s = max(0.0, (p(ctx, lay, n_ref, n_ref, [], phase="prefill").time_s
                                    - p(ctx, lay, n_ref, 1, [], phase="prefill").time_s) / (n_ref - 1))
        b = max(1, min(max_seqs, 64))
        self.alpha = max(0.0, (p(ctx, lay, b, b, [(b, 1, c_hi)]).time_s - p(ctx, lay, b, b, [(b, 1, c_lo)]).time_s)
                         / (b * (c_hi - c_lo)))
        q = max(2, min(max_tokens, 2048))
        self.beta = max(0.0, (p(ctx, lay, q, 1, [(1, q, q)]).time_s - p(ctx, lay, q, 1, [], phase="prefill").time_s)
                        / (q * (q + 1) / 2))

    def decode_step_s(self, seqs: int, decode_ctx_sum: float) -> float:
        """A decode-only step of ``seqs`` sequences whose contexts sum to ``decode_ctx_sum``: at each grid size n
        the step is simulated at two contexts (its time at c_lo and its slope per context token at that batch:
        decode attention is not one cost per token at every batch); a batch below a captured graph size runs that
        graph (padded), else it is linear between the sizes around ``seqs``."""
        g = self.decode_grid
        j = int(np.searchsorted(g, seqs))
        if j < len(g) and (g[j] == seqs or int(g[j]) in self._padded):
            ks = (j,)  # on the grid, or padded up to the captured graph of g[j]: its GEMMs, this batch's attention
        else:
            ks = (max(j - 1, 0), min(j, len(g) - 1))
        lines = []
        for k in ks:
            n = int(g[k])
            if n not in self._decode:
                self._decode[n] = self._decode_line(n)
            t_lo, slope = self._decode[n]
            lines.append((g[k], t_lo + slope * (decode_ctx_sum - seqs * self._ctx_lo) * n / seqs))
        (x0, y0), (x1, y1) = lines[0], lines[-1]
        return y0 if x1 == x0 else y0 + (y1 - y0) * (seqs - x0) / (x1 - x0)

    def time_s(self, tokens: int, rows: int, decode_ctx_sum: float, prefill_pairs: float) -> float:
        """A step's time; a step without prompt tokens (``prefill_pairs`` 0) within the running-request cap is a
        decode-only step (its graph; a batch no captured graph takes at least the host's issue of an eager decode
        forward, :meth:`EngineRuntime.decode_floor_s`), any other a step the engine runs in its prefill execution, at
        least the host's issue of an eager prefill forward (``prefill_host_s``)."""
        if prefill_pairs == 0 and tokens <= self.decode_grid[-1] and rows == tokens:
            return max(self.decode_step_s(tokens, decode_ctx_sum), self._runtime.decode_floor_s(tokens))
        lin = float(np.interp(tokens, self.grid, self.t_lin))
        gpu_s = lin + self.head_row_s * max(rows - 1, 0) + self.alpha * decode_ctx_sum + self.beta * prefill_pairs
        return max(gpu_s, self.prefill_host_s)


def _rank_pass(system: ContinuousBatchingEngine, ranks: int):
    """One attention-DP rank's step as the instance runs it: every one of the ``ranks`` ranks carries a batch like
    this one (``tokens``, ``rows`` and each attention group's sequences x ranks for the whole instance), so the
    MoE layers see ranks x the rank's tokens and each rank's attention and graph its own (``_pass`` divides the
    instance's tokens by the DP size again)."""

    def p(ctx: Context, lay: _Layout, tokens: float, rows: float, attention: list, width: int = 1,
          phase: str | None = None, host_floor: bool = True):
        return system._pass(ctx, lay, tokens * ranks, rows * ranks, [(s * ranks, q, c) for s, q, c in attention],
                            width, phase, host_floor)

    return p


class EngineStepModel:
    """An engine's iterations priced by a :class:`StepTable`; capacity from its KV pool and scheduler limits.

    A one-token chunk (the budget ran out mid-prompt) is priced as a decode: one query over its context.
    The table is built on the first step priced (about 20 simulated passes). ``ranks`` > 1: attention data
    parallelism, the model of one DP rank (its own scheduler, KV pool, running-request cap and token budget) whose
    every step the other ranks match (:mod:`moesim.serving.model`).
    """

    def __init__(self, system: ContinuousBatchingEngine, ctx: Context, lay: _Layout, max_context_tokens: int,
                 ranks: int = 1, spec: tuple[int, tuple[float, ...], str] | None = None):
        from ...modules import expected_tokens_per_step

        self.ranks = max(1, int(ranks))
        #: speculative decoding (k draft tokens a step, their acceptance rates, "mtp" / "draft"), None without
        self.spec = spec if spec and spec[0] else None
        #: tokens a decoding sequence gains per decode step on average (1 without speculative decoding): the callers
        #: schedule 1 + ceil((g - 1) / tokens_per_step) decode steps for g tokens (:func:`moesim.serving.model.decode_steps`)
        self.tokens_per_step = expected_tokens_per_step(self.spec[1]) if self.spec else 1.0
        k = system.knobs_for(ctx)
        self.capacity = Capacity(kv_blocks=lay.blocks, block_size=k.block_size, max_num_seqs=system.rank_max_seqs(ctx, lay),
                                 max_num_batched_tokens=k.token_budget, mixed=system.mixes_steps(),
                                 recv_interval=system.recv_interval(),
                                 ctx_release_iters=system.ctx_release_iters(ctx))
        self._knobs = k
        self._system, self._ctx, self._lay, self._max_ctx = system, ctx, lay, max_context_tokens

    @cached_property
    def table(self) -> StepTable:
        c = self.capacity
        return StepTable(self._system, self._ctx, self._lay, c.max_num_batched_tokens, c.max_num_seqs, self._max_ctx,
                         self.ranks, (self.spec[0], self.spec[2]) if self.spec else None)

    @property
    def assumptions(self) -> list[str]:
        c, lay = self.capacity, self._lay
        notes = [f"{self._knobs.label}: KV pool of {c.kv_blocks} blocks of {c.block_size} tokens, "
                 f"{self._knobs.max_seqs_name} {c.max_num_seqs}, token budget {c.max_num_batched_tokens} per step "
                 "(chunked prefill)",
                 "step time from a table of simulated steps: linear in batched tokens between powers of two, "
                 "plus lm-head time per sampled row, decode attention per context token and prefill attention "
                 f"per causal query-key pair (fitted up to a {self._max_ctx}-token context)"]
        if c.recv_interval > 1:
            notes.append(f"the scheduler polls for new requests every {c.recv_interval} decode steps (SGLang "
                         "--scheduler-recv-interval), at once after a prefill step or when idle")
        if c.ctx_release_iters > 1:
            notes.append(f"attention-DP balance: new prompts are released every {c.ctx_release_iters} iterations "
                         "(TensorRT-LLM's timeout_iters counter, which runs whether prompts wait or not), at once when "
                         "nothing runs or for what a release left waiting; with independent arrivals a prompt is taken "
                         "to find the other ranks without one (one rank is simulated), so at loads where every rank "
                         "gets a prompt within that many iterations the wait is overstated; batching_wait_iters is not "
                         "modelled")
        if self.ranks > 1:
            notes.append(f"attention data parallel: {self.ranks} DP ranks, each scheduling its own requests (dealt "
                         "round robin) with the capacity above; one rank is simulated and every step priced as all "
                         "ranks running a batch like it (balanced ranks; idle ones run the engines' dummy batch)")
        if lay.offload:
            notes.append(f"{fmt_bytes(lay.offload)} of weights per GPU copied from pinned host memory every step, "
                         f"serialized with compute")
        if self.spec:
            k, rates, kind = self.spec
            notes.append(f"speculative decoding ({'MTP' if kind == 'mtp' else 'draft model'}, {k} draft token(s) a "
                         f"step): a decode step verifies k + 1 tokens a sequence after k draft steps and yields "
                         f"{self.tokens_per_step:.3g} tokens on average (acceptance {', '.join(f'{a:g}' for a in rates)}), "
                         "so g tokens take 1 + ceil((g - 1) / that) decode steps; a step carrying prompt chunks prices "
                         "its decodes' k + 1 verified tokens, not their draft steps; each step holds the KV of the tokens "
                         "it yields on average")
        return notes

    def step_time_s(self, step: Step) -> float:
        dec_ctx = float(sum(step.decode_contexts))
        pairs = 0.0
        for c in step.prefills:
            if c.tokens == 1:
                dec_ctx += c.cached + 1
            else:
                pairs += c.tokens * (c.cached + (c.tokens + 1) / 2.0)
        tokens, rows = step.tokens, step.sampled
        if self.spec and pairs > 0:  # decodes riding a step with prompt chunks verify k + 1 tokens each
            extra = self.spec[0] * len(step.decode_contexts)
            tokens, rows = tokens + extra, rows + extra
        return self.table.time_s(tokens, rows, dec_ctx, pairs)

