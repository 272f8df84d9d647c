"""Time Hugging Face transformers ``generate`` on MoE models built from their published configs.

What a user of ``model.generate`` gets, measured with the real modelling code of the installed
transformers (5.17 on the lent H200), random bf16 weights (nothing can be downloaded there), sdpa
attention, the default DynamicCache, greedy decoding, static batches of equal-length prompts:

* ``prefill``: one forward over ``batch x prompt`` tokens with a fresh DynamicCache and
  ``logits_to_keep=1`` (what ``generate``'s prefill calls), wall time between two
  ``torch.cuda.synchronize()`` (the host's Python is part of what is timed);
* ``decode``: the following single-token forwards on the same cache, each with its attention
  mask grown by one column as ``generate`` grows it; the median of the steps after the first. Each cell
  first runs its steps once on one prefill's cache (``cold_times_s``, kept apart), then again on a fresh
  prefill of the same prompt (``times_s``, the timed pass): PyTorch's cuDNN attention (``sdpa`` on the
  H200) builds and caches one cuDNN graph per attention shape, batch and KV length included, and the first
  forward at a KV length the process has not run yet paid 37-57 ms of host time for it on the lent H200
  (``validation/measurements/h200/transformers/2026-12-03-hf-fwd-cause.json``); the ``generate`` cells are
  timed over calls after a warm-up call of the timed length, so both take the cached (steady) state. Files
  written before this change timed the first pass (``transformers_h200.py`` sorts those cells by whether
  an earlier cell of the process had run the same shapes: ``ATTN_GRAPH_RULE``);
* ``generate``: whole ``model.generate`` calls with ``max_new_tokens = min_new_tokens = n`` for
  n = 1 and n = 1 + ``GEN_STEPS`` (a warm-up call of n = 1 + ``GEN_STEPS`` first, then ``GEN_REPS`` each; the
  2026-12-03 file was taken with a ``generate(2)`` warm-up and two calls each): (T(1+k) - T(1)) / k over the
  medians is generate's own per-step time, which ties
  the forward-only decode steps to end-to-end (sampling, stopping checks, input preparation);
* ``offload_*``: the same prefill/decode after accelerate's ``cpu_offload`` (all weights in
  pageable host memory, each module's weights copied to the GPU when it runs, then dropped);
* ``h2d``: the host-to-device copy rate, pageable and pinned, at module-sized transfers.

Each experts backend of transformers 5 (``model.set_experts_implementation``: ``eager`` loops
over the experts hit, ``grouped_mm`` one grouped GEMM per projection, ``batched_mm`` gathers each
(token, expert) pair's weights and runs one bmm) is timed for prefill and decode. Note that inside
``generate`` transformers 5.17 switches ``grouped_mm`` to ``batched_mm`` for the decode loop
(``GenerationMixin._optimize_model_for_decode``, non-CPU devices); the ``generate`` cells measure
that as it happens.

Budget: cells are visited smallest first and skipped (recorded with the reason) when the estimate
from the previous cell of the same kind would overrun the phase's share of ``--budget-s``; every
cell is written to ``$OUT/hf_generate.json`` as soon as it is measured, so a timeout keeps the data.

Run on the device: ``PYTHONUNBUFFERED=1 python hf_generate.py --out $OUT``; here on the CPU:
``python hf_generate.py --tiny --out /tmp/hf`` (shrunk configs, same code path end to end).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
BATCHES = (1, 4, 16, 64, 256)
PROMPTS = (128, 512)
IMPLS = ("grouped_mm", "batched_mm", "eager")
MAX_PREFILL_TOKENS = 32768
DECODE_STEPS = 6  # timed decode forwards per cell; the first is dropped from the median
GEN_STEPS = 16
GEN_REPS = 3  # timed generate calls of each length, after a warm-up call of the timed length
# share of the budget each phase may use, cumulative deadlines (earlier phases that finish early
# leave their time to the later ones)
PHASES = (
    ("olmoe-1b-7b", 0.13),
    ("qwen1.5-moe-a2.7b", 0.14),
    ("deepseek-v2-lite", 0.16),
    ("qwen3-30b-a3b", 0.18),
    ("mixtral-8x7b", 0.17),
    ("offload", 0.22),
)
OFFLOAD_MODELS = ("olmoe-1b-7b", "qwen1.5-moe-a2.7b")


def dev() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def wall(fn):
    """(seconds, result) of ``fn()`` between two device synchronisations."""
    sync()
    t0 = time.perf_counter()
    r = fn()
    sync()
    return time.perf_counter() - t0, r


class Recorder:
    def __init__(self, out: Path, meta: dict):
        self.path = out / "hf_generate.json"
        self.data = {"meta": meta, "cells": [], "h2d": [], "log": []}
        self.flush()

    def add(self, cell: dict) -> None:
        self.data["cells"].append(cell)
        self.flush()

    def note(self, msg: str) -> None:
        print(msg, flush=True)
        self.data["log"].append(msg)

    def flush(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)


def tiny(cfg: dict) -> dict:
    """Shrink a config for the CPU test (same model class and code path)."""
    c = dict(cfg)
    c.update(hidden_size=64, num_attention_heads=4, vocab_size=512, max_position_embeddings=2048)
    if "num_key_value_heads" in c:
        c["num_key_value_heads"] = min(c["num_key_value_heads"], 4) if c["num_key_value_heads"] < 16 else 4
    if "head_dim" in c:
        c["head_dim"] = 16
    for k in ("intermediate_size", "moe_intermediate_size", "shared_expert_intermediate_size"):
        if k in c:
            c[k] = 32
    for k in ("num_experts", "n_routed_experts", "num_local_experts"):
        if k in c:
            c[k] = 8
    if "num_experts_per_tok" in c:
        c["num_experts_per_tok"] = min(c["num_experts_per_tok"], 2)
    if c.get("model_type") == "deepseek_v2":
        c.update(kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16)
    for k in ("pad_token_id", "eos_token_id"):
        if k in c:
            c[k] = 1
    return c


def build(entry: dict, layers: int, is_tiny: bool, impl: str = "grouped_mm"):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(entry["config"])
    if is_tiny:
        cfg = tiny(cfg)
    mtype = cfg.pop("model_type")
    cfg["num_hidden_layers"] = layers
    config = AutoConfig.for_model(mtype, **cfg)
    with torch.device(dev()):
        model = AutoModelForCausalLM.from_config(
            config, dtype=torch.bfloat16, attn_implementation="sdpa", experts_implementation=impl
        )
    model.eval()
    g = torch.Generator(device=dev()).manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # random, never zero (a zero router sends every token to the same experts)
            if p.dim() >= 2:
                p.normal_(0.0, 0.02, generator=g)
    model.generation_config.pad_token_id = 0
    return model, config


def n_experts_topk(config) -> tuple[int, int]:
    e = getattr(config, "num_experts", None) or getattr(config, "n_routed_experts", None) or config.num_local_experts
    return int(e), int(config.num_experts_per_tok)


def expert_bytes(config) -> int:
    inter = getattr(config, "moe_intermediate_size", None) or config.intermediate_size
    return 3 * config.hidden_size * inter * 2


def prefill_once(model, ids):
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return out, cache, mask


def decode_steps(model, out, cache, mask, steps: int) -> list[float]:
    times = []
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    for _ in range(steps):
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)

        def step():
            with torch.no_grad():
                return model(input_ids=nxt, attention_mask=mask, past_key_values=cache, use_cache=True, logits_to_keep=1)

        t, o = wall(step)
        nxt = o.logits[:, -1].argmax(-1, keepdim=True)
        times.append(t)
    return times


def med(xs):
    return statistics.median(xs) if xs else None


def run_cells(rec, model, config, key, layers, deadline, vocab, kinds=("prefill", "decode"), impls=IMPLS,
              batches=BATCHES, prompts=PROMPTS, prefix="", prefill_reps=3, steps=DECODE_STEPS, decode_impl=None):
    """Prefill + decode cells of one model; returns nothing, records every cell (measured or skipped)."""
    last: dict[tuple, tuple[float, int]] = {}
    e, k = n_experts_topk(config)
    free_b = torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else 64e9
    for b in batches:
        for p in prompts:
            tokens = b * p
            for impl in impls:
                cell = dict(model=key, layers=layers, impl=impl, batch=b, prompt=p, kind=prefix + "prefill")
                if tokens > MAX_PREFILL_TOKENS:
                    continue
                gather = tokens * k * expert_bytes(config)
                if impl == "batched_mm" and gather > 0.4 * free_b:
                    rec.add(dict(cell, skipped=f"batched_mm would gather {gather / 1e9:.0f} GB of expert weights"))
                    continue
                est = 0.0
                if (impl, "p") in last:
                    t0, tok0 = last[(impl, "p")]
                    est = t0 * max(1.0, tokens / tok0) * (prefill_reps + 1)
                if (impl, "d") in last:  # two passes of the steps and one more prefill
                    est += last[(impl, "d")][0] * max(1.0, b / last[(impl, "d")][1]) * 2 * steps
                    if (impl, "p") in last:
                        est += last[(impl, "p")][0] * max(1.0, tokens / last[(impl, "p")][1])
                if time.perf_counter() + est > deadline:
                    rec.add(dict(cell, skipped=f"budget (estimate {est:.1f} s)"))
                    continue
                try:
                    model.set_experts_implementation(impl)
                    ids = torch.randint(2, vocab, (b, p), device=dev())
                    times = []
                    if torch.cuda.is_available():
                        torch.cuda.reset_peak_memory_stats()
                    for r in range(prefill_reps):
                        t, (out, cache, mask) = wall(lambda: prefill_once(model, ids))
                        times.append(t)
                    timed = times[1:] if len(times) > 1 else times
                    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
                    rec.add(dict(cell, times_s=times, median_s=med(timed), peak_bytes=peak))
                    last[(impl, "p")] = (med(timed), tokens)
                    if "decode" in kinds:
                        dimpl = decode_impl or impl
                        model.set_experts_implementation(dimpl)
                        # cold pass: builds (and caches) the attention graphs of these KV lengths at this batch
                        cold = decode_steps(model, out, cache, mask, steps)
                        del out, cache
                        model.set_experts_implementation(impl)
                        out, cache, mask = prefill_once(model, ids)
                        model.set_experts_implementation(dimpl)
                        dt = decode_steps(model, out, cache, mask, steps)  # timed pass: the same shapes again
                        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
                        rec.add(dict(cell, kind=prefix + "decode", impl=dimpl, times_s=dt, median_s=med(dt[1:] or dt),
                                     cold_times_s=cold, peak_bytes=peak))
                        last[(impl, "d")] = (med(dt[1:] or dt), b)
                    del out, cache
                except torch.OutOfMemoryError as err:
                    rec.add(dict(cell, oom=str(err).splitlines()[0][:200]))
                    out = cache = None
                    torch.cuda.empty_cache()
                except Exception as err:  # keep going: one failing cell must not lose the campaign
                    rec.add(dict(cell, error=f"{type(err).__name__}: {err}"[:300]))
                    rec.note(traceback.format_exc()[-1500:])
                    out = cache = None
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
            print(f"  {key} b={b} p={p} done at {time.perf_counter() - T0:.0f} s", flush=True)


def run_generate(rec, model, key, layers, deadline, vocab, batches=(1, 16), prompt=128):
    for impl in ("grouped_mm", "eager"):
        for b in batches:
            cell = dict(model=key, layers=layers, impl=impl, batch=b, prompt=prompt, kind="generate", steps=GEN_STEPS)
            if time.perf_counter() > deadline:
                rec.add(dict(cell, skipped="budget"))
                continue
            try:
                model.set_experts_implementation(impl)
                ids = torch.randint(2, vocab, (b, prompt), device=dev())
                mask = torch.ones_like(ids)

                def gen(n):
                    with torch.no_grad():
                        return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                              do_sample=False, pad_token_id=0)

                # warm-up at the timed length: after a generate(2) warm-up the first generate(17) of a batched_mm-decode
                # cell ran 0.3-0.4 s longer than the next (2026-12-03, on two leases; no cudaMalloc in it)
                wall(lambda: gen(1 + GEN_STEPS))
                t1 = [wall(lambda: gen(1))[0] for _ in range(GEN_REPS)]
                if time.perf_counter() + GEN_REPS * (med(t1) * 8) > deadline + 5:
                    rec.add(dict(cell, t1_s=t1, skipped="budget after T(1)"))
                    continue
                tn = []
                for _ in range(GEN_REPS):
                    t, o = wall(lambda: gen(1 + GEN_STEPS))
                    tn.append(t)
                assert o.shape[1] == prompt + 1 + GEN_STEPS, o.shape
                rec.add(dict(cell, t1_s=t1, tn_s=tn, per_step_s=(med(tn) - med(t1)) / GEN_STEPS))
            except torch.OutOfMemoryError as err:
                rec.add(dict(cell, oom=str(err).splitlines()[0][:200]))
                torch.cuda.empty_cache()
            except Exception as err:
                rec.add(dict(cell, error=f"{type(err).__name__}: {err}"[:300]))
                rec.note(traceback.format_exc()[-1500:])


def h2d_probe(rec, is_tiny: bool) -> None:
    """Host-to-device copy rate at module-like sizes, pageable and pinned (``tensor.to('cuda')``)."""
    if not torch.cuda.is_available():
        return
    for mb in (4, 32, 256, 1024):
        n = mb * 2**20
        for pinned in (False, True):
            src = torch.empty(n, dtype=torch.uint8)
            src.random_(0, 255)
            if pinned:
                src = src.pin_memory()
            src.to("cuda")  # warm
            ts = [wall(lambda: src.to("cuda"))[0] for _ in range(5)]
            rec.data["h2d"].append(dict(bytes=n, pinned=pinned, times_s=ts, median_s=med(ts[1:]),
                                        bytes_per_s=n / med(ts[1:])))
    rec.flush()



def campaign_meta(args, entries, **extra) -> dict:
    """The record every campaign file of this harness (and hf_repeat.py) starts with: versions, host, GPU, the
    budget, the configs measured, when it started; ``extra`` adds the campaign's own fields (its method)."""
    import accelerate
    import transformers

    return dict(
        transformers=transformers.__version__, accelerate=accelerate.__version__, torch=torch.__version__,
        python=platform.python_version(), host=platform.node(), tiny=args.tiny, budget_s=args.budget_s,
        gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        gpu_mem_bytes=torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None,
        started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), configs=entries, **extra)

def main() -> int:
    global T0
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/hf_out"))
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--budget-s", type=float, default=450.0)
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    T0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    entries = json.loads((HERE / "hf_configs.json").read_text())["models"]
    meta = campaign_meta(args, entries, method="wall time between torch.cuda.synchronize() calls; prefill median of "
                                               "reps after the first; decode median of steps after the first, of the "
                                               "second pass over the cell's KV lengths (the first: cold_times_s)")
    rec = Recorder(out, meta)
    h2d_probe(rec, args.tiny)
    rec.note(f"h2d probe done at {time.perf_counter() - T0:.1f} s")
    share = 0.0
    only = set(args.only.split(",")) - {""}
    for phase, frac in PHASES:
        share += frac
        deadline = T0 + share * args.budget_s
        if only and phase not in only:
            continue
        if phase == "offload":
            run_offload(rec, entries, deadline, args.tiny)
            continue
        entry = entries[phase]
        layers = 2 if args.tiny else int(entry["measured_layers"])
        tb = time.perf_counter()
        try:
            model, config = build(entry, layers, args.tiny)
        except Exception as err:
            rec.note(f"build {phase} failed: {type(err).__name__}: {err}")
            rec.note(traceback.format_exc()[-1500:])
            continue
        rec.note(f"built {phase} ({layers} layers) in {time.perf_counter() - tb:.1f} s; "
                 f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f} B params")
        vocab = config.vocab_size
        gen_deadline = deadline
        run_cells(rec, model, config, phase, layers, deadline - 0.15 * frac * args.budget_s, vocab)
        run_generate(rec, model, phase, layers, gen_deadline, vocab)
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    rec.data["meta"]["finished_s"] = time.perf_counter() - T0
    rec.flush()
    table(rec)
    return 0


def run_offload(rec, entries, deadline, is_tiny):
    from accelerate import cpu_offload

    for i, key in enumerate(OFFLOAD_MODELS):
        entry = entries[key]
        layers = 2 if is_tiny else int(entry["config"]["num_hidden_layers"])
        if time.perf_counter() > deadline - 20:
            rec.note(f"offload {key}: skipped (budget)")
            continue
        tb = time.perf_counter()
        model, config = build(entry, layers, is_tiny)
        cpu_offload(model, execution_device=dev())
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        rec.note(f"offload {key}: built and offloaded in {time.perf_counter() - tb:.1f} s; "
                 f"GPU memory allocated {torch.cuda.memory_allocated() / 1e9 if torch.cuda.is_available() else 0:.2f} GB")
        batches = (1, 16) if i == 0 else (1,)
        run_cells(rec, model, config, key, layers, deadline, config.vocab_size, impls=("grouped_mm",), batches=batches,
                  prompts=(128,), prefix="offload_", prefill_reps=2, steps=3, decode_impl="batched_mm")
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def table(rec) -> None:
    print(f"{'model':18s} {'kind':16s} {'impl':10s} {'b':>4s} {'p':>4s} {'ms':>10s}")
    for c in rec.data["cells"]:
        v = c.get("median_s", c.get("per_step_s"))
        s = f"{v * 1e3:10.2f}" if v is not None else ("skip" if "skipped" in c else ("OOM" if "oom" in c else "ERR"))
        print(f"{c['model']:18s} {c['kind']:16s} {c['impl']:10s} {c['batch']:4d} {c['prompt']:4d} {s:>10s}")
    for h in rec.data["h2d"]:
        print(f"h2d {h['bytes'] / 2**20:6.0f} MiB pinned={h['pinned']!s:5s} {h['bytes_per_s'] / 1e9:6.2f} GB/s")
    print(f"finished in {rec.data['meta'].get('finished_s', 0):.0f} s")


T0 = 0.0
if __name__ == "__main__":
    sys.exit(main())
