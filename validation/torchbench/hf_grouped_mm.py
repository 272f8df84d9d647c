"""Time transformers 5.17's ``grouped_mm`` experts forward per MoE layer, kernel by kernel, at the
expert shapes of the transformers validation models.

What is timed, per expert shape (hidden H, expert width I, experts E, top_k k) and token count T
(bf16, random weights, random routing: top-k of a softmax over Gaussian logits, renormalised):

* ``hf_eager``: ``transformers.integrations.moe.grouped_mm_experts_forward`` itself (imported from the
  installed transformers, called on a stub experts module holding ``gate_up_proj`` (E, 2I, H) and
  ``down_proj`` (E, H, I) as the 5.17 modelling code stores them, ``is_transposed=False``, gated SiLU):
  sort, gather, histc, cumsum, masks, the two grouped GEMMs on transposed weight views, the gate,
  the routing-weight multiply, the inverse permutation and the top-k sum. Eager wall time, so the
  host's issue of its ~30 torch calls is in it: ``single_s`` = median of single calls between two
  ``torch.cuda.synchronize()``; ``burst_s`` = ``n`` calls back to back, one sync, divided by ``n``;
* ``hf_graph_s``: the same function captured in a CUDA graph (``inner`` calls per graph), replays
  timed with CUDA events: its GPU time alone;
* ``gemm_graph_s``: only its two grouped GEMMs (``torch.nn.functional.grouped_mm`` where it exists,
  else ``torch._grouped_mm``, as transformers dispatches) on the same transposed weight views and
  the same offsets, captured in a graph;
* ``gemm_rowmajor_graph_s``: the same two GEMMs with the weights stored (E, H, 2I) / (E, I, H)
  row-major (the ``is_transposed=True`` layout), to see whether the layout matters.

FLOP per layer = 6 T k H I (gate+up 2 T k H 2I, down 2 T k I H). Points are written to
``$OUT/hf_grouped_mm.json`` as they are measured; a budget (``--budget-s``) stops the sweep early.

Device: ``PYTHONUNBUFFERED=1 python hf_grouped_mm.py --out $OUT``.
CPU check (tiny shapes, no graphs): ``python hf_grouped_mm.py --tiny --out /tmp/x [--hf-path DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

from timing import capture_graph  # this folder is on sys.path when the harness runs as a script

SHAPES = {  # name: (hidden, expert intermediate, experts, top_k), from the models' published configs
    "olmoe-1b-7b": (2048, 1024, 64, 8),
    "qwen1.5-moe-a2.7b": (2048, 1408, 60, 4),
    "deepseek-v2-lite": (2048, 1408, 64, 6),
    "qwen3-30b-a3b": (2048, 768, 128, 8),
    "mixtral-8x7b": (4096, 14336, 8, 2),
}
TOKENS = [1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]
TINY_SHAPES = {"tiny-a": (64, 32, 8, 2), "tiny-b": (32, 96, 4, 1)}
TINY_TOKENS = [1, 4, 16, 64]


def grouped_mm(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """The dispatch transformers 5.17 ``_grouped_mm`` makes on a GPU that can run it."""
    if hasattr(torch.nn.functional, "grouped_mm"):
        return torch.nn.functional.grouped_mm(x, w, offs=offs)
    return torch._grouped_mm(x, w, offs=offs)


class StubExperts(torch.nn.Module):
    """The attributes ``grouped_mm_experts_forward`` and ``batched_mm_experts_forward`` read from a 5.17 experts
    module (hf_batched_mm.py imports it)."""

    def __init__(self, h: int, i: int, e: int, device, dtype):
        super().__init__()
        self.num_experts, self.has_gate, self.has_bias, self.is_transposed = e, True, False, False
        self.gate_up_proj = torch.nn.Parameter(torch.randn(e, 2 * i, h, device=device, dtype=dtype) * 0.02,
                                               requires_grad=False)
        self.down_proj = torch.nn.Parameter(torch.randn(e, h, i, device=device, dtype=dtype) * 0.02,
                                            requires_grad=False)
        self.act_fn = torch.nn.SiLU()

    def _apply_gate(self, gate_up: torch.Tensor) -> torch.Tensor:  # transformers' default gate
        gate, up = gate_up.chunk(2, dim=-1)
        return self.act_fn(gate) * up


def sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def wall(fn, cuda: bool, target_s: float, min_n: int = 3, max_n: int = 200) -> dict:
    """Eager wall times: warm-up, then single synced calls (median) and one burst of n calls."""
    t0 = time.perf_counter()
    fn(); sync(cuda)
    first = time.perf_counter() - t0
    n = int(max(min_n, min(max_n, target_s / max(first, 1e-6))))
    for _ in range(min(n, 5)):
        fn()
    sync(cuda)
    singles = []
    for _ in range(n):
        sync(cuda)
        t = time.perf_counter()
        fn()
        sync(cuda)
        singles.append(time.perf_counter() - t)
    singles.sort()
    sync(cuda)
    t = time.perf_counter()
    for _ in range(n):
        fn()
    sync(cuda)
    burst = (time.perf_counter() - t) / n
    return {"single_s": singles[len(singles) // 2], "single_p10_s": singles[len(singles) // 10],
            "single_p90_s": singles[(9 * len(singles)) // 10], "burst_s": burst, "n": n}


def graph_time(fn, inner: int, target_s: float) -> dict:
    """Capture ``inner`` calls of ``fn`` in one CUDA graph; median replay time / inner (CUDA events)."""
    g = capture_graph(lambda j: fn(), inner)
    g.replay(); torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record(); g.replay(); b.record(); torch.cuda.synchronize()
    one = a.elapsed_time(b) / 1e3
    n = int(max(5, min(200, target_s / max(one, 1e-6))))
    times = []
    for _ in range(n):
        a.record(); g.replay(); b.record(); torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3 / inner)
    times.sort()
    del g
    return {"median_s": times[len(times) // 2], "p10_s": times[len(times) // 10],
            "p90_s": times[(9 * len(times)) // 10], "n": n, "inner": inner}


def routing(t: int, e: int, k: int, device, dtype, gen):
    logits = torch.randn(t, e, generator=gen, device="cpu").to(device)
    w, idx = torch.softmax(logits.float(), dim=-1).topk(k, dim=-1)
    w = (w / w.sum(-1, keepdim=True)).to(dtype)
    return idx, w


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--tiny", action="store_true", help="tiny shapes and token counts (CPU check)")
    ap.add_argument("--hf-path", default=None, help="extra sys.path entries (':'-separated) holding transformers")
    ap.add_argument("--budget-s", type=float, default=200.0)
    ap.add_argument("--target-s", type=float, default=0.12, help="time spent per timing")
    args = ap.parse_args()
    if args.hf_path:
        sys.path[:0] = args.hf_path.split(":")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "hf_grouped_mm.json")
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16
    meta = {"torch": torch.__version__, "python": platform.python_version(), "device": device,
            "gpu": torch.cuda.get_device_name() if cuda else None,
            "grouped_mm_api": "F.grouped_mm" if hasattr(torch.nn.functional, "grouped_mm") else "torch._grouped_mm",
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        import transformers
        from transformers.integrations.moe import grouped_mm_experts_forward as hf_forward
        meta["transformers"] = transformers.__version__
    except Exception as exc:  # the GEMM-only timings still run
        hf_forward = None
        meta["transformers_error"] = f"{type(exc).__name__}: {exc}"
    data = {"meta": meta, "points": []}

    def save() -> None:
        with open(path + ".tmp", "w") as f:
            json.dump(data, f, indent=1)
        os.replace(path + ".tmp", path)

    save()
    shapes, tokens = (TINY_SHAPES, TINY_TOKENS) if args.tiny else (SHAPES, TOKENS)
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    rows = []
    for name, (h, i, e, k) in shapes.items():
        mod = StubExperts(h, i, e, device, dtype)
        w1_rm = mod.gate_up_proj.transpose(-2, -1).contiguous()  # (E, H, 2I) row-major
        w2_rm = mod.down_proj.transpose(-2, -1).contiguous()  # (E, I, H) row-major
        for t in tokens:
            if time.perf_counter() - start > args.budget_s:
                data["points"].append({"model": name, "tokens": t, "skipped": "budget"})
                continue
            idx, wts = routing(t, e, k, device, dtype, gen)
            x = torch.randn(t, h, device=device, dtype=dtype)
            counts = torch.bincount(idx.reshape(-1), minlength=e)
            offs = torch.cumsum(counts, 0, dtype=torch.int32)
            routed = t * k
            xs = torch.randn(routed, h, device=device, dtype=dtype)
            act = torch.randn(routed, i, device=device, dtype=dtype)
            p = {"model": name, "hidden": h, "expert_ffn": i, "experts": e, "top_k": k, "tokens": t,
                 "routed_rows": routed, "flop": 6.0 * routed * h * i,
                 "active_experts": int((counts > 0).sum()), "max_rows_per_expert": int(counts.max())}
            w1t, w2t = mod.gate_up_proj.transpose(-2, -1), mod.down_proj.transpose(-2, -1)

            def gemm_hf():
                grouped_mm(xs, w1t, offs)
                grouped_mm(act, w2t, offs)

            def gemm_rm():
                grouped_mm(xs, w1_rm, offs)
                grouped_mm(act, w2_rm, offs)

            try:  # correctness of the GEMM on this routing against a float32 per-expert loop (small cases)
                if routed <= 4096:
                    out = grouped_mm(xs, w1t, offs).float()
                    ref = torch.empty_like(out)
                    lo = 0
                    for j, hi in enumerate(offs.tolist()):
                        ref[lo:hi] = xs[lo:hi].float() @ w1t[j].float()
                        lo = hi
                    p["gemm_rel_err"] = float((out - ref).norm() / ref.norm().clamp_min(1e-30))
            except Exception as exc:
                p["gemm_check_error"] = f"{type(exc).__name__}: {exc}"[:300]
            inner = 10 if routed * max(h, 2 * i) <= (1 << 24) else 1
            if hf_forward is not None:
                fn = lambda: hf_forward(mod, x, idx, wts)  # noqa: E731
                try:
                    p["hf_eager"] = wall(fn, cuda, args.target_s)
                except Exception as exc:
                    p["hf_eager_error"] = f"{type(exc).__name__}: {exc}"[:300]
                if cuda:
                    try:
                        p["hf_graph"] = graph_time(fn, inner, args.target_s)
                    except Exception as exc:
                        p["hf_graph_error"] = f"{type(exc).__name__}: {exc}"[:300]
            try:
                if cuda:
                    p["gemm_graph"] = graph_time(gemm_hf, inner, args.target_s)
                    p["gemm_rowmajor_graph"] = graph_time(gemm_rm, inner, args.target_s)
                else:
                    p["gemm_eager"] = wall(gemm_hf, cuda, args.target_s)
            except Exception as exc:
                p["gemm_error"] = f"{type(exc).__name__}: {exc}"[:300]
            data["points"].append(p)
            save()
            g = lambda key, sub: p.get(key, {}).get(sub, float("nan")) * 1e6  # noqa: E731
            rows.append(f"{name:18s} {t:6d} eager {g('hf_eager', 'single_s'):10.1f} burst {g('hf_eager', 'burst_s'):10.1f} "
                        f"graph {g('hf_graph', 'median_s'):10.1f} gemm {g('gemm_graph', 'median_s'):10.1f} "
                        f"gemm_rm {g('gemm_rowmajor_graph', 'median_s'):10.1f} us")
            print(rows[-1], flush=True)
        del mod, w1_rm, w2_rm
        if cuda:
            torch.cuda.empty_cache()
    data["meta"]["elapsed_s"] = time.perf_counter() - start
    save()
    print("\n".join(["", "model tokens | HF eager single / burst | HF graph | GEMM graph (HF layout) | GEMM row-major, us"]
                    + rows[-30:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
