"""Time transformers 5.17's ``batched_mm`` experts forward kernel by kernel, and the host's own costs of
eager Hugging Face modelling code (per torch call, per ``nn.Module`` call, per forward, per generate step).

Part ``copy``: the device-to-device copy rate of a 4 GiB tensor (bytes read + written per second), the
bandwidth ceiling the gathered-weight traffic is compared with.

Part ``bmm``: per expert shape (hidden H, expert width I, experts E, top_k k) of the validation models and
token count T (bf16, random weights, random routing: top-k of a softmax over Gaussian logits), with S = T k:

* ``hf``: ``transformers.integrations.moe.batched_mm_experts_forward`` itself on a stub experts module
  (``gate_up_proj`` (E, 2I, H), ``down_proj`` (E, H, I), not transposed, gated SiLU), GPU time with CUDA
  events around one eager call (warm-up first; median of reps); for small S also captured in a CUDA graph
  (``hf_graph``) and its eager wall time per call single / in a burst (``hf_eager``: the host's issue);
* its kernels alone, each timed with events: ``gather_up`` = ``gate_up_proj[expert_ids]`` (writes S x 2I x H),
  ``bmm_up`` = the batched GEMV on that gathered tensor, ``gather_down``, ``bmm_down``;
* at T = 128 also with every token routed to the same k experts (``same_experts``), to see whether the
  gather's reads of the source weights are served from L2 when experts repeat.

Part ``host``: host time of eager PyTorch on this machine, GPU work trivial:

* ``torch_call``: burst time per call of small CUDA ops (add, mul, view+transpose, F.linear 64 x 64, cat),
  N calls back to back, one sync;
* ``module_call``: burst time per call of a trivial ``nn.Module`` whose forward is one add, minus the add
  alone (the ``nn.Module.__call__`` machinery), and of transformers' own RMSNorm module against its body;
* ``forward``: whole forwards of each validation model built from its published config with hidden size 128
  (experts, top_k, layer structure kept: the same modelling code and torch calls, trivial kernels), at 2
  layers and at the measured layer count, prefill of 16 tokens and a decode step, each experts backend
  (median wall time between syncs: host-bound, so this is the host's time of the modelling code);
* ``generate``: ``model.generate`` of the same small models, n = 1 and 1 + 16 new tokens:
  (T(17) - T(1)) / 16 is the host time per decode step inside generate.

Results go to ``$OUT/hf_batched_mm.json`` as they are measured; ``--budget-s`` stops a part early.
Device: ``PYTHONUNBUFFERED=1 python hf_batched_mm.py --out $OUT``.
CPU check: ``python hf_batched_mm.py --tiny --out /tmp/x --hf-path DIR`` (tiny shapes, no events or graphs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

# the experts module stub is the grouped_mm harness's (the same 5.17 attributes both forwards read); this folder is
# on sys.path when the harness runs as a script
from hf_grouped_mm import StubExperts
from timing import capture_graph

HERE = Path(__file__).resolve().parent
SHAPES = {  # name: (hidden, expert intermediate, experts, top_k), from the models' published configs
    "olmoe-1b-7b": (2048, 1024, 64, 8),
    "qwen1.5-moe-a2.7b": (2048, 1408, 60, 4),
    "deepseek-v2-lite": (2048, 1408, 64, 6),
    "qwen3-30b-a3b": (2048, 768, 128, 8),
    "mixtral-8x7b": (4096, 14336, 8, 2),
}
TOKENS = [1, 4, 16, 64, 128, 256, 512]
MAX_GATHERED_BYTES = 60e9
TINY_SHAPES = {"tiny-a": (64, 32, 8, 2), "tiny-b": (32, 96, 4, 1)}
TINY_TOKENS = [1, 4, 16]
IMPLS = ("grouped_mm", "batched_mm", "eager")
GEN_STEPS = 16


def cuda() -> bool:
    return torch.cuda.is_available()


def sync() -> None:
    if cuda():
        torch.cuda.synchronize()


def med(xs):
    return statistics.median(xs) if xs else None


def event_time(fn, reps: int) -> dict:
    """GPU time of ``fn`` with CUDA events around each call (one warm-up call); on the CPU wall time."""
    fn(); sync()
    times = []
    for _ in range(reps):
        if cuda():
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            sync(); a.record(); fn(); b.record(); sync()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return {"median_s": med(times), "min_s": min(times), "n": reps}


def wall(fn, n: int) -> dict:
    """Eager wall time per call: single calls between syncs (median) and n back to back with one sync."""
    fn(); sync()
    singles = []
    for _ in range(n):
        sync(); t = time.perf_counter(); fn(); sync(); singles.append(time.perf_counter() - t)
    sync(); t = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return {"single_s": med(singles), "burst_s": (time.perf_counter() - t) / n, "n": n}


def graph_time(fn, inner: int = 10, reps: int = 20) -> dict:
    """``inner`` calls of ``fn`` in one CUDA graph (timing.capture_graph); median replay time / inner."""
    g = capture_graph(lambda j: fn(), inner)
    g.replay(); sync()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        a.record(); g.replay(); b.record(); sync()
        times.append(a.elapsed_time(b) / 1e3 / inner)
    del g
    return {"median_s": med(times), "n": reps, "inner": inner}


class Recorder:
    def __init__(self, path: Path, meta: dict):
        self.path, self.data = path, {"meta": meta, "copy": [], "bmm": [], "host": {}, "log": []}
        self.flush()

    def flush(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)

    def note(self, msg: str) -> None:
        print(msg, flush=True)
        self.data["log"].append(msg)
        self.flush()


def part_copy(rec: Recorder, tiny: bool) -> None:
    dev = "cuda" if cuda() else "cpu"
    for nbytes in ([1 << 20] if tiny else [1 << 30, 4 << 30]):
        a = torch.randn(nbytes // 2, device=dev, dtype=torch.bfloat16)
        b = torch.empty_like(a)
        t = event_time(lambda: b.copy_(a), 10)
        rec.data["copy"].append({"bytes": nbytes, **t, "read_write_bytes_per_s": 2 * nbytes / t["median_s"]})
        del a, b
    rec.note(f"copy: {[round(c['read_write_bytes_per_s'] / 1e12, 3) for c in rec.data['copy']]} TB/s (read+write)")


def part_bmm(rec: Recorder, hf_forward, tiny: bool, deadline: float) -> None:
    dev = "cuda" if cuda() else "cpu"
    dtype = torch.bfloat16
    gen = torch.Generator().manual_seed(0)
    shapes, tokens = (TINY_SHAPES, TINY_TOKENS) if tiny else (SHAPES, TOKENS)
    for name, (h, i, e, k) in shapes.items():
        mod = StubExperts(h, i, e, dev, dtype)
        ebytes = 3 * h * i * 2
        for t in tokens:
            s = t * k
            if s * ebytes > MAX_GATHERED_BYTES:
                rec.data["bmm"].append({"model": name, "tokens": t, "skipped": f"gathers {s * ebytes / 1e9:.0f} GB"})
                continue
            if time.perf_counter() > deadline:
                rec.data["bmm"].append({"model": name, "tokens": t, "skipped": "budget"})
                continue
            routes = [("uniform", None)] + ([("same_experts", True)] if t == 128 or (tiny and t == 16) else [])
            for routing, same in routes:
                logits = torch.randn(t, e, generator=gen)
                if same:
                    logits = logits[:1].expand(t, e).clone()
                w, idx = torch.softmax(logits, -1).topk(k, -1)
                w = (w / w.sum(-1, keepdim=True)).to(dtype).to(dev)
                idx = idx.to(dev)
                x = torch.randn(t, h, device=dev, dtype=dtype)
                p = {"model": name, "hidden": h, "expert_ffn": i, "experts": e, "top_k": k, "tokens": t,
                     "routed_rows": s, "routing": routing, "expert_bytes": ebytes, "gathered_bytes": s * ebytes,
                     "distinct_experts": int(idx.unique().numel())}
                reps = 5 if s * ebytes > 4e9 else 15
                try:
                    fn = lambda: hf_forward(mod, x, idx, w)  # noqa: E731
                    p["hf"] = event_time(fn, reps)
                    ids = idx.reshape(-1)
                    xs = x.repeat_interleave(k, dim=0)
                    p["gather_up"] = event_time(lambda: mod.gate_up_proj[ids], reps)
                    gu = mod.gate_up_proj[ids]
                    p["bmm_up"] = event_time(lambda: torch.bmm(gu, xs.unsqueeze(-1)), reps)
                    del gu
                    act = torch.randn(s, i, device=dev, dtype=dtype)
                    p["gather_down"] = event_time(lambda: mod.down_proj[ids], reps)
                    gd = mod.down_proj[ids]
                    p["bmm_down"] = event_time(lambda: torch.bmm(gd, act.unsqueeze(-1)), reps)
                    del gd, act
                    if s * ebytes <= 2e9 and routing == "uniform":
                        p["hf_eager"] = wall(fn, 30 if not tiny else 3)
                        if cuda():
                            p["hf_graph"] = graph_time(fn)
                except Exception as exc:  # record and go on
                    p["error"] = f"{type(exc).__name__}: {exc}"[:300]
                rec.data["bmm"].append(p)
                rec.flush()
                g = lambda key: p.get(key, {}).get("median_s", float("nan")) * 1e3  # noqa: E731
                print(f"{name:18s} T={t:5d} {routing:12s} hf {g('hf'):9.3f} gather_up {g('gather_up'):8.3f} bmm_up "
                      f"{g('bmm_up'):8.3f} gather_dn {g('gather_down'):8.3f} bmm_dn {g('bmm_down'):8.3f} ms "
                      f"{p['gathered_bytes'] / 1e9:7.2f} GB", flush=True)
                del x
                if cuda():
                    torch.cuda.empty_cache()
        del mod
        if cuda():
            torch.cuda.empty_cache()


class _AddModule(torch.nn.Module):
    def forward(self, x, y):
        return x + y


def part_host_micro(rec: Recorder, tiny: bool) -> None:
    dev = "cuda" if cuda() else "cpu"
    n = 200 if tiny else 3000
    x = torch.randn(4, 64, device=dev, dtype=torch.bfloat16)
    y = torch.randn(4, 64, device=dev, dtype=torch.bfloat16)
    wgt = torch.randn(64, 64, device=dev, dtype=torch.bfloat16)
    mod = _AddModule()
    lin = torch.nn.Linear(64, 64, bias=False, device=dev, dtype=torch.bfloat16)
    ops = {
        "add": lambda: x + y,
        "mul": lambda: x * y,
        "view_transpose": lambda: x.view(4, 4, 16).transpose(1, 2),
        "linear": lambda: torch.nn.functional.linear(x, wgt),
        "cat": lambda: torch.cat([x, y], dim=-1),
        "module_add": lambda: mod(x, y),
        "module_linear": lambda: lin(x),
    }
    try:
        from transformers.models.olmoe.modeling_olmoe import OlmoeRMSNorm

        norm = OlmoeRMSNorm(64).to(dev, torch.bfloat16)

        def norm_body():  # OlmoeRMSNorm.forward's torch calls inline
            v = x.to(torch.float32)
            var = v.pow(2).mean(-1, keepdim=True)
            v = v * torch.rsqrt(var + 1e-5)
            return norm.weight * v.to(torch.bfloat16)

        ops["hf_rmsnorm_module"] = lambda: norm(x)
        ops["hf_rmsnorm_body"] = norm_body
    except Exception as exc:
        rec.note(f"hf rmsnorm: {type(exc).__name__}: {exc}")
    out = {}
    with torch.no_grad():
        for key, fn in ops.items():
            for _ in range(50):
                fn()
            sync()
            best = []
            for _ in range(5):
                sync(); t = time.perf_counter()
                for _ in range(n):
                    fn()
                sync()
                best.append((time.perf_counter() - t) / n)
            out[key] = {"burst_per_call_s": med(best), "min_s": min(best), "n": n}
    rec.data["host"]["micro"] = out
    rec.note("host micro (us per call): " + ", ".join(f"{k} {v['burst_per_call_s'] * 1e6:.2f}" for k, v in out.items()))


def small_config(cfg: dict, layers: int) -> dict:
    """The published config with trivial widths (hidden 128) and the same structure: experts, top_k,
    shared experts, dense first layers, MLA, qk-norm, layer count ``layers``."""
    c = dict(cfg)
    c.update(hidden_size=128, num_attention_heads=4, vocab_size=1024, num_hidden_layers=layers)
    if "num_key_value_heads" in c:
        c["num_key_value_heads"] = 4 if c["num_key_value_heads"] >= 4 else c["num_key_value_heads"]
    if "head_dim" in c:
        c["head_dim"] = 32
    for key in ("intermediate_size", "moe_intermediate_size", "shared_expert_intermediate_size"):
        if key in c:
            c[key] = 64
    if c.get("model_type") == "deepseek_v2":
        c.update(kv_lora_rank=32, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32)
    for key in ("pad_token_id", "eos_token_id"):
        if key in c:
            c[key] = 1
    return c


def build_small(entry: dict, layers: int, impl: str, tiny: bool):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = small_config(entry["config"], layers)
    if tiny:
        for key in ("num_experts", "n_routed_experts", "num_local_experts"):
            if key in cfg:
                cfg[key] = min(cfg[key], 8)
        cfg["num_experts_per_tok"] = min(cfg["num_experts_per_tok"], 2)
    mtype = cfg.pop("model_type")
    config = AutoConfig.for_model(mtype, **cfg)
    with torch.device("cuda" if cuda() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa",
                                                 experts_implementation=impl)
    model.eval()
    g = torch.Generator(device="cuda" if cuda() else "cpu").manual_seed(0)
    with torch.no_grad():
        for prm in model.parameters():
            if prm.dim() >= 2:
                prm.normal_(0.0, 0.02, generator=g)
    model.generation_config.pad_token_id = 0
    return model


def part_host_forward(rec: Recorder, tiny: bool, deadline: float) -> None:
    from transformers import DynamicCache

    entries = json.loads((HERE / "hf_configs.json").read_text())["models"]
    dev = "cuda" if cuda() else "cpu"
    rows = rec.data["host"].setdefault("forward", [])
    gens = rec.data["host"].setdefault("generate", [])
    reps = 3 if tiny else 15
    prompt = 16
    names = list(entries)[:2] if tiny else list(entries)
    for name in names:
        entry = entries[name]
        full_layers = 2 if tiny else int(entry.get("measured_layers") or entry["config"]["num_hidden_layers"])
        for layers in sorted({2, full_layers} if not tiny else {1, 2}):
            if time.perf_counter() > deadline:
                rows.append({"model": name, "layers": layers, "skipped": "budget"})
                continue
            model = build_small(entry, layers, "grouped_mm", tiny)
            ids = torch.randint(2, 1000 if not tiny else 500, (1, prompt), device=dev)
            for impl in IMPLS:
                model.set_experts_implementation(impl)
                cell = {"model": name, "layers": layers, "impl": impl, "prompt": prompt}
                try:
                    def pre():
                        cache = DynamicCache(config=model.config)
                        with torch.no_grad():
                            return model(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=cache,
                                         use_cache=True, logits_to_keep=1), cache
                    pre(); sync()
                    times = []
                    for _ in range(reps):
                        sync(); t = time.perf_counter(); out, cache = pre(); sync(); times.append(time.perf_counter() - t)
                    cell["prefill_s"] = med(times)
                    mask = torch.ones(1, prompt, dtype=ids.dtype, device=dev)
                    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                    dts = []
                    for _ in range(reps + 1):
                        mask = torch.cat([mask, mask.new_ones((1, 1))], dim=-1)
                        sync(); t = time.perf_counter()
                        with torch.no_grad():
                            o = model(input_ids=nxt, attention_mask=mask, past_key_values=cache, use_cache=True,
                                      logits_to_keep=1)
                        sync(); dts.append(time.perf_counter() - t)
                        nxt = o.logits[:, -1].argmax(-1, keepdim=True)
                    cell["decode_s"] = med(dts[1:])
                except Exception as exc:
                    cell["error"] = f"{type(exc).__name__}: {exc}"[:300]
                rows.append(cell)
                rec.flush()
                print(f"host {name:18s} L={layers:3d} {impl:10s} prefill {cell.get('prefill_s', float('nan')) * 1e3:8.2f} ms "
                      f"decode {cell.get('decode_s', float('nan')) * 1e3:8.2f} ms", flush=True)
            if layers == full_layers:  # generate's own per-step time on the small model
                for impl in ("grouped_mm", "eager"):
                    model.set_experts_implementation(impl)
                    g = {"model": name, "layers": layers, "impl": impl, "prompt": prompt, "steps": GEN_STEPS}
                    try:
                        def gen(n):
                            with torch.no_grad():
                                model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                               min_new_tokens=n, do_sample=False)
                        gen(2); sync()
                        t1, tk = [], []
                        for _ in range(3):
                            sync(); t = time.perf_counter(); gen(1); sync(); t1.append(time.perf_counter() - t)
                            sync(); t = time.perf_counter(); gen(1 + GEN_STEPS); sync(); tk.append(time.perf_counter() - t)
                        g.update(gen1_s=med(t1), genk_s=med(tk), per_step_s=(med(tk) - med(t1)) / GEN_STEPS)
                    except Exception as exc:
                        g["error"] = f"{type(exc).__name__}: {exc}"[:300]
                    gens.append(g)
                    rec.flush()
                    print(f"host {name:18s} L={layers:3d} generate {impl:10s} per step "
                          f"{g.get('per_step_s', float('nan')) * 1e3:8.2f} ms", flush=True)
            del model
            if cuda():
                torch.cuda.empty_cache()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--hf-path", default=None, help="extra sys.path entries (':'-separated) holding transformers")
    ap.add_argument("--budget-s", type=float, default=420.0)
    ap.add_argument("--parts", default="copy,host,bmm")
    args = ap.parse_args()
    if args.hf_path:
        sys.path[:0] = args.hf_path.split(":")
    os.makedirs(args.out, exist_ok=True)
    import transformers
    from transformers.integrations.moe import batched_mm_experts_forward

    meta = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name() if cuda() else None, "tiny": args.tiny,
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "method": "GPU times: CUDA events around eager calls (median); host times: wall time with "
                      "torch.cuda.synchronize() (median), bursts of back-to-back calls for per-call host costs"}
    rec = Recorder(Path(args.out) / "hf_batched_mm.json", meta)
    start = time.perf_counter()
    parts = args.parts.split(",")
    torch.manual_seed(0)
    if "copy" in parts:
        part_copy(rec, args.tiny)
    if "host" in parts:
        part_host_micro(rec, args.tiny)
        part_host_forward(rec, args.tiny, start + 0.45 * args.budget_s)
        rec.note(f"host parts done at {time.perf_counter() - start:.0f} s")
    if "bmm" in parts:
        part_bmm(rec, batched_mm_experts_forward, args.tiny, start + args.budget_s)
    rec.data["meta"]["elapsed_s"] = time.perf_counter() - start
    rec.flush()
    print("\nbatched_mm per layer (ms): model T | hf | gather_up bmm_up gather_down bmm_down | GB gathered")
    for p in rec.data["bmm"]:
        if "hf" in p:
            print(f"{p['model']:18s} {p['tokens']:5d} {p['routing'][:4]} {p['hf']['median_s'] * 1e3:8.3f} | "
                  + " ".join(f"{p[k]['median_s'] * 1e3:7.3f}" for k in ("gather_up", "bmm_up", "gather_down", "bmm_down"))
                  + f" | {p['gathered_bytes'] / 1e9:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
