"""Re-measure the forward-only decode cells with the fixed hf_generate.py (warm, timed second pass), and the cost of
PyTorch's cuDNN attention graph builds, on one lease.

Why: the hf-fwd-cause lease found that PyTorch's cuDNN attention (what transformers' ``sdpa`` runs on the H200)
builds and caches one cuDNN graph per attention shape (batch, query length, KV length, geometry) the process has not
run yet, 37-57 ms of host time each; earlier forward-only decode cells were cold or warm by the accident of cell order.
hf_generate.py's run_cells now runs each decode cell's steps twice (``cold_times_s``: the first pass; ``times_s``: the
second, over the same KV lengths on a fresh prefill of the same prompt). This script uses hf_generate.py's own
functions (so its method exactly):

1. ``probe`` (first: cheap, and the build cost is what this lease is for): per model (two FIT, OLMoE-1B-7B and
   Qwen1.5-MoE-A2.7B; two held-out, Qwen3-30B-A3B and Mixtral-8x7B), at batch sizes and KV lengths no other part of
   this process runs (each model its own prompt lengths, so no probe point finds another's graphs): prefill reps
   with grouped_mm (the first at a new prefill shape: its build), then PROBE_STEPS decode steps with the model's
   backend (each at a new KV length: a build each), then a fresh prefill of the same prompt and the same steps again (every shape cached); per step the
   difference first - second is the host time of one build. Points: batch 1, 4, 16, 64 at one prompt; prompts from 64
   to 3000 at batch 1;
2. ``cells``: hf_generate.run_cells (prefill + decode; ``eager`` and ``batched_mm``; the campaign's batches and
   prompts; the campaign's batched_mm gather limit; budget skips recorded) for all five models, batches 1 and 4 for
   every model first, then 16, 64, 256, each round FIT models first; per model a deadline from hf_generate.PHASES'
   shares;
3. ``grouped``: the same cells with ``grouped_mm`` while the budget lasts (generate decodes grouped_mm as batched_mm,
   so these forward-only cells are scored outside generate).

Cells go to ``$OUT/hf_generate.json`` in hf_generate.py's format (a campaign file of transformers_h200.py's LEASE_RULE;
no ``generate`` cells: that file's per-step generate cells are the other leases'), each with ``cold_shapes_new``:
how many of its cold pass's decode shapes (attention geometry, batch, KV length) this process had not run before the
cell (the first backend of a (batch, prompt) builds them; the next backends' first passes find them cached; OLMoE and
Qwen1.5-MoE share one geometry). The probe goes to ``$OUT/hf_warm_probe.json``. Written after every cell.

Device: ``PYTHONUNBUFFERED=1 python hf_warm.py --out $OUT --budget-s 470``; CPU check: ``python hf_warm.py --tiny
--out /tmp/x`` (shrunk configs, 2 layers, the same code path).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import hf_generate as G  # noqa: E402

FIT = ("olmoe-1b-7b", "qwen1.5-moe-a2.7b")
HELD_OUT = ("deepseek-v2-lite", "qwen3-30b-a3b", "mixtral-8x7b")
MODELS = FIT + HELD_OUT
#: probe: model -> (experts backend, base prompt, prompts at batch 1); prompts no cell uses and no two models share
PROBE = {"olmoe-1b-7b": ("batched_mm", 200, (64, 1000, 3000)),
         "qwen1.5-moe-a2.7b": ("batched_mm", 216, (72, 1016, 3016)),
         "qwen3-30b-a3b": ("batched_mm", 232, (80, 1032, 3032)),
         "mixtral-8x7b": ("eager", 248, (88, 1048, 3048))}
PROBE_BATCHES = (1, 4, 16, 64)
PROBE_STEPS = 5
PROBE_PREFILL_REPS = 3
#: budget shares (cumulative deadlines): probe, then the eager + batched_mm cells (two rounds), then grouped_mm
PROBE_SHARE = 0.14
CELL_SHARE = 0.68
ROUNDS = ((1, 4), (16, 64, 256))


def geometry(config) -> tuple:
    """What of a model enters the attention shape besides batch and lengths: heads, KV heads, head dims."""
    heads = config.num_attention_heads
    if getattr(config, "kv_lora_rank", None):  # DeepSeek MLA: per-head K of nope + rope, V of v_head_dim
        return ("mla", heads, heads, config.qk_nope_head_dim + config.qk_rope_head_dim, config.v_head_dim)
    hd = getattr(config, "head_dim", None) or config.hidden_size // heads
    return ("mha", heads, getattr(config, "num_key_value_heads", heads), hd, hd)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/hf_warm"))
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--budget-s", type=float, default=470.0)
    args = ap.parse_args()
    G.T0 = t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    entries = json.loads((HERE / "hf_configs.json").read_text())["models"]
    meta = G.campaign_meta(args, entries, harness="hf_warm.py",
                           method="hf_generate.py's run_cells (eager, batched_mm, then grouped_mm): wall time between "
                                  "torch.cuda.synchronize() calls; prefill median of reps after the first; decode "
                                  "median of steps after the first of the second pass over the cell's KV lengths "
                                  "(the first pass: cold_times_s; cold_shapes_new: its decode shapes new to the "
                                  "process); no generate cells",
                           cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                           cuda_capability=list(torch.cuda.get_device_capability()) if torch.cuda.is_available() else None)
    rec = G.Recorder(out, meta)
    probe = {"meta": meta, "points": [], "log": []}
    probe_path = out / "hf_warm_probe.json"

    def flush_probe():
        tmp = probe_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(probe, indent=1))
        os.replace(tmp, probe_path)

    def note(msg):
        rec.note(f"[{time.perf_counter() - t0:6.1f} s] {msg}")

    built: dict[str, tuple] = {}

    def build(key):
        if key in built:
            return built[key]
        for k in list(built):  # one model on the GPU at a time
            del built[k]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        entry = entries[key]
        layers = 2 if args.tiny else int(entry["measured_layers"])
        tb = time.perf_counter()
        model, config = G.build(entry, layers, args.tiny)
        note(f"built {key} ({layers} layers) in {time.perf_counter() - tb:.1f} s")
        built[key] = (model, config, layers)
        return built[key]

    seen: set[tuple] = set()  # (geometry, batch, KV length) of every decode step this process ran

    def run(key, config, impls, batches, deadline, model, layers):
        before = len(rec.data["cells"])
        G.run_cells(rec, model, config, key, layers, deadline, config.vocab_size, impls=impls, batches=batches)
        geo = geometry(config)
        for c in rec.data["cells"][before:]:  # in execution order: the cold pass meets what earlier cells left
            if c.get("kind") == "decode" and c.get("cold_times_s") is not None:
                shapes = {(geo, c["batch"], c["prompt"] + j) for j in range(1, len(c["cold_times_s"]) + 1)}
                c["cold_shapes_new"] = len(shapes - seen)
                c["attn_geometry"] = list(geo)
                seen.update(shapes)
        rec.flush()

    # 1. probe of the build cost
    deadline = t0 + PROBE_SHARE * args.budget_s
    for key, (impl, p0, prompts) in PROBE.items():
        if time.perf_counter() > deadline - 5:
            note(f"probe {key}: skipped (budget)")
            continue
        try:
            model, config, layers = build(key)
            points = [(b, p0) for b in PROBE_BATCHES] + [(1, p) for p in prompts]
            for b, p in points:
                if time.perf_counter() > deadline:
                    probe["points"].append(dict(model=key, impl=impl, batch=b, prompt=p, skipped="budget"))
                    continue
                if args.tiny:
                    p = min(p, 300)
                ids = torch.randint(2, config.vocab_size, (b, p), device=G.dev())
                pre = []
                model.set_experts_implementation("grouped_mm")  # prefill as generate runs it (no batched_mm gather)
                for _ in range(PROBE_PREFILL_REPS):
                    t, (o, cache, mask) = G.wall(lambda: G.prefill_once(model, ids))
                    pre.append(t)
                model.set_experts_implementation(impl)
                cold = G.decode_steps(model, o, cache, mask, PROBE_STEPS)
                del o, cache
                model.set_experts_implementation("grouped_mm")
                o, cache, mask = G.prefill_once(model, ids)
                model.set_experts_implementation(impl)
                warm = G.decode_steps(model, o, cache, mask, PROBE_STEPS)
                del o, cache
                build_s = [c - w for c, w in zip(cold, warm)]
                probe["points"].append(dict(
                    model=key, layers=layers, impl=impl, batch=b, prompt=p, attn_geometry=list(geometry(config)),
                    prefill_s=pre, prefill_build_s=pre[0] - statistics.median(pre[1:]),
                    cold_s=cold, warm_s=warm, build_s=build_s, build_median_s=statistics.median(build_s)))
                flush_probe()
                print(f"  probe {key:18s} b={b:3d} p={p:5d} warm {statistics.median(warm) * 1e3:7.2f} ms  "
                      f"build {statistics.median(build_s) * 1e3:7.2f} ms/step  prefill build "
                      f"{(pre[0] - statistics.median(pre[1:])) * 1e3:7.2f} ms", flush=True)
        except torch.OutOfMemoryError as err:
            probe["log"].append(f"{key}: OOM {str(err).splitlines()[0][:200]}")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception as err:  # noqa: BLE001  (the campaign goes on)
            probe["log"].append(f"{key}: {type(err).__name__}: {err}"[:300])
            note(traceback.format_exc()[-1500:])
        flush_probe()
    note("probe done")

    # 2. eager + batched_mm cells: batches 1, 4 of every model, then the larger batches; per-model deadlines
    shares = {k: f for k, f in G.PHASES if k in MODELS}
    total = sum(shares.values())
    share = PROBE_SHARE
    for rnd, batches in enumerate(ROUNDS):
        round_share = CELL_SHARE * (0.45 if rnd == 0 else 0.55)
        for key in MODELS:
            share += round_share * shares[key] / total
            deadline = t0 + share * args.budget_s
            if time.perf_counter() > deadline - 2:
                note(f"cells {key} {batches}: skipped (budget)")
                continue
            try:
                model, config, layers = build(key)
                run(key, config, ("batched_mm", "eager"), batches, deadline, model, layers)
            except Exception as err:  # noqa: BLE001
                note(f"cells {key} failed: {type(err).__name__}: {err}")
                note(traceback.format_exc()[-1500:])
    note("eager + batched_mm cells done")

    # 3. grouped_mm cells while the budget lasts (same per-model split of what is left)
    end = t0 + args.budget_s
    for i, key in enumerate(MODELS):
        left = end - time.perf_counter()
        if left < 8:
            note(f"grouped_mm {key}: skipped (budget)")
            continue
        deadline = time.perf_counter() + left * shares[key] / sum(shares[k] for k in MODELS[i:])
        try:
            model, config, layers = build(key)
            run(key, config, ("grouped_mm",), G.BATCHES, deadline, model, layers)
        except Exception as err:  # noqa: BLE001
            note(f"grouped_mm {key} failed: {type(err).__name__}: {err}")
            note(traceback.format_exc()[-1500:])
    rec.data["meta"]["finished_s"] = time.perf_counter() - t0
    rec.flush()
    flush_probe()
    table(rec)
    return 0


def table(rec) -> None:
    print(f"{'model':18s} {'kind':8s} {'impl':10s} {'b':>4s} {'p':>4s} {'ms':>9s} {'cold ms':>9s} {'new':>4s}")
    for c in rec.data["cells"]:
        v = c.get("median_s")
        s = f"{v * 1e3:9.2f}" if v is not None else ("skip" if "skipped" in c else ("OOM" if "oom" in c else "ERR"))
        cold = c.get("cold_times_s")
        cs = f"{statistics.median(cold[1:]) * 1e3:9.2f}" if cold else ""
        print(f"{c['model']:18s} {c['kind']:8s} {c['impl']:10s} {c['batch']:4d} {c['prompt']:4d} {s:>9s} {cs:>9s} "
              f"{c.get('cold_shapes_new', ''):>4}")
    print(f"finished in {rec.data['meta'].get('finished_s', 0):.0f} s")


if __name__ == "__main__":
    sys.exit(main())
