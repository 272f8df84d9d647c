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

        T(step) = T_lin(n) + h (rows - 1) + alpha * sum(decode contexts) + beta * sum(prefill q-k pairs)

    T_lin(n): a step of n batched tokens with one logit row and no attention, simulated on a grid of
    n (powers of two up to the token budget) and interpolated linearly in n, once as the engine runs a decode-only
    step (its CUDA graph of the padded batch, up to the running-request cap) and once as it runs a step carrying
    prompt tokens (its prefill execution); h: lm-head time per
    extra row; alpha: decode attention time per (sequence x context token), from two decode steps at
    a short and a long context; beta: prefill attention time per causal query-key pair, from a
    one-prompt prefill step. Offload copies and launch overheads are inside T_lin.
    """

    def __init__(self, system: ContinuousBatchingEngine, ctx: Context, lay: _Layout, max_tokens: int, max_seqs: int,
                 max_ctx: int):
        p = system._pass
        grid = sorted({1, *[2**e for e in range(0, 30) if 2**e < max_tokens], max_tokens})
        self.grid = np.array(grid, dtype=float)
        self.t_lin = np.array([p(ctx, lay, n, 1, [], phase="prefill").time_s for n in grid])
        dgrid = sorted({g for g in grid if g <= max_seqs} | {max_seqs})
        self.decode_grid = np.array(dgrid, dtype=float)
        self.t_lin_decode = np.array([p(ctx, lay, n, 1, [], phase="decode").time_s for n in dgrid])
        n_ref = max(2, min(max_tokens, 256))
        self.head_row_s = max(0.0, (p(ctx, lay, n_ref, n_ref, [], phase="prefill").time_s
                                    - p(ctx, lay, n_ref, 1, [], phase="prefill").time_s) / (n_ref - 1))
        b = max(1, min(max_seqs, 64))
        c_lo, c_hi = 16, max(32, max_ctx)
        self.alpha = max(0.0, (p(ctx, lay, b, b, [(b, 1, c_hi)]).time_s - p(ctx, lay, b, b, [(b, 1, c_lo)]).time_s)
                         / (b * (c_hi - c_lo)))
        q = max(2, min(max_tokens, 2048))
        self.beta = max(0.0, (p(ctx, lay, q, 1, [(1, q, q)]).time_s - p(ctx, lay, q, 1, [], phase="prefill").time_s)
                        / (q * (q + 1) / 2))

    def time_s(self, tokens: int, rows: int, decode_ctx_sum: float, prefill_pairs: float) -> float:
        """A step's time; a step without prompt tokens (``prefill_pairs`` 0) within the running-request cap is a
        decode-only step (its graph), any other a step the engine runs in its prefill execution."""
        if prefill_pairs == 0 and tokens <= self.decode_grid[-1]:
            lin = float(np.interp(tokens, self.decode_grid, self.t_lin_decode))
        else:
            lin = float(np.interp(tokens, self.grid, self.t_lin))
        return lin + self.head_row_s * max(rows - 1, 0) + self.alpha * decode_ctx_sum + self.beta * prefill_pairs


class EngineStepModel:
    """An engine's iterations priced by a :class:`StepTable`; capacity from its KV pool and scheduler limits.

    A one-token chunk (the budget ran out mid-prompt) is priced as a decode: one query over its context.
    The table is built on the first step priced (about 20 simulated passes).
    """

    def __init__(self, system: ContinuousBatchingEngine, ctx: Context, lay: _Layout, max_context_tokens: int):
        k = system.knobs_for(ctx)
        self.capacity = Capacity(kv_blocks=lay.blocks, block_size=k.block_size, max_num_seqs=k.max_seqs,
                                 max_num_batched_tokens=k.token_budget)
        self._knobs = k
        self._system, self._ctx, self._lay, self._max_ctx = system, ctx, lay, max_context_tokens

    @cached_property
    def table(self) -> StepTable:
        c = self.capacity
        return StepTable(self._system, self._ctx, self._lay, c.max_num_batched_tokens, c.max_num_seqs, self._max_ctx)

    @property
    def assumptions(self) -> list[str]:
        c, lay = self.capacity, self._lay
        notes = [f"{self._knobs.label}: KV pool of {c.kv_blocks} blocks of {c.block_size} tokens, "
                 f"{self._knobs.max_seqs_name} {c.max_num_seqs}, token budget {c.max_num_batched_tokens} per step "
                 "(chunked prefill)",
                 "step time from a table of simulated steps: linear in batched tokens between powers of two, "
                 "plus lm-head time per sampled row, decode attention per context token and prefill attention "
                 f"per causal query-key pair (fitted up to a {self._max_ctx}-token context)"]
        if lay.offload:
            notes.append(f"{fmt_bytes(lay.offload)} of weights per GPU copied from pinned host memory every step, "
                         f"serialized with compute")
        return notes

    def step_time_s(self, step: Step) -> float:
        dec_ctx = float(sum(step.decode_contexts))
        pairs = 0.0
        for c in step.prefills:
            if c.tokens == 1:
                dec_ctx += c.cached + 1
            else:
                pairs += c.tokens * (c.cached + (c.tokens + 1) / 2.0)
        return self.table.time_s(step.tokens, step.sampled, dec_ctx, pairs)

