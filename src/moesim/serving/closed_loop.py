"""A closed-loop benchmark client at concurrency C: mean TTFT and TPOT as the serving benchmarks measure them.

Benchmarks of serving engines (vLLM's ``benchmark_serving --max-concurrency``, SGLang's ``bench_serving``,
TensorRT-LLM's ``benchmark_serving``, AIConfigurator's silicon runs) keep C requests in flight: a new request is
sent as soon as one finishes. With fixed prompt P and generation G, the run's mean TTFT and TPOT follow from the
engine's plan at batch C (``--batch C --requests C``), whose running batch B = ``plan.batch_size`` may be smaller
than C when the KV pool or the engine's limits hold fewer (:func:`benchmark_latency`):

- lockstep waves: the C requests are sent together and finish together; TPOT = pure decode of B sequences,
  ``plan.decode_time_per_batch_s / G``; TTFT = the mean over the wave of its chunked-prefill passes
  (:func:`wave_mean_ttft_s`); with W = ceil(C / B) groups served one after another a request waits on average
  (W - 1) / 2 x (prefill + decode time of one group);
- steady state: requests staggered, TPOT the mean mixed step (decodes sharing steps with the prefill chunks of
  arriving prompts), TTFT :func:`steady_ttft_s`;
- ``half`` (:data:`BENCHMARK_MODEL`): the mean of the two (a benchmark whose first wave arrives as a burst and
  later ones staggered);
- ``wave``: lockstep waves whose requests all see their first token only when the wave's last prefill pass ends
  (TPOT as in lockstep): an engine that runs every waiting prefill before it returns any first token.

Or simulated against the engine's own scheduler (:func:`simulated_run`, a :class:`Client`): W x C requests of fixed
lengths, the first C together (``simW``) or spread over a lifetime (``stagW``), or a client as its source states it
(:data:`STATED`, e.g. InferenceX's: lengths drawn uniformly from [0.8 L, L], 10 C requests), which also gives the
median TTFT over the requests (the typical request, past the first wave's burst).

:data:`BENCHMARK_MODEL` (what moesim's layout search uses) was chosen by ``validation/published/aiconfigurator_fit.py`` on
the FIT split (H100 SXM) of AIConfigurator's silicon rows only; the H200 rows are scored held-out. The validation
itself models each of that file's collection pipelines with its own client (``aiconfigurator_harness.yaml``).

The output rate of such a run follows from Little's law (:func:`closed_loop_throughput_tok_s`): C requests in
flight, each taking E2E = TTFT + (G - 1) TPOT, give C G / E2E generated tokens per second.

Moved here from ``validation/published/aiconfigurator.py`` (which imports it) so the layout search
(:mod:`moesim.analysis.layouts`) prices concurrency the same way the validation scores it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: how the closed-loop benchmark's mean TTFT and TPOT are predicted from a plan (see :func:`benchmark_latency`);
#: chosen by ``validation/published/aiconfigurator_fit.py`` on the FIT split only
BENCHMARK_MODEL = "half"
MODELS = ("lockstep", "steady", "half", "wave")
#: the closed loop simulated step by step by the engine's own scheduler (:func:`simulated_latency`): "simW" sends
#: W x C requests at C in flight, the first C together
SIMULATED = {"sim2": 2, "sim4": 4, "sim8": 8}
#: ... and "stagW" the same W x C requests with the first C spread evenly over one request's lifetime (a client whose
#: requests have drifted apart, as a long benchmark's do when the engine does not pull them back together)
STAGGERED = {"stag4": 4}
#: benchmark clients whose settings their source states, simulated as stated (:class:`Client`):
#:
#: - ``inferencex``: SemiAnalysis InferenceX's single-node runs (github.com/SemiAnalysisAI/InferenceX, Apache-2.0;
#:   ``benchmarks/benchmark_lib.sh`` ``run_benchmark_serving`` and the per-model scripts, e.g.
#:   ``benchmarks/dsr1_fp8_h200.sh``): its copy of vLLM's ``benchmark_serving.py`` with ``--dataset-name random
#:   --random-range-ratio 0.8`` (``.github/workflows/benchmark-tmpl.yml``: ``RANDOM_RANGE_RATIO: 0.8``; prompt and
#:   output lengths each drawn uniformly from the integers [floor(0.8 L), L], ``sample_random_requests``),
#:   ``--ignore-eos``, ``--num-prompts 10 x C``, ``--max-concurrency C``, ``--request-rate inf``, and ``--num-warmups
#:   2 C`` run and awaited before the timed requests (so those start from an idle engine, the first C together).
STATED = {"inferencex": (10, 0.8)}


@dataclass(frozen=True)
class Client:
    """A simulated closed-loop benchmark client (:func:`simulated_latency`): ``waves`` x C requests with C in flight;
    ``staggered``: the first C spread over one request's lifetime instead of sent together; ``range_ratio`` r < 1:
    each request's prompt and output lengths drawn uniformly from the integers [floor(r L), L] (vLLM
    ``benchmark_serving``'s random dataset), r = 1 fixed lengths; ``seed`` of that draw."""

    waves: int
    staggered: bool = False
    range_ratio: float = 1.0
    seed: int = 0


def simulated_client(name: str) -> Client | None:
    """The simulated client of a client model's name (:data:`SIMULATED`, :data:`STAGGERED`, :data:`STATED`); None
    for an analytic one (:data:`MODELS`)."""
    if name in SIMULATED:
        return Client(SIMULATED[name])
    if name in STAGGERED:
        return Client(STAGGERED[name], staggered=True)
    if name in STATED:
        waves, ratio = STATED[name]
        return Client(waves, range_ratio=ratio)
    return None


def wave_mean_ttft_s(plan, prompt: int, batch: int) -> float:
    """Mean time to the first token over a wave of ``batch`` prompts prefilled in passes of
    ``plan.prefill_tokens_per_pass`` = N tokens (full passes, then the pass of the rest). Request j (1-based)
    gets its first token at the end of pass idx_j = ceil(j P / N), so the mean is
    ``mean_j [ (idx_j - 1) t_full + (t_last if idx_j is the last pass else t_full) ]``."""
    n_tok = max(plan.prefill_tokens_per_pass, 1)
    passes = plan.prefill_passes_per_batch
    t_full = plan.prefill.time_s
    t_last = getattr(plan, "prefill_last", None)
    t_last = t_last.time_s if t_last is not None else t_full
    total = 0.0
    for j in range(1, batch + 1):
        idx = min(math.ceil(j * prompt / n_tok), passes)
        total += (idx - 1) * t_full + (t_last if idx == passes else t_full)
    return total / batch


def recv_interval_of(plan) -> int:
    """Decode steps between the engine's polls for new requests in ``plan`` (its config's ``recv_interval``, the
    engine's :meth:`recv_interval`: SGLang's ``--scheduler-recv-interval``; 1 where a plan does not say)."""
    return max(1, int((getattr(plan, "config", None) or {}).get("recv_interval") or 1))


def prefill_host_s_of(plan) -> float:
    """The host-issue floor of one forward with prompt tokens in ``plan`` (its config's ``prefill_host_s``, the
    engine's :attr:`EngineRuntime.prefill_host_s`: SGLang's eager extend; 0 where a plan does not say)."""
    return float((getattr(plan, "config", None) or {}).get("prefill_host_s") or 0.0)


def steady_ttft_s(plan, prompt: int, gen: int) -> float:
    """Steady-state TTFT: a prompt arriving while B = plan.batch_size sequences decode waits for the scheduler's
    next poll, on average half of the R decode steps between polls (R = 1 but for SGLang's
    ``--scheduler-recv-interval``, :func:`recv_interval_of`), then enters in chunks of q = min(P, N - B) tokens,
    ceil(P / q) steps each carrying B decodes and a chunk (priced as the decode step plus q / N of a full prefill
    pass, or the engine's host-issue floor of an eager prefill forward where that is longer,
    :func:`prefill_host_s_of`)."""
    b = plan.batch_size
    n_tok = max(plan.prefill_tokens_per_pass, 1)
    q = max(min(prompt, n_tok - b), 1)
    decode_step = plan.decode_time_per_batch_s / gen
    carry = max(plan.prefill.time_s * q / n_tok, prefill_host_s_of(plan)) + decode_step
    return 0.5 * recv_interval_of(plan) * decode_step + math.ceil(prompt / q) * carry


def benchmark_latency(plan, prompt: int, gen: int, concurrency: int, model: str | None = None) -> tuple[float, float]:
    """(mean TTFT, TPOT) in seconds as the closed-loop benchmark at ``concurrency`` measures them (module
    docstring), without the request's time outside the engine (:func:`request_overhead_s`).

    ``lockstep``: lockstep waves of B = plan.batch_size requests, TTFT the mean over a wave's prefill passes,
    TPOT pure decode of B; requests beyond B wait for earlier groups.
    ``steady``: staggered requests in steady state: TPOT the steady state's mean mixed step (decodes sharing
    steps with prefill chunks of arriving prompts), TTFT :func:`steady_ttft_s`.
    ``half``: the mean of the two (a benchmark whose first wave arrives as a burst and later ones staggered, over
    as many requests again as the first wave).
    A disaggregated plan (one with ``rate_per_s``: separate prefill and decode pools) carries its own closed-loop
    TTFT (prefill pass + KV transfer + queueing at C in flight) and its decode pool's TPOT: those are returned.
    """
    model = model or BENCHMARK_MODEL
    if model not in MODELS:
        raise ValueError(f"unknown benchmark model {model!r}; one of {', '.join(MODELS)}")
    if hasattr(plan, "rate_per_s"):  # a disaggregated plan: TTFT (prefill + KV transfer + queueing), decode pool's TPOT
        return plan.ttft_s, plan.decode_time_per_batch_s / gen
    b = plan.batch_size
    tpot_l = plan.decode_time_per_batch_s / gen
    ttft_l = wave_mean_ttft_s(plan, prompt, b)
    groups = math.ceil(concurrency / b)
    wait = (groups - 1) / 2.0 * (plan.prefill_time_per_batch_s + plan.decode_time_per_batch_s) if groups > 1 else 0.0
    if model == "wave":  # every first token when the wave's last prefill pass ends: the batch's whole prefill
        return plan.prefill_time_per_batch_s + wait, tpot_l
    ttft_l += wait
    if model == "lockstep":
        return ttft_l, tpot_l
    mixed = getattr(plan, "mixed_step", None)
    steps = getattr(plan, "steps_per_batch", 0.0) or gen
    tpot_s = mixed.time_s * steps / gen if mixed is not None else tpot_l
    ttft_s = steady_ttft_s(plan, prompt, gen) + wait
    if model == "steady":
        return ttft_s, tpot_s
    return 0.5 * (ttft_l + ttft_s), 0.5 * (tpot_l + tpot_s)


def simulated_latency(system, ctx, plan, prompt: int, gen: int, concurrency: int, waves: int = 4,
                      staggered: bool = False, client: Client | None = None) -> tuple[float, float]:
    """(mean TTFT, mean TPOT) in seconds of a closed-loop benchmark run simulated by the engine's scheduler
    (:func:`simulated_run`; ``client`` or ``Client(waves, staggered)``)."""
    run_ = simulated_run(system, ctx, plan, prompt, gen, concurrency, client or Client(waves, staggered))
    return run_.mean_ttft_s, run_.mean_tpot_s


@dataclass(frozen=True)
class ClosedLoopRun:
    """What a benchmark reports of a simulated closed-loop run: mean and median TTFT, mean TPOT (s)."""

    mean_ttft_s: float
    median_ttft_s: float
    mean_tpot_s: float


def simulated_run(system, ctx, plan, prompt: int, gen: int, concurrency: int, client: Client) -> ClosedLoopRun:
    """A closed-loop benchmark run simulated by the engine's scheduler (:func:`moesim.serving.scheduler.run` with
    ``concurrency``): ``client.waves`` x C requests of P prompt and G generated tokens (or, with ``range_ratio`` r <
    1, lengths drawn uniformly from [floor(r P), P] and [floor(r G), G], seeded), the first C sent together and
    each next one when one finishes, every step priced by the engine's step-time model (``system.online_model``:
    its KV pool, running-request cap, token budget and whether its steps mix prompts with decodes). How far the
    waves stay in lockstep is then the engine's scheduling and the client's lengths: prompts chunked into decode
    steps finish at different steps and the next wave arrives spread out; prefill-first batches keep a wave
    together unless the lengths differ. TTFT = first token - arrival; TPOT = (last - first token) / (g - 1) of each
    request's own g; mean, median and mean over the requests as the benchmarks report them. Attention data
    parallelism (the model's ``ranks`` R > 1): one rank serves ceil(C / R) of the requests in flight, every step
    priced as all ranks running alike. ``staggered``: the rank's first c requests (c its share of C) are sent at
    i E / c (i = 0..c-1), E = one request's lifetime TTFT + (G - 1) TPOT in the analytic steady state
    (:func:`benchmark_latency` "steady"), so the loop starts from requests spread over their lifetimes instead of
    one wave. Speculative decoding: 1 + ceil((g - 1) / tau) decode steps for g tokens
    (:func:`moesim.serving.model.decode_steps`), TPOT over g. Raises what ``online_model`` raises for a plan it cannot
    serve online (disaggregation)."""
    import numpy as np

    from .arrivals import Requests
    from .model import decode_steps, ranks_of
    from .scheduler import run

    model = system.online_model(ctx, plan, prompt + gen)
    ranks = ranks_of(model)
    c = max(1, concurrency)
    c_rank = -(-c // ranks)  # attention DP: one rank's share of the C in flight, dealt round robin (the busiest)
    n = max(1, client.waves) * c_rank
    arrivals = np.zeros(n)
    if client.staggered:
        ttft, tpot = benchmark_latency(plan, prompt, gen, c, "steady")
        arrivals[:c_rank] = np.arange(c_rank) * (ttft + (gen - 1) * tpot) / c_rank
    if client.range_ratio < 1.0:
        rng = np.random.default_rng(client.seed)
        prompts = rng.integers(int(prompt * client.range_ratio), prompt + 1, size=n)
        gens = np.maximum(rng.integers(int(gen * client.range_ratio), gen + 1, size=n), 1)
    else:
        prompts, gens = np.full(n, prompt), np.full(n, gen)
    # speculative decoding: the scheduler runs decode steps, each yielding tokens_per_step tokens on average
    requests = Requests(arrivals, prompts.astype(np.int64), decode_steps(model, gens.astype(np.int64)))
    # fixed lengths sent in waves: every DP rank sees the simulated one's arrivals (no balance wait)
    alike = not client.staggered and client.range_ratio >= 1.0
    trace = run(requests, model, system.name, concurrency=c_rank, ranks_alike=alike)
    ttft = trace.first_token_s - trace.arrival_s
    tpot = (trace.finish_s - trace.first_token_s) / np.maximum(gens - 1, 1)
    return ClosedLoopRun(float(np.mean(ttft)), float(np.median(ttft)), float(np.mean(tpot)))


def request_overhead_s(system: str) -> float:
    """Time a request spends outside the engine's steps before its first token (HTTP, tokenising, handing the
    request to the scheduler, streaming the token back): ``request_overhead_s`` of ``systems_db/<system>.yaml``
    (0 where the system has none)."""
    from ..db import system_constants
    from ..errors import MoesimError

    try:
        return float(system_constants(system).value("request_overhead_s"))
    except (KeyError, MoesimError):  # a system without the constant, or not in systems_db
        return 0.0


def closed_loop_throughput_tok_s(concurrency: int, gen: int, ttft_s: float, tpot_s: float) -> float:
    """Generated tokens per second of a closed loop keeping ``concurrency`` = C requests in flight (Little's law):
    each request takes E2E = TTFT + (G - 1) TPOT and yields G tokens, so the rate is C G / E2E."""
    e2e_s = ttft_s + (gen - 1) * tpot_s
    return concurrency * gen / e2e_s
