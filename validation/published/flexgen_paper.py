"""FlexGen's own published throughput (Sheng et al., ICML 2023; FMInference/FlexGen
``benchmark/batch_size_table.md``, the README's headline table): OPT-6.7B, OPT-30B and OPT-175B on one T4 16 GB,
GCP instance with 208 GB DRAM, 1.5 TB SSD (CPU Intel Xeon @ 2.00 GHz, the paper's Table 1); prompt 512, 32
generated; generation throughput (tokens/s) at each system's effective batch (tuned for throughput, printed
beside it: FlexGen 2 / 144 / 256, FlexGen with compression 72 / 512 / 144, Accelerate 2 / 8 / 2, DeepSpeed
16 / 4 / 1).

None is expressible yet: the OPT models (dense) have no moesim model entry, and Accelerate needs the
``transformers`` system (branch ``hf``); :func:`moesim.calibration.published.unavailable` says which, so a cell
becomes expressible by itself when the entry arrives. FlexGen with compression is 4-bit weights and KV cache
(group 64) - moesim's int4 weights and KV.

Split: every cell held out.
"""

from __future__ import annotations

from moesim.calibration.published import unavailable

CITATION = ("FlexGen (Sheng et al., ICML 2023) and FMInference/FlexGen benchmark/batch_size_table.md: T4 16 GB, "
            "208 GB DRAM, 1.5 TB SSD, prompt 512, 32 generated")
MODELS = {"OPT-6.7B": "opt-6.7b", "OPT-30B": "opt-30b", "OPT-175B": "opt-175b"}
#: row -> (moesim system, extra knobs, ((throughput, effective batch) per model))
ROWS = {
    "Hugging Face Accelerate": ("transformers", {}, ((25.12, 2), (0.62, 8), (0.01, 2))),
    "DeepSpeed ZeRO-Inference": ("deepspeed", {}, ((9.28, 16), (0.60, 4), (0.01, 1))),
    "FlexGen": ("flexgen", {}, ((25.26, 2), (7.32, 144), (0.69, 256))),
    "FlexGen with compression": ("flexgen", {"dtype": "int4", "kv_dtype": "int4"}, ((29.12, 72), (8.38, 512), (1.12, 144))),
}
GIB = 2 ** 30


def cells() -> list[dict]:
    out = []
    for row, (system, knobs, values) in ROWS.items():
        for (label, model), (tp, batch) in zip(MODELS.items(), values):
            out.append({"key": f"{row}|{label}", "citation": CITATION, "row": row, "table": "batch_size_table",
                        "setup": f"1x T4 16 GB, Intel Xeon @ 2.00 GHz, 208 GB DRAM, 1.5 TB SSD (GCP); {row}; "
                                 f"effective batch {batch}",
                        "model": model, "hardware": "t4", "system": system,
                        "knobs": {"host_memory_bytes": 208 * GIB, **knobs},
                        "workload": {"num_requests": batch, "batch_size": batch, "prompt_tokens": 512, "gen_tokens": 32},
                        "figure": "throughput_tok_s", "published": tp, "split": "held-out",
                        "not_expressible": unavailable(model, system, "t4"), "column": label})
    return out
