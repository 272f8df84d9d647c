"""Iteration-level continuous batching over a paged KV cache (vLLM V1's scheduler, simplified).

Source: vLLM V1 ``vllm/v1/core/sched/scheduler.py`` (``Scheduler.schedule``) with chunked prefill
(Agrawal et al., Sarathi-Serve, OSDI 2024) and PagedAttention's block allocation (Kwon et al., SOSP 2023).
Rules, applied at every iteration (step) boundary:

1. Requests that arrived by the boundary join the waiting queue (FCFS). With ``Capacity.recv_interval`` N > 1
   (SGLang's ``--scheduler-recv-interval``; its ``SchedulerRecvSkipper`` weighs a decode step 1 and any other
   forward 1000 against the threshold N, and resets at every poll): arrivals are received only at a boundary
   after N decode-only steps since the last poll, right after a step with prompt chunks, or when the engine is
   idle (its empty loop counts up to N in microseconds).
   With ``Capacity.ctx_release_iters`` T > 1 (TensorRT-LLM's attention-DP balance, its ``timeout_iters``): waiting
   requests are admitted (rule 4) only at the boundaries where a counter of boundaries reaches T (it counts every
   boundary, prompts waiting or not, and restarts from 0 there: a periodic release), when no request runs, or while
   the oldest waiting one arrived by the last admission (what a release could not take for want of budget or slots
   had waited on every rank, and TensorRT-LLM releases at once when every rank holds a prompt; both restart the
   counter); until then the running ones step on. Not where the caller says the DP ranks run alike (``ranks_alike``: every
   rank then holds a prompt whenever the simulated one does).
2. Running requests first, in admission order: each computes its remaining known tokens (one when
   decoding; the rest of its prompt, or of a recomputation, when prefilling) up to the token budget
   left. It takes the KV blocks its new tokens need (ceil(cached tokens / block_size) held in all; with speculative
   decoding a generation step holds the KV of the tau tokens it yields on average).
3. When no block is free for a running request, the newest running request is preempted (recompute
   preemption: its blocks are freed, its cached tokens dropped, and it goes to the front of the waiting
   queue; when it runs again its prompt and generated tokens are prefilled again); if it is itself the
   newest, it is preempted.
4. Then waiting requests, FCFS, while fewer than ``max_num_seqs`` run, budget remains and the blocks of
   their first chunk are free; the first that does not fit stops admission (no skipping ahead).
5. The step takes the time the system's :class:`~moesim.serving.model.StepTimeModel` gives it. A step
   that completes a request's known tokens samples its next token (the first one sets the TTFT); a
   request that has sampled all its tokens finishes and frees its blocks.

An engine whose steps do not mix (``Capacity.mixed`` False: SGLang's prefill-first batches) runs a step of
prompt chunks alone whenever one can be admitted or is half done, and its running decodes wait for it.

A closed loop (``concurrency`` C, :func:`run`): the first C requests arrive at 0 and each later one the moment an
earlier one finishes (a benchmark client keeping C in flight); the arrival times in ``requests`` are then unused.
In a closed loop, stretches of identical decode-only steps (nothing arrives, nothing is admitted, nothing
finishes, the KV pool suffices) are priced in one go: k steps whose contexts grow by one per step cost k (T_first + T_last) / 2, exact
for a step time linear in the contexts (representative steps instead of token by token).

Between steps nothing runs: with no request running or waiting, time jumps to the next arrival.
Not modelled: prefix caching, priorities, swapping to host memory (V0's other preemption mode),
speculative decoding as such (its callers hand it decode steps, :func:`moesim.serving.model.decode_steps`), the
scheduler's own CPU time.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..errors import InfeasibleError, SimulationError
from .arrivals import Requests
from .model import Capacity, Chunk, Step, StepTimeModel


@dataclass(frozen=True)
class Trace:
    """What the scheduler recorded: per request, the times (s) its first token and its last token were
    sampled; counters over the run."""

    first_token_s: np.ndarray
    finish_s: np.ndarray
    steps: int
    scheduled: int  # sum over steps of the sequences in the step
    preemptions: int
    arrival_s: np.ndarray | None = None  # when each request arrived (a closed loop sets them as it runs)


def check_capacity(requests: Requests, cap: Capacity, system: str, tau: float = 1.0) -> None:
    """Raise InfeasibleError when one request's full context cannot fit the KV pool even alone (``tau``: KV tokens
    a generation step adds, :class:`_Batcher`)."""
    need = np.ceil((requests.prompt_tokens + requests.gen_tokens * tau) / cap.block_size)
    if len(need) and need.max() > cap.kv_blocks:
        i = int(need.argmax())
        raise InfeasibleError(
            f"{system}: a request of {requests.prompt_tokens[i]} + {requests.gen_tokens[i]} tokens needs "
            f"{int(need[i])} KV blocks, the pool has {cap.kv_blocks}: short by {int(need[i] - cap.kv_blocks)} "
            f"blocks of {cap.block_size} tokens")


class _Batcher:
    """Scheduler state between steps: which requests run or wait, their cached tokens and blocks."""

    def __init__(self, requests: Requests, cap: Capacity, tau: float = 1.0):
        n = len(requests)
        self.req, self.cap = requests, cap
        #: KV tokens one generation step adds (speculative decoding: its accepted tokens, tau > 1, the requests'
        #: ``gen_tokens`` then being decode steps, :func:`moesim.serving.model.decode_steps`); prompt positions add one
        self.tau = float(tau)
        self.computed = np.zeros(n, dtype=np.int64)  # tokens whose KV is cached
        self.generated = np.zeros(n, dtype=np.int64)
        self.held = np.zeros(n, dtype=np.int64)  # blocks held
        self.first_token = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.waiting: deque[int] = deque()
        self.running: list[int] = []
        self.free = cap.kv_blocks
        self.preemptions = 0
        self.admitted = 0  # waiting requests the last schedule() admitted

    def known(self, i: int) -> int:
        """Tokens of request ``i`` whose KV it needs: its prompt and what it has generated."""
        return int(self.req.prompt_tokens[i] + self.generated[i])

    def kv_tokens(self, i: int, positions: int) -> float:
        """KV tokens behind the first ``positions`` positions of request ``i``: one a prompt position, ``tau`` a
        generation step."""
        p = int(self.req.prompt_tokens[i])
        return positions if positions <= p or self.tau == 1.0 else p + (positions - p) * self.tau

    def _chunk(self, i: int, left: int) -> tuple[int, int]:
        """(tokens to compute, blocks to add) for request ``i`` with ``left`` tokens of budget."""
        k = min(self.known(i) - int(self.computed[i]), left)
        return k, math.ceil(self.kv_tokens(i, int(self.computed[i]) + k) / self.cap.block_size) - int(self.held[i])

    def _take(self, i: int, want: int) -> None:
        self.free -= want
        self.held[i] += want

    def _preempt(self, i: int) -> None:
        self.free += int(self.held[i])
        self.held[i] = 0
        self.computed[i] = 0
        self.waiting.appendleft(i)
        self.preemptions += 1

    def _schedule_running(self, left: int) -> list[tuple[int, int]]:
        """Rules 2 and 3: running requests in admission order, preempting the newest when blocks run out."""
        sched: list[tuple[int, int]] = []
        r = 0
        while r < len(self.running) and left > 0:
            i = self.running[r]
            k, want = self._chunk(i, left)
            while want > self.free and self.running[-1] != i:
                self._preempt(self.running.pop())
            if want > self.free:  # i itself is the newest
                self._preempt(self.running.pop(r))
                continue
            self._take(i, want)
            sched.append((i, k))
            left -= k
            r += 1
        return sched

    def _schedule_waiting(self, sched: list[tuple[int, int]], left: int) -> None:
        """Rule 4: admit waiting requests FCFS while a sequence slot, budget and their blocks are free."""
        while self.waiting and left > 0 and len(self.running) < self.cap.max_num_seqs:
            i = self.waiting[0]
            k, want = self._chunk(i, left)
            if want > self.free:
                break
            self.waiting.popleft()
            self._take(i, want)
            self.running.append(i)
            sched.append((i, k))
            left -= k
            self.admitted += 1

    def schedule(self, admit: bool = True) -> list[tuple[int, int]]:
        """The next step: (request, tokens) pairs, running requests first (prompt chunks alone when steps do not
        mix and a prompt is half done or can be admitted); ``admit`` False: no waiting request is admitted (rule 1's
        release gate)."""
        self.admitted = 0
        if not self.cap.mixed:
            prefill = self._schedule_prefill_only(admit)
            return prefill or self._schedule_running(self.cap.max_num_batched_tokens)  # else the decodes alone
        sched = self._schedule_running(self.cap.max_num_batched_tokens)
        if admit:
            self._schedule_waiting(sched, self.cap.max_num_batched_tokens - sum(k for _, k in sched))
        return sched

    def _schedule_prefill_only(self, admit: bool = True) -> list[tuple[int, int]]:
        """A step of prompt chunks only: running requests still prefilling, then waiting ones (rule 4, where
        ``admit``)."""
        sched: list[tuple[int, int]] = []
        left = self.cap.max_num_batched_tokens
        for i in self.running:
            if left <= 0:
                break
            k, want = self._chunk(i, left)
            if k == 1 and self.computed[i] + 1 == self.known(i) and self.generated[i] > 0:
                continue  # decoding, not prefilling
            if want > self.free:
                break
            self._take(i, want)
            sched.append((i, k))
            left -= k
        if admit:
            self._schedule_waiting(sched, left)
        return sched

    def decode_run(self, sched: list[tuple[int, int]], most: int, admit: bool = True) -> int:
        """How many identical decode-only steps ``sched`` (already holding its first step's blocks) starts, at most
        ``most`` (1 when it is not one): until the first running request finishes, while the free KV blocks cover
        every sequence's growth (the largest such run, by bisection: the blocks needed grow with the run)."""
        if any(k != 1 or self.computed[i] + 1 != self.known(i) or not self.generated[i] for i, k in sched) \
                or len(sched) != len(self.running):
            return 1  # a prompt (even a one-token one, whose step samples its first token) or an admission
        steps = min(int(min(self.req.gen_tokens[i] - self.generated[i] for i, _ in sched)), most)
        if steps <= 1:
            return 1
        if admit and self.waiting and len(self.running) < self.cap.max_num_seqs:
            head = self.waiting[0]  # admitted at the next step if its first chunk's blocks are free now
            if self._chunk(head, self.cap.max_num_batched_tokens)[1] <= self.free:
                return 1
        bs = self.cap.block_size
        cached = np.array([int(self.computed[i]) for i, _ in sched])
        held = np.array([int(self.held[i]) for i, _ in sched])
        prompts = np.array([int(self.req.prompt_tokens[i]) for i, _ in sched])

        def fits(k: int) -> bool:  # blocks for k steps each beyond the step's first, from the free pool
            pos = cached + k
            kv = np.where(pos <= prompts, pos, prompts + (pos - prompts) * self.tau)
            return int(np.sum(np.maximum(np.ceil(kv / bs) - held, 0))) <= self.free

        if fits(steps):
            return steps
        lo, hi = 1, steps  # fits(lo) (the first step's blocks are held), not fits(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo

    def advance(self, sched: list[tuple[int, int]], steps: int) -> None:
        """Steps 1..steps-1 of a decode run (:meth:`decode_run`): every sequence computes and samples one more
        token per step, taking the KV blocks its contexts grow into; the last step is :meth:`complete`'s."""
        bs = self.cap.block_size
        for i, _ in sched:
            self.computed[i] += steps - 1
            self.generated[i] += steps - 1
            grow = math.ceil(self.kv_tokens(i, int(self.computed[i]) + 1) / bs) - int(self.held[i])
            self._take(i, max(grow, 0))

    def step_of(self, sched: list[tuple[int, int]]) -> Step:
        """The step the system prices: one token that samples is a decode, anything else a chunk."""
        chunks: list[Chunk] = []
        decodes: list[int] = []
        for i, k in sched:
            cached = int(self.computed[i])
            samples = cached + k == self.known(i)
            if k == 1 and samples:
                decodes.append(cached + 1)
            else:
                chunks.append(Chunk(k, cached, samples))
        return Step(tuple(chunks), tuple(decodes))

    def complete(self, sched: list[tuple[int, int]], t: float) -> int:
        """Rule 5 at time ``t`` (the step's end); returns how many requests finished."""
        done = 0
        for i, k in sched:
            self.computed[i] += k
            if self.computed[i] < self.known(i):
                continue
            self.generated[i] += 1
            if self.generated[i] == 1:
                self.first_token[i] = t
            if self.generated[i] >= self.req.gen_tokens[i]:
                self.finish[i] = t
                self.running.remove(i)
                self.free += int(self.held[i])
                self.held[i] = 0
                done += 1
        return done


def run(requests: Requests, model: StepTimeModel, system: str = "the system",
        concurrency: int | None = None, ranks_alike: bool = False) -> Trace:
    """Serve ``requests`` with the rules of the module docstring, each step priced by ``model``; with
    ``concurrency`` C as a closed loop: the first C requests at their ``arrival_s`` (all 0 for a burst, or
    staggered), each later one when one finishes. The trace's ``arrival_s`` are the times the requests arrived.
    ``ranks_alike``: the model's DP ranks see the same arrivals as the simulated one (a client sending fixed-length
    waves), so the release gate of rule 1 never holds a prompt."""
    from .model import tokens_per_step_of

    cap = model.capacity
    tau = tokens_per_step_of(model)  # speculative decoding: requests' gen_tokens are decode steps of tau tokens
    check_capacity(requests, cap, system, tau)
    b = _Batcher(requests, cap, tau)
    n = len(requests)
    if concurrency is None:
        arrivals = requests.arrival_s
    else:
        arrivals = np.full(n, np.inf)
        first = min(max(1, concurrency), n)
        arrivals[:first] = np.sort(requests.arrival_s[:first])
    sent = n if concurrency is None else min(max(1, concurrency), n)
    every = max(1, int(cap.recv_interval))
    since_poll = every  # decode-only steps since the last poll (the first boundary polls)
    release = 1 if ranks_alike else max(1, int(getattr(cap, "ctx_release_iters", 1)))
    clock = 0  # TensorRT-LLM's balance counter: boundaries since it last reached T or released early
    released_t = -np.inf  # the boundary of the last admission
    t, nxt, done, steps, scheduled = 0.0, 0, 0, 0, 0
    while done < n:
        idle = not b.running and not b.waiting
        if idle or since_poll >= every:  # rule 1: the scheduler polls
            since_poll = 0
            while nxt < n and arrivals[nxt] <= t:
                b.waiting.append(nxt)
                nxt += 1
        if not b.running and not b.waiting:
            t = float(arrivals[nxt])
            continue
        # rule 1's release gate: open when nothing runs or for what the last release left waiting (it had waited on
        # every rank, which TensorRT-LLM releases at once), else when the counter reaches T at this boundary
        gate = True
        if release > 1:
            if not b.running or bool(b.waiting) and arrivals[b.waiting[0]] <= released_t:
                clock = 0
            else:
                clock += 1
                gate = clock >= release
                if gate:
                    clock = 0
        boundary_t = t
        sched = b.schedule(gate)
        if not sched:  # cannot happen: the oldest request always fits an empty pool (check_capacity)
            raise SimulationError(f"online scheduler stalled at t={t:g} s with {len(b.waiting)} waiting")
        step = b.step_of(sched)
        first = model.step_time_s(step)
        k = 1
        if concurrency is not None:  # a closed loop: a run of decode steps up to the next arrival or poll at most
            if nxt < n and arrivals[nxt] <= t:  # arrived, not received yet: up to the next poll
                most = every - since_poll
            elif nxt >= n or not np.isfinite(arrivals[nxt]):
                most = 1 << 62
            else:
                most = int((arrivals[nxt] - t) / first)
            if b.waiting and not gate:  # held by the release gate: up to the boundary its counter reaches T
                most = min(most, release - clock)
            k = b.decode_run(sched, max(most, 1), gate)
        if k > 1:
            b.advance(sched, k)
            t += k * (first + model.step_time_s(b.step_of(sched))) / 2.0
        else:
            t += first
        if step.prefills:  # a prompt step: the next boundary polls
            since_poll = every
        else:  # the polls inside a run of k decode steps (each found nothing) keep their phase
            since_poll += k
            if since_poll > every:
                since_poll = since_poll % every or every
        if b.admitted:
            released_t = boundary_t
        if release > 1:  # the boundaries inside a run of k steps count too (the counter wraps at T)
            clock = (clock + k - 1) % release
        steps += k
        scheduled += k * len(sched)
        finished = b.complete(sched, t)
        done += finished
        for _ in range(finished if concurrency is not None else 0):  # the closed loop sends the next ones now
            if sent < n:
                arrivals[sent] = t
                sent += 1
    return Trace(b.first_token, b.finish, steps, scheduled, b.preemptions, arrivals.copy())
