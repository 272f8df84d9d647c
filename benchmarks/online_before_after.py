"""Before/after check of online serving: `vllm.simulate_online` at an older revision against
`moesim.serving.simulate` in this tree, on the same workloads; every figure must be equal.

Run: python benchmarks/online_before_after.py [--rev 2cb9895]
(the revision's src/, models_db/ and hardware_db/ are extracted with `git archive` to a temporary
directory and run there in a subprocess; it must still have `moesim.systems.vllm.simulate_online`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _dist(kind: str, mean: int) -> dict:
    d = {"kind": kind, "mean_tokens": mean}
    if kind == "lognormal":
        d["sigma"] = 0.5
    if kind == "uniform":
        d.update(min_tokens=max(1, int(mean / 2)), max_tokens=int(mean * 1.5))
    return d


# (model, hardware, GPUs, rate /s, length kind, prompt mean, generation mean, vllm parameters)
CASES = [
    ("mixtral-8x7b", "h100-sxm", 2, 2.0, "lognormal", 512, 256, {}),
    ("mixtral-8x7b", "h100-sxm", 2, 20.0, "lognormal", 512, 256, {}),
    ("mixtral-8x7b", "h100-sxm", 2, 20.0, "uniform", 1024, 128, {}),
    ("mixtral-8x7b", "h100-sxm", 2, 2.0, "fixed", 512, 256, {}),
    ("mixtral-8x7b", "h100-sxm", 2, 50.0, "lognormal", 2048, 128,
     {"max_num_batched_tokens": 1024, "gpu_memory_utilization": 0.75}),
    ("olmoe-1b-7b", "rtx4090", 1, 200.0, "uniform", 256, 48, {"max_num_seqs": 64}),
    ("mixtral-8x7b", "c2", 1, 0.5, "lognormal", 256, 64, {"cpu_offload_gb": 80}),
    ("mixtral-8x7b", "h100-sxm", 2, 50.0, "lognormal", 1024, 512, {"gpu_memory_utilization": 0.64}),  # preempts
    ("mixtral-8x7b", "h100-sxm", 2, 30.0, "uniform", 1024, 512,
     {"gpu_memory_utilization": 0.65, "max_num_batched_tokens": 512}),  # preempts, chunked prompts
    ("olmoe-1b-7b", "rtx4090", 1, 1000.0, "fixed", 1, 1, {}),  # one-token prompts
    ("olmoe-1b-7b", "rtx4090", 1, 100.0, "uniform", 3, 2, {"max_num_batched_tokens": 2}),  # one-token chunks
]

RUN = """
import json, sys
import moesim
from moesim.modules import Context, Options
from moesim.specs import OfflineWorkload
from moesim.specs.workload import OnlineWorkload
from moesim.systems.vllm import VLLM
new = sys.argv[2] == "new"
out = {}
for key, (m, hw, g, rate, kind, P, G, params, prompt, gen) in json.loads(open(sys.argv[1]).read()).items():
    online = OnlineWorkload(arrival_rate_per_s=rate, num_requests=200, prompt=prompt, gen=gen, seed=7)
    ctx = Context(moesim.get_model(m), moesim.get_hardware(hw, num_gpus=g),
                  OfflineWorkload(num_requests=200, prompt_tokens=P, gen_tokens=G), Options())
    system = VLLM(params)
    plan = system.plan(ctx)
    if new:
        from moesim.serving import simulate
        out[key] = simulate(ctx, plan, system, online).model_dump(exclude={"system", "assumptions"})
    else:
        from moesim.systems.vllm import simulate_online
        out[key] = simulate_online(ctx, online, plan)
print(json.dumps(out))
"""


def _run(src: Path, cases: Path, which: str) -> dict:
    env = {"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", RUN, str(cases), which], env=env, capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rev", default="2cb9895", help="revision with the old simulate_online")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.rev, "src", "models_db", "hardware_db"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        cases = Path(tmp) / "cases.json"
        cases.write_text(json.dumps({"|".join(map(str, c)): [*c, _dist(c[4], c[5]), _dist(c[4], c[6])]
                                     for c in CASES}))
        before, after = _run(old / "src", cases, "old"), _run(REPO / "src", cases, "new")
    differ = 0
    for key in before:
        same = before[key] == after[key]
        differ += not same
        print(f"{'equal' if same else 'DIFFERENT'}  {key}  ({before[key]['steps']} steps, "
              f"{before[key]['preemptions']} preemptions, {after[key]['throughput_tok_s']:.6g} tok/s)")
        if not same:
            for name in before[key]:
                if before[key][name] != after[key].get(name):
                    print(f"    {name}: {before[key][name]} -> {after[key].get(name)}")
    print(f"{len(before) - differ} of {len(before)} workloads equal")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
