"""The step-time interface: what the online scheduler asks of a serving system.

The scheduler (:mod:`moesim.serving.scheduler`) decides which sequences run in each iteration and how
many tokens each computes; the system only prices iterations. Contract:

* A :class:`Step` is one forward pass: ``prefills`` are prompt chunks (``tokens`` new tokens of a
  sequence that already has ``cached`` tokens in its KV cache; ``samples`` when the chunk ends the
  sequence's known tokens, so the last position's logits are computed and a token is sampled),
  ``decode_contexts`` are sequences computing exactly one token and sampling the next, each given as its
  context in tokens, the new one included (``cached + 1``). A chunk may be a single token (the token
  budget ran out mid-prompt); a one-token prompt is a decode of context 1.
* :meth:`StepTimeModel.step_time_s` returns seconds (> 0 for a non-empty step). It may assume the step
  respects :class:`Capacity`: at most ``max_num_seqs`` sequences, at most ``max_num_batched_tokens``
  tokens, every context at most the ``max_context_tokens`` the model was built for, and enough KV blocks
  held. It must be a pure function of the step (same step, same time), and should not depend on the
  order of chunks or decodes.
* :class:`Capacity` gives the scheduler the limits it must respect: the KV pool in blocks of
  ``block_size`` tokens (a sequence of c cached tokens holds ceil(c / block_size) blocks), the most
  sequences running at once and the token budget of one step, and how often the scheduler polls for new
  requests (``recv_interval``).
* A model may serve through ``ranks`` > 1 identical schedulers (attention data parallelism: each DP rank
  schedules its own requests, all ranks step together through the shared MoE layers). Its capacity and its
  steps are then one rank's: a step's time assumes every rank runs a step like it (balanced ranks, an idle
  rank running the engines' one-token dummy batch counts as such); the callers (:mod:`.simulate`,
  :mod:`.closed_loop`) hand one rank its share of the requests, dealt round robin, and scale throughput by
  ``ranks``. A model without the attribute has one rank (:func:`ranks_of`).
* A model may decode speculatively (``tokens_per_step`` > 1: the mean tokens a sequence gains in one decode step).
  The scheduler still advances a sequence one position a step; the callers hand it 1 + ceil((g - 1) /
  tokens_per_step) steps for g generated tokens (:func:`decode_steps`) and report TPOT over the real g.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Capacity:
    """Limits of one serving instance, as its scheduler sees them."""

    kv_blocks: int  # blocks in the KV pool
    block_size: int  # tokens per block
    max_num_seqs: int  # sequences running at once
    max_num_batched_tokens: int  # tokens computed in one step (prefill chunks + decodes)
    #: whether a step carries prompt chunks and decodes together (vLLM V1, TensorRT-LLM's in-flight batching); False:
    #: a step with prompts to prefill runs only them and the decodes wait (SGLang's default, prefill first, no
    #: --enable-mixed-chunk)
    mixed: bool = True
    #: decode-only steps between the scheduler's polls for new requests (SGLang ``--scheduler-recv-interval``, default
    #: 1: every step): a request that arrives while only decodes run joins the waiting queue at the next poll; a step
    #: that carried prompt chunks, or an idle engine, polls at once (SGLang's ``SchedulerRecvSkipper``)
    recv_interval: int = 1
    #: iterations between releases of new requests' prompts (TensorRT-LLM's attention-DP balance,
    #: ``attention_dp_config`` enable_balance with ``timeout_iters``; 1: every iteration): a waiting request is admitted
    #: only at a boundary at least this many iterations after the last admission, at once when no request runs, and
    #: while what the last release left waiting is admitted (TensorRT-LLM's ``_balance_adp_requests`` holds context requests until every rank has one, or its counter,
    #: reset at each release, reaches ``timeout_iters``, or a rank has nothing to generate; one rank is simulated:
    #: where the ranks' arrivals are independent (Poisson, random lengths) a prompt is taken to find the other ranks
    #: without one; where they are alike, the caller turns the gate off, :func:`moesim.serving.scheduler.run`)
    ctx_release_iters: int = 1


@dataclass(frozen=True)
class Chunk:
    """``tokens`` new prompt (or recomputed) tokens of a sequence with ``cached`` tokens already in its KV."""

    tokens: int
    cached: int
    samples: bool  # the chunk completes the sequence's known tokens: its last logits row is computed


@dataclass(frozen=True)
class Step:
    """One iteration: prefill chunks and decoding sequences (their contexts, the new token included)."""

    prefills: tuple[Chunk, ...] = ()
    decode_contexts: tuple[int, ...] = ()

    @property
    def tokens(self) -> int:
        """Tokens computed in the step (what counts against the token budget)."""
        return sum(c.tokens for c in self.prefills) + len(self.decode_contexts)

    @property
    def sequences(self) -> int:
        return len(self.prefills) + len(self.decode_contexts)

    @property
    def sampled(self) -> int:
        """Logit rows computed: one per decode and per chunk that completes its sequence's known tokens."""
        return len(self.decode_contexts) + sum(1 for c in self.prefills if c.samples)


@runtime_checkable
class StepTimeModel(Protocol):
    """Prices one iteration of a continuous-batching system (see the module docstring for the contract)."""

    @property
    def capacity(self) -> Capacity: ...

    @property
    def assumptions(self) -> list[str]:
        """How steps are priced, in words (reported with the result)."""
        ...

    def step_time_s(self, step: Step) -> float: ...


def tokens_per_step_of(model) -> float:
    """Tokens a decoding sequence gains per decode step on average (its ``tokens_per_step`` attribute: speculative
    decoding; 1 where it has none)."""
    return max(1.0, float(getattr(model, "tokens_per_step", 1.0)))


def decode_steps(model, gen_tokens):
    """The decode iterations the scheduler runs for requests of ``gen_tokens`` generated tokens under ``model``:
    ``1 + ceil((g - 1) / tau)`` with tau = :func:`tokens_per_step_of` (the first token comes from the prefill,
    each later step yields tau on average), ``g`` itself without speculative decoding. The callers schedule these
    and report TPOT over the real ``g`` tokens."""
    import numpy as np

    tau = tokens_per_step_of(model)
    g = np.asarray(gen_tokens, dtype=np.int64)
    if tau == 1.0:
        return g
    return np.where(g > 1, 1 + np.ceil((g - 1) / tau - 1e-9).astype(np.int64), g)


def ranks_of(model) -> int:
    """Schedulers a step-time model serves through (its ``ranks`` attribute; 1 where it has none)."""
    return max(1, int(getattr(model, "ranks", 1)))
