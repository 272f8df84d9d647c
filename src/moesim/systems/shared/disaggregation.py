"""Disaggregated prefill / decode serving, shared by vLLM, SGLang and TensorRT-LLM.

The engines' words: SGLang ``--disaggregation-mode prefill`` / ``decode`` servers behind a router (KV moved by
Mooncake or NIXL); TensorRT-LLM disaggregated serving with context and generation servers (``trtllm-serve
disaggregated``, KV by UCX / NIXL); vLLM's P/D connectors (``--kv-transfer-config`` with a producer and a consumer
instance). In moesim: ``--disaggregate`` with

- ``--prefill-gpus`` / ``--decode-gpus``: GPUs of one prefill / decode worker (default: one node's GPUs);
- ``--prefill-workers`` / ``--decode-workers``: how many of each (unset: searched, :func:`best_split`);
- ``--prefill-params`` / ``--decode-params``: the engine's own parameters for that pool's workers, as
  ``name=value,name=value`` (e.g. ``enable_attention_dp=true,moe_expert_parallel_size=8``), over the others given.

The instance's GPUs are the platform's (``--gpus`` x ``--nodes``). Each pool is priced with the engine's own
machinery on a worker's GPUs (:mod:`.continuous`):

- prefill worker: passes of whole prompts filling its token budget (N = the engine's budget over its DP ranks),
  prompts_per_pass = min(floor(N / P), its most running requests, in-flight requests per worker); a prompt longer than N takes
  ceil(P / N) passes. Its rate r_p = prompts_per_pass / t_pass requests/s; a prompt's prefill time is t_pass;
- decode worker: decode-only steps (CUDA graphs) of B = min(max running, what its KV pool holds, in-flight
  requests per worker) sequences, integrated over the G positions (Simpson), with MTP where asked
  (:mod:`.speculative`): T_dec = sum of the G / tau steps; TPOT = T_dec / G; r_d = B / T_dec requests/s;
- KV transfer (:func:`kv_transfer_s`) of a request's prompt KV, as the engine stores it, over the link between the
  pools: NVLink (the platform's GPU link) when the whole deployment fits in one node, else the scale-out network
  (per GPU, the platform's NIC share); per GPU, the larger of what a prefill GPU sends and a decode GPU receives
  (a GPU's share of a sequence's KV, :func:`~.tensor_parallel.kv_share_per_gpu`: MLA's latent is whole on every GPU of
  a rank)::

      t_kv = latency + bytes_per_gpu / bandwidth

Combined, with n_p prefill and n_d decode workers::

    rate = min(n_p r_p, n_d r_d, kv links)                    requests/s; throughput = rate x G tokens/s
    TTFT = t_pass + t_kv + queue
    TPOT = T_dec / G

queue: with C requests kept in flight (``--batch C``), the C requests cycle through the prefill pool, the KV link
and the decode pool, a closed queueing network solved by mean value analysis (:func:`closed_loop_prefill`): a
request waits in the prefill pool for the passes ahead of it, more as the pool nears saturation (the fluid rule
``max(0, C / rate - service)`` waited nothing below it: SGLang's DeepSeek-V3 prefill pool at 99% of its rate, 3.6 s
measured TTFT, was priced at one pass); the rate is then the network's throughput at C, at most the pools'. Offline
without C there is no queue (the pools run at their rates). The pool ratio (:func:`best_split`): every (n_p, n_d)
with n_p g_p + n_d g_d <= the instance's GPUs, the most requests/s per GPU of the instance (ties: the fewest
GPUs used).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ...errors import InfeasibleError, MoesimError
from ...modules import Context, expected_tokens_per_step
from ..base import Plan, StepSim, simpson_decode_time
from .engine_step import kernel_tables_used
from .parallel import rank_context, world_gpus
from .speculative import speculation, speculative_decode_step


if TYPE_CHECKING:
    from .continuous import ContinuousBatchingEngine

#: the parameters of disaggregation (a worker's own parameters never carry them)
DISAGG_FIELDS = ("disaggregate", "prefill_gpus", "decode_gpus", "prefill_workers", "decode_workers",
                 "prefill_params", "decode_params")


class DisaggregationParams(BaseModel):
    """Disaggregated prefill/decode, in every datacenter engine's Params (module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    disaggregate: bool = Field(
        default=False, description="serve with separate prefill and decode workers, the prompt's KV sent between "
                                   "them (SGLang --disaggregation-mode, TensorRT-LLM context/generation servers, "
                                   "vLLM P/D KV connectors)")
    prefill_gpus: int | None = Field(default=None, ge=1, description="GPUs of one prefill worker (None: one node's)")
    decode_gpus: int | None = Field(default=None, ge=1, description="GPUs of one decode worker (None: one node's)")
    prefill_workers: int | None = Field(default=None, ge=1, description="prefill workers (None: searched)")
    decode_workers: int | None = Field(default=None, ge=1, description="decode workers (None: searched)")
    prefill_params: str = Field(default="", description="this engine's parameters for the prefill workers, "
                                                        "name=value,name=value (over the others given)")
    decode_params: str = Field(default="", description="this engine's parameters for the decode workers, "
                                                       "name=value,name=value (over the others given)")


def check_aggregated(params) -> None:
    """Pool parameters without ``--disaggregate`` are refused (they would be silently ignored)."""
    if getattr(params, "disaggregate", False):
        return
    given = [f for f in DISAGG_FIELDS[1:] if getattr(params, f, None) not in (None, "")]
    if given:
        flags = ", ".join("--" + f.replace("_", "-") for f in given)
        raise InfeasibleError(f"{flags} describe disaggregated serving's pools: add --disaggregate")


# ---- pure pieces -----------------------------------------------------------------------------------


def kv_transfer_s(nbytes_per_gpu: float, bytes_per_s: float, latency_s: float) -> float:
    """t = latency + bytes / bandwidth: one request's KV from its prefill worker's GPUs to its decode worker's,
    each GPU moving ``nbytes_per_gpu`` in parallel."""
    if nbytes_per_gpu <= 0:
        return 0.0
    return latency_s + nbytes_per_gpu / bytes_per_s


def best_split(total_gpus: int, prefill_gpus: int, decode_gpus: int, prefill_rate: Callable[[int], float],
               decode_rate: Callable[[int], float], prefill_workers: int | None = None,
               decode_workers: int | None = None,
               link_rate: Callable[[int, int], float] | None = None) -> tuple[int, int, float]:
    """(n_p, n_d, requests/s): the pool sizes with the most requests/s, i.e. per GPU of the ``total_gpus`` given,
    over every n_p, n_d >= 1 with n_p g_p + n_d g_d <= total_gpus (a given count is kept); ties (1e-9 relative)
    go to the fewest GPUs used. ``prefill_rate(n)`` / ``decode_rate(n)``: a pool of n workers' requests/s (the combined rate
    is the smaller of the two, and of ``link_rate(n_p, n_d)``, the KV links', where given). Refuses a split the GPUs cannot hold, with the rule."""
    if prefill_workers and decode_workers:
        used = prefill_workers * prefill_gpus + decode_workers * decode_gpus
        if used > total_gpus:
            raise InfeasibleError(
                f"disaggregation: {prefill_workers} prefill workers x {prefill_gpus} GPUs + {decode_workers} decode "
                f"workers x {decode_gpus} GPUs = {used} GPUs, the platform has {total_gpus} (--gpus x --nodes): "
                f"the pools must fit in its GPUs")
    if prefill_gpus + decode_gpus > total_gpus or (prefill_workers or 1) * prefill_gpus + decode_gpus > total_gpus \
            or prefill_gpus + (decode_workers or 1) * decode_gpus > total_gpus:
        raise InfeasibleError(
            f"disaggregation needs at least one prefill worker of {prefill_gpus} GPUs and one decode worker of "
            f"{decode_gpus} GPUs{' (and the workers asked)' if prefill_workers or decode_workers else ''}; the "
            f"platform has {total_gpus} GPUs (--gpus x --nodes)")
    best: tuple[float, float, int, int, int] | None = None
    nps = [prefill_workers] if prefill_workers else range(1, (total_gpus - decode_gpus) // prefill_gpus + 1)
    for n_p in nps:
        room = total_gpus - n_p * prefill_gpus
        nds = [decode_workers] if decode_workers else range(1, room // decode_gpus + 1)
        for n_d in nds:
            used = n_p * prefill_gpus + n_d * decode_gpus
            if used > total_gpus:
                continue
            rate = min(prefill_rate(n_p), decode_rate(n_d))
            if link_rate is not None:
                rate = min(rate, link_rate(n_p, n_d))
            key = (rate, -used, n_p, n_d)
            if best is None or _better(key, best):
                best = key
    assert best is not None
    return best[2], best[3], best[0]


def _better(a: tuple, b: tuple) -> bool:
    """``a`` beats ``b``: more requests/s (beyond 1e-9 relative), then fewer GPUs used."""
    if abs(a[0] - b[0]) > 1e-9 * max(abs(a[0]), abs(b[0])):
        return a[0] > b[0]
    return a[1] > b[1]


def closed_loop_prefill(concurrency: int, pass_s: float, prefill_slots: int, kv_s: float, decode_s: float,
                        decode_slots: int) -> tuple[float, float]:
    """(a request's time in the prefill pool, waiting included; requests/s) of C = ``concurrency`` requests kept in
    flight, each cycling prefill pool -> KV transfer -> decode pool -> (the client sends the next at once).

    Stations: the prefill pool's m_p = workers x prompts per pass slots, each holding a prompt for its pass time S;
    the KV transfer a delay t_kv; the decode pool's m_d = workers x running batch slots, each holding a request its
    T_dec (a pure delay while C <= m_d, the engines' usual sizing). A station of m slots is taken as a queue of
    demand D = S / m plus a delay S (m - 1) / m (Seidmann's approximation of a multi-server station). Mean value
    analysis (Reiser and Lavenberg 1980), with the residual-service correction of a deterministic pass (an arrival
    finds the pass in progress half done: D U / 2 instead of D U), for n = 1 .. C::

        R(n) = D (1 + Q(n-1) - U(n-1) / 2),   U(n-1) = X(n-1) D
        X(n) = n / (R(n) + S (m_p - 1) / m_p + t_kv + R_dec(n))
        Q(n) = X(n) R(n)

    R_dec = T_dec when C <= m_d, else the same queue-plus-delay form with D = T_dec / m_d (no correction: its
    service is not one fixed pass). X(n) is held to the pools' rates (m_p / S; m_d / T_dec when the decode pool
    queues), R(n) then following from Little's law, n / X(n) less the rest. Returns (R(C) + S (m_p - 1) / m_p,
    X(C)). C = 1: (S, 1 / (S + t_kv + T_dec))."""
    m_p, m_d = max(int(prefill_slots), 1), max(int(decode_slots), 1)
    d = pass_s / m_p
    fixed = pass_s * (m_p - 1) / m_p + kv_s
    queue_dec = concurrency > m_d
    d_dec = decode_s / m_d if queue_dec else 0.0
    fixed += decode_s - d_dec
    cap = min(m_p / pass_s if pass_s > 0 else math.inf, m_d / decode_s if queue_dec and decode_s > 0 else math.inf)
    q = q_dec = x = r = 0.0
    for n in range(1, int(concurrency) + 1):
        r = d * (1.0 + q - 0.5 * x * d)
        r_dec = d_dec * (1.0 + q_dec)
        x = n / (r + fixed + r_dec)
        if x > cap:  # the correction's approximation overshot the pool's rate: the rate, the wait by Little's law
            x = cap
            r = n / x - fixed - r_dec
        q, q_dec = x * r, x * r_dec
    return r + pass_s * (m_p - 1) / m_p, x


# ---- workers ----------------------------------------------------------------------------------------


def parse_pool_params(text: str, role: str, cls) -> dict[str, Any]:
    """``name=value,name=value`` (values read as YAML scalars) of the engine's own parameters."""
    import yaml

    out: dict[str, Any] = {}
    for item in (t.strip() for t in (text or "").split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not key:
            raise MoesimError(f"--{role}-params takes name=value,name=value; got {item!r}")
        if key not in cls.Params.model_fields or key in DISAGG_FIELDS:
            known = ", ".join(k for k in cls.Params.model_fields if k not in DISAGG_FIELDS)
            raise MoesimError(f"--{role}-params: {key!r} is not a {cls.name} worker parameter (its parameters: {known})")
        out[key] = yaml.safe_load(value)
    return out


def worker_engine(engine: "ContinuousBatchingEngine", role: str) -> "ContinuousBatchingEngine":
    """The engine of one ``role`` (prefill / decode) worker: this engine's parameters with the pool's own over them,
    without disaggregation."""
    cls = type(engine)
    p = engine.params
    over = parse_pool_params(getattr(p, f"{role}_params"), role, cls)
    data = {**p.model_dump(), **over, **{f: cls.Params.model_fields[f].default for f in DISAGG_FIELDS}}
    try:
        params = cls.Params.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise MoesimError(f"--{role}-params: {problems}") from None
    return cls(params, policy=engine.policy)


def worker_context(ctx: Context, gpus: int, role: str) -> Context:
    """``ctx`` on one worker's GPUs: within one node (``gpus`` <= its GPUs) or whole nodes."""
    node = ctx.platform.num_gpus
    if gpus > node and gpus % node:
        raise InfeasibleError(f"disaggregation: a {role} worker of {gpus} GPUs must fit in one node ({node} GPUs) or "
                              f"take whole nodes (a multiple of {node})")

    return rank_context(ctx, min(gpus, node), max(1, gpus // node) if gpus > node else 1)


@dataclass(frozen=True)
class PrefillWorker:
    pass_s: float  # a prompt's prefill time (the pass that holds it; every pass of a long prompt)
    prompts_per_pass: int
    tokens_per_pass: int
    step: StepSim

    @property
    def rate_per_s(self) -> float:
        return self.prompts_per_pass / self.pass_s


def price_prefill_worker(eng, ctx: Context, in_flight: int) -> PrefillWorker:
    lay = eng._layout(ctx)
    knobs = eng.group_knobs(ctx)
    budget = knobs.token_budget
    P = ctx.workload.prompt_tokens
    if P <= budget:  # whole prompts in the budget, at most the engine's running requests (every DP rank's)
        prompts = max(1, min(budget // P, eng.instance_max_seqs(ctx, lay), in_flight))
        step = eng._mixed(ctx, lay, 0, 0, prompts * P, prompts, P)
        return PrefillWorker(step.time_s, prompts, prompts * P, step)
    passes = math.ceil(P / budget)
    full = eng._mixed(ctx, lay, 0, 0, budget, budget / P, P)
    rest = P - (passes - 1) * budget
    last = eng._mixed(ctx, lay, 0, 0, rest, rest / P, P)
    return PrefillWorker((passes - 1) * full.time_s + last.time_s, 1, budget, full)


@dataclass(frozen=True)
class DecodeWorker:
    batch: int
    decode_s: float  # a request's G tokens: G / tau steps
    points: list
    by_kv: int
    tau: float

    @property
    def rate_per_s(self) -> float:
        return self.batch / self.decode_s


def price_decode_worker(eng, ctx: Context, in_flight: int) -> DecodeWorker:
    w = ctx.workload
    P, G = w.prompt_tokens, w.gen_tokens
    lay = eng._layout(ctx)
    k = eng.group_knobs(ctx)
    by_kv = max(1, eng.running_by_kv(ctx, lay, k.block_size)[1])
    batch = max(1, min(eng.instance_max_seqs(ctx, lay), by_kv, in_flight))
    steps, rates, kind = speculation(eng, ctx)
    tau = expected_tokens_per_step(rates)

    def step(c: int) -> StepSim:
        return speculative_decode_step(eng, ctx, lay, batch, c, P, steps, kind)
    total, points = simpson_decode_time(step, P, G)
    return DecodeWorker(batch, total / tau, points, by_kv, tau)


@dataclass
class DisaggregatedPlan(Plan):
    """Two pools, their rates, the KV transfer between them (module docstring): the headline figures come from
    here (:meth:`headline`), not from one batch's phases."""

    rate_per_s: float = 0.0
    prefill_rate_per_s: float = 0.0
    decode_rate_per_s: float = 0.0
    ttft_s: float = 0.0
    kv_transfer_s: float = 0.0
    queue_s: float = 0.0
    num_requests: int = 0
    pools: dict[str, Any] = field(default_factory=dict)

    @property
    def prefill_time_per_batch_s(self) -> float:
        return self.ttft_s

    @property
    def total_time_s(self) -> float:
        return self.num_requests / self.rate_per_s

    def headline(self, workload) -> dict[str, float]:
        return {"prefill_tok_s": self.prefill_rate_per_s * workload.prompt_tokens,
                "decode_tok_s": self.decode_rate_per_s * workload.gen_tokens,
                "throughput_tok_s": self.rate_per_s * workload.gen_tokens, "ttft_s": self.ttft_s,
                "tpot_s": self.decode_time_per_batch_s / workload.gen_tokens, "total_time_s": self.total_time_s}


def kv_link(ctx: Context, one_node: bool) -> tuple[float, float, str]:
    """(bytes/s per GPU, latency, words) of the link the KV crosses: the GPU link within one node, else the
    platform's scale-out network (per GPU)."""
    p = ctx.platform
    if one_node or p.scale_out is None:
        link = p.gpu_link or p.host_link
        return link.h2d_pinned_bytes_per_s, link.latency_s, f"{link.name} within one node"
    so = p.scale_out
    return so.per_gpu_bytes_per_s, so.latency_s, f"{so.network.name} between nodes ({so.nics_per_gpu:g} NIC per GPU)"


def disaggregated_plan(engine: "ContinuousBatchingEngine", ctx: Context) -> DisaggregatedPlan:
    """The disaggregated deployment of ``engine`` on ``ctx``'s GPUs (module docstring)."""
    from .tensor_parallel import kv_share_per_gpu

    prm, w = engine.params, ctx.workload
    P, G, R = w.prompt_tokens, w.gen_tokens, w.num_requests
    total, node = world_gpus(ctx.platform), ctx.platform.num_gpus
    gp = prm.prefill_gpus or min(node, total)
    gd = prm.decode_gpus or min(node, total)
    pe, de = worker_engine(engine, "prefill"), worker_engine(engine, "decode")
    best_split(total, gp, gd, lambda n: 1.0, lambda n: 1.0, prm.prefill_workers, prm.decode_workers)  # refusals
    cp, cd = worker_context(ctx, gp, "prefill"), worker_context(ctx, gd, "decode")
    concurrency = w.batch_size  # requests kept in flight; None: offline, all R at once, no queue
    in_flight = concurrency or R

    # one pool's workers as the split's counts change them: memoised on the in-flight requests per worker
    pre_cache: dict[int, PrefillWorker] = {}
    dec_cache: dict[int, DecodeWorker] = {}

    def prefill(n: int) -> PrefillWorker:
        share = math.ceil(in_flight / n)
        if share not in pre_cache:
            pre_cache[share] = price_prefill_worker(pe, cp, share)
        return pre_cache[share]

    def decode(n: int) -> DecodeWorker:
        share = math.ceil(in_flight / n)
        if share not in dec_cache:
            dec_cache[share] = price_decode_worker(de, cd, share)
        return dec_cache[share]

    # the KV a request moves, per GPU, and the link (NVLink inside one node, else the network)
    pl_p, pl_d = pe._parallel(cp), de._parallel(cd)
    kv_total = pe._kv_bytes_per_token(cp, P) * P
    share_p = kv_share_per_gpu(rank_context(cp, pl_p.attn_tp), pe.knobs_for(cp).mla_latent_cache)
    share_d = kv_share_per_gpu(rank_context(cd, pl_d.attn_tp), de.knobs_for(cd).mla_latent_cache)
    per_gpu = kv_total * max(share_p, share_d)

    def link_for(n_p: int, n_d: int) -> tuple[float, float, str]:
        return kv_link(ctx, n_p * gp + n_d * gd <= node)

    def kv_rate(n_p: int, n_d: int) -> float:
        bw, _, _ = link_for(n_p, n_d)
        return min(n_p * pl_p.dp, n_d * pl_d.dp) * bw / per_gpu if per_gpu > 0 else math.inf

    n_p, n_d, rate = best_split(total, gp, gd, lambda n: n * prefill(n).rate_per_s,
                                lambda n: n * decode(n).rate_per_s, prm.prefill_workers, prm.decode_workers, kv_rate)
    searched = not (prm.prefill_workers and prm.decode_workers)
    pw, dw = prefill(n_p), decode(n_d)
    bw, lat, words = link_for(n_p, n_d)
    t_kv = kv_transfer_s(per_gpu, bw, lat)
    queue = 0.0
    if concurrency:  # C in flight: the closed loop's waiting in the prefill pool and its throughput (MVA)
        in_prefill, loop_rate = closed_loop_prefill(concurrency, pw.pass_s, n_p * pw.prompts_per_pass, t_kv,
                                                    dw.decode_s, n_d * dw.batch)
        queue = max(0.0, in_prefill - pw.pass_s)
        rate = min(rate, loop_rate)
    ttft = pw.pass_s + t_kv + queue
    used = n_p * gp + n_d * gd
    notes = [
        f"disaggregated: {n_p} prefill worker(s) x {gp} GPUs ({pl_p.words()}) and {n_d} decode worker(s) x {gd} GPUs "
        f"({pl_d.words()}), {used} of {total} GPUs" + (" (pool ratio searched: most requests/s on these GPUs)" if searched
                                                      else ""),
        f"prefill pool {n_p * pw.rate_per_s:.4g} req/s ({pw.prompts_per_pass} prompt(s) of {P} tokens a pass, "
        f"{pw.pass_s * 1e3:.4g} ms), decode pool {n_d * dw.rate_per_s:.4g} req/s ({dw.batch} sequences a worker, "
        f"TPOT {dw.decode_s / G * 1e3:.4g} ms), KV links {kv_rate(n_p, n_d):.4g} req/s: {rate:.4g} req/s",
        f"KV transfer per request: {per_gpu / 1e6:.4g} MB per GPU over {words}: {t_kv * 1e3:.4g} ms"
        + (f"; queueing {queue * 1e3:.4g} ms at {concurrency} in flight" if queue else ""),
    ]
    steps, _, kind = speculation(de, cd)
    if steps:
        what = "MTP" if kind == "mtp" else f"draft model {ctx.options.speculative.draft_model}"
        notes.append(f"speculative decoding ({what}) in the decode pool: {steps} draft step(s), {dw.tau:.3g} tokens "
                     f"per step")
    batch = n_d * dw.batch
    pools = {"prefill": {"workers": n_p, "gpus_per_worker": gp, "layout": pl_p.words(),
                         "prompts_per_pass": pw.prompts_per_pass, "pass_s": pw.pass_s,
                         "requests_per_second": n_p * pw.rate_per_s, "params": prm.prefill_params},
             "decode": {"workers": n_d, "gpus_per_worker": gd, "layout": pl_d.words(), "batch_per_worker": dw.batch,
                        "max_running_by_kv": dw.by_kv, "tpot_s": dw.decode_s / G, "tokens_per_step": dw.tau,
                        "requests_per_second": n_d * dw.rate_per_s, "params": prm.decode_params},
             "kv_transfer": {"bytes_per_gpu": per_gpu, "link": words, "time_s": t_kv,
                             "requests_per_second": kv_rate(n_p, n_d)}}
    config = {"disaggregated": True, "gpus_used": used, "batch_size": batch, "pools": pools,
              "queue_s": queue, "params": prm.model_dump(),
              # what the band's provenance reads: the pools' steps are the engine's, priced from its tables where
              # this GPU has them (moesim.uncertainty.provenance)
              "kernel_tables": kernel_tables_used(ctx, engine.runtime(ctx))}
    return engine.make_plan(
        (batch, max(1, math.ceil(R / batch))), (pw.step, 1, pw.tokens_per_pass), (dw.decode_s, dw.points),
        config=config, host_mem_bytes=0.0, placement={"weights": "gpu (each pool's workers)",
                                                      "kv_cache": f"gpu (paged), prompt KV sent over {words}"},
        notes=notes, plan_type=DisaggregatedPlan, rate_per_s=rate, prefill_rate_per_s=n_p * pw.rate_per_s,
        decode_rate_per_s=n_d * dw.rate_per_s, ttft_s=ttft, kv_transfer_s=t_kv, queue_s=queue, num_requests=R,
        pools=pools)
