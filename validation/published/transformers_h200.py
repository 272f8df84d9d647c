"""`--system transformers` against H200 measurements of transformers 5.17 generate (our own harness).

Measurements: ``validation/measurements/h200/transformers/*transformers5.17*.json`` written by
``validation/torchbench/hf_generate.py`` (random bf16 weights built from the published configs; some
models built with fewer layers than published, recorded per cell: the prediction uses the same count).

Split, fixed here before any fitting:
  FIT       OLMoE-1B-7B and Qwen1.5-MoE-A2.7B: every cell of theirs may inform the fitted constants
            (host time per module call, per decoder layer, per forward, per generate step; the
            cpu_offload hook time from OLMoE's offload cells);
  HELD-OUT  DeepSeek-V2-Lite, Qwen3-30B-A3B, Mixtral-8x7B (and Qwen1.5-MoE's cpu_offload cells): only scored.

Repeated measurements (fixed before the second hf_generate.py campaign's data came back; see LEASE_RULE): a cell
is (model, layers, kind, experts backend, batch, prompt) of an hf_generate.py campaign file (one file per lease); its
measured time is the median over every lease that measured it, and the cell counts once in its series and in the fit.

Forward-only decode cells and the cuDNN attention graph cache (ATTN_GRAPH_RULE, fixed 2026-12-03 from the
hf-fwd-cause diagnostic lease, before these series were scored with it): a decode step at an attention shape (batch,
KV length, the model's attention geometry) that the process had not run yet pays a cuDNN graph build; such "cold"
cells are scored as their own series and inform nothing; the "warm" ones are the decode series.

The cuDNN attention graph build (attention_graph_build_s, GRAPH_BUILD_FIT): fitted on the FIT models' per-step build
times of the hf-warm lease (``*transformers5.17-warm*.json`` cells whose first pass met only new shapes,
``*hf-warm-probe*.json``), the held-out models' only scored (``--graph-builds``); every timed cell is priced warm,
a cold forward-only decode cell one build more per step.

The host constants are bounded by what the device measured directly (``*hf-batched-mm-host*.json``, written by
``validation/torchbench/hf_batched_mm.py``, FIT models only): the per-call measurement (per-call burst
time of small CUDA ops) bounds torch_call_s from below; module_call_s stays inside the measured module-vs-body bracket and
forward_host_s under the largest per-forward intercept of host-bound forwards (hidden size 128) at 2 and at all
layers. Those host-bound cells (``host_cells``, another lease, whose host ran slower) are scored apart.

The routing of the random-weight models (ROUTING_RULE, fixed 2026-12-03 after the hf-routing lease measured it and
before any cell was scored with it): each prefill cell is predicted with the experts its own shape reached on the
same models (``*hf-routing*.json``, ``validation/torchbench/hf_routing.py``), not uniform routing: a measured fact
of the experiment like its batch and prompt, not a fitted constant (decode steps routed as uniform routing expects).

``python validation/published/transformers_h200.py`` scores the constants in systems_db/transformers.yaml;
``--fit`` fits them on the FIT cells first and prints the values to write there (nothing is written).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import statistics
import sys
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from moesim.db.resolve import get_hardware, get_model  # noqa: E402
from moesim.modules import Context, Options  # noqa: E402
from moesim.specs import OfflineWorkload  # noqa: E402
from moesim.systems.transformers import Transformers  # noqa: E402

FIT_MODELS = ("olmoe-1b-7b", "qwen1.5-moe-a2.7b")
FIT_OFFLOAD_MODELS = ("olmoe-1b-7b",)
FITTED = ("torch_call_s", "module_call_s", "forward_host_s", "generate_step_host_s", "offload_module_s",
          "decoder_layer_host_s")


#: How one cell measured on several leases is scored (written down before the repeat campaign's data came back):
#: "median" = a cell (CELL_KEY) takes the median of its times over every hf_generate.py campaign file (one per lease)
#: that measured it, and counts once in its series median and in the fit. Why: moesim predicts a configuration's time,
#: not a lease's; the lease-to-lease differences of one cell (the host's speed, the card as it was found: Qwen3-30B-A3B's
#: batched_mm decode at +13..+21 % on one lease, -4..-1 % on two others) are noise about that time, and the median of
#: the leases is the estimate of it least moved by one odd lease (with two, their mean). Scoring each lease as its own
#: record would instead weight a cell by how many times it happened to be re-measured (the re-measured series would
#: count twice against the rest) and would treat the spread between leases as if it were error of the model.
#: Only files of the same harness (hf_generate.py, ``*transformers5.17*.json``) are pooled: hf_decode_steps.py and
#: hf_batched_mm.py time other things (decode after a grouped_mm prefill, hidden-128 models) and stay apart.
LEASE_RULE = "median"
#: the fields that name one measured cell across leases
CELL_KEY = ("model", "layers", "kind", "impl", "batch", "prompt")

#: Forward-only decode cells and PyTorch's cuDNN attention graph cache. Rule fixed 2026-12-03 from the hf-fwd-cause
#: lease (``*hf-fwd-cause*.json``: torch.profiler put 57.5 ms of each Mixtral-8x7B step and 37.6 ms of each
#: Qwen3-30B-A3B step in ``aten::_cudnn_attention_forward`` at KV lengths the process had not run, 0.5 / 1.1 ms at
#: lengths it had: PyTorch builds and caches one cuDNN graph per attention shape), before the forward-only series were
#: re-scored with it. "warm-only": a forward-only decode cell (``decode``, ``offload_decode``) is "warm" when every
#: (attention geometry, batch, KV length) of its timed steps (the 2nd to the last: KV = prompt + 2 .. prompt + steps)
#: had already run earlier in the same campaign file (one process: the cache lives as long as it), by a decode cell of
#: any model with the same attention geometry (the cache key is shapes, not the model: Qwen1.5-MoE's batched_mm decode
#: at batch 1 ran 27.9 ms on the repeat lease right after OLMoE's cells, as on the first campaign's 28.7, where OLMoE's
#: own first cell ran 87.9 vs 21.3 ms) or a ``generate`` call (KV = prompt + 1 .. prompt + its steps); cells of the
#: fixed harness (``cold_times_s``: a first pass over the same shapes, untimed) are warm by construction. Otherwise
#: "cold": it timed graph builds that ``generate``'s cells (timed after a warm-up call of the same length) and
#: moesim's prediction (the cached, steady state) do not have. Cold and warm cells are scored as separate series
#: (a cell's key includes its state, so leases pool within a state), and cold cells inform no fit (``in_generate``).
ATTN_GRAPH_RULE = "warm-only"


def _attn_geometry(model: str) -> tuple:
    """What of a model enters the attention graph cache's key: its attention geometry (heads, KV heads, head dims)."""
    a = get_model(model).attention
    return (a.kind, a.num_heads, a.num_kv_heads, a.head_dim, a.qk_nope_head_dim, a.qk_rope_head_dim, a.v_head_dim)


def attn_graph_states(raw_cells: list[dict]) -> list[str | None]:
    """ATTN_GRAPH_RULE over one campaign file's cells in file (= execution) order: "warm" / "cold" for each
    forward-only decode cell with times, None for every other cell."""
    return [s for s, _ in _attn_graph_states(raw_cells)]


def _attn_graph_states(raw_cells: list[dict]) -> list[tuple[str | None, float]]:
    """(state, the fraction of the cell's timed steps at a shape new to the process) per cell (0 for warm/None)."""
    if ATTN_GRAPH_RULE != "warm-only":
        raise ValueError(f"unknown attention graph rule {ATTN_GRAPH_RULE!r}")
    seen: set[tuple] = set()
    states: list[tuple[str | None, float]] = []
    for c in raw_cells:
        phase = c.get("kind", "").removeprefix("offload_")
        state, new = None, 0.0
        if phase in ("decode", "generate") and "batch" in c and "prompt" in c:
            geo, b, p = _attn_geometry(c["model"]), c["batch"], c["prompt"]
            if phase == "decode" and c.get("times_s"):
                n = len(c["times_s"])
                timed = {(geo, b, p + j) for j in range(2, n + 1)}
                state = "warm" if c.get("cold_times_s") is not None or timed <= seen else "cold"
                if state == "cold":
                    new = len(timed - seen) / len(timed)
                seen |= {(geo, b, p + j) for j in range(1, n + 1)}
            elif phase == "generate" and c.get("tn_s") and c.get("steps"):
                seen |= {(geo, b, p + j) for j in range(1, c["steps"] + 1)}
        states.append((state, new))
    return states


def measurement_files() -> list[Path]:
    """Every hf_generate.py campaign file (one per lease), oldest first (by the start time each file records)."""
    files = glob.glob(str(ROOT / "validation/measurements/h200/transformers/*transformers5.17*.json"))
    if not files:
        raise SystemExit("no transformers 5.17 measurements under validation/measurements/h200/transformers/")
    return sorted((Path(f) for f in files), key=lambda f: (json.loads(f.read_text())["meta"].get("started", ""), f.name))


def measurement_file() -> Path:
    """The newest campaign file."""
    return measurement_files()[-1]


#: Host seconds of one cuDNN attention graph build (systems_db/transformers.yaml attention_graph_build_s), fixed here
#: before the hf-warm lease's data came back: fitted on the FIT models' per-step build times of that lease only, the
#: median over (a) every step of a decode cell whose first pass ran only shapes new to its process (hf_warm.py's
#: ``cold_shapes_new`` = its steps): first-pass step - timed-pass step at the same KV length, and (b) every step of
#: its probe (``*hf-warm-probe*.json``: the same difference at batches 1-64 and prompts 64-3000); held-out models'
#: steps only scored. The median, since an eager step's own spread at large batches (tens of ms) is as large as a build.
GRAPH_BUILD_FIT = "median of the FIT models' per-step (first pass - timed pass) of the hf-warm lease"


def probe_file() -> Path | None:
    files = sorted(glob.glob(str(ROOT / "validation/measurements/h200/transformers/*hf-warm-probe*.json")))
    return Path(files[-1]) if files else None


def graph_build_rows(files: list[Path] | None = None, probe: Path | None = None) -> list[dict]:
    """Per-step build times (seconds) of the hf-warm lease: one row per decode step that ran a new attention shape on
    its first pass, ``build_s`` = first-pass time - timed-pass time at the same KV length; ``source`` cell or probe;
    plus the probe's prefill rows (``phase`` prefill: the first prefill rep at a new shape - the median of the next)."""
    out = []
    for path in files if files is not None else measurement_files():
        for c in json.loads(Path(path).read_text())["cells"]:
            cold, warm = c.get("cold_times_s"), c.get("times_s")
            if c.get("kind") == "decode" and cold and warm and c.get("cold_shapes_new") == len(cold):
                split = "fit" if c["model"] in FIT_MODELS else "held-out"
                out += [dict(model=c["model"], split=split, source="cell", phase="decode", impl=c["impl"],
                             batch=c["batch"], kv=c["prompt"] + j + 1, build_s=a - b)
                        for j, (a, b) in enumerate(zip(cold, warm))]
    probe = probe or probe_file()
    for i, pt in enumerate(json.loads(probe.read_text())["points"] if probe else []):
        if "build_s" not in pt:
            continue
        split = "fit" if pt["model"] in FIT_MODELS else "held-out"
        out += [dict(model=pt["model"], split=split, source="probe", phase="decode", impl=pt["impl"], batch=pt["batch"],
                     kv=pt["prompt"] + j + 1, build_s=v) for j, v in enumerate(pt["build_s"])]
        if i:  # the process's very first prefill also created the CUDA context's handles (1.7 s): not a build alone
            out.append(dict(model=pt["model"], split=split, source="probe", phase="prefill", impl="grouped_mm",
                            batch=pt["batch"], kv=pt["prompt"], build_s=pt["prefill_build_s"]))
    return out


def fit_graph_build_s(rows: list[dict] | None = None) -> float:
    """attention_graph_build_s: GRAPH_BUILD_FIT over :func:`graph_build_rows` (decode steps of the FIT models)."""
    rows = graph_build_rows() if rows is None else rows
    fit_rows = [r["build_s"] for r in rows if r["split"] == "fit" and r["phase"] == "decode"]
    if not fit_rows:
        raise SystemExit("no FIT per-step build times (hf-warm lease) found")
    return statistics.median(fit_rows)


def graph_build_summary(rows: list[dict] | None = None, build_s: float | None = None) -> list[tuple]:
    """(split, model, phase, n, measured median build seconds, the constant's error on it) per model and phase."""
    rows = graph_build_rows() if rows is None else rows
    build_s = float(Transformers().constants.value("attention_graph_build_s")) if build_s is None else build_s
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r["split"], r["model"], r["phase"]), []).append(r["build_s"])
    return [(k[0], k[1], k[2], len(v), statistics.median(v), build_s / statistics.median(v) - 1.0)
            for k, v in sorted(groups.items())]


def generate_per_step_s(c: dict) -> float | None:
    """Per-step decode time of a ``generate`` cell: (T(1 + k) - T(1)) / k over the timed calls after the first of
    each kind (their medians), as the harness drops the first prefill rep and the first decode step.

    The 2026-12-03 campaign warmed up with ``generate(2)`` only, and its first ``generate(17)`` call then ran 0.3-0.4 s
    longer than the next in most batched_mm-decode cells (OLMoE 0.72 vs 0.36 s): a one-off, not per-step work. A
    second lease reproduced it in every such cell, with no cudaMalloc during the slow call
    (``*hf-decode-steps*.json``, part generate: ``tn_allocs``). With one call of a kind, that call is used."""
    t1, tn, k = c.get("t1_s"), c.get("tn_s"), c.get("steps")
    if not t1 or not tn or not k:
        return c.get("per_step_s")
    return (statistics.median(tn[1:] or tn) - statistics.median(t1[1:] or t1)) / k


def cells(path: Path | list[Path] | None = None) -> list[dict]:
    """Measured cells with a time: prefill, decode, generate (per step, :func:`generate_per_step_s`) and offload_*,
    from every campaign file (``path``: one file, a list of them, or None for all), each cell once with its leases'
    times reduced by :func:`pool_leases` (LEASE_RULE)."""
    paths = measurement_files() if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    per_lease = [_file_cells(Path(p)) for p in paths]
    # a campaign file without generate cells (hf_warm.py's) takes the other files' generate length for its cells'
    # published workload (gen_steps: the corpus' gen_tokens; nothing is timed with it)
    steps = {r["gen_steps"] for rows in per_lease for r in rows if r["gen_steps"] is not None}
    if len(steps) > 1:
        raise SystemExit(f"expected one generate step count in the measurements, found {sorted(steps)}")
    for rows in per_lease:
        for r in rows:
            if r["gen_steps"] is None:
                r["gen_steps"] = next(iter(steps), None)
    return pool_leases(per_lease)


def pool_leases(per_lease: list[list[dict]]) -> list[dict]:
    """One row per cell (CELL_KEY) over the leases' rows (one list per campaign file, oldest first): measured_s is the
    median of the leases' times (LEASE_RULE), ``lease_s`` lists them in file order, ``leases`` counts them; the other
    fields are the first lease's (the configuration is the same; decode ``steps`` are each file's own timed steps)."""
    if LEASE_RULE != "median":
        raise ValueError(f"unknown lease rule {LEASE_RULE!r}")
    pooled: dict[tuple, dict] = {}
    for lease, rows in enumerate(per_lease):
        in_lease: set[tuple] = set()
        for c in rows:
            base = tuple(c[k] for k in CELL_KEY)
            if base in in_lease:
                raise SystemExit(f"cell {base} measured twice in one campaign file")
            in_lease.add(base)
            key = base + (c.get("attn_graphs"),)  # ATTN_GRAPH_RULE: cold and warm decode cells pool apart
            row = pooled.setdefault(key, dict(c, lease_s=[], lease_index=[]))
            row["lease_s"].append(c["measured_s"])
            row["lease_index"].append(lease)
    out = []
    for row in pooled.values():
        out.append(dict(row, measured_s=statistics.median(row["lease_s"]), leases=len(row["lease_s"])))
    return out


def _file_cells(path: Path) -> list[dict]:
    """The cells of one campaign file (one lease), unpooled."""
    data = json.loads(path.read_text())
    gen_steps = generate_steps(data["cells"])
    states = _attn_graph_states(data["cells"])
    out = []
    for c, (state, new) in zip(data["cells"], states):
        t = generate_per_step_s(c) if c.get("kind") == "generate" else c.get("median_s", c.get("per_step_s"))
        if t is None or t <= 0:
            continue
        offload = c["kind"].startswith("offload_")
        model = c["model"]
        split = "fit" if model in (FIT_OFFLOAD_MODELS if offload else FIT_MODELS) else "held-out"
        phase = c["kind"].removeprefix("offload_")
        steps = c["steps"] if phase == "generate" else len(c["times_s"]) if phase == "decode" else None
        out.append(dict(c, measured_s=t, split=split, offload=offload, phase=phase, steps=steps, gen_steps=gen_steps,
                        attn_graphs=state, attn_new_fraction=new))
    return out


def generate_steps(raw_cells: list[dict]) -> int | None:
    """The new tokens of the file's timed ``generate`` calls (their ``steps``; hf_generate.py writes one value);
    None for a file with no generate cells (hf_warm.py's)."""
    steps = {c["steps"] for c in raw_cells if c.get("kind") == "generate" and c.get("steps")}
    if not steps and not any(c.get("kind") == "generate" for c in raw_cells):
        return None
    if len(steps) != 1:
        raise SystemExit(f"expected one generate step count in the measurements, found {sorted(steps)}")
    return steps.pop()


#: How a cell's routing is stated (fixed 2026-12-03 when the hf-routing lease came back, before any cell was scored
#: with it): the random-weight routers do not spread tokens uniformly in prefill (one prompt's 128 random tokens reach
#: 25 of OLMoE's 64 experts a layer, 32 of Qwen3-30B-A3B's 128, 23 of Qwen1.5-MoE's 60, where uniform routing reaches
#: all of them), and the eager experts loop runs one iteration per expert hit. Decode steps route as uniformly as
#: expected (experts hit a layer within 4% of uniform routing's expectation at every measured shape, e.g.
#: DeepSeek-V2-Lite 20.6 against 20.1 at batch 4, Qwen3-30B-A3B 29.6 against 28.4), so decode and generate cells keep
#: uniform routing (a measured histogram of a handful of tokens, resampled as a distribution, would understate the
#: experts a step reaches). "measured": a prefill cell (model, batch, prompt) is predicted with the experts its
#: prefill reached on the hf-routing lease, the mean over layers and draws, as ``Options.experts_hit`` (the eager
#: loop's iterations and the rows of each; the tokens of one prompt route together, so a histogram resampled as
#: independent draws would put 75 of Qwen3-30B-A3B's experts where 34 were reached); a shape not measured keeps
#: uniform routing.
ROUTING_RULE = "measured"


def routing_file() -> Path | None:
    files = sorted(glob.glob(str(ROOT / "validation/measurements/h200/transformers/*hf-routing*.json")))
    return Path(files[-1]) if files else None


@lru_cache(maxsize=1)
def _routing_hits() -> dict[tuple[str, int, int, str], float]:
    """(model, batch, prompt, phase) -> experts hit a MoE layer, the mean over the layers and draws of the hf-routing
    lease (ROUTING_RULE)."""
    path = routing_file()
    if path is None:
        return {}
    groups: dict[tuple, list[int]] = {}
    for c in json.loads(path.read_text())["cells"]:
        key = (c["model"], c["batch"], c["prompt"], c["phase"])
        groups.setdefault(key, []).extend(sum(1 for x in layer if x) for layer in c["counts"])
    return {key: statistics.fmean(hits) for key, hits in groups.items() if hits}


def routing_of(model: str, batch: int, prompt: int, phase: str) -> float | None:
    """The experts hit a layer a cell is predicted with (ROUTING_RULE): a prefill cell's own shape's measured count,
    None (uniform routing) for decode and generate cells and for a shape not measured."""
    if ROUTING_RULE != "measured" or phase != "prefill":
        return None
    return _routing_hits().get((model, batch, prompt, "prefill"))


def _ctx(model: str, layers: int, batch: int, prompt: int, experts_hit: float | None = None) -> Context:
    spec = get_model(model)
    if layers != spec.num_layers:
        spec = spec.model_copy(update={"num_layers": layers})
    return Context(spec, get_hardware("h200"), OfflineWorkload(num_requests=batch, prompt_tokens=prompt, gen_tokens=8),
                   Options(experts_hit=experts_hit))


def predict_cell(c: dict, consts: dict[str, float] | None = None) -> float:
    """Predicted seconds of one measured cell with the system's pricing (``consts`` override the YAML)."""
    # every timed cell ran at attention shapes the process had built before (the harness drops a prefill's first rep,
    # times generate after a warm-up call of the same length, decode on a second pass) except the cold forward-only
    # decode cells of ATTN_GRAPH_RULE, whose timed median step paid one build when most of its timed steps were new
    system = Transformers({"experts_implementation": "grouped_mm", "cpu_offload": c["offload"],
                           "attention_graph_cache": "warm"}, constants_override=consts or None)
    ctx = _ctx(c["model"], c["layers"], c["batch"], c["prompt"],
               routing_of(c["model"], c["batch"], c["prompt"], c["phase"]))
    b, p = c["batch"], c["prompt"]
    if c["phase"] == "prefill":
        return system.forward_s(ctx, b, p, p, c["impl"]).now
    if c["phase"] == "decode":  # the cell's timed steps 2..steps after the prefill (the first dropped): the middle
        kv = p + 1 + (c["steps"] + 1) // 2
        build = system.attention_graph_build_s(ctx) if c.get("attn_new_fraction", 0.0) > 0.5 else 0.0
        return system.forward_s(ctx, b, 1, kv, c["impl"], graph_build_s=build).now
    # whole generate calls: decode steps inside generate (grouped_mm decodes as batched_mm there)
    impl = "batched_mm" if c["impl"] == "grouped_mm" else c["impl"]
    return system.forward_s(ctx, b, 1, p + 1 + c["steps"] // 2, impl, generate_step=True).now


def host_measurement_file() -> Path | None:
    files = sorted(glob.glob(str(ROOT / "validation/measurements/h200/transformers/*hf-batched-mm-host*.json")))
    return Path(files[-1]) if files else None


HOST_PROMPT_KV = 16  # the host cells' prompt (validation/torchbench/hf_batched_mm.py part host)


def host_cells(path: Path | None = None) -> list[dict]:
    """Host-bound cells: whole forwards (prefill of 16 tokens, decode steps) and generate's per-step time of each
    model built at hidden size 128 (same layers, experts, top_k and modelling code; trivial kernels), so their
    wall time is the host's: written by validation/torchbench/hf_batched_mm.py (part host). Split as FIT_MODELS."""
    path = path or host_measurement_file()
    if path is None:
        return []
    data = json.loads(path.read_text())["host"]
    out = []
    for c in data.get("forward", []):
        for phase in ("prefill", "decode"):
            if c.get(phase + "_s"):
                out.append(dict(model=c["model"], layers=c["layers"], impl=c["impl"], phase="host " + phase,
                                measured_s=c[phase + "_s"], split="fit" if c["model"] in FIT_MODELS else "held-out"))
    for c in data.get("generate", []):
        if c.get("per_step_s"):
            out.append(dict(model=c["model"], layers=c["layers"], impl=c["impl"], phase="host generate",
                            measured_s=c["per_step_s"], steps=c["steps"],
                            split="fit" if c["model"] in FIT_MODELS else "held-out"))
    return out


def small_spec(model: str, layers: int):
    """The model's spec at the host cells' widths (hidden 128, 4 heads of 32, expert/shared/dense width 64,
    vocabulary 1024; MLA ranks 32/32/16/32), as hf_batched_mm.small_config builds it: GPU work trivial."""
    spec = get_model(model)
    a = spec.attention
    att = {"num_heads": 4, "num_kv_heads": 4 if a.num_kv_heads >= 4 else a.num_kv_heads, "head_dim": 32}
    if a.kind == "mla":
        att.update(kv_lora_rank=32, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32)
    upd = {"num_layers": layers, "hidden_size": 128, "vocab_size": 1024, "attention": a.model_copy(update=att)}
    if spec.moe is not None:
        upd["moe"] = spec.moe.model_copy(update={"expert_intermediate_size": 64, "shared_expert_intermediate_size": 64})
    if spec.dense_ffn is not None:
        upd["dense_ffn"] = spec.dense_ffn.model_copy(update={"intermediate_size": 64})
    return spec.model_copy(update=upd)


def predict_host_cell(c: dict, consts: dict[str, float] | None = None) -> float:
    system = Transformers({"experts_implementation": "grouped_mm"}, constants_override=consts or None)
    ctx = Context(small_spec(c["model"], c["layers"]), get_hardware("h200"),
                  OfflineWorkload(num_requests=1, prompt_tokens=HOST_PROMPT_KV, gen_tokens=8), Options())
    p = HOST_PROMPT_KV
    if c["phase"] == "host prefill":
        return system.forward_s(ctx, 1, p, p, c["impl"]).now
    if c["phase"] == "host decode":
        return system.forward_s(ctx, 1, 1, p + 8, c["impl"]).now
    impl = "batched_mm" if c["impl"] == "grouped_mm" else c["impl"]
    return system.forward_s(ctx, 1, 1, p + 1 + c["steps"] // 2, impl, generate_step=True).now


def in_generate(c: dict) -> bool:
    """Whether ``generate`` runs this cell's kernels in its steady state: its decode loop never runs grouped_mm
    (transformers 5.17 switches it to batched_mm), so forward-only grouped_mm decode cells (full-size or host) are
    scored apart; nor does it time cuDNN attention graph builds, so cold forward-only decode cells (ATTN_GRAPH_RULE)
    are scored apart and inform no fit."""
    if c.get("attn_graphs") == "cold":
        return False
    return not (c["phase"] in ("decode", "host decode") and c["impl"] == "grouped_mm")


def errors(rows: list[dict], consts: dict[str, float] | None = None) -> list[dict]:
    out = []
    for c in rows:
        pred = predict_cell(c, consts)
        out.append(dict(c, predicted_s=pred, error=pred / c["measured_s"] - 1.0))
    return out


#: micro-benchmark ops of hf_batched_mm.py (part host) that time plain torch calls, and the torch calls each makes
MICRO_CALLS = {"add": 1, "mul": 1, "view_transpose": 2, "linear": 1, "cat": 1, "hf_rmsnorm_body": 8}
#: (module call, the same body called directly): their difference is the nn.Module.__call__ machinery
MODULE_PAIRS = (("module_linear", "linear"), ("module_add", "add"), ("hf_rmsnorm_module", "hf_rmsnorm_body"))
#: host-bound forwards whose per-forward host time (intercept over the layer count) bounds forward_host_s: the
#: phases generate runs whose work does not depend on the routing of the small random models (not eager prefill:
#: the random-weight hidden-128 models send the 16 prompt tokens to far fewer experts than uniform routing would)
INTERCEPT_GROUPS = {("host prefill", "grouped_mm"), ("host prefill", "batched_mm"), ("host decode", "batched_mm"),
                    ("host decode", "eager")}
FIT_BOUNDED = ("torch_call_s", "module_call_s", "forward_host_s", "decoder_layer_host_s", "generate_step_host_s")


def decode_steps_file() -> Path | None:
    files = sorted(glob.glob(str(ROOT / "validation/measurements/h200/transformers/*hf-decode-steps*.json")))
    return Path(files[-1]) if files else None


#: torch calls and host reads of one iteration of transformers 5.17's eager experts loop body (systems_db:
#: eager_expert_calls, eager_expert_syncs), as hf_decode_steps.py's stub runs it
EAGER_ITERATION = (17, 5)


def measured_read_s(path: Path | None = None) -> dict:
    """host_read_s, measured on one lease (hf_decode_steps.py part micro): one iteration of the eager loop body at
    the FIT models' expert shapes (OLMoE-1B-7B; 1 and 16 tokens; median burst time) less its 17 torch calls at that
    lease's median per-call time (MICRO_CALLS), over its 5 host reads::

        host_read_s = (t_iteration - 17 t_call) / 5

    The stub's kernels (a one-token expert FFN on 12.6 MB of weights, ~3 us of HBM time) are part of what it leaves to
    the reads; the held-out shapes the stub also ran are not used."""
    micro = json.loads((path or decode_steps_file()).read_text())["micro"]
    per_call = statistics.median(micro[k]["burst_per_call_s"] / n for k, n in MICRO_CALLS.items())
    iters = [v["burst_per_call_s"] for k, v in micro.items()
             if k.startswith("eager_iteration ") and k.split()[1] in FIT_MODELS]
    calls, reads = EAGER_ITERATION
    t_iter = statistics.median(iters)
    return {"per_call_s": per_call, "iteration_s": t_iter, "iterations": len(iters),
            "host_read_s": (t_iter - calls * per_call) / reads}


def measured_host_costs(path: Path | None = None, host_rows: list[dict] | None = None) -> dict:
    """Host costs measured directly on the device (hf_batched_mm.py part host), FIT models only:

    torch_call_s = the median per-call burst time of MICRO_CALLS; the module machinery's bracket [0, largest of
    the MODULE_PAIRS differences] (they differ by +-3 us: this host's noise); per-forward host time = the
    intercept t(2) - 2 (t(L) - t(2)) / (L - 2) of the FIT models' host-bound forwards at 2 and L layers
    (INTERCEPT_GROUPS), whose largest bounds forward_host_s."""
    micro = json.loads((path or host_measurement_file()).read_text())["host"]["micro"]
    per_call = [micro[k]["burst_per_call_s"] / n for k, n in MICRO_CALLS.items()]
    diffs = [micro[a]["burst_per_call_s"] - micro[b]["burst_per_call_s"] for a, b in MODULE_PAIRS]
    by: dict[tuple, dict[int, float]] = {}
    for c in host_cells(path) if host_rows is None else host_rows:
        if c["split"] == "fit" and (c["phase"], c["impl"]) in INTERCEPT_GROUPS:
            by.setdefault((c["model"], c["phase"], c["impl"]), {})[c["layers"]] = c["measured_s"]
    intercepts = []
    for t in by.values():
        lo, hi = min(t), max(t)
        if hi > lo:
            intercepts.append(t[lo] - lo * (t[hi] - t[lo]) / (hi - lo))
    return {"torch_call_s": statistics.median(per_call), "module_call_diffs_s": diffs,
            "module_call_upper_s": max(0.0, max(diffs)), "forward_intercepts_s": intercepts,
            "forward_host_upper_s": max(intercepts) if intercepts else float("inf")}


def fit(rows: list[dict]) -> dict[str, float]:
    """Fit the host constants on the FIT cells only, inside what the device measured directly.

    torch_call_s in [the device's per-call measurement (:func:`measured_host_costs`: a bare op in a tight loop, the
    cheapest a call of the modelling code can be), twice that], module_call_s (in [0, the measured module
    bracket]), forward_host_s (in [0, the largest per-forward intercept of the FIT models' host-bound forwards]),
    decoder_layer_host_s and generate_step_host_s (>= 0) by bounded least squares on log(predicted / measured) of
    the FIT models' forward and generate cells that generate runs, each (phase, backend) group weighted equally
    (the same lease as the scored cells: host speed differs between leases, so the host-bound cells of
    hf_batched_mm.py bound the constants but are not fitted on). Then offload_module_s on the FIT offload cells
    (OLMoE's). The GPU side is not fitted here (kernel families: transformers_grouped_mm_kernels.py,
    transformers_batched_mm_kernels.py)."""
    import numpy as np
    from scipy.optimize import least_squares, minimize

    measured = measured_host_costs()
    base = {k: float(Transformers().constants.value(k)) for k in FITTED}
    base["torch_call_s"] = measured["torch_call_s"]
    use = [c for c in rows if c["split"] == "fit" and not c["offload"] and in_generate(c)]
    sizes: dict[tuple, int] = {}
    for c in use:
        sizes[(c["phase"], c["impl"])] = sizes.get((c["phase"], c["impl"]), 0) + 1

    def res(x):
        consts = dict(base, **dict(zip(FIT_BOUNDED, map(float, x))))
        return [math.log(predict_cell(c, consts) / c["measured_s"]) / math.sqrt(sizes[(c["phase"], c["impl"])])
                for c in use]

    lower = [measured["torch_call_s"], 0.0, 0.0, 0.0, 0.0]
    upper = [2 * measured["torch_call_s"], max(measured["module_call_upper_s"], 1e-12),
             max(measured["forward_host_upper_s"], 1e-12), 5e-3, 50e-3]
    x0 = [1.05 * lower[0], upper[1] / 2, upper[2] / 2, 1e-4, 1e-3]
    r = least_squares(res, x0, bounds=(lower, upper), x_scale=[1e-6, 1e-6, 1e-3, 1e-4, 1e-3])
    consts = dict(base, **dict(zip(FIT_BOUNDED, map(float, r.x))))
    off = [c for c in rows if c["split"] == "fit" and c["offload"]]
    if off:
        def loss(x):
            return float(np.mean([abs(math.log(predict_cell(c, dict(consts, offload_module_s=float(np.exp(x[0]))))
                                               / c["measured_s"])) for c in off]))
        rr = minimize(loss, [math.log(base["offload_module_s"])], method="Nelder-Mead", options={"maxiter": 60})
        consts["offload_module_s"] = float(np.exp(rr.x[0]))
    return consts


def second_lease_generate(consts: dict[str, float] | None = None) -> list[dict]:
    """``generate`` cells of the second lease (``*hf-decode-steps*.json``, part generate; warm-up then three calls of
    each length), scored for what they show and never fitted: host speed differs between leases (there eager decode ran
    15-40 % slower than on the fitted lease, batched_mm decode within +-20 %), so they are printed apart."""
    path = decode_steps_file()
    if path is None:
        return []
    out = []
    for c in json.loads(path.read_text())["generate"]:
        t = generate_per_step_s(c) if "tn_s" in c else None
        if not t:
            continue
        row = dict(c, kind="generate", phase="generate", offload=False, measured_s=t,
                   split="fit" if c["model"] in FIT_MODELS else "held-out")
        pred = predict_cell(row, consts)
        out.append(dict(row, predicted_s=pred, error=pred / t - 1.0))
    return out


def host_errors(rows: list[dict], consts: dict[str, float] | None = None) -> list[dict]:
    return [dict(c, predicted_s=(p := predict_host_cell(c, consts)), error=p / c["measured_s"] - 1.0) for c in rows]


CITATION = ("moesim's own H200 measurements of Hugging Face transformers 5.17 generate "
            "(validation/torchbench/hf_generate.py; validation/measurements/h200/transformers/)")


def _cell_key(c: dict) -> str:
    return f"{c['model']}|{c['kind']}|{c['impl']}|b{c['batch']}|p{c['prompt']}"


def published_cells() -> list:
    """The published corpus' cells (:mod:`moesim.calibration.published`): each measured prefill (a static batch's
    TTFT) and per-step decode inside ``generate`` (TPOT), split as :func:`cells` says (FIT_MODELS fit)."""
    from moesim.calibration.published import PublishedCell

    try:
        measured = cells()
    except SystemExit:  # no measurement file
        return []
    out, seen = [], set()
    for c in measured:
        if not in_generate(c) or _cell_key(c) in seen:
            continue
        seen.add(_cell_key(c))
        out.append(PublishedCell(
            key=_cell_key(c), citation=CITATION,
            setup=f"1 x H200, transformers 5.17, {c['model']} cut to {c['layers']} layers, random bf16 weights, "
                  f"batch {c['batch']}, prompt {c['prompt']}, experts {c['impl']}"
                  + (", accelerate cpu_offload" if c["offload"] else ""),
            row=f"generate, experts {c['impl']}" + (" + cpu_offload" if c["offload"] else ""),
            model=c["model"], hardware="h200", system="transformers",
            figure="ttft_s" if c["phase"] == "prefill" else "tpot_s", published=float(c["measured_s"]),
            split=c["split"], workload={"batch_size": c["batch"], "num_requests": c["batch"],
                                        "prompt_tokens": c["prompt"], "gen_tokens": c["gen_steps"]},
            params={"experts_implementation": c["impl"], "cpu_offload": bool(c["offload"])},
            table=f"{c['phase']} {c['impl']}"))
    return out


_MEASURED: dict[str, dict] = {}


def evaluate(cell):
    """The corpus' Result of one cell: :func:`predict_cell` on the measured configuration (the model cut to the
    measured layers), with the band ``moesim.predict`` puts around the same figure of the whole model."""
    import moesim
    from moesim.calibration.published import Result, band_of
    from moesim.errors import MoesimError

    if not _MEASURED:
        # the corpus' cells only (in_generate): a cold forward-only decode row shares its key with the warm one
        _MEASURED.update((_cell_key(m), m) for m in cells() if in_generate(m))
    value = predict_cell(_MEASURED[cell.key])
    try:
        p = moesim.predict(cell.model, cell.hardware, cell.system, dict(cell.workload), system_params=dict(cell.params))
    except MoesimError as exc:
        return Result(cell, reason=str(exc).splitlines()[0][:200])
    low, high = band_of(p, cell.figure, value)
    return Result(cell, predicted=value, low=low, high=high, uncertainty=p.uncertainty)


def summary(rows: list[dict]) -> list[tuple]:
    """(split, phase, impl, offload, n, median |error|) groups."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        phase = r["phase"]
        if r.get("attn_graphs") == "cold":
            phase += " (forward only, cold attention graphs)"
        elif not in_generate(r):
            phase += " (forward only, outside generate)"
        key = (r["split"], phase, r["impl"], r["offload"])
        groups.setdefault(key, []).append(abs(r["error"]))
    return [(k[0], k[1], k[2], k[3], len(v), statistics.median(v)) for k, v in sorted(groups.items())]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", action="store_true", help="fit the host constants on the FIT cells, then score")
    ap.add_argument("--cells", action="store_true", help="print every cell")
    ap.add_argument("--by-model", action="store_true", help="also print the median error per model, phase and backend")
    ap.add_argument("--graph-builds", action="store_true",
                    help="also print the cuDNN attention graph build times of the hf-warm lease against the constant")
    ap.add_argument("--second-lease", action="store_true",
                    help="also print the generate cells of the second lease (hf_decode_steps.py), never fitted")
    args = ap.parse_args()
    rows = cells()
    consts = None
    if args.fit:
        consts = fit(rows)
        print("fitted (write these into systems_db/transformers.yaml):")
        for k, v in consts.items():
            print(f"  {k}: {v:.4g}")
    scored = errors(rows, consts)
    if args.cells:
        for r in scored:
            print(f"{r['split']:8s} {r['model']:18s} {r['kind']:16s} {r['impl']:10s} b={r['batch']:3d} p={r['prompt']:3d} "
                  f"measured {r['measured_s'] * 1e3:9.2f} ms  predicted {r['predicted_s'] * 1e3:9.2f} ms  "
                  f"{r['error'] * 100:+6.1f}%" + (f"  leases {' / '.join(f'{t * 1e3:.2f}' for t in r['lease_s'])} ms"
                                                   if r.get("leases", 1) > 1 else ""))
    if args.by_model:
        groups: dict[tuple, list[float]] = {}
        for r in scored:
            if in_generate(r):
                key = (r["split"], r["model"], "offload_" + r["phase"] if r["offload"] else r["phase"], r["impl"])
                groups.setdefault(key, []).append(r["error"])
        print(f"{'split':8s} {'model':18s} {'phase':16s} {'impl':10s} {'n':>3s} {'median err':>10s} {'median |err|':>12s}")
        for (split, model, phase, impl), v in sorted(groups.items()):
            print(f"{split:8s} {model:18s} {phase:16s} {impl:10s} {len(v):3d} {statistics.median(v) * 100:+9.1f}% "
                  f"{statistics.median(map(abs, v)) * 100:11.1f}%")
        print()
    host = host_errors(host_cells(), consts)
    if args.cells:
        for r in host:
            print(f"{r['split']:8s} {r['model']:18s} {r['phase']:16s} {r['impl']:10s} L={r['layers']:3d}          "
                  f"measured {r['measured_s'] * 1e3:9.2f} ms  predicted {r['predicted_s'] * 1e3:9.2f} ms  "
                  f"{r['error'] * 100:+6.1f}%")
    if args.second_lease:
        print("second lease (2026-12-03-hf-decode-steps.json), per-step decode inside generate:")
        for r in second_lease_generate(consts):
            print(f"{r['split']:8s} {r['model']:18s} {r['impl']:10s} b={r['batch']:3d} measured {r['measured_s'] * 1e3:8.2f} ms"
                  f"  predicted {r['predicted_s'] * 1e3:8.2f} ms  {r['error'] * 100:+6.1f}%")
        print()
    if args.graph_builds:
        rows_b = graph_build_rows()
        fitted = fit_graph_build_s(rows_b)
        const = float(Transformers().constants.value("attention_graph_build_s"))
        print(f"attention graph build: fitted {fitted * 1e3:.2f} ms ({GRAPH_BUILD_FIT}); YAML {const * 1e3:.2f} ms")
        print(f"{'split':8s} {'model':18s} {'phase':8s} {'n':>4s} {'measured ms':>11s} {'YAML err':>9s}")
        for split, model, phase, n, med, err in graph_build_summary(rows_b, const):
            print(f"{split:8s} {model:18s} {phase:8s} {n:4d} {med * 1e3:11.2f} {err * 100:+8.1f}%")
        print()
    print(f"{'split':8s} {'phase':40s} {'impl':10s} {'offload':7s} {'n':>3s} {'median |err|':>12s}")
    for split, phase, impl, off, n, m in summary(scored) + summary([dict(r, offload=False) for r in host]):
        print(f"{split:8s} {phase:40s} {impl:10s} {str(off):7s} {n:3d} {m * 100:11.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
