"""MoE-Lightning's measurements (Cao et al., arXiv 2411.11217) as published-corpus cells: its HELM Table 4
(FlexGen(c), FlexGen, DeepSpeed, MoE-Lightning(p) on S1 and S2, with the policy each ran), the FlexGen rows
of its Table 5, and the FlexGen / FlexGen(c) bars of its Fig. 7 (MTBench) with the policies FlexGen's own
cost model generated for them (artifact ``benchmarks/flexgen/mtbench/results/generated_policy_{t4,l4}_7b``).
Figures as transcribed in ``shared/reference/offload-systems.md`` 4.3 and 5.3.

Setup as stated (paper Table 2): S1 = one T4 16 GB, Intel Xeon 2.30 GHz 24-core, 192 GB host memory, PCIe gen3;
S2 = one L4 24 GB, Intel Xeon 2.20 GHz 24-core, 192 GB, PCIe gen4 (GCP g2-standard-48). Mixtral-8x7B, fp16.
Every system pads prompts to the longest of the batch (SynthReason 256, Summarization 1984, MTBench 418). The
figure is generation throughput: generated tokens / (prefill + decode time) of one batch of N sequences.

What each cell sets: the hardware (platforms ``hardware_db/platforms/moe-lightning-s1.yaml`` and ``-s2.yaml``:
the stated GPU, CPU (entries for the two GCP Xeons, figures of the GCP platform their clock names), 192 GiB and
link; S2's host memory bandwidth is the 76 GB/s the authors' README gives their optimizer for it), the padded
prompt, the generation length, N requests in one batch, and the policy the source prints (FlexGen: GPU batch
gbs = mu and GPU batches N/mu, CPU attention on for FlexGen(c), off for FlexGen; MoE-Lightning(p): micro-batch mu
and batch N; DeepSpeed: batch mu). FlexGen's weight fraction wg (printed only as "about 7-9%" / "13-15%") is left
to moesim's flexgen search.

Split, fixed before any fitting: Fig. 7's S1 (T4) bars are "fit" (8 cells: the set on which FlexGen's per-pass
costs on a T4 host may be fitted); Table 4, Table 5 and Fig. 7's S2 bars are held out.
"""

from __future__ import annotations

CITATION_T4 = "MoE-Lightning (arXiv 2411.11217) Table 4 (HELM), settings from its Table 2 and Table 3"
CITATION_T5 = "MoE-Lightning (arXiv 2411.11217) Table 5 (FlexGen policies on MTBench, S1)"
CITATION_F7 = ("MoE-Lightning (arXiv 2411.11217) Fig. 7 (MTBench) FlexGen / FlexGen(c) bars, with the policies of its "
               "artifact's benchmarks/flexgen/mtbench/results/generated_policy_{t4,l4}_7b")
SETTINGS = {
    "S1": {"hardware": "moe-lightning-s1", "knobs": {},
           "setup": "S1: 1x T4 16 GB, Intel Xeon 2.30 GHz 24-core, 192 GB host memory, PCIe gen3 (GCP)"},
    "S2": {"hardware": "moe-lightning-s2", "knobs": {},
           "setup": "S2: 1x L4 24 GB, Intel Xeon 2.20 GHz 24-core, 192 GB host memory, PCIe gen4 (GCP g2-standard-48)"},
}
#: Table 4: task -> (padded prompt, generated tokens); rows -> per (task, setting): (throughput, mu, N/mu)
TASKS = {"SynthReason": (256, 50), "Summarization": (1984, 64)}
TABLE4 = {
    "FlexGen(c)": {("SynthReason", "S1"): (16.903, 32, 61), ("SynthReason", "S2"): (20.015, 64, 33),
                   ("Summarization", "S1"): (2.614, 3, 92), ("Summarization", "S2"): (4.307, 8, 36)},
    "FlexGen": {("SynthReason", "S1"): (22.691, 32, 61), ("SynthReason", "S2"): (50.138, 64, 33),
                ("Summarization", "S1"): (3.868, 3, 92), ("Summarization", "S2"): (7.14, 8, 36)},
    "DeepSpeed": {("SynthReason", "S1"): (11.832, 102, 1), ("SynthReason", "S2"): (18.589, 156, 1),
                  ("Summarization", "S1"): (0.965, 8, 1), ("Summarization", "S2"): (1.447, 12, 1)},
    "MoE-Lightning(p)": {("SynthReason", "S1"): (26.349, 36, 26), ("SynthReason", "S2"): (105.29, 100, 15),
                         ("Summarization", "S1"): (4.52, 4, 19), ("Summarization", "S2"): (12.393, 8, 36)},
}
#: Table 5's FlexGen rows (MTBench on S1, prompt padded to 418, 128 generated): (label, mu, N, throughput). Its
#: first row (FlexGen's own policy, mu 8, N 1112, 9.5 tok/s) is Fig. 7's S1 d=128 FlexGen bar below, kept once.
TABLE5 = [("FlexGen, MoE-Lightning's policy", 36, 504, 16.816), ("FlexGen, MoE-Lightning's policy, larger N", 36, 1116, 20.654)]
#: Fig. 7: setting -> gen -> (gbs, GPU batches, FlexGen tok/s, FlexGen(c) tok/s)
FIG7 = {
    "S1": {32: (32, 40, 12.1, 9.8), 64: (16, 78, 12.3, 9.4), 128: (8, 139, 9.5, 7.2), 256: (8, 113, 9.6, 6.8)},
    "S2": {32: (64, 21, 29.2, 17.5), 64: (64, 20, 34.9, 18.9), 128: (64, 18, 37.2, 20.0), 256: (32, 30, 28.8, 15.9)},
}
MTBENCH_PROMPT = 418


def _system(row: str, mu: int, n_mu: int) -> tuple[str, dict, dict]:
    """(moesim system, its parameters, workload extras) for a row's printed policy."""
    if row.startswith("FlexGen"):
        return "flexgen", {"gpu_batch_grid": (mu,), "num_gpu_batches_grid": (n_mu,),
                           "cpu_attention": row == "FlexGen(c)"}, {}
    if row == "DeepSpeed":
        return "deepspeed", {"batch_size": mu}, {}
    return "moe-lightning", {"micro_batch_grid": (mu,)}, {"batch_size": mu * n_mu}


def cells() -> list[dict]:
    out = []
    for row, entries in TABLE4.items():
        for (task, setting), (tp, mu, n_mu) in entries.items():
            prompt, gen = TASKS[task]
            system, params, extra = _system(row, mu, n_mu)
            s = SETTINGS[setting]
            out.append({"key": f"T4|{row}|{task}|{setting}", "citation": CITATION_T4,
                        "setup": f"{s['setup']}; HELM {task}, prompts padded to {prompt}, {gen} generated; "
                                 f"policy mu {mu} x {n_mu}" + ("; DeepSpeed ZeRO-Inference v0.14.3" if row == "DeepSpeed" else ""),
                        "row": row, "model": "mixtral-8x7b", "hardware": s["hardware"], "knobs": s["knobs"],
                        "system": system, "params": params, "table": "Table 4", "figure": "throughput_tok_s",
                        "published": tp, "split": "held-out",
                        "workload": {"num_requests": mu * n_mu, "prompt_tokens": prompt, "gen_tokens": gen, **extra},
                        "column": f"T4|{task}|{setting}"})
    s = SETTINGS["S1"]
    for label, mu, n, tp in TABLE5:
        out.append({"key": f"T5|{label}", "citation": CITATION_T5,
                    "setup": f"{s['setup']}; MTBench padded to {MTBENCH_PROMPT}, 128 generated; policy mu {mu}, N {n}",
                    "row": label, "model": "mixtral-8x7b", "hardware": s["hardware"], "knobs": s["knobs"],
                    "system": "flexgen", "params": {"gpu_batch_grid": (mu,), "num_gpu_batches_grid": (n // mu,),
                                                    "cpu_attention": False},
                    "table": "Table 5", "figure": "throughput_tok_s", "published": tp, "split": "held-out",
                    "workload": {"num_requests": n, "prompt_tokens": MTBENCH_PROMPT, "gen_tokens": 128},
                    "column": "T5|S1|128"})
    for setting, by_gen in FIG7.items():
        s = SETTINGS[setting]
        for gen, (gbs, nb, flexgen, flexgen_c) in by_gen.items():
            for row, tp in (("FlexGen", flexgen), ("FlexGen(c)", flexgen_c)):
                out.append({"key": f"F7|{row}|{setting}|{gen}", "citation": CITATION_F7,
                            "setup": f"{s['setup']}; MTBench padded to {MTBENCH_PROMPT}, {gen} generated; FlexGen's "
                                     f"generated policy gbs {gbs} x {nb} GPU batches",
                            "row": row, "model": "mixtral-8x7b", "hardware": s["hardware"], "knobs": s["knobs"],
                            "system": "flexgen", "params": {"gpu_batch_grid": (gbs,), "num_gpu_batches_grid": (nb,),
                                                            "cpu_attention": row == "FlexGen(c)"},
                            "table": "Fig. 7", "figure": "throughput_tok_s", "published": tp,
                            "split": "fit" if setting == "S1" else "held-out",
                            "workload": {"num_requests": gbs * nb, "prompt_tokens": MTBENCH_PROMPT, "gen_tokens": gen},
                            "column": f"F7|{setting}|{gen}"})
    return out
