"""Per-step decode of transformers 5.17 ``generate`` taken apart: host costs, warm-up, routing, syncs.

The end-to-end campaign (``hf_generate.py``) timed ``generate``'s per-step decode as (T(17) - T(1)) / 16 over
two calls each, after a ``generate(2)`` warm-up; this one takes that number apart on one lease, for the five
validation models (random bf16 weights from the published configs, the layer counts of hf_configs.json):

* ``micro``: host time per call of small CUDA ops in a burst (the ops of ``hf_batched_mm.py`` part host, so
  the two leases compare), and of the calls of the eager experts loop that read a GPU value on the host
  (``.item()`` of a ready scalar, ``bool(t == k)``, indexing by a 0-dim GPU tensor, ``torch.where`` of a mask),
  and one whole iteration of the eager loop body (17 calls, 5 host reads) on a stub at decode shapes;
* ``decode``: forward-only decode steps as hf_generate.py times them (one prefill of b x 128, then 6 single-token
  forwards; median of the steps after the first), batched_mm (after a grouped_mm prefill, as generate runs it) and
  eager, b = 1 and 16;
* ``generate``: ``model.generate`` as hf_generate.py calls it, in its order (grouped_mm then eager; b = 1 then
  16; ``generate(2)`` warm-up, T(1) twice), then T(17) three times (twice where the budget is short): each
  call's wall time and the caching allocator's cudaMalloc count (``num_device_alloc``) across it, so a slow
  first call shows whether it allocated;
* ``routing``: one more ``generate(17)`` and 6 forward-only decode steps with forward hooks on every router
  recording its top-k indices (untimed): the distinct experts each MoE layer ran per decode step, against the
  uniform expectation E (1 - (1 - k / E)^b);
* ``profile``: one forward-only eager decode step at b = 4 under ``torch.profiler`` (CPU + CUDA): CUDA runtime
  calls by name (launches, D2H copies, stream syncs, cudaMalloc), top-level aten calls by name.

Every result is written to ``$OUT/hf_decode_steps.json`` as soon as it is measured; ``--budget-s`` bounds the
run (each model gets a share; what does not fit is recorded as skipped).
Device: ``PYTHONUNBUFFERED=1 python hf_decode_steps.py --out $OUT``.
CPU check: ``python hf_decode_steps.py --tiny --out /tmp/x`` (shrunk configs, same code path, no CUDA parts).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from hf_generate import build, n_experts_topk, prefill_once  # noqa: E402

MODELS = ("olmoe-1b-7b", "qwen1.5-moe-a2.7b", "deepseek-v2-lite", "qwen3-30b-a3b", "mixtral-8x7b")
SHARES = {"olmoe-1b-7b": 0.18, "qwen1.5-moe-a2.7b": 0.18, "deepseek-v2-lite": 0.2, "qwen3-30b-a3b": 0.24,
          "mixtral-8x7b": 0.1}
PROFILE_MODELS = ("olmoe-1b-7b", "qwen3-30b-a3b")
PROMPT = 128
BATCHES = (1, 16)
DECODE_STEPS = 6
GEN_STEPS = 16
T0 = time.perf_counter()


def cuda() -> bool:
    return torch.cuda.is_available()


def dev() -> str:
    return "cuda" if cuda() else "cpu"


def sync() -> None:
    if cuda():
        torch.cuda.synchronize()


def med(xs):
    return statistics.median(xs) if xs else None


def allocs() -> int:
    """cudaMalloc calls of the caching allocator so far (0 on the CPU)."""
    return int(torch.cuda.memory_stats().get("num_device_alloc", 0)) if cuda() else 0


def wall(fn):
    sync()
    t = time.perf_counter()
    r = fn()
    sync()
    return time.perf_counter() - t, r


class Recorder:
    def __init__(self, path: Path, meta: dict):
        self.path = path
        self.data = {"meta": meta, "micro": {}, "decode": [], "generate": [], "routing": [], "profile": [], "log": []}
        self.flush()

    def flush(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)

    def add(self, part: str, row: dict) -> None:
        self.data[part].append(row)
        self.flush()

    def note(self, msg: str) -> None:
        msg = f"[{time.perf_counter() - T0:6.1f} s] {msg}"
        print(msg, flush=True)
        self.data["log"].append(msg)
        self.flush()


# ---- micro -------------------------------------------------------------------------------------------
def eager_iteration_stub(hidden: int, inter: int, experts: int, top_k: int, tokens: int):
    """One iteration of transformers 5.17's eager experts loop (``Experts.forward``), its calls verbatim, on
    random weights at the given shapes; returns a callable running it for the first expert hit."""
    d = dev()
    gate_up = torch.randn(experts, 2 * inter, hidden, device=d, dtype=torch.bfloat16) * 0.02
    down = torch.randn(experts, hidden, inter, device=d, dtype=torch.bfloat16) * 0.02
    hs = torch.randn(tokens, hidden, device=d, dtype=torch.bfloat16)
    idx = torch.stack([torch.randperm(experts, device=d)[:top_k] for _ in range(tokens)])
    wts = torch.rand(tokens, top_k, device=d, dtype=torch.bfloat16)
    mask = torch.nn.functional.one_hot(idx, num_classes=experts).permute(2, 1, 0)
    hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
    out = torch.zeros_like(hs)
    row = hit[0]
    act = torch.nn.functional.silu

    def body():
        expert_idx = row[0]
        if expert_idx == experts:
            return None
        top_k_pos, token_idx = torch.where(mask[expert_idx])
        current_state = hs[token_idx]
        gate, up = torch.nn.functional.linear(current_state, gate_up[expert_idx]).chunk(2, dim=-1)
        cur = act(gate) * up
        cur = torch.nn.functional.linear(cur, down[expert_idx])
        cur = cur * wts[token_idx, top_k_pos, None]
        out.index_add_(0, token_idx, cur.to(out.dtype))
        return out

    return body


def part_micro(rec: Recorder, tiny: bool) -> None:
    d = dev()
    n = 200 if tiny else 2000
    x = torch.randn(4, 64, device=d, dtype=torch.bfloat16)
    y = torch.randn(4, 64, device=d, dtype=torch.bfloat16)
    wgt = torch.randn(64, 64, device=d, dtype=torch.bfloat16)
    w3 = torch.randn(8, 64, 64, device=d, dtype=torch.bfloat16)
    i0 = torch.tensor(3, device=d)
    m = torch.zeros(2, 16, dtype=torch.bool, device=d)
    m[0, 3] = True
    s = torch.tensor(1.5, device=d)
    ops = {
        "add": lambda: x + y,
        "mul": lambda: x * y,
        "view_transpose": lambda: x.view(4, 4, 16).transpose(1, 2),
        "linear": lambda: torch.nn.functional.linear(x, wgt),
        "cat": lambda: torch.cat([x, y], dim=-1),
        "item_ready": lambda: s.item(),
        "bool_eq": lambda: bool(i0 == 8),
        "index_0d": lambda: w3[i0],
        "where_mask": lambda: torch.where(m),
        "cuda_sync": sync,
    }
    try:
        from transformers.models.olmoe.modeling_olmoe import OlmoeRMSNorm

        norm = OlmoeRMSNorm(64).to(d, torch.bfloat16)

        def norm_body():
            v = x.to(torch.float32)
            var = v.pow(2).mean(-1, keepdim=True)
            v = v * torch.rsqrt(var + 1e-5)
            return norm.weight * v.to(torch.bfloat16)

        ops["hf_rmsnorm_body"] = norm_body
    except Exception as exc:  # noqa: BLE001
        rec.note(f"rmsnorm: {type(exc).__name__}: {exc}")
    shapes = {"olmoe-1b-7b": (2048, 1024, 64, 8), "qwen3-30b-a3b": (2048, 768, 128, 8),
              "mixtral-8x7b": (4096, 14336, 8, 2)}
    if tiny:
        shapes = {"tiny": (64, 32, 8, 2)}
    for key, (h, i, e, k) in shapes.items():
        for t in (1, 16):
            ops[f"eager_iteration {key} T={t}"] = eager_iteration_stub(h, i, e, k, t)
    out = {}
    with torch.no_grad():
        for key, fn in ops.items():
            reps = n if not key.startswith("eager_iteration") else n // 4
            for _ in range(20):
                fn()
            sync()
            bursts = []
            for _ in range(5):
                sync()
                t = time.perf_counter()
                for _ in range(reps):
                    fn()
                sync()
                bursts.append((time.perf_counter() - t) / reps)
            out[key] = {"burst_per_call_s": med(bursts), "min_s": min(bursts), "n": reps}
    rec.data["micro"] = out
    rec.note("micro (us per call): " + ", ".join(f"{k} {v['burst_per_call_s'] * 1e6:.2f}" for k, v in out.items()))


# ---- cells ---------------------------------------------------------------------------------------------
def decode_cell(rec, model, key, layers, impl, b, vocab):
    # batched_mm decode after a grouped_mm prefill, as generate runs it (a batched_mm prefill of b x 128 tokens
    # gathers 128 b top_k experts' weights: the 2026-12-03 run's b = 16 cells ran out of memory that way)
    model.set_experts_implementation("grouped_mm" if impl == "batched_mm" else impl)
    ids = torch.randint(2, vocab, (b, PROMPT), device=dev())
    a0 = allocs()
    t_pre, (out, cache, mask) = wall(lambda: prefill_once(model, ids))
    model.set_experts_implementation(impl)
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    times, a1 = [], allocs()
    for _ in range(DECODE_STEPS):
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)

        def step():
            with torch.no_grad():
                return model(input_ids=nxt, attention_mask=mask, past_key_values=cache, use_cache=True,
                             logits_to_keep=1)

        t, o = wall(step)
        nxt = o.logits[:, -1].argmax(-1, keepdim=True)
        times.append(t)
    rec.add("decode", dict(model=key, layers=layers, impl=impl, batch=b, prompt=PROMPT, prefill_s=t_pre,
                           times_s=times, median_s=med(times[1:]), prefill_allocs=a1 - a0,
                           decode_allocs=allocs() - a1))
    del out, cache


def generate_cell(rec, model, key, layers, impl, b, vocab, reps):
    model.set_experts_implementation(impl)
    ids = torch.randint(2, vocab, (b, PROMPT), device=dev())
    mask = torch.ones_like(ids)

    def gen(n):
        with torch.no_grad():
            return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                  do_sample=False, pad_token_id=0)

    def timed(n):
        a = allocs()
        t, o = wall(lambda: gen(n))
        return t, allocs() - a, o

    w2, w2_allocs, _ = timed(2)
    t1 = [timed(1)[:2] for _ in range(2)]
    tn = []
    for _ in range(reps):
        t, na, o = timed(1 + GEN_STEPS)
        tn.append((t, na))
    assert o.shape[1] == PROMPT + 1 + GEN_STEPS, o.shape
    t1s, tns = [t for t, _ in t1], [t for t, _ in tn]
    rec.add("generate", dict(
        model=key, layers=layers, impl=impl, batch=b, prompt=PROMPT, steps=GEN_STEPS, warmup2_s=w2,
        warmup2_allocs=w2_allocs, t1_s=t1s, t1_allocs=[a for _, a in t1], tn_s=tns, tn_allocs=[a for _, a in tn],
        per_step_s=(med(tns) - med(t1s)) / GEN_STEPS,
        per_step_after_first_s=(med(tns[1:]) - med(t1s[1:])) / GEN_STEPS if len(tns) > 1 else None))


def router_hooks(model, store: list):
    hooks = []
    for _, mod in model.named_modules():
        if "topkrouter" in type(mod).__name__.lower():
            hooks.append(mod.register_forward_hook(lambda m, i, o: store.append(o[-1].detach())))
    return hooks


def routing_cell(rec, model, key, layers, b, vocab, experts, top_k):
    """Distinct experts per MoE layer and decode step, in generate (grouped_mm, decoded as batched_mm) and in
    forward-only decode steps (batched_mm), from hooks on the routers (untimed)."""
    ids = torch.randint(2, vocab, (b, PROMPT), device=dev())
    mask = torch.ones_like(ids)
    store: list = []
    model.set_experts_implementation("grouped_mm")
    hooks = router_hooks(model, store)
    try:
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=1 + GEN_STEPS,
                           min_new_tokens=1 + GEN_STEPS, do_sample=False, pad_token_id=0)
        gen_hits = [int(torch.unique(t).numel()) for t in store if t.shape[0] == b]
        prefill_hits = [int(torch.unique(t).numel()) for t in store if t.shape[0] != b]
        store.clear()
        out, cache, m2 = prefill_once(model, ids)  # grouped_mm prefill, then batched_mm decode as generate runs them
        model.set_experts_implementation("batched_mm")
        store.clear()
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(DECODE_STEPS):
            m2 = torch.cat([m2, m2.new_ones((b, 1))], dim=-1)
            with torch.no_grad():
                o = model(input_ids=nxt, attention_mask=m2, past_key_values=cache, use_cache=True, logits_to_keep=1)
            nxt = o.logits[:, -1].argmax(-1, keepdim=True)
        dec_hits = [int(torch.unique(t).numel()) for t in store]
    finally:
        for h in hooks:
            h.remove()
    uniform = experts * (1 - (1 - top_k / experts) ** b)
    rec.add("routing", dict(model=key, layers=layers, batch=b, prompt=PROMPT, experts=experts, top_k=top_k,
                            uniform_expected=uniform, generate_hits=gen_hits, prefill_hits=prefill_hits,
                            decode_hits=dec_hits, generate_mean=statistics.fmean(gen_hits) if gen_hits else None,
                            decode_mean=statistics.fmean(dec_hits) if dec_hits else None,
                            prefill_mean=statistics.fmean(prefill_hits) if prefill_hits else None))


def profile_cell(rec, model, key, layers, b, vocab):
    from torch.profiler import ProfilerActivity, profile

    model.set_experts_implementation("eager")
    ids = torch.randint(2, vocab, (b, PROMPT), device=dev())
    out, cache, mask = prefill_once(model, ids)
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    mask = torch.cat([mask, mask.new_ones((b, 1))], dim=-1)
    store: list = []
    hooks = router_hooks(model, store)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda() else [])
    try:
        with profile(activities=acts) as prof:
            with torch.no_grad():
                model(input_ids=nxt, attention_mask=mask, past_key_values=cache, use_cache=True, logits_to_keep=1)
            sync()
    finally:
        for h in hooks:
            h.remove()
    runtime, top, kernels = collections.Counter(), collections.Counter(), 0
    for e in prof.events():
        name = e.name
        if name.startswith("cuda") or name.startswith("cudaLaunch"):
            runtime[name] += 1
        elif name.startswith("aten::") and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")):
            top[name] += 1
        if getattr(e, "device_type", None) is not None and str(e.device_type).endswith("CUDA"):
            kernels += 1
    hits = [int(torch.unique(t).numel()) for t in store]
    rec.add("profile", dict(model=key, layers=layers, batch=b, prompt=PROMPT, impl="eager", hits=hits,
                            hits_total=sum(hits), runtime_calls=dict(runtime), top_level_aten=dict(top),
                            top_level_aten_total=sum(top.values()), device_events=kernels))


def run_model(rec, entries, key, deadline, tiny):
    entry = entries[key]
    layers = 2 if tiny else int(entry["measured_layers"])
    tb = time.perf_counter()
    model, config = build(entry, layers, tiny)
    experts, top_k = n_experts_topk(config)
    vocab = config.vocab_size
    rec.note(f"built {key} ({layers} layers) in {time.perf_counter() - tb:.1f} s")
    steps = []
    for b in BATCHES:
        for impl in ("batched_mm", "eager"):
            steps.append(("decode", impl, b))
    for impl in ("grouped_mm", "eager"):  # hf_generate.py's order
        for b in BATCHES:
            steps.append(("generate", impl, b))
    for b in BATCHES:
        steps.append(("routing", None, b))
    if key in PROFILE_MODELS:
        steps.append(("profile", "eager", 4))
    last_gen: dict = {}
    for kind, impl, b in steps:
        left = deadline - time.perf_counter()
        cell = dict(model=key, layers=layers, impl=impl, batch=b)
        try:
            if kind == "decode":
                if left < 5:
                    rec.add("decode", dict(cell, skipped="budget"))
                    continue
                decode_cell(rec, model, key, layers, impl, b, vocab)
            elif kind == "generate":
                est = last_gen.get((impl, 1), 0.0) * (12 if b > 1 else 1)  # per call, from the b = 1 cell
                reps = 3 if est * 6 < left else 2
                if est * 3.5 > left or left < 3:
                    rec.add("generate", dict(cell, skipped=f"budget (estimate {est:.1f} s per call)"))
                    continue
                t = time.perf_counter()
                generate_cell(rec, model, key, layers, impl, b, vocab, reps)
                last_gen[(impl, b)] = (time.perf_counter() - t) / (reps + 3)
            elif kind == "routing":
                if left < 3:
                    rec.add("routing", dict(cell, skipped="budget"))
                    continue
                routing_cell(rec, model, key, layers, b, vocab, experts, top_k)
            else:
                if left < 8:
                    rec.add("profile", dict(cell, skipped="budget"))
                    continue
                profile_cell(rec, model, key, layers, b, vocab)
        except torch.OutOfMemoryError as err:
            rec.add(kind, dict(cell, oom=str(err).splitlines()[0][:200]))
            if cuda():
                torch.cuda.empty_cache()
        except Exception as err:  # noqa: BLE001  (one failing cell must not lose the campaign)
            rec.add(kind, dict(cell, error=f"{type(err).__name__}: {err}"[:300]))
            rec.note(traceback.format_exc()[-1500:])
        rec.note(f"{key} {kind} {impl} b={b} done")
    del model
    if cuda():
        torch.cuda.empty_cache()


def table(rec) -> None:
    print(f"{'model':18s} {'part':9s} {'impl':10s} {'b':>3s} {'ms':>9s} {'note'}")
    for c in rec.data["decode"]:
        v = c.get("median_s")
        print(f"{c['model']:18s} decode    {c['impl']:10s} {c['batch']:3d} {v * 1e3 if v else float('nan'):9.2f}")
    for c in rec.data["generate"]:
        v = c.get("per_step_s")
        w = c.get("per_step_after_first_s")
        reps = " ".join(f"{t:.3f}" for t in c.get("tn_s", []))
        print(f"{c['model']:18s} generate  {c['impl']:10s} {c['batch']:3d} {v * 1e3 if v else float('nan'):9.2f} "
              f"after-first {w * 1e3 if w else float('nan'):.2f}  T17 reps {reps} allocs {c.get('tn_allocs')}")
    for c in rec.data["routing"]:
        print(f"{c['model']:18s} routing   {'':10s} {c['batch']:3d} gen {c.get('generate_mean')} decode "
              f"{c.get('decode_mean')} uniform {c.get('uniform_expected', 0):.1f}")
    for c in rec.data["profile"]:
        print(f"{c['model']:18s} profile   eager      {c['batch']:3d} hits {c.get('hits_total')} "
              f"runtime {c.get('runtime_calls')}")
    print(f"finished at {time.perf_counter() - T0:.0f} s")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/hf_decode_steps"))
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--budget-s", type=float, default=470.0)
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import transformers

    entries = json.loads((HERE / "hf_configs.json").read_text())["models"]
    meta = dict(transformers=transformers.__version__, torch=torch.__version__, python=platform.python_version(),
                gpu=torch.cuda.get_device_name() if cuda() else "cpu", tiny=args.tiny, budget_s=args.budget_s,
                started_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), prompt=PROMPT,
                method="wall time between torch.cuda.synchronize() calls; decode: median of the 6 steps after "
                       "the first; generate: each call's wall time and cudaMalloc count (num_device_alloc)")
    rec = Recorder(out / "hf_decode_steps.json", meta)
    part_micro(rec, args.tiny)
    only = [m for m in args.only.split(",") if m] or list(MODELS)
    share = 0.0
    start = time.perf_counter()
    for key in MODELS:
        share += SHARES[key]
        if key not in only:
            continue
        deadline = start + share * (args.budget_s - (start - T0))
        try:
            run_model(rec, entries, key, deadline, args.tiny)
        except Exception as err:  # noqa: BLE001
            rec.note(f"{key} failed: {type(err).__name__}: {err}")
            rec.note(traceback.format_exc()[-1500:])
    rec.data["meta"]["finished_s"] = time.perf_counter() - T0
    rec.flush()
    table(rec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
