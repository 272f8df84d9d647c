"""Why do forward-only decode steps swing between leases? One lease, two cells, clocks sampled throughout.

hf_generate.py's forward-only decode (``run_cells``: one single-token forward at a time, wall time between two
``torch.cuda.synchronize()`` calls) ran Mixtral-8x7B (eager experts, b = 1) at 18 / 17 / 77 ms and Qwen3-30B-A3B
(batched_mm, b = 1) at 27 / 130 / 105 ms on three leases, while ``generate``'s own decode steps in the same processes
stayed within 25 %. This script takes, for those two cells at the campaign's measured layer counts and prompts:

* ``a``  hf_generate.run_cells itself (3 prefills, 6 decode forwards; batch 1, prompts 128 and 512; one backend) into
  ``$OUT/hf_generate.json`` (hf_generate.py's format), then once more at the end into ``$OUT/late/hf_generate.json``;
* ``b``  the same forwards back to back with no synchronize between steps (the next token stays on the GPU), timed
  with CUDA events over N steps and with the host clock, so the GPU never waits for the host between steps (the eager
  backend still reads the router on the host inside each forward); plus a per-step-synchronised loop of 3N steps
  (``a_long``) with each step's end time, to line up with the clock samples;
* ``c``  hf_generate.run_generate (grouped_mm, which generate decodes as batched_mm, and eager; b = 1);
* ``host`` host time per torch call (tight loop of a tiny op: on the GPU without sync, on the CPU, and a pure-Python
  loop), /proc/stat steal and the load average, at the start, between the models and at the end;
* ``clocks`` SM and memory clock, power and utilisation every 50 ms (pynvml; else ``nvidia-smi -lms 100`` into
  ``$OUT/nvidia_smi.csv``), each phase's start/end on the same clock, and per phase their medians.

Device: ``PYTHONUNBUFFERED=1 python hf_fwd_clock.py --out $OUT``; CPU check: ``python hf_fwd_clock.py --tiny
--out /tmp/x`` (GPU-only parts skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import hf_generate as G  # noqa: E402

#: (model, experts backend) of the two cells whose forward-only decode swung most between leases
CELLS = (("mixtral-8x7b", "eager"), ("qwen3-30b-a3b", "batched_mm"))
BUSY_STEPS = 20


class Clocks:
    """Background sampler of the GPU's clocks and power; times on time.perf_counter() (as the phases)."""

    def __init__(self, out: Path, period_s: float = 0.05):
        self.samples: list[list[float]] = []
        self.source = None
        self._stop = threading.Event()
        self._proc = None
        if not torch.cuda.is_available():
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            h = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
            self.source = "pynvml"

            def loop():
                while not self._stop.is_set():
                    try:
                        u = pynvml.nvmlDeviceGetUtilizationRates(h)
                        self.samples.append([
                            time.perf_counter(), pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
                            pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM),
                            pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0, u.gpu, u.memory])
                    except Exception:  # noqa: BLE001
                        pass
                    self._stop.wait(period_s)

            threading.Thread(target=loop, daemon=True).start()
        except Exception as err:  # noqa: BLE001
            self.source = f"nvidia-smi (pynvml: {type(err).__name__}: {err})"
            self._t0_wall, self._t0_perf = time.time(), time.perf_counter()
            self._proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,utilization.gpu",
                 "--format=csv", "-lms", "100"], stdout=open(out / "nvidia_smi.csv", "w"), stderr=subprocess.STDOUT)

    def stop(self) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()

    def summary(self, t0: float, t1: float) -> dict | None:
        s = [x for x in self.samples if t0 <= x[0] <= t1]
        if not s:
            return None
        col = lambda i: [x[i] for x in s]  # noqa: E731
        return dict(n=len(s), sm_mhz_median=G.med(col(1)), sm_mhz_min=min(col(1)), sm_mhz_max=max(col(1)),
                    mem_mhz_median=G.med(col(2)), power_w_median=G.med(col(3)), power_w_max=max(col(3)),
                    util_gpu_median=G.med(col(4)), util_mem_median=G.med(col(5)))


def proc_stat() -> list[int] | None:
    try:
        return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except OSError:
        return None


def host_probe(tiny: bool) -> dict:
    """Host time per call: tiny GPU op in a tight loop (no sync inside), tiny CPU op, a pure-Python loop."""
    n = 500 if tiny else 5000
    r: dict = {}
    with torch.no_grad():
        xc = torch.ones(4)
        for _ in range(50):
            xc.add_(1.0)
        t = time.perf_counter()
        for _ in range(n):
            xc.add_(1.0)
        r["cpu_add_per_call_s"] = (time.perf_counter() - t) / n
        if torch.cuda.is_available():
            xg = torch.ones(4, device="cuda")
            for _ in range(50):
                xg.add_(1.0)
            bursts = []
            for _ in range(5):
                G.sync()
                t = time.perf_counter()
                for _ in range(n):
                    xg.add_(1.0)
                bursts.append((time.perf_counter() - t) / n)  # host issue time only; queue drains at the sync
                G.sync()
            r["gpu_add_issue_per_call_s"] = G.med(bursts)
            sy = []
            for _ in range(200):
                t = time.perf_counter()
                G.sync()
                sy.append(time.perf_counter() - t)
            r["idle_sync_s"] = G.med(sy)
            it = []
            s = torch.tensor(1.0, device="cuda")
            for _ in range(200):
                t = time.perf_counter()
                s.item()
                it.append(time.perf_counter() - t)
            r["item_ready_s"] = G.med(it)
    t = time.perf_counter()
    acc = 0
    for i in range(200_000 if not tiny else 20_000):
        acc += i & 7
    r["python_loop_per_iter_s"] = (time.perf_counter() - t) / (200_000 if not tiny else 20_000)
    r["loadavg"] = os.getloadavg()
    r["proc_stat"] = proc_stat()
    r["t"] = time.perf_counter()
    return r


def busy_decode(model, vocab, prompt: int, steps: int) -> dict:
    """Prefill once, then ``steps`` decode forwards with no synchronize between them (next token argmax'd on the
    GPU), CUDA events around the whole loop; then ``3 * steps`` per-step-synchronised forwards (hf_generate's
    decode_steps) with each step's end time on perf_counter."""
    ids = torch.randint(2, vocab, (1, prompt), device=G.dev())
    out, cache, mask = G.prefill_once(model, ids)
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    cuda = torch.cuda.is_available()
    # one warm step
    mask = torch.cat([mask, mask.new_ones((1, 1))], dim=-1)
    with torch.no_grad():
        o = model(input_ids=nxt, attention_mask=mask, past_key_values=cache, use_cache=True, logits_to_keep=1)
    nxt = o.logits[:, -1].argmax(-1, keepdim=True)
    G.sync()
    e0 = torch.cuda.Event(enable_timing=True) if cuda else None
    e1 = torch.cuda.Event(enable_timing=True) if cuda else None
    t0 = time.perf_counter()
    if cuda:
        e0.record()
    with torch.no_grad():
        for _ in range(steps):
            mask = torch.cat([mask, mask.new_ones((1, 1))], dim=-1)
            o = model(input_ids=nxt, attention_mask=mask, past_key_values=cache, use_cache=True, logits_to_keep=1)
            nxt = o.logits[:, -1].argmax(-1, keepdim=True)
    t_issue = time.perf_counter()
    if cuda:
        e1.record()
    G.sync()
    t1 = time.perf_counter()
    r = dict(prompt=prompt, steps=steps, busy_wall_per_step_s=(t1 - t0) / steps,
             busy_host_issue_per_step_s=(t_issue - t0) / steps, t_start=t0, t_end=t1)
    if cuda:
        r["busy_event_per_step_s"] = e0.elapsed_time(e1) / 1e3 / steps
    ends = []
    times = []
    for _ in range(3 * steps):
        mask = torch.cat([mask, mask.new_ones((1, 1))], dim=-1)

        def step():
            with torch.no_grad():
                return model(input_ids=nxt, attention_mask=mask, past_key_values=cache, use_cache=True,
                             logits_to_keep=1)

        t, o = G.wall(step)
        nxt = o.logits[:, -1].argmax(-1, keepdim=True)
        times.append(t)
        ends.append(time.perf_counter())
    r.update(a_long_times_s=times, a_long_ends=ends, a_long_median_s=G.med(times[1:]))
    del out, cache
    return r


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/hf_fwd_clock"))
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--budget-s", type=float, default=380.0)
    args = ap.parse_args()
    G.T0 = t0 = time.perf_counter()
    out = Path(args.out)
    (out / "late").mkdir(parents=True, exist_ok=True)
    entries = json.loads((HERE / "hf_configs.json").read_text())["models"]
    meta = G.campaign_meta(args, entries, harness="hf_fwd_clock.py",
                           method="hf_generate.py's run_cells (one backend per model, batch 1, prompts 128 and 512) "
                                  "and run_generate (batch 1): wall time between torch.cuda.synchronize() calls; "
                                  "diagnostic of two cells, not a campaign")
    rec = G.Recorder(out, meta)  # (a) and (c), hf_generate.py's format
    late = G.Recorder(out / "late", dict(meta, pass_="late"))  # (a) again at the end
    clocks = Clocks(out)
    diag = dict(meta=dict(meta, configs=None, clock_source=clocks.source, t0=t0), host=[], phases=[], busy=[])
    dpath = out / "hf_fwd_clock.json"

    def flush():
        diag["clock_samples"] = clocks.samples
        for ph in diag["phases"]:
            ph["clocks"] = clocks.summary(ph["t_start"], ph["t_end"])
        for b in diag["busy"]:
            b["clocks"] = clocks.summary(b["t_start"], b["t_end"])
        tmp = dpath.with_suffix(".tmp")
        tmp.write_text(json.dumps(diag))
        os.replace(tmp, dpath)

    def phase(name, fn):
        ta, sa = time.perf_counter(), proc_stat()
        err = None
        try:
            fn()
        except Exception as e:  # noqa: BLE001  (keep the rest of the lease)
            err = f"{type(e).__name__}: {e}"[:300]
            rec.note(f"{name} failed: {err}")
        diag["phases"].append(dict(name=name, t_start=ta, t_end=time.perf_counter(), error=err, stat_start=sa,
                                   stat_end=proc_stat()))
        rec.note(f"[{time.perf_counter() - t0:6.1f} s] {name} done")
        flush()

    time.sleep(0 if args.tiny else 2.0)  # idle clocks first
    diag["host"].append(dict(host_probe(args.tiny), when="start"))
    flush()
    models = {}
    n_models = len(CELLS)
    for i, (key, impl) in enumerate(CELLS):
        entry = entries[key]
        layers = 2 if args.tiny else int(entry["measured_layers"])
        deadline = t0 + (i + 1) / n_models * 0.7 * args.budget_s
        try:
            model, config = G.build(entry, layers, args.tiny)
        except Exception as e:  # noqa: BLE001
            rec.note(f"build {key} failed: {type(e).__name__}: {e}")
            continue
        vocab = config.vocab_size
        phase(f"{key} a", lambda: G.run_cells(rec, model, config, key, layers, deadline, vocab, impls=(impl,),
                                              batches=(1,)))

        def busy():
            model.set_experts_implementation(impl)
            for p in G.PROMPTS:
                diag["busy"].append(dict(busy_decode(model, vocab, p, 5 if args.tiny else BUSY_STEPS), model=key,
                                         impl=impl))
                flush()

        phase(f"{key} b", busy)
        phase(f"{key} c", lambda: G.run_generate(rec, model, key, layers, deadline + 0.1 * args.budget_s, vocab,
                                                 batches=(1,)))
        phase(f"{key} a-after-c", lambda: G.run_cells(late, model, config, key, layers, time.perf_counter() + 60,
                                                      vocab, impls=(impl,), batches=(1,)))
        diag["host"].append(dict(host_probe(args.tiny), when=f"after {key}"))
        flush()
        if i == n_models - 1 or time.perf_counter() > t0 + 0.75 * args.budget_s:
            models[key] = (model, config, layers, impl)
        else:
            del model
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    # last model kept: idle 5 s, then one (a) cell straight after the idle (does an idle GPU slow the first steps?)
    for key, (model, config, layers, impl) in models.items():
        def idle_then_a():
            time.sleep(0 if args.tiny else 5.0)
            r = busy_decode(model, config.vocab_size, 128, 5 if args.tiny else BUSY_STEPS)
            diag["busy"].append(dict(r, model=key, impl=impl, note="after 5 s idle"))
        phase(f"{key} idle-then-b", idle_then_a)
    diag["host"].append(dict(host_probe(args.tiny), when="end"))
    clocks.stop()
    diag["meta"]["finished_s"] = time.perf_counter() - t0
    flush()
    rec.data["meta"]["finished_s"] = time.perf_counter() - t0
    rec.flush()
    table(rec, late, diag)
    return 0


def table(rec, late, diag) -> None:
    print("forward-only decode (a), generate per step (c):")
    for r, tag in ((rec, "a/c"), (late, "a late")):
        for c in r.data["cells"]:
            if c["kind"] in ("decode", "generate"):
                v = c.get("median_s", c.get("per_step_s"))
                print(f"  {tag:6s} {c['model']:14s} {c['kind']:8s} {c['impl']:10s} p={c['prompt']:4d} "
                      f"{'-' if v is None else f'{v * 1e3:8.2f} ms'}")
    print("busy loop (b) / per-step-synced long loop:")
    for b in diag["busy"]:
        ck = b.get("clocks") or {}
        ev = b.get("busy_event_per_step_s")
        print(f"  {b['model']:14s} p={b['prompt']:4d} busy wall {b['busy_wall_per_step_s'] * 1e3:7.2f} ms "
              f"event {'-' if ev is None else f'{ev * 1e3:7.2f}'} ms issue {b['busy_host_issue_per_step_s'] * 1e3:7.2f}"
              f" ms | synced {b['a_long_median_s'] * 1e3:7.2f} ms | SM {ck.get('sm_mhz_median')} MHz "
              f"P {ck.get('power_w_median')} W {b.get('note', '')}")
    print("phases (median SM MHz, mem MHz, power W, util %):")
    for ph in diag["phases"]:
        ck = ph.get("clocks") or {}
        print(f"  {ph['name']:28s} {ph['t_end'] - ph['t_start']:6.1f} s  SM {ck.get('sm_mhz_median')} "
              f"mem {ck.get('mem_mhz_median')} P {ck.get('power_w_median')} util {ck.get('util_gpu_median')}")
    print("host probes (us/call: cpu add, gpu add issue, idle sync, python iter; loadavg; steal jiffies):")
    for h in diag["host"]:
        st = h.get("proc_stat") or []
        print(f"  {h['when']:22s} {h['cpu_add_per_call_s'] * 1e6:6.2f} {h.get('gpu_add_issue_per_call_s', 0) * 1e6:6.2f}"
              f" {h.get('idle_sync_s', 0) * 1e6:6.2f} {h['python_loop_per_iter_s'] * 1e9:6.1f}ns "
              f"{h['loadavg'][0]:.2f} steal={st[7] if len(st) > 7 else '-'}")
    print(f"finished in {diag['meta'].get('finished_s', 0):.0f} s; clock source {diag['meta']['clock_source']}, "
          f"{len(diag.get('clock_samples', []))} samples")


if __name__ == "__main__":
    sys.exit(main())
