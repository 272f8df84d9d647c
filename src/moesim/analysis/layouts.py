"""Which layout, engine and concurrency to serve a model with on given GPUs, under latency SLOs.

    from moesim.analysis.layouts import search_layouts
    res = search_layouts("deepseek-r1", "hgx-h200", prompt_tokens=1024, gen_tokens=1024, max_tpot_s=0.05)
    res.chosen.launch, [(p.label, p.tok_s_per_user, p.tok_s_per_gpu) for p in res.pareto]

The question (issue 14, item 5; what AIConfigurator answers from measured kernels): given a model, GPUs (or a
budget) and SLOs on TTFT, TPOT or tokens/s per user, which engine, parallel layout and concurrency give the most
tokens/s per GPU, and what does the trade-off between tokens/s per GPU and tokens/s per user look like?

Search space (:func:`candidate_layouts`), per engine (``vllm``, ``sglang``, ``trtllm``) and per instance size g
(GPUs of one serving instance: a divisor of the node's GPUs, or whole nodes k x gpus_per_node for k dividing the
nodes; the instance is replicated over the rest, which leaves tokens/s per GPU unchanged), the layouts the engine's
own flags express with every tensor-parallel group inside one node (TP groups across nodes are refused by the
engines anyway, :mod:`moesim.systems.shared.parallel`):

- vLLM: ``--data-parallel-size`` D with tensor parallel g / D, experts tensor parallel over all g GPUs or
  ``--enable-expert-parallel``;
- SGLang: ``--tp g`` alone, or ``--enable-dp-attention --dp D``; ``--ep-size`` E (MoE tensor parallel g / E);
- TensorRT-LLM: ``tp_size g``, ``enable_attention_dp`` off or on; ``moe_expert_parallel_size`` E
  (``moe_tensor_parallel_size`` g / E).

Every other engine parameter keeps its default (the deployed software's choice). Disaggregated prefill/decode is
searched where an engine has a ``disaggregate`` parameter (:func:`disaggregation_supported`; all three have one),
the engines searched so named in :attr:`LayoutSearch.notes`: on all the GPUs, prefill and decode workers of w GPUs (w dividing the
node's GPUs), each worker in one of the layouts above on its w GPUs, the number of each the engine's own search of
the pool ratio (:func:`disaggregated_layouts`); such a point counts the GPUs its pools use.

Each layout is predicted at concurrencies C = 1, 2, 4, ... (``concurrencies``) as a closed-loop benchmark keeping C
requests in flight (:mod:`moesim.serving.closed_loop`, the rule the AIConfigurator validation scores): the
engine's plan at batch C (``--batch C --requests C``; C acts as the engine's cap on running requests, written as
its flag in the launch command), TTFT and TPOT of :func:`~moesim.serving.closed_loop.benchmark_latency` plus the
engine's per-request overhead (``systems_db``), and::

    tok/s/user = 1 / TPOT
    tok/s/GPU  = C G / (TTFT + (G - 1) TPOT) / g        (Little's law, G generated tokens per request)

(a disaggregated plan carries its own closed-loop TTFT, prefill + KV transfer + queueing at C, and its decode
pool's TPOT).

The Pareto front (:func:`pareto_front`) keeps the points no other point beats on both. The chosen configuration
(:func:`choose`) is the point with the most tok/s/GPU among those meeting every SLO (mean TTFT <= ``max_ttft_s``,
TPOT <= ``max_tpot_s``, tok/s/user >= ``min_tok_s_per_user``); when none meets them, the closest (the smallest
worst ratio of value to limit) with what it misses. Predictions are memoised per (model, platform, engine,
layout, workload, C); a refusal at some C skips the larger C of that layout (a larger batch never fits where a
smaller did not). DeepSeek-R1 on an 8-GPU HGX H200 over the three engines takes a few seconds.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, Iterable, Sequence

from pydantic import BaseModel, ConfigDict

from ..errors import MoesimError

#: engines searched (those with parallel layouts)
ENGINES = ("vllm", "sglang", "trtllm")
#: closed-loop concurrencies searched by default (requests in flight per instance)
DEFAULT_CONCURRENCIES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: Scenario fields the search sets itself
CHOSEN_FIELDS = ("model", "hardware", "system", "system_params", "num_gpus", "num_nodes", "batch_size",
                 "num_requests", "prompt_tokens", "gen_tokens", "arrival_rate_per_s")
#: the engines' caps on running requests, (parameter name, launch flag): a prediction at concurrency C runs at most C
#: sequences at once (moesim's --batch C acts as the cap), so the launch command sets the cap to C. The one map of
#: these spellings (validation/published/aiconfigurator.py reads it for the disaggregated pools' batch)
CAP_FLAG = {"vllm": ("max_num_seqs", "--max-num-seqs"), "sglang": ("max_running_requests", "--max-running-requests"),
             "trtllm": ("max_batch_size", "--max_batch_size")}


# ---- the Pareto front and the SLO choice (pure) -------------------------------------------------------------------
def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points, maximising both coordinates, in decreasing first coordinate.

    Point a dominates b when a_x >= b_x and a_y >= b_y with one strictly greater. Of points equal on both, the
    first is kept. Sorting by (-x, -y) and keeping each point whose y exceeds every y kept before it is
    O(n log n)."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1], i))
    front: list[int] = []
    best_y = -math.inf
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return front


def slo_ratio(ttft_s: float, tpot_s: float, max_ttft_s: float | None = None, max_tpot_s: float | None = None,
              min_tok_s_per_user: float | None = None) -> float:
    """The worst ratio of a figure to its SLO limit (<= 1: every SLO met): TTFT / max TTFT, TPOT / max TPOT,
    min tok/s/user / (1 / TPOT); 0 without SLOs."""
    ratios = [0.0]
    if max_ttft_s is not None:
        ratios.append(ttft_s / max_ttft_s)
    if max_tpot_s is not None:
        ratios.append(tpot_s / max_tpot_s)
    if min_tok_s_per_user is not None:
        ratios.append(min_tok_s_per_user * tpot_s)
    return max(ratios)


# ---- results ------------------------------------------------------------------------------------------------------
class LayoutPoint(BaseModel):
    """One engine, layout and concurrency, as a closed-loop benchmark measures it."""

    model_config = ConfigDict(frozen=True)

    system: str
    label: str  # "TP8", "DP8 EP8", "TP8 attn-DP EP8", ...
    params: dict[str, Any]  # the engine's parameters (moesim's names; the rest at their defaults)
    gpus_per_node: int  # GPUs of one instance in each node (moesim --gpus)
    nodes: int  # nodes one instance spans (moesim --nodes)
    instance_gpus: int
    replicas: int  # instances on the GPUs searched
    disaggregated: bool
    concurrency: int  # requests in flight per instance
    running_batch: int  # sequences the engine runs at once (<= concurrency; fewer when its KV pool holds fewer)
    ttft_s: float  # mean, with the request overhead
    tpot_s: float
    tok_s_per_user: float  # 1 / TPOT
    tok_s_per_gpu: float
    throughput_tok_s: float  # generated tokens/s of all replicas
    slo_ratio: float  # worst figure / limit (<= 1: meets every SLO)
    launch: str  # the engine's own launch command
    client: str  # the benchmark client keeping C requests in flight


class LayoutSearch(BaseModel):
    """Every point, the Pareto front, the SLO answer and what was skipped."""

    model_config = ConfigDict(frozen=True)

    model: str
    hardware: str
    gpus_per_node: int
    nodes: int
    total_gpus: int
    prompt_tokens: int
    gen_tokens: int
    max_ttft_s: float | None
    max_tpot_s: float | None
    min_tok_s_per_user: float | None
    points: list[LayoutPoint]
    pareto: list[LayoutPoint]  # non-dominated, by decreasing tok/s/user
    chosen: LayoutPoint | None  # most tok/s/GPU meeting every SLO (None: none meets them)
    closest: LayoutPoint | None  # when none meets them: the point with the smallest worst ratio
    verdict: str
    refused: list[dict[str, Any]]  # {system, layout, instance_gpus, reason}: each layout the engine refused
    notes: list[str]
    search_s: float


# ---- the search space ---------------------------------------------------------------------------------------------
def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def disaggregation_supported(system: str) -> bool:
    """Whether ``system`` has a ``disaggregate`` parameter (separate prefill and decode pools)."""
    from ..systems import get_system

    return "disaggregate" in get_system(system).Params.model_fields


def instance_sizes(gpus_per_node: int, nodes: int) -> list[tuple[int, int]]:
    """(GPUs per node, nodes) of one instance: fewer GPUs of one node (divisors), or k whole nodes (k | nodes)."""
    sizes = [(d, 1) for d in _divisors(gpus_per_node)]
    sizes += [(gpus_per_node, k) for k in _divisors(nodes) if k > 1]
    return sizes


def candidate_layouts(system: str, gpus_per_node: int, nodes: int = 1,
                      is_moe: bool = True) -> list[tuple[str, dict[str, Any]]]:
    """(label, engine params) of each layout of ``system`` on an instance of gpus_per_node x nodes GPUs, every
    tensor-parallel group inside one node (module docstring). ``is_moe`` False: no expert-parallel variants."""
    g = gpus_per_node * nodes
    tps = _divisors(gpus_per_node)  # attention / MoE tensor-parallel group sizes, inside a node
    eps = sorted({g // t for t in tps}) if is_moe else [1]
    out: list[tuple[str, dict[str, Any]]] = []
    if system == "vllm":
        for tp in tps:
            dp = g // tp
            for ep in ((False, True) if is_moe and g > 1 else (False,)):
                params: dict[str, Any] = {}
                if dp > 1:
                    params["data_parallel_size"] = dp
                if ep:
                    params["enable_expert_parallel"] = True
                label = f"TP{tp}" + (f" DP{dp}" if dp > 1 else "") + (f" EP{g}" if ep else "")
                out.append((label, params))
    elif system == "sglang":
        for dp in [1] + [g // t for t in tps if g // t > 1]:
            for ep in eps:
                params = {}
                if dp > 1:
                    params.update(data_parallel_size=dp, enable_dp_attention=True)
                if ep > 1:
                    params["expert_parallel_size"] = ep
                label = f"TP{g}" + (f" attn-DP{dp}" if dp > 1 else "") + (f" EP{ep}" if ep > 1 else "")
                out.append((label, params))
    elif system == "trtllm":
        for adp in (False, True):
            for ep in eps:
                params = {}
                if adp:
                    params["enable_attention_dp"] = True
                if ep > 1:
                    params["moe_expert_parallel_size"] = ep
                label = f"TP{g}" + (" attn-DP" if adp else "") + (f" EP{ep}" if ep > 1 else "")
                out.append((label, params))
    else:
        raise MoesimError(f"the layout search covers {', '.join(ENGINES)}; {system!r} has no parallel layouts")
    return out


def disaggregated_layouts(system: str, gpus_per_node: int, nodes: int = 1,
                          is_moe: bool = True) -> list[tuple[str, dict[str, Any]]]:
    """(label, engine params) of disaggregated deployments on the gpus_per_node x nodes GPUs: prefill and decode
    workers of w GPUs each (w a divisor of the node's GPUs, two workers at least fitting), each worker in one of the
    engine's layouts on w GPUs (:func:`candidate_layouts`, the same for both pools); how many of each is the
    engine's own search of the pool ratio (``--prefill-workers`` / ``--decode-workers`` unset)."""
    total = gpus_per_node * nodes
    out: list[tuple[str, dict[str, Any]]] = []
    for w in _divisors(gpus_per_node):
        if 2 * w > total:
            continue
        for label, params in candidate_layouts(system, w, 1, is_moe):
            out.append((f"disagg {label}/worker", {**params, "disaggregate": True, "prefill_gpus": w,
                                                   "decode_gpus": w}))
    return out


# ---- launch commands ----------------------------------------------------------------------------------------------
def launch_command(system: str, model_id: str, gpus_per_node: int, nodes: int, params: dict[str, Any],
                   concurrency: int | None = None) -> str:
    """The engine's own launch command for an instance of ``gpus_per_node`` x ``nodes`` GPUs with ``params``
    (moesim's names of the engine's parameters), with the cap on running requests set to ``concurrency`` (the
    prediction at concurrency C ran at most C sequences at once).

    Flag names, as the engines document them:

    - vLLM (docs.vllm.ai, "Data Parallel Deployment", "Expert Parallel Deployment", DeepSeek-R1 recipe
      ``vllm serve deepseek-ai/DeepSeek-R1-0528 --data-parallel-size 8 --enable-expert-parallel``):
      ``--tensor-parallel-size`` (per DP rank), ``--data-parallel-size``, ``--enable-expert-parallel``,
      ``--max-num-seqs``, ``--all2all-backend``, ``--enable-eplb``; several nodes: ``--data-parallel-size-local``
      DP ranks on this node, ``--data-parallel-address`` of the head node;
    - SGLang (docs.sglang.io "Server Arguments", "DP, DPA and SGLang DP Router", DeepSeek usage
      ``python -m sglang.launch_server --model deepseek-ai/... --tp 8 --dp 8 --enable-dp-attention``):
      ``--model-path``, ``--tp`` (all the instance's GPUs), ``--dp``, ``--enable-dp-attention``, ``--ep-size``,
      ``--moe-a2a-backend``, ``--max-running-requests``; several nodes: ``--nnodes``, ``--node-rank``,
      ``--dist-init-addr``;
    - TensorRT-LLM (nvidia.github.io/TensorRT-LLM "trtllm-serve": ``trtllm-serve <model> --tp_size <tp>
      --pp_size <pp> --ep_size <ep>``, ``--max_batch_size``, ``--extra_llm_api_options <yaml>`` for LLM API
      fields such as ``enable_attention_dp``): the attention DP switch goes in that YAML, written inline here.
    """
    g = gpus_per_node * nodes
    p = dict(params)
    flags: list[str] = []
    if system == "vllm":
        dp = int(p.pop("data_parallel_size", 1))
        flags = [f"vllm serve {model_id}", f"--tensor-parallel-size {g // dp}"]
        if dp > 1:
            flags.append(f"--data-parallel-size {dp}")
            if nodes > 1:
                flags += [f"--data-parallel-size-local {dp // nodes}", "--data-parallel-address <head-node-ip>"]
        if p.pop("enable_expert_parallel", False):
            flags.append("--enable-expert-parallel")
    elif system == "sglang":
        flags = [f"python -m sglang.launch_server --model-path {model_id}", f"--tp {g}"]
        dp = int(p.pop("data_parallel_size", 1))
        vllm_ep = p.pop("enable_expert_parallel", False)  # vLLM's spelling: SGLang's --ep-size tp, DP attention
        if dp > 1:
            flags.append(f"--dp {dp}")
        if p.pop("enable_dp_attention", False) or (vllm_ep and dp > 1):
            flags.append("--enable-dp-attention")
        ep = g if vllm_ep else int(p.pop("expert_parallel_size", 1))
        if ep > 1:
            flags.append(f"--ep-size {ep}")
        if nodes > 1:
            flags += [f"--nnodes {nodes}", "--node-rank <0..%d>" % (nodes - 1), "--dist-init-addr <head-node-ip>:5000"]
    elif system == "trtllm":
        flags = [f"trtllm-serve {model_id}", f"--tp_size {g}"]
        ep = p.pop("moe_expert_parallel_size", None)
        if ep and int(ep) > 1:
            flags.append(f"--ep_size {int(ep)}")
        extra = {}
        if p.pop("enable_attention_dp", False):
            extra["enable_attention_dp"] = "true"
        mtp = p.pop("moe_tensor_parallel_size", None)
        if mtp:
            extra["moe_tensor_parallel_size"] = str(int(mtp))
        if extra:  # LLM API fields trtllm-serve takes from a YAML file, written first
            yaml_text = "\\n".join(f"{k}: {v}" for k, v in extra.items())
            flags.insert(0, f"printf '{yaml_text}\\n' > extra_llm_api_options.yaml &&")
            flags.append("--extra_llm_api_options extra_llm_api_options.yaml")
    else:
        raise MoesimError(f"no launch command known for {system!r}; the layout search covers {', '.join(ENGINES)}")
    if concurrency is not None and system in CAP_FLAG:  # the prediction ran C at most at once (batch C)
        name, flag = CAP_FLAG[system]
        if name not in p:
            flags.append(f"{flag} {concurrency}")
    for name, value in sorted(p.items()):  # any other parameter, in the engine's own spelling
        dash = "--" + (name if system == "trtllm" else name.replace("_", "-"))
        if value is True:
            flags.append(dash)
        elif value not in (False, None):
            flags.append(f"{dash} {value}")
    return " ".join(flags)


def disaggregated_launch(system: str, model_id: str, params: dict[str, Any], pools: dict[str, Any] | None,
                         concurrency: int | None = None) -> str:
    """The workers of a disaggregated deployment as the engine launches them: ``n_p`` prefill and ``n_d`` decode
    workers (the plan's pools), each the engine's own command on its GPUs with its role's flag, and the router:

    - SGLang (docs.sglang.io "PD Disaggregation"): ``--disaggregation-mode prefill`` / ``decode`` servers and
      ``python -m sglang_router.launch_router --pd-disaggregation --prefill URL --decode URL``;
    - vLLM (docs.vllm.ai "Disaggregated Prefilling"): each instance with ``--kv-transfer-config`` naming a KV
      connector (NIXL), a proxy in front;
    - TensorRT-LLM (``trtllm-serve disaggregated -c <config>``): context and generation servers listed in that
      config, each a ``trtllm-serve`` worker.
    """
    pools = pools or {}
    pre, dec = pools.get("prefill", {}), pools.get("decode", {})
    n_p, n_d = pre.get("workers", "?"), dec.get("workers", "?")
    gp = int(pre.get("gpus_per_worker") or params.get("prefill_gpus") or 1)
    gd = int(dec.get("gpus_per_worker") or params.get("decode_gpus") or 1)
    worker = {k: v for k, v in params.items() if k not in ("disaggregate", "prefill_gpus", "decode_gpus",
                                                            "prefill_workers", "decode_workers", "prefill_params",
                                                            "decode_params")}
    role = {"sglang": ("--disaggregation-mode prefill", "--disaggregation-mode decode"),
            "vllm": ("--kv-transfer-config '{\"kv_connector\":\"NixlConnector\",\"kv_role\":\"kv_both\"}'",) * 2,
            "trtllm": ("", "")}[system]
    p_cmd = f"{launch_command(system, model_id, gp, 1, worker)} {role[0]}".rstrip()
    per_decoder = None  # each decode worker runs its share of the C in flight
    if concurrency is not None:
        per_decoder = math.ceil(concurrency / n_d) if isinstance(n_d, int) else concurrency
    d_cmd = f"{launch_command(system, model_id, gd, 1, worker, per_decoder)} {role[1]}".rstrip()
    router = {"sglang": "python -m sglang_router.launch_router --pd-disaggregation --prefill <prefill-urls> "
                        "--decode <decode-urls>",
              "vllm": "a P/D proxy over the prefill and decode instances (vLLM's disaggregated serving examples)",
              "trtllm": "trtllm-serve disaggregated -c <config listing the context and generation servers>"}[system]
    return f"{n_p} prefill worker(s): {p_cmd} ;; {n_d} decode worker(s): {d_cmd} ;; router: {router}"


def client_command(system: str, model_id: str, concurrency: int, prompt_tokens: int, gen_tokens: int) -> str:
    """A closed-loop benchmark client keeping ``concurrency`` requests of fixed lengths in flight: vLLM's
    ``vllm bench serve --max-concurrency`` over the OpenAI completions API every engine here serves, at the
    engine's default port (vLLM and trtllm-serve 8000, SGLang 30000)."""
    port = 30000 if system == "sglang" else 8000
    return (f"vllm bench serve --backend openai --port {port} --model {model_id} --dataset-name random "
            f"--random-input-len {prompt_tokens} --random-output-len {gen_tokens} --max-concurrency {concurrency} "
            f"--num-prompts {max(4 * concurrency, 32)}")


# ---- predictions (memoised) ---------------------------------------------------------------------------------------
def clear_cache() -> None:
    _closed_loop.cache_clear()


@functools.lru_cache(maxsize=8192)
def _closed_loop(model: str, hardware: str, gpus_per_node: int, nodes: int, system: str,
                 params: tuple[tuple[str, Any], ...], prompt: int, gen: int, concurrency: int,
                 knobs: tuple[tuple[str, Any], ...] = ()) -> dict[str, Any] | str:
    """{ttft_s (mean, with the request overhead), tpot_s, batch (running sequences), gpus_used, pools (a
    disaggregated plan's workers, else None)} of the closed loop at ``concurrency``, or the engine's refusal."""
    from .. import scenario as sc
    from ..predict import plan_scenario
    from ..serving.closed_loop import benchmark_latency, request_overhead_s

    try:
        scen = sc.Scenario(model=model, hardware=hardware, num_gpus=gpus_per_node, num_nodes=nodes, system=system,
                           system_params=dict(params), prompt_tokens=prompt, gen_tokens=gen, batch_size=concurrency,
                           num_requests=concurrency, **dict(knobs))
        _, plan, _, _ = plan_scenario(scen)
    except MoesimError as exc:
        return " ".join(str(exc).split())
    ttft_s, tpot_s = benchmark_latency(plan, prompt, gen, concurrency)
    config = getattr(plan, "config", None) or {}
    pools = config.get("pools") if config.get("disaggregated") else None
    return {"ttft_s": ttft_s + request_overhead_s(system), "tpot_s": tpot_s, "batch": int(plan.batch_size),
            "gpus_used": int(config.get("gpus_used") or gpus_per_node * nodes), "pools": pools}


def _knob_key(knobs: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    from .. import scenario as sc

    chosen = sorted(set(knobs) & set(CHOSEN_FIELDS))
    if chosen:
        raise MoesimError(f"the layout search sets {', '.join(chosen)} itself")
    unknown = sorted(set(knobs) - set(sc.fields()))
    if unknown:
        raise MoesimError(f"unknown scenario field(s) {', '.join(unknown)}")
    return tuple(sorted((k, v) for k, v in knobs.items() if v is not None))


def gpus_for_budget(hardware: str, budget_usd: float) -> tuple[int, int, str]:
    """(GPUs per node, nodes) the budget buys of ``hardware`` (whole nodes when it buys one, else the largest divisor
    of the node's GPU count it buys, as ``moesim recommend``'s 1/2/4-GPU hosts), and how it was priced (GPUs at launch price + the host without GPUs, as ``moesim recommend``)."""
    from .pricing import capital_cost_usd
    from ..db.resolve import get_hardware

    plat = get_hardware(hardware)
    n, price, host = plat.num_gpus, plat.gpu.launch_price_usd, plat.price_usd_excluding_gpus
    if price is None:
        raise MoesimError(f"{plat.gpu.name} has no launch price in hardware_db: a budget cannot be turned into GPUs; "
                          "give --gpus / --nodes instead")
    how = f"{plat.gpu.name} at ${price:,.0f}" + (f", host ${host:,.0f}" if host is not None else
                                                 ", host price unknown (GPUs alone counted)")
    node_usd = capital_cost_usd(n, price, host)[2] or n * price
    nodes = int(budget_usd // node_usd)
    if nodes >= 1:
        if nodes > 1 and plat.scale_out is None:
            return n, 1, how + f"; {plat.name} has no scale-out network, so one node"
        return n, nodes, how
    g = int((budget_usd - (host or 0.0)) // price)
    if g < 1:
        raise MoesimError(f"a budget of ${budget_usd:,.0f} buys no {plat.gpu.name} ({how})")
    g = max(d for d in _divisors(n) if d <= min(g, n))  # the engines split over a divisor of the node's GPUs
    return g, 1, how


def _point_of(system, label, params, gpn, nodes, total, dis, c, r, gen, slos, model_id, prompt) -> LayoutPoint:
    """A point of the search from a :func:`_closed_loop` record: an aggregated instance of gpn x nodes GPUs
    replicated over the ``total`` GPUs, or a disaggregated deployment counted on the GPUs its pools use."""
    from ..serving.closed_loop import closed_loop_throughput_tok_s

    g = r["gpus_used"] if dis else gpn * nodes
    replicas = 1 if dis else total // g
    per_instance = closed_loop_throughput_tok_s(c, gen, r["ttft_s"], r["tpot_s"])
    launch = (disaggregated_launch(system, model_id, params, r["pools"], c) if dis
              else launch_command(system, model_id, gpn, nodes, params, c))
    return LayoutPoint(system=system, label=label, params=dict(params), gpus_per_node=gpn, nodes=nodes,
                       instance_gpus=g, replicas=replicas, disaggregated=dis, concurrency=c, running_batch=r["batch"],
                       ttft_s=r["ttft_s"], tpot_s=r["tpot_s"], tok_s_per_user=1.0 / r["tpot_s"],
                       tok_s_per_gpu=per_instance / g, throughput_tok_s=per_instance * replicas,
                       slo_ratio=slo_ratio(r["ttft_s"], r["tpot_s"], *slos), launch=launch,
                       client=client_command(system, model_id, c, prompt, gen))


def choose(points: Sequence[LayoutPoint]) -> tuple[LayoutPoint | None, LayoutPoint | None]:
    """(the point with the most tok/s/GPU meeting every SLO, ties to more tok/s/user then fewer GPUs; None when
    none does), (None, or the closest point: the smallest worst ratio to the limits, then the most tok/s/GPU)."""
    meeting = [p for p in points if p.slo_ratio <= 1.0]
    if meeting:
        return max(meeting, key=lambda p: (p.tok_s_per_gpu, p.tok_s_per_user, -p.instance_gpus)), None
    if not points:
        return None, None
    return None, min(points, key=lambda p: (p.slo_ratio, -p.tok_s_per_gpu))


def search_layouts(model: str, hardware: str, *, gpus_per_node: int | None = None, nodes: int = 1,
                   budget_usd: float | None = None, prompt_tokens: int | None = None, gen_tokens: int | None = None,
                   max_ttft_s: float | None = None, max_tpot_s: float | None = None,
                   min_tok_s_per_user: float | None = None, systems: Iterable[str] = ENGINES,
                   concurrencies: Iterable[int] = DEFAULT_CONCURRENCIES, **knobs: Any) -> LayoutSearch:
    """Search engines x layouts x concurrencies for ``model`` on ``hardware`` (module docstring).

    ``gpus_per_node`` (default: the platform's) x ``nodes`` are the GPUs to fill, or ``budget_usd`` buys them
    (:func:`gpus_for_budget`). ``prompt_tokens`` / ``gen_tokens``: default the Scenario's (as every command). ``knobs``: Scenario fields every prediction takes (dtype, kv_dtype, zipf_s, ...)."""
    from .recommend import check_number
    from ..db.resolve import get_hardware, get_model

    from .. import scenario as sc

    t0 = time.perf_counter()
    prompt_tokens = sc.Scenario.model_fields["prompt_tokens"].default if prompt_tokens is None else prompt_tokens
    gen_tokens = sc.Scenario.model_fields["gen_tokens"].default if gen_tokens is None else gen_tokens
    check_number("max_ttft_s", max_ttft_s, optional=True)
    check_number("max_tpot_s", max_tpot_s, optional=True)
    check_number("min_tok_s_per_user", min_tok_s_per_user, optional=True)
    check_number("budget_usd", budget_usd, optional=True)
    for what, v in (("prompt_tokens", prompt_tokens), ("gen_tokens", gen_tokens), ("nodes", nodes)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise MoesimError(f"{what} takes a whole number of at least 1, got {v!r}")
    systems = tuple(systems)
    if not systems:
        raise MoesimError(f"the layout search needs at least one engine ({', '.join(ENGINES)})")
    concurrencies = tuple(sorted(set(int(c) for c in concurrencies)))
    if not concurrencies or concurrencies[0] < 1:
        raise MoesimError("concurrencies must be whole numbers of at least 1")
    knob_key = _knob_key(knobs)
    spec = get_model(model)
    plat = get_hardware(hardware)
    notes: list[str] = []
    if budget_usd is not None:
        if gpus_per_node is not None or nodes != 1:
            raise MoesimError("give the GPUs (--gpus / --nodes) or a budget, not both")
        gpus_per_node, nodes, how = gpus_for_budget(hardware, budget_usd)
        notes.append(f"budget ${budget_usd:,.0f} buys {gpus_per_node} GPU(s) x {nodes} node(s) ({how})")
    gpn = gpus_per_node or plat.num_gpus
    if gpn > plat.num_gpus:
        raise MoesimError(f"{plat.name} has {plat.num_gpus} GPUs per node; --gpus {gpn} is more (use --nodes)")
    total = gpn * nodes
    model_id = getattr(spec, "hf_id", None) or spec.name
    slos = (max_ttft_s, max_tpot_s, min_tok_s_per_user)
    points: list[LayoutPoint] = []
    refused: list[dict[str, Any]] = []
    # every engine's layouts before anything is predicted: candidate_layouts refuses a system without layouts
    aggregated = {system: [(i_gpn, i_nodes, label, params, False) for i_gpn, i_nodes in instance_sizes(gpn, nodes)
                           for label, params in candidate_layouts(system, i_gpn, i_nodes, is_moe=bool(spec.moe))]
                  for system in systems}
    dis_systems = [s for s in systems if disaggregation_supported(s)]
    if dis_systems:
        notes.append(f"disaggregated prefill/decode searched for {', '.join(dis_systems)} (their disaggregate "
                     "parameter; the pool ratio is the engine's own search)")
    for system in systems:
        cands = list(aggregated[system])
        if system in dis_systems:
            cands += [(gpn, nodes, label, params, True)
                      for label, params in disaggregated_layouts(system, gpn, nodes, is_moe=bool(spec.moe))]
        for i_gpn, i_nodes, label, params, dis in cands:
            key = tuple(sorted(params.items()))
            for c in concurrencies:
                r = _closed_loop(spec.name, plat.name, i_gpn, i_nodes, system, key, prompt_tokens, gen_tokens, c,
                                 knob_key)
                if isinstance(r, str):
                    refused.append({"system": system, "layout": label, "instance_gpus": i_gpn * i_nodes,
                                    "reason": (f"at concurrency {c}: " if c > concurrencies[0] else "") + r})
                    break
                points.append(_point_of(system, label, params, i_gpn, i_nodes, total, dis, c, r, gen_tokens, slos,
                                        model_id, prompt_tokens))
    front = [points[i] for i in pareto_front([(p.tok_s_per_user, p.tok_s_per_gpu) for p in points])]
    chosen, closest = choose(points)
    verdict = _verdict(chosen, closest, slos, bool(points))
    return LayoutSearch(model=spec.name, hardware=plat.name, gpus_per_node=gpn, nodes=nodes, total_gpus=total,
                        prompt_tokens=prompt_tokens, gen_tokens=gen_tokens, max_ttft_s=max_ttft_s,
                        max_tpot_s=max_tpot_s, min_tok_s_per_user=min_tok_s_per_user, points=points, pareto=front,
                        chosen=chosen, closest=closest, verdict=verdict, refused=refused, notes=notes,
                        search_s=time.perf_counter() - t0)


def _slo_text(slos) -> str:
    max_ttft_s, max_tpot_s, min_user = slos
    parts = []
    if max_ttft_s is not None:
        parts.append(f"TTFT <= {max_ttft_s:g} s")
    if max_tpot_s is not None:
        parts.append(f"TPOT <= {max_tpot_s:g} s")
    if min_user is not None:
        parts.append(f"tok/s/user >= {min_user:g}")
    return ", ".join(parts) or "no SLO"


def _misses(p: LayoutPoint, slos) -> str:
    max_ttft_s, max_tpot_s, min_user = slos
    out = []
    if max_ttft_s is not None and p.ttft_s > max_ttft_s:
        out.append(f"TTFT {p.ttft_s:.3g} s > {max_ttft_s:g} s")
    if max_tpot_s is not None and p.tpot_s > max_tpot_s:
        out.append(f"TPOT {p.tpot_s:.3g} s > {max_tpot_s:g} s")
    if min_user is not None and p.tok_s_per_user < min_user:
        out.append(f"tok/s/user {p.tok_s_per_user:.3g} < {min_user:g}")
    return ", ".join(out)


def _verdict(chosen, closest, slos, any_points: bool) -> str:
    if not any_points:
        return "no engine and layout runs this model on these GPUs (see the refusals)"
    if chosen is not None:
        return (f"{chosen.system} {chosen.label} at concurrency {chosen.concurrency}: "
                f"{chosen.tok_s_per_gpu:.4g} tok/s/GPU, {chosen.tok_s_per_user:.4g} tok/s/user, "
                f"TTFT {chosen.ttft_s:.3g} s, TPOT {chosen.tpot_s * 1e3:.3g} ms ({_slo_text(slos)})")
    return (f"no configuration meets {_slo_text(slos)}; closest: {closest.system} {closest.label} at concurrency "
            f"{closest.concurrency} ({_misses(closest, slos)})")


def format_search(res: LayoutSearch, limit: int | None = 20) -> str:
    """The Pareto table (tok/s/user against tok/s/GPU), the answer and its launch command."""
    lines = [f"{res.model} on {res.hardware}: {res.gpus_per_node} GPU(s) x {res.nodes} node(s) = {res.total_gpus} "
             f"GPUs; prompt {res.prompt_tokens}, generated {res.gen_tokens} tokens; closed-loop concurrency C per "
             f"instance; {len(res.points)} configurations predicted in {res.search_s:.1f} s"]
    header = (f"{'':1} {'engine':<7} {'layout':<30} {'GPUs':>5} {'inst':>4} {'C':>5} {'batch':>5} "
              f"{'TTFT s':>8} {'TPOT ms':>8} {'tok/s/user':>10} {'tok/s/GPU':>10}")
    lines += ["", "Pareto front (tok/s/GPU against tok/s/user; * = meets the SLOs):", header, "-" * len(header)]
    shown = res.pareto[: limit or None]
    for p in shown:
        mark = "*" if p.slo_ratio <= 1.0 else " "
        lines.append(f"{mark:1} {p.system:<7} {p.label[:30]:<30} {p.instance_gpus:>5} {p.replicas:>4} "
                     f"{p.concurrency:>5} {p.running_batch:>5} {p.ttft_s:>8.3g} {p.tpot_s * 1e3:>8.3g} "
                     f"{p.tok_s_per_user:>10.4g} {p.tok_s_per_gpu:>10.4g}")
    if len(res.pareto) > len(shown):
        lines.append(f"  ... {len(res.pareto) - len(shown)} more on the front (--json lists every point)")
    lines += ["", ("answer: " if res.chosen else "") + res.verdict]
    best = res.chosen or res.closest
    if best is not None:
        lines += [f"launch ({best.replicas} instance(s) of {best.instance_gpus} GPU(s)"
                  + (f" over {best.nodes} nodes" if best.nodes > 1 else "") + "):", "  " + best.launch,
                  "benchmark client (C requests in flight):", "  " + best.client]
    if res.refused:  # the largest instances first: their refusals say most about the layouts asked for
        lines.append(f"\nrefused or cut short ({len(res.refused)} layouts; --json lists all):")
        for r in sorted(res.refused, key=lambda r: -r["instance_gpus"])[:4]:
            lines.append(f"  {r['system']} {r['layout']} on {r['instance_gpus']} GPU(s): {r['reason'][:140]}")
    for n in res.notes:
        lines.append("note: " + n)
    lines.append("TTFT: mean of a closed-loop benchmark at C (moesim.serving.closed_loop); tok/s/user = 1/TPOT; "
                 "tok/s/GPU = C x gen / (TTFT + (gen-1) TPOT) / instance GPUs.")
    return "\n".join(lines)
