"""Measure every case of the campaign and write one JSON file.

    python validation/torchbench/measure.py --out FILE.json [--quick] [--only gemm,copy]

On a GPU it runs the ``full`` grid (cases.py) in about four minutes; with ``--quick`` or without a
GPU, the ``quick`` grid on the CPU. Each case: warm-up (calls and time), CUDA events, median of
up to 100 repetitions, random data (never zeros), inputs rotated over buffers larger than L2
where it matters. Kernel-level cases also record the same call back to back (``burst_s``,
``host_issue_s``) and, where it can be captured, under a CUDA graph (``graph_s``): see
timing.py. Cases of a family shorter than ``INTERLEAVE_BELOW_S`` (1 ms; MoE layers 15 ms) are
then timed again in interleaved rounds (``interleaved_median_s``, timing v5). The JSON is
rewritten after every family, so a run stopped early keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cases as grids  # noqa: E402
import kernels as K  # noqa: E402
from timing import host_wall, interleaved, measure, on_cuda, sync  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
L2_BYTES = 64 * 2**20
#: families whose short cases are timed again in interleaved rounds, and what counts as short:
#: operations of up to a millisecond, where the host's issue time is a large part of a single call;
#: MoE layers up to 15 ms (the per-expert loop is host time, a sync and ~9 calls per expert, up to
#: 12 ms for 64 experts; their weights, <= 2.8 GB a case, stay alive until the rounds end)
INTERLEAVED_FAMILIES = ("hbm_copy", "copy", "gemm", "expert_ffn", "moe_layer", "attention", "mla_decode")
INTERLEAVE_BELOW_S = {"moe_layer": 15e-3}
INTERLEAVE_DEFAULT_BELOW_S = 1e-3
#: the callable each runner timed as its case (``keep``), for the interleaved rounds
KEPT: list = []


def keep(fn):
    """Remember ``fn`` as the current case's operation (see INTERLEAVED_FAMILIES)."""
    KEPT.append(fn)
    return fn


def environment(device) -> dict:
    env = {"device": "cuda" if on_cuda() else "cpu", "timer": "cuda_event" if on_cuda() else "perf_counter",
           "timing": "v5: warm-up by count and time; single calls, bursts, CUDA graphs, interleaved single calls "
                     "of short cases (timing.py)",
           "torch": torch.__version__, "python": platform.python_version(), "hostname": socket.gethostname(),
           "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if on_cuda():
        prop = torch.cuda.get_device_properties(device)
        env.update(gpu=prop.name, cc=f"{prop.major}.{prop.minor}", sm_count=prop.multi_processor_count,
                   total_memory_bytes=prop.total_memory, cuda=torch.version.cuda)
        try:
            q = "name,driver_version,clocks.sm,clocks.mem,clocks.max.sm,power.limit"
            env["nvidia_smi"] = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"],
                                               capture_output=True, text=True, timeout=20).stdout.strip()
        except Exception as exc:  # read-only query; its absence is recorded, not fatal
            env["nvidia_smi"] = f"unavailable: {exc}"
    else:
        env["gpu"] = "cpu"
    return env


def rotations(nbytes: float) -> int:
    return max(1, min(8, int(2 * L2_BYTES // max(nbytes, 1)) + 1))


# ---- one runner per family: params -> (timing dict, extra) -------------------------------------
def run_hbm_copy(p, dev):
    n = int(p["nbytes"]) // 2
    src = [K.rand(n, device=dev) for _ in range(rotations(p["nbytes"]))]
    dst = torch.empty_like(src[0])
    t = measure(keep(lambda i: dst.copy_(src[i % len(src)])), burst=True, graph=True)
    return t, {"bytes_per_s_read_plus_write": 2 * p["nbytes"] / t["median_s"]}


def run_copy(p, dev):
    n = int(p["nbytes"]) // 2
    kind = p["kind"]
    if kind == "d2d":
        src, dst = K.rand(n, device=dev), torch.empty(n, dtype=torch.bfloat16, device=dev)
    elif kind.startswith("h2d"):
        src = K.rand(n, pin=kind.endswith("pinned") and on_cuda())
        dst = torch.empty(n, dtype=torch.bfloat16, device=dev)
    else:
        src = K.rand(n, device=dev)
        dst = torch.empty(n, dtype=torch.bfloat16, pin_memory=kind.endswith("pinned") and on_cuda())
    d2d = kind == "d2d"
    t = measure(keep(lambda i: dst.copy_(src, non_blocking=kind.endswith("pinned"))), budget_s=0.3, max_reps=40 if d2d else 20,
                burst=d2d, graph=d2d)
    return t, {"bytes_per_s": p["nbytes"] / t["median_s"]}


def _gemm_fn(p, dev):
    m, n, k, dt = p["m"], p["n"], p["k"], p["dtype"]
    sets = rotations((m * k + k * n) * 2)
    if dt == "fp8":
        if not (on_cuda() and hasattr(torch, "_scaled_mm")):
            raise RuntimeError("fp8 GEMM needs torch._scaled_mm on a GPU")
        a = [K.rand(m, k, device=dev, scale=1.0).to(torch.float8_e4m3fn) for _ in range(sets)]
        b = [K.rand(n, k, device=dev, scale=1.0).to(torch.float8_e4m3fn).t() for _ in range(sets)]
        one = torch.tensor(1.0, device=dev)
        return lambda i: torch._scaled_mm(a[i % sets], b[i % sets], scale_a=one, scale_b=one,
                                          out_dtype=torch.bfloat16)
    a = [K.rand(m, k, device=dev, dtype=DTYPES[dt]) for _ in range(sets)]
    b = [K.rand(k, n, device=dev, dtype=DTYPES[dt]) for _ in range(sets)]
    return lambda i: a[i % sets] @ b[i % sets]


def run_gemm(p, dev):
    t = measure(keep(_gemm_fn(p, dev)), burst=True, graph=True)
    return t, {"flop_per_s": 2 * p["m"] * p["n"] * p["k"] / t["median_s"]}


def run_copy_beside_gemm(p, dev):
    gemm = _gemm_fn({**p, "dtype": "bf16"}, dev)
    n = int(p["nbytes"]) // 2
    src = K.rand(n, pin=on_cuda())
    dst = torch.empty(n, dtype=torch.bfloat16, device=dev)
    copy = lambda i: dst.copy_(src, non_blocking=True)  # noqa: E731
    copy_alone = measure(copy)["median_s"]
    gemm_reps = 8
    gemm_alone = measure(lambda i: [gemm(j) for j in range(gemm_reps)])["median_s"]
    if on_cuda():
        side = torch.cuda.Stream(dev)

        def both(i):
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                copy(i)
            for j in range(gemm_reps):
                gemm(j)
            torch.cuda.current_stream(dev).wait_stream(side)
    else:
        def both(i):
            copy(i)
            for j in range(gemm_reps):
                gemm(j)
    t = measure(both)
    return t, {"copy_alone_s": copy_alone, "gemm_alone_s": gemm_alone, "gemms": gemm_reps}


def run_launch(p, dev):
    x = torch.ones(1, device=dev)
    per = host_wall(lambda: x.add_(1.0), reps=2000 if on_cuda() else 200)
    # the same one-kernel op timed like every other case (events around one call, GPU idle
    # before it), back to back, and graphed: isolated floor, steady-state eager, GPU alone
    single = measure(lambda i: x.add_(1.0), burst=True, graph=True, burst_target_s=1e-3, max_burst=256)
    extra = {"method": "host wall / back-to-back adds", "event_single_s": single["median_s"],
             **{k: single[k] for k in ("burst_s", "host_issue_s", "graph_s") if k in single}}
    return {"median_s": per, "p10_s": per, "p90_s": per, "reps": 1}, extra


def run_host_sync(p, dev):
    x = torch.ones(1, device=dev)
    per = host_wall(lambda: x.add_(1.0).item(), reps=500 if on_cuda() else 100)
    return {"median_s": per, "p10_s": per, "p90_s": per, "reps": 1}, {"method": "add + .item() per call"}


def _experts(p, dev, pin=False, device=None):
    e, h, f = p["experts"], p["hidden"], p["ffn"]
    where = dev if device is None else device
    return K.rand(e, h, 2 * f, device=where, pin=pin), K.rand(e, f, h, device=where, pin=pin)


def run_expert_ffn(p, dev):
    h, f, t = p["hidden"], p["ffn"], p["tokens"]
    sets = rotations(3 * h * f * 2)
    ws = [(K.rand(h, 2 * f, device=dev), K.rand(f, h, device=dev)) for _ in range(sets)]
    x = K.rand(t, h, device=dev, scale=1.0)
    return measure(keep(lambda i: K.expert_ffn(x, *ws[i % sets])), burst=True, graph=True), {}


def run_moe_layer(p, dev):
    w13, w2 = _experts(p, dev)
    router = K.rand(p["hidden"], p["experts"], device=dev)
    x = K.rand(p["tokens"], p["hidden"], device=dev, scale=1.0)
    fn = K.moe_loop if p["impl"] == "loop" else K.moe_fused
    t = measure(keep(lambda i: fn(x, router, w13, w2, p["top_k"])), burst=True)
    _, chosen = K.route(x, router, p["top_k"])
    extra = {"distinct_experts": int(torch.unique(chosen).numel())}
    if p["impl"] == "fused":
        extra["grouped_kernel"] = K.grouped_kernel_name(x.device)
        # the two data movements around the experts, alone: gather of the routed rows, and the
        # weighted scatter-add (index_add_) that combines them
        token = torch.argsort(chosen.flatten(), stable=True) // p["top_k"]
        y = K.rand(token.numel(), p["hidden"], device=dev, scale=1.0)
        out = torch.zeros_like(x)
        extra["gather_s"] = measure(lambda i: x[token], max_reps=20)["median_s"]
        extra["combine_s"] = measure(lambda i: out.index_add_(0, token, y), max_reps=20)["median_s"]
    return t, extra


def run_attention(p, dev):
    b, hq, hk, d, lq, lk = (p[k] for k in ("batch", "q_heads", "kv_heads", "head_dim", "q_len", "kv_len"))
    sets = rotations(b * hk * lk * d * 4)
    q = K.rand(b, hq, lq, d, device=dev, scale=1.0)
    kv = [(K.rand(b, hk, lk, d, device=dev, scale=1.0), K.rand(b, hk, lk, d, device=dev, scale=1.0))
          for _ in range(sets)]
    return measure(keep(lambda i: K.attention(q, *kv[i % sets], p["causal"])), burst=True, graph=True), {}


def run_mla_decode(p, dev):
    b, h, r, dr, lk = (p[k] for k in ("batch", "heads", "kv_lora_rank", "rope_dim", "kv_len"))
    sets = rotations(b * lk * (r + dr) * 2)
    ql, qr = K.rand(b, h, r, device=dev, scale=1.0), K.rand(b, h, dr, device=dev, scale=1.0)
    cache = [(K.rand(b, lk, r, device=dev, scale=1.0), K.rand(b, lk, dr, device=dev, scale=1.0)) for _ in range(sets)]
    return measure(keep(lambda i: K.mla_decode(ql, qr, *cache[i % sets])), burst=True, graph=True), {}


def run_offloaded_moe_layer(p, dev):
    w13h, w2h = _experts(p, dev, pin=on_cuda(), device="cpu")
    off = K.OffloadedExperts(w13h, w2h, dev)
    router = K.rand(p["hidden"], p["experts"], device=dev)
    x = K.rand(p["tokens"], p["hidden"], device=dev, scale=1.0)
    t = measure(lambda i: K.offloaded_moe_layer(x, router, off, p["top_k"]), warmup=2, min_reps=3, max_reps=10,
                budget_s=1.0)
    copy_only = measure(lambda i: off.run([x[:0]] * p["experts"]), warmup=1, min_reps=3, max_reps=5)["median_s"]
    w13, w2 = _experts(p, dev)
    _, chosen = K.route(x, router, p["top_k"])
    counts = torch.bincount(chosen.flatten(), minlength=p["experts"]).tolist()
    segments = list(torch.split(K.rand(sum(counts), p["hidden"], device=dev, scale=1.0), counts))
    compute_only = measure(lambda i: [K.expert_ffn(s, w13[e], w2[e]) for e, s in enumerate(segments) if s.shape[0]],
                           warmup=1, min_reps=3, max_reps=5)["median_s"]
    return t, {"copy_only_s": copy_only, "compute_only_s": compute_only}


def run_decode_step(p, dev):
    step = K.DecodeStep(p["model"], p["layers"], p["batch"], p["kv_len"], p["micro_batch"], dev)
    t = measure(lambda i: step(), warmup=1, min_reps=3, max_reps=8, budget_s=2.0)
    return t, {"shared_experts_resident": bool(step.shared), "kv_writeback": False}


RUNNERS = {name[4:]: fn for name, fn in globals().items() if name.startswith("run_")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="")
    args = ap.parse_args(argv)
    dev = torch.device("cuda") if on_cuda() and not args.quick else torch.device("cpu")
    grid = grids.quick() if args.quick or dev.type == "cpu" else grids.full()
    only = [f for f in args.only.split(",") if f]
    out = {"schema": 1, "env": environment(dev), "grid": "quick" if grid is not grids.full() else "full", "cases": []}
    out["grid"] = "quick" if (args.quick or dev.type == "cpu") else "full"
    torch.manual_seed(0)
    t_start = time.time()
    for family, plist in grid.items():
        if only and family not in only:
            continue
        t0 = time.time()
        ok = 0
        short: dict[int, object] = {}
        for params in plist:
            try:
                KEPT.clear()
                timing, extra = RUNNERS[family](params, dev)
                out["cases"].append({"family": family, "params": params, **timing, "extra": extra})
                below_s = INTERLEAVE_BELOW_S.get(family, INTERLEAVE_DEFAULT_BELOW_S)
                if family in INTERLEAVED_FAMILIES and KEPT and timing["median_s"] < below_s:
                    short[len(out["cases"]) - 1] = KEPT[0]  # its inputs stay alive until the rounds end
                ok += 1
            except Exception as exc:  # one failing case (e.g. out of memory) must not stop the campaign
                out["cases"].append({"family": family, "params": params, "error": f"{type(exc).__name__}: {exc}"[:300]})
            finally:
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
        KEPT.clear()
        if short:
            try:
                for i, t in interleaved(short).items():
                    out["cases"][i].update(t)
            except Exception as exc:  # the contiguous timings stand
                print(f"{family}: interleaved rounds failed: {type(exc).__name__}: {exc}"[:300], flush=True)
            short.clear()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        sync()
        Path(args.out).write_text(json.dumps(out, indent=1))
        print(f"{family:20s} {ok:3d}/{len(plist):3d} cases  {time.time() - t0:6.1f} s  (total {time.time() - t_start:6.1f} s)",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
