"""Sweep throughput: points per second serially, over local processes, and on a Dask LocalCluster.

Run: python benchmarks/bench_sweep.py [--workers N] [--small]
The grid (system auto, so every serving system is simulated at each point): 4 models x 2
platforms x 3 PCIe generations x 5 batch sizes x 2 generation lengths = 240 points; --small
uses 1,000 cheap points instead (one small model, gpu-resident, short workloads). Each mode
runs the same grid from scratch and its records are checked equal to the serial ones. The Dask
time excludes starting the cluster and warming its workers (reported apart). Dask is skipped, with a message, when
dask.distributed is not installed (pip install 'dask[distributed]').
"""

from __future__ import annotations

import argparse
import os
import time

from moesim.analysis.sweep import Grid, run_sweep


def grid(small: bool) -> Grid:
    if small:
        return Grid(model=["olmoe-1b-7b", "mixtral-8x7b"], hardware=["rtx4090", "c2"], system="gpu-resident",
                    batch_size=[1, 2, 4, 8, 16], prompt_tokens=[16, 32, 64, 128, 256],
                    gen_tokens=[4, 8, 12, 16, 24, 32, 48, 64, 96, 128], num_requests=16)
    return Grid(model=["olmoe-1b-7b", "mixtral-8x7b", "deepseek-v2-lite", "qwen1.5-moe-a2.7b"],
                hardware=["c2", "rtx4090"], pcie=["gen3", "gen4", "gen5"], batch_size=[1, 4, 16, 64, 256],
                gen_tokens=[64, 128])


def timed(label: str, npoints: int, func):
    t0 = time.perf_counter()
    records = func()
    seconds = time.perf_counter() - t0
    print(f"{label:34s} {seconds:7.2f} s  {npoints / seconds:8.1f} points/s")
    return records


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--small", action="store_true", help="1,000 cheap points instead of 240 realistic ones")
    args = ap.parse_args()
    g = grid(args.small)
    n = len(g)
    print(f"{n} points, {args.workers} workers, {os.cpu_count()} CPUs")
    run_sweep(Grid(model="olmoe-1b-7b", hardware="c2"), None, workers=1, progress=False)  # load the databases
    serial = timed("serial (workers=1)", n, lambda: run_sweep(g, None, workers=1, progress=False))
    procs = timed(f"processes (workers={args.workers})", n,
                  lambda: run_sweep(g, None, workers=args.workers, progress=False))
    assert procs == serial, "process-parallel records differ from serial ones"
    try:
        import distributed
    except ImportError:
        print("dask: skipped (dask.distributed not installed; pip install 'dask[distributed]')")
        return
    t0 = time.perf_counter()
    with distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=":0") as cluster:
        start = time.perf_counter() - t0
        t0 = time.perf_counter()  # warm the workers: import moesim and load its databases in each
        cluster_client = distributed.Client(cluster.scheduler_address)
        cluster_client.run(lambda: run_sweep(Grid(model="olmoe-1b-7b", hardware="c2"), None, workers=1,
                                             progress=False) and None)
        cluster_client.close()
        warm = time.perf_counter() - t0
        dask = timed(f"dask LocalCluster ({args.workers} workers)", n,
                     lambda: run_sweep(g, None, scheduler=cluster.scheduler_address, progress=False))
        print(f"{'':34s} (cluster start {start:.2f} s and worker warm-up {warm:.2f} s not included)")
    assert dask == serial, "Dask records differ from serial ones"
    print("records identical in every mode")


if __name__ == "__main__":
    main()
