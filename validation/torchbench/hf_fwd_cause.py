"""Why are forward-only decode steps 3-4x slower before ``generate`` has run? One process per test, each its own control.

hf_generate.py's forward-only decode (``decode_steps``: one single-token forward with the DynamicCache at a time,
wall time between two ``torch.cuda.synchronize()``) ran Mixtral-8x7B (eager experts, b = 1) at 18 ms on one lease and
77 ms on others, Qwen3-30B-A3B (batched_mm, b = 1) at 27 vs 105-130 ms; on the hf-fwd-clock lease the same cells ran
about 3x faster right after ``model.generate`` had run on the same model object in the same process, with steady
clocks and a GPU busy < 8 % (host-bound). This script looks for the state that changes.

For the two cells (campaign layer counts, b = 1, prompt 128) it starts fresh Python processes (``base``: one per model;
every other test: one process, the two models in turn, each a fresh model object with its own ``fresh`` control phase,
since on the hf-fwd-clock lease a model built after another's ``generate`` started slow again) and records, per phase:

* ``steps``: 12 forward-only decode steps as hf_generate.decode_steps takes them (wall time between synchronizes), and
  per step the process's getrusage deltas (user / system CPU, minor faults, voluntary / involuntary context switches),
  Python gc collections (count and time per generation), the CPU the main thread ran on;
* per phase: the caching allocator's counters (cudaMalloc / cudaFree / retries / segments), CPU time of every thread
  of this process and of every other process on the machine (/proc), /proc/stat's steal, a no-sync burst of 8 steps
  (host issue time vs CUDA-event time), a host probe (tiny-op issue time, a pure-Python loop);
* in the ``base`` test also: torch.profiler (CPU ops: count, self CPU time; then CPU + CUDA runtime calls) of 4 / 3
  steps, cProfile of 3 steps (Python functions by own time), and the keyword arguments the forward receives (types,
  shapes, cache type, grad / inference mode) in forward-only decode and inside ``generate``.

Tests (``fresh`` is the same model's control phase before the intervention):

* ``base``: hf_generate.run_cells (the campaign's call: b = 1, prompts 128 and 512, this backend) -> phase ``before``
  -> ``generate(17)`` twice with this backend -> ``after_gen_impl`` -> ``generate(17)`` twice with grouped_mm (which
  ``generate`` decodes as batched_mm), unless this backend is grouped_mm -> ``after_gen_grouped`` -> run_cells again;
* ``warm_gen2``: ``fresh`` -> one ``generate(2)`` with this backend -> ``after``;
* ``grouped_first``: ``fresh`` -> a grouped_mm prefill and 6 forward-only decode steps (the first campaign ran those
  before the batched_mm / eager cells of each (batch, prompt)) -> ``after``;
* ``gen_kwargs``: ``fresh`` -> ``mode`` (the decode loop built the way generate builds it: prepare_inputs_for_generation
  with position_ids and logits_to_keep, _update_model_kwargs_for_generation, the logits copied to float32)
  -> ``again`` (plain forward-only);
* ``inference_mode``: ``fresh`` -> ``mode`` (prefill and steps under torch.inference_mode) -> ``again``;
* ``toggle``: ``fresh`` -> set_experts_implementation('batched_mm') and back, no forward -> ``after``;
* ``gc_freeze``: ``fresh`` -> gc.collect(); gc.freeze() -> ``after``;
* ``mallopt``: glibc's trim / mmap thresholds raised before anything is allocated (memory never handed back to the
  kernel) -> ``fresh`` only.

The tests run in that order while ``--budget-s`` lasts; what does not fit is recorded as skipped.

Result of its lease (``validation/measurements/h200/transformers/2026-12-03-hf-fwd-cause.json``): the slow steps were
PyTorch's cuDNN attention building a graph for each KV length the process had not run yet (a thread-local cache of
cuDNN graphs keyed by the attention shape); every test's second phase ran the first phase's KV lengths again and was
fast whatever ran in between. (The ``gen_kwargs`` ``mode`` phase passed an attention mask one column short of the cache;
its numbers are not used.)

Output: ``$OUT/hf_fwd_cause.json`` (merged after every process; a timeout keeps what was measured), a table last.
Device: ``PYTHONUNBUFFERED=1 python hf_fwd_cause.py --out $OUT --budget-s 380``; CPU check: ``python hf_fwd_cause.py
--tiny --out /tmp/x`` (shrunk configs, 2 layers, the same code path; the CUDA-only parts are skipped).
"""

from __future__ import annotations

import argparse
import cProfile
import ctypes
import gc
import io
import json
import os
import platform
import pstats
import resource
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
CELLS = (("mixtral-8x7b", "eager"), ("qwen3-30b-a3b", "batched_mm"))
TESTS = ("base", "warm_gen2", "grouped_first", "gen_kwargs", "inference_mode", "toggle", "gc_freeze", "mallopt")
PROMPT = 128
STEPS = 12
BURST = 8
GEN_N = 17
ALLOC_KEYS = ("num_device_alloc", "num_device_free", "num_alloc_retries", "num_sync_all_streams",
              "num_ooms", "segment.all.current", "segment.all.allocated", "allocation.all.allocated",
              "inactive_split.all.current", "oversize_allocations.allocated")


# ---------------------------------------------------------------- helpers (no torch) --------------------------------
def read_json(p: Path):
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def write_json(p: Path, data) -> None:
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, p)


def ru() -> dict:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return dict(utime=r.ru_utime, stime=r.ru_stime, minflt=r.ru_minflt, majflt=r.ru_majflt, nvcsw=r.ru_nvcsw,
                nivcsw=r.ru_nivcsw)


def ru_delta(a: dict, b: dict) -> dict:
    return {k: b[k] - a[k] for k in a}


def cur_cpu() -> int | None:
    try:
        return int(Path("/proc/thread-self/stat").read_text().rsplit(")", 1)[1].split()[36])
    except (OSError, IndexError, ValueError):
        return None


def _stat_fields(text: str) -> tuple[str, list[str]]:
    comm = text[text.index("(") + 1:text.rindex(")")]
    return comm, text[text.rindex(")") + 2:].split()


def threads_cpu() -> dict:
    """{tid: (comm, utime + stime in clock ticks)} of this process's threads."""
    out = {}
    try:
        for t in os.listdir("/proc/self/task"):
            try:
                comm, f = _stat_fields(Path(f"/proc/self/task/{t}/stat").read_text())
                out[t] = (comm, int(f[11]) + int(f[12]))
            except (OSError, ValueError, IndexError):
                pass
    except OSError:
        pass
    return out


def procs_cpu() -> dict:
    """{pid: (comm, utime + stime ticks)} of every process on the machine."""
    out = {}
    try:
        for p in os.listdir("/proc"):
            if not p.isdigit():
                continue
            try:
                comm, f = _stat_fields(Path(f"/proc/{p}/stat").read_text())
                out[p] = (comm, int(f[11]) + int(f[12]))
            except (OSError, ValueError, IndexError):
                pass
    except OSError:
        pass
    return out


def proc_stat() -> list[int] | None:
    try:
        return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return None


def top_delta(a: dict, b: dict, n: int = 6) -> list:
    d = [(k, b[k][0], b[k][1] - a.get(k, (None, 0))[1]) for k in b]
    d = [x for x in d if x[2] > 0]
    return sorted(d, key=lambda x: -x[2])[:n]


def mallopt_never_return() -> dict:
    """Raise glibc's trim / mmap thresholds so freed heap memory is never handed back to the kernel."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim, m_top_pad, m_mmap_threshold = -1, -2, -3
        r = dict(trim=libc.mallopt(m_trim, 1 << 30), top_pad=libc.mallopt(m_top_pad, 256 << 20),
                 mmap=libc.mallopt(m_mmap_threshold, 1 << 30))
        return dict(ok=all(v == 1 for v in r.values()), ret=r)
    except OSError as e:
        return dict(ok=False, error=str(e))


# ---------------------------------------------------------------- worker ---------------------------------------------
class Worker:
    """One (model, backend) of one test, inside a worker process (``worker_main`` runs one or several in turn)."""

    def __init__(self, args, model, impl, index, mallopt=None):
        import torch  # noqa: PLC0415

        sys.path.insert(0, str(HERE))
        import hf_generate as G  # noqa: PLC0415

        self.args = args
        self.args_model, self.args_impl = model, impl
        self.torch, self.G = torch, G
        self.cuda = torch.cuda.is_available()
        self.out = Path(args.out) / f"w_{args.test}_{index}.json"
        self.data = dict(model=model, impl=impl, test=args.test, pid=os.getpid(), index_in_process=index, phases=[],
                         log=[], started=time.time())
        if mallopt is not None:
            self.data["mallopt"] = mallopt
        self.gc_n = [0, 0, 0]
        self.gc_t = [0.0, 0.0, 0.0]
        self._gc_t0 = 0.0
        gc.callbacks.append(self._gc_cb)

    def close(self):
        gc.callbacks.remove(self._gc_cb)

    def _gc_cb(self, phase, info):
        if phase == "start":
            self._gc_t0 = time.perf_counter()
        else:
            g = info["generation"]
            self.gc_n[g] += 1
            self.gc_t[g] += time.perf_counter() - self._gc_t0

    def flush(self):
        write_json(self.out, self.data)

    def note(self, msg):
        print(f"[{self.args_model} {self.args.test}] {msg}", flush=True)
        self.data["log"].append(msg)

    def alloc_stats(self) -> dict:
        if not self.cuda:
            return {}
        s = self.torch.cuda.memory_stats()
        return {k: int(s.get(k, 0)) for k in ALLOC_KEYS}

    # ---- model / inputs
    def build(self):
        entries = json.loads((HERE / "hf_configs.json").read_text())["models"]
        self.entry = entries[self.args_model]
        self.layers = 2 if self.args.tiny else int(self.entry["measured_layers"])
        t = time.perf_counter()
        self.model, self.config = self.G.build(self.entry, self.layers, self.args.tiny)
        self.model.set_experts_implementation(self.args_impl)
        self.vocab = self.config.vocab_size
        self.ids = self.torch.randint(2, self.vocab, (1, PROMPT), device=self.G.dev())
        self.data["build_s"] = time.perf_counter() - t
        self.data["layers"] = self.layers

    def describe_kwargs(self, args, kwargs) -> dict:
        torch = self.torch

        def d(v):
            if isinstance(v, torch.Tensor):
                return dict(t="Tensor", shape=list(v.shape), dtype=str(v.dtype), device=str(v.device),
                            requires_grad=v.requires_grad)
            if v is None or isinstance(v, (bool, int, float, str)):
                return v
            r = dict(t=type(v).__name__)
            if hasattr(v, "get_seq_length"):
                try:
                    r["seq_length"] = int(v.get_seq_length())
                    r["layer_types"] = sorted({type(x).__name__ for x in getattr(v, "layers", [])})
                except Exception as e:  # noqa: BLE001
                    r["err"] = str(e)[:100]
            return r

        return dict(args=[d(a) for a in args], kwargs={k: d(v) for k, v in sorted(kwargs.items())},
                    grad_enabled=torch.is_grad_enabled(), inference_mode=torch.is_inference_mode_enabled())

    def capture_forward_kwargs(self, n_call: int):
        """Pre-hook recording the kwargs of the n-th forward call from now; returns (list, handle)."""
        seen, box = [0], []

        def hook(mod, args, kwargs):
            seen[0] += 1
            if seen[0] == n_call:
                box.append(self.describe_kwargs(args, kwargs))

        return box, self.model.register_forward_pre_hook(hook, with_kwargs=True)

    # ---- decode loops
    def prefill(self, mode="plain"):
        torch, G = self.torch, self.G
        if mode == "inference_mode":
            from transformers import DynamicCache  # noqa: PLC0415

            with torch.inference_mode():
                cache = DynamicCache(config=self.model.config)
                mask = torch.ones_like(self.ids)
                out = self.model(input_ids=self.ids, attention_mask=mask, past_key_values=cache, use_cache=True,
                                 logits_to_keep=1)
            return out, cache, mask
        return G.prefill_once(self.model, self.ids)

    def step_fn(self, mode, st):
        """One decode forward in ``mode``; ``st`` carries the loop state between steps."""
        torch, model = self.torch, self.model
        if mode == "gen_kwargs":
            mk = st["mk"]
            inputs = model.prepare_inputs_for_generation(st["seq"], next_sequence_length=1, **mk)
            with torch.no_grad():
                o = model(**inputs, return_dict=True)
            st["mk"] = model._update_model_kwargs_for_generation(o, mk, is_encoder_decoder=False)
            logits = o.logits[:, -1].to(copy=True, dtype=torch.float32)
            del o
            nxt = torch.argmax(logits, dim=-1)
            st["seq"] = torch.cat([st["seq"], nxt[:, None]], dim=-1)
            return
        st["mask"] = torch.cat([st["mask"], st["mask"].new_ones((st["mask"].shape[0], 1))], dim=-1)
        ctx = torch.inference_mode() if mode == "inference_mode" else torch.no_grad()
        with ctx:
            o = model(input_ids=st["nxt"], attention_mask=st["mask"], past_key_values=st["cache"], use_cache=True,
                      logits_to_keep=1)
        st["nxt"] = o.logits[:, -1].argmax(-1, keepdim=True)

    def new_state(self, mode):
        torch = self.torch
        out, cache, mask = self.prefill(mode)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        st = dict(cache=cache, mask=mask, nxt=nxt)
        if mode == "gen_kwargs":
            pos = mask.long().cumsum(-1) - 1
            mk = dict(attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True, logits_to_keep=1)
            st.update(mk=mk, seq=torch.cat([self.ids, nxt], dim=-1))
        del out
        return st

    def host_probe(self) -> dict:
        torch, G = self.torch, self.G
        r = {}
        n = 300 if self.args.tiny else 3000
        if self.cuda:
            x = torch.ones(4, device="cuda")
            for _ in range(50):
                x.add_(1.0)
            G.sync()
            t = time.perf_counter()
            for _ in range(n):
                x.add_(1.0)
            r["gpu_add_issue_us"] = (time.perf_counter() - t) / n * 1e6
            G.sync()
        t = time.perf_counter()
        acc = 0
        m = 20_000 if self.args.tiny else 200_000
        for i in range(m):
            acc += i & 7
        r["python_iter_ns"] = (time.perf_counter() - t) / m * 1e9
        return r

    def phase(self, name, mode="plain", full=False, steps=STEPS):
        """Fresh prefill, ``steps`` synced decode steps with per-step counters, a no-sync burst, a host probe;
        with ``full``, the profilers and the forward's kwargs as well."""
        torch, G = self.torch, self.G
        ph = dict(name=name, mode=mode, t_start=time.time())
        try:
            st = self.new_state(mode)
            box, h = self.capture_forward_kwargs(2)
            for _ in range(2):  # the kwargs of step 2 (as the cells time steps after the first)
                self.step_fn(mode, st)
            h.remove()
            ph["forward_kwargs"] = box[0] if box else None
            G.sync()
            a0, th0, pr0, ps0 = self.alloc_stats(), threads_cpu(), procs_cpu(), proc_stat()
            per = []
            for _ in range(steps):
                r0, g0, gt0 = ru(), list(self.gc_n), list(self.gc_t)
                G.sync()
                t = time.perf_counter()
                self.step_fn(mode, st)
                G.sync()
                dt = time.perf_counter() - t
                r1 = ru()
                per.append(dict(wall_s=dt, **ru_delta(r0, r1), gc=[b - a for a, b in zip(g0, self.gc_n)],
                                gc_s=sum(self.gc_t) - sum(gt0), cpu=cur_cpu()))
            a1, th1, pr1, ps1 = self.alloc_stats(), threads_cpu(), procs_cpu(), proc_stat()
            ph["steps"] = per
            ph["median_ms"] = G.med([p["wall_s"] for p in per[1:]]) * 1e3
            ph["alloc_delta"] = {k: a1[k] - a0[k] for k in a1} if a1 else {}
            ph["alloc_now"] = a1
            ph["threads"] = top_delta(th0, th1, 8)
            ph["n_threads"] = len(th1)
            ph["other_procs"] = [x for x in top_delta(pr0, pr1, 8) if x[0] != str(os.getpid())]
            ph["proc_stat_delta"] = [b - a for a, b in zip(ps0, ps1)] if ps0 and ps1 else None
            # no-sync burst: host issue time vs CUDA-event time
            G.sync()
            e0 = torch.cuda.Event(enable_timing=True) if self.cuda else None
            e1 = torch.cuda.Event(enable_timing=True) if self.cuda else None
            r0 = ru()
            t = time.perf_counter()
            if self.cuda:
                e0.record()
            for _ in range(BURST):
                self.step_fn(mode, st)
            ti = time.perf_counter()
            if self.cuda:
                e1.record()
            G.sync()
            tw = time.perf_counter()
            ph["burst"] = dict(issue_ms=(ti - t) / BURST * 1e3, wall_ms=(tw - t) / BURST * 1e3,
                               event_ms=(e0.elapsed_time(e1) / BURST) if self.cuda else None,
                               ru=ru_delta(r0, ru()))
            ph["host"] = self.host_probe()
            if full:
                self.profile(ph, mode, st)
            del st
        except Exception as e:  # noqa: BLE001  (keep the rest of the process's tests)
            ph["error"] = f"{type(e).__name__}: {e}"[:400]
            self.note(traceback.format_exc()[-1500:])
        ph["t_end"] = time.time()
        self.data["phases"].append(ph)
        self.flush()
        b = ph.get("burst") or {}
        s = ph.get("steps") or [{}]
        self.note(f"{name:18s} {ph.get('median_ms', float('nan')):8.2f} ms/step  burst issue "
                  f"{b.get('issue_ms', float('nan')):7.2f} event {b.get('event_ms') or float('nan'):7.2f}  "
                  f"minflt/step {G.med([x.get('minflt', 0) for x in s]):.0f} "
                  f"sys/step {G.med([x.get('stime', 0) for x in s]) * 1e3:.2f} ms")
        return ph

    def profile(self, ph, mode, st):
        G = self.G
        from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

        def top(ka, n, pred=lambda k: True):
            rows = [dict(op=e.key, count=e.count, self_cpu_us=e.self_cpu_time_total, cpu_us=e.cpu_time_total)
                    for e in ka if pred(e.key)]
            return sorted(rows, key=lambda r: -r["self_cpu_us"])[:n]

        G.sync()
        t = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as p:
            for _ in range(4):
                self.step_fn(mode, st)
            G.sync()
        ph["prof_cpu_wall_ms"] = (time.perf_counter() - t) / 4 * 1e3
        ka = p.key_averages()
        ph["prof_cpu"] = top(ka, 40)
        ph["prof_cpu_self_total_us"] = sum(e.self_cpu_time_total for e in ka)
        ph["prof_cpu_op_calls"] = sum(e.count for e in ka)
        if self.cuda:
            t = time.perf_counter()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
                for _ in range(3):
                    self.step_fn(mode, st)
                G.sync()
            ph["prof_cuda_wall_ms"] = (time.perf_counter() - t) / 3 * 1e3
            ka = p.key_averages()
            ph["prof_runtime"] = top(ka, 20, lambda k: k.startswith("cuda") or k.startswith("cu"))
            ph["prof_cuda_ops"] = top(ka, 25)
        # steps right after the profilers (did profiling change the state?)
        per = []
        for _ in range(6):
            dt, _ = G.wall(lambda: self.step_fn(mode, st))
            per.append(dt)
        ph["after_profile_ms"] = [x * 1e3 for x in per]
        pr = cProfile.Profile()
        G.sync()
        t = time.perf_counter()
        pr.enable()
        for _ in range(3):
            self.step_fn(mode, st)
        G.sync()
        pr.disable()
        ph["cprofile_wall_ms"] = (time.perf_counter() - t) / 3 * 1e3
        s = pstats.Stats(pr, stream=io.StringIO())
        rows = []
        for (fn, line, name), (cc, nc, tt, ct, _) in s.stats.items():
            rows.append(dict(fn=f"{Path(fn).name}:{line}({name})", ncalls=nc, tottime_ms=tt * 1e3,
                             cumtime_ms=ct * 1e3))
        ph["cprofile_top"] = sorted(rows, key=lambda r: -r["tottime_ms"])[:30]
        ph["cprofile_total_ms"] = sum(r["tottime_ms"] for r in rows)

    def generate(self, impl, n, reps, capture=False):
        torch, G = self.torch, self.G
        self.model.set_experts_implementation(impl)
        mask = torch.ones_like(self.ids)
        rec = dict(impl=impl, n=n, times_s=[], ru=[])
        box, h = (self.capture_forward_kwargs(2) if capture else ([], None))
        for _ in range(reps):
            r0 = ru()

            def gen():
                with torch.no_grad():
                    return self.model.generate(input_ids=self.ids, attention_mask=mask, max_new_tokens=n,
                                               min_new_tokens=n, do_sample=False, pad_token_id=0)

            dt, o = G.wall(gen)
            rec["times_s"].append(dt)
            rec["ru"].append(ru_delta(r0, ru()))
            if h is not None:
                h.remove()
                h = None
        assert o.shape[1] == PROMPT + n, o.shape
        if capture:
            rec["forward_kwargs"] = box[0] if box else None
        self.model.set_experts_implementation(self.args_impl)
        self.data.setdefault("generate", []).append(rec)
        self.note(f"generate impl={impl} n={n}: " + ", ".join(f"{t * 1e3:.0f}" for t in rec["times_s"]) + " ms")
        self.flush()

    def campaign_cells(self, tag):
        """hf_generate.run_cells exactly as the campaign calls it (b = 1, prompts 128 and 512, this backend)."""
        G = self.G

        class Rec:
            def __init__(s):
                s.cells = []

            def add(s, c):
                s.cells.append(c)

            def note(s, m):
                self.note(m)

        r = Rec()
        G.T0 = time.perf_counter()
        G.run_cells(r, self.model, self.config, self.args_model, self.layers, time.perf_counter() + 60, self.vocab,
                    impls=(self.args_impl,), batches=(1,))
        self.data.setdefault("cells", {})[tag] = r.cells
        for c in r.cells:
            if c["kind"] == "decode":
                self.note(f"run_cells {tag} p={c['prompt']}: {c['median_s'] * 1e3:.2f} ms "
                          f"(steps {', '.join(f'{t * 1e3:.0f}' for t in c['times_s'])})")
        self.flush()

    def run(self):
        torch = self.torch
        self.data["env"] = dict(
            python=platform.python_version(), torch=torch.__version__, kernel=platform.release(),
            cpu_count=os.cpu_count(), affinity=len(os.sched_getaffinity(0)), num_threads=torch.get_num_threads(),
            switch_interval=sys.getswitchinterval(), interop_threads=torch.get_num_interop_threads(), gc_threshold=gc.get_threshold(), gc_count=gc.get_count(),
            gc_enabled=gc.isenabled(),
            env={k: v for k, v in os.environ.items() if k.startswith(("CUDA_", "PYTORCH_", "OMP_", "MALLOC_",
                                                                       "PYTHON", "TORCH"))})
        self.build()
        import transformers  # noqa: PLC0415

        self.data["env"]["transformers"] = transformers.__version__
        self.data["model_state"] = dict(
            training=self.model.training, attn=self.model.config._attn_implementation,
            experts=self.model.config._experts_implementation, gc_objects=len(gc.get_objects()))
        self.flush()
        t = self.args.test
        if t == "base":
            self.campaign_cells("before")
            self.phase("before", full=True)
            self.generate(self.args_impl, GEN_N, 2, capture=True)
            self.phase("after_gen_impl", full=True)
            if self.args_impl != "grouped_mm":
                self.generate("grouped_mm", GEN_N, 2)
                self.phase("after_gen_grouped")
            self.campaign_cells("late")
        elif t == "warm_gen2":
            self.phase("fresh")
            self.generate(self.args_impl, 2, 1)
            self.phase("after")
        elif t == "grouped_first":
            self.phase("fresh")
            self.model.set_experts_implementation("grouped_mm")
            st = self.new_state("plain")
            for _ in range(6):
                self.G.wall(lambda: self.step_fn("plain", st))
            del st
            self.model.set_experts_implementation(self.args_impl)
            self.phase("after")
        elif t in ("gen_kwargs", "inference_mode"):
            self.phase("fresh")
            self.phase("mode", mode=t)
            self.phase("again")
        elif t == "toggle":
            self.phase("fresh")
            self.model.set_experts_implementation("batched_mm")
            self.model.set_experts_implementation(self.args_impl)
            self.phase("after")
        elif t == "gc_freeze":
            self.phase("fresh")
            t0 = time.perf_counter()
            gc.collect()
            gc.freeze()
            self.data["gc_freeze_s"] = time.perf_counter() - t0
            self.phase("after")
        elif t == "mallopt":
            self.phase("fresh")
        self.data["model_state_end"] = dict(gc_objects=len(gc.get_objects()), gc_count=gc.get_count(),
                                            gc_collections=list(self.gc_n), gc_time_s=list(self.gc_t))
        self.data["finished"] = time.time()
        self.flush()
        del self.model
        if t == "gc_freeze":
            gc.unfreeze()
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()


def worker_main(args) -> int:
    """One test, for each model of ``--cells`` in turn in this process (a fresh model each, ``fresh`` its control)."""
    mallopt = mallopt_never_return() if args.test == "mallopt" else None  # before torch allocates anything
    rc = 0
    for k, cell in enumerate(args.cells.split(",")):
        model, impl = cell.split(":")
        w = Worker(args, model, impl, k, mallopt)
        try:
            w.run()
        except Exception as e:  # noqa: BLE001
            w.data["error"] = f"{type(e).__name__}: {e}"[:400]
            w.note(traceback.format_exc()[-2000:])
            w.flush()
            rc = 1
        w.close()
        del w
    return rc


# ---------------------------------------------------------------- driver ---------------------------------------------
def driver(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    path = out / "hf_fwd_cause.json"
    merged = dict(meta=dict(harness="hf_fwd_cause.py", tiny=args.tiny, budget_s=args.budget_s,
                            started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), cells=CELLS, tests=TESTS,
                            prompt=PROMPT, steps=STEPS, method="wall time between torch.cuda.synchronize() calls; "
                            "median of the steps after the first; base: one fresh process per model, other tests: one "
                            "process each, the models in turn, each model its own fresh control phase"),
                  runs=[])
    write_json(path, merged)
    # base: one fresh process per model; the other tests: one process each, the models in turn (each its own
    # ``fresh`` control: on the hf-fwd-clock lease a model built after another's generate started slow again)
    order = [("base", [c]) for c in CELLS] + [(t, list(CELLS)) for t in TESTS[1:]]
    per_model_s = 25.0  # estimate of one model's share of a light test; updated from what ran
    for test, cells in order:
        left = args.budget_s - (time.perf_counter() - t0)
        est = 15.0 + per_model_s * len(cells) if test != "base" else 45.0
        if left < est:
            for m, i in cells:
                merged["runs"].append(dict(model=m, impl=i, test=test, skipped=f"budget ({left:.0f} s left)"))
            write_json(path, merged)
            print(f"skip {test}: {left:.0f} s left, estimate {est:.0f} s", flush=True)
            continue
        ts = time.perf_counter()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--test", test, "--out", str(out),
               "--cells", ",".join(f"{m}:{i}" for m, i in cells)] + (["--tiny"] if args.tiny else [])
        try:
            rc = subprocess.run(cmd, timeout=max(10.0, left - 5), check=False).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        dur = time.perf_counter() - ts
        for k, (m, i) in enumerate(cells):
            wf = out / f"w_{test}_{k}.json"
            w = read_json(wf) or dict(model=m, impl=i, test=test, error="no record (process died or timed out)")
            w.update(rc=rc, process_s=dur)
            merged["runs"].append(w)
            if wf.exists():
                wf.unlink()
        write_json(path, merged)
        if test != "base":
            per_model_s = max(10.0, (dur - 15.0) / len(cells))
        print(f"== {test}: rc={rc} in {dur:.1f} s (at {time.perf_counter() - t0:.0f} s)", flush=True)
    merged["meta"]["finished_s"] = time.perf_counter() - t0
    write_json(path, merged)
    table(merged)
    return 0


def table(merged) -> None:
    print("forward-only decode, ms per step (median of steps after the first); burst = no-sync issue / event ms;")
    print("minflt, sys = per step medians; generate = per-call ms")
    for r in merged["runs"]:
        if "skipped" in r:
            print(f"  {r['model']:14s} {r['test']:15s} skipped: {r['skipped']}")
            continue
        for c in (r.get("cells") or {}).items():
            for x in c[1]:
                if x.get("kind") == "decode":
                    print(f"  {r['model']:14s} {r['test']:15s} run_cells {c[0]:6s} p={x['prompt']:4d} "
                          f"{x['median_s'] * 1e3:8.2f}")
        for ph in r.get("phases", []):
            b = ph.get("burst") or {}
            s = ph.get("steps") or [{}]
            med = lambda k: sorted(x.get(k, 0) for x in s)[len(s) // 2]  # noqa: E731
            ev = b.get("event_ms")
            print(f"  {r['model']:14s} {r['test']:15s} {ph['name']:17s} {ph.get('median_ms', float('nan')):8.2f}  "
                  f"burst {b.get('issue_ms', float('nan')):7.2f}/{ev if ev is not None else float('nan'):7.2f}  "
                  f"minflt {med('minflt'):5.0f} sys {med('stime') * 1e3:6.2f} nivcsw {med('nivcsw'):3.0f} "
                  f"nvcsw {med('nvcsw'):4.0f} host {ph.get('host', {}).get('gpu_add_issue_us', 0):5.1f}us "
                  f"{ph.get('host', {}).get('python_iter_ns', 0):5.1f}ns {ph.get('error', '')[:60]}")
        for g in r.get("generate", []):
            print(f"  {r['model']:14s} {r['test']:15s} generate {g['impl']:10s} n={g['n']:2d} "
                  + " ".join(f"{t * 1e3:7.1f}" for t in g["times_s"]))
        if r.get("rc") not in (0, None):
            print(f"  {r['model']:14s} {r['test']:15s} rc={r.get('rc')}")
    print(f"finished in {merged['meta'].get('finished_s', 0):.0f} s")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/hf_fwd_cause"))
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--budget-s", type=float, default=380.0)
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--cells", default="", help="worker: model:impl[,model:impl]")
    ap.add_argument("--test", default="")
    args = ap.parse_args()
    if args.worker:
        return worker_main(args)
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
