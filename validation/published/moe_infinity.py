"""MoE-Infinity's published per-token latencies (EfficientMoE/MoE-Infinity README, as transcribed in
``shared/reference/published-measurements.md``): one RTX A5000 24 GB, FP16 weights with expert offloading,
mixed LongBench / GSM8K / FLAN / BIG-Bench / MMLU prompts; per-token latency in seconds (moesim's TPOT).

Setup as stated: the GPU (host CPU and DRAM not stated: moesim's default A5000 host), the model in fp16, the
system and its version. Per-token latency is read as the decode time per token of one request at a time (the
README's latency setting; prompt and output lengths are not printed and keep moesim's defaults).

Rows: vLLM v0.8.5 and DeepSpeed 0.16.2 map to moesim's vllm and deepspeed; Ollama is llama.cpp under Ollama
(moesim's llama-cpp, fp16 as the README's header says, its own layer split). Not expressible yet: MoE-Infinity
itself and Mixtral-offloading (no such system in moesim), Accelerate (needs the ``transformers`` system of
branch ``hf``), and vLLM: it cannot hold any of these models on 24 GB without ``--cpu-offload-gb``, whose value
the README does not give (moesim's default, 0, refuses, as vLLM does).

Split: every cell held out.
"""

from __future__ import annotations

from moesim.calibration.published import unavailable

CITATION = "MoE-Infinity README (EfficientMoE/MoE-Infinity), per-token latency table on one RTX A5000"
MODELS = {"DeepSeek-V2-Lite-Chat": "deepseek-v2-lite", "Mixtral-8x7B": "mixtral-8x7b", "Qwen3-30B-A3B": "qwen3-30b-a3b"}
#: row -> (moesim system or None, seconds per token by model column; None = not measured)
ROWS = {
    "MoE-Infinity": (None, (0.100, 0.735, 0.150)),
    "vLLM v0.8.5": ("vllm", (0.149, 2.137, 0.205)),
    "DeepSpeed 0.16.2": ("deepspeed", (0.737, 2.486, 7.857)),
    "Ollama": ("llama-cpp", (1.250, 0.903, None)),
    "Accelerate": ("transformers", (1.743, 6.633, None)),
    "Mixtral-offloading": (None, (None, 1.752, None)),
}


def cells() -> list[dict]:
    out = []
    for row, (system, values) in ROWS.items():
        for (label, model), value in zip(MODELS.items(), values):
            if value is None:
                continue
            if system is None:
                why = f"no {row} serving system in moesim"
            elif system == "vllm":
                why = "vLLM needs --cpu-offload-gb to hold the model on 24 GB and the README does not state it"
            else:
                why = unavailable(model, system, "rtx-a5000")
            out.append({"key": f"{row}|{label}", "citation": CITATION, "row": row, "table": "README",
                        "setup": f"1x RTX A5000 24 GB (host not stated); {row}; {label} FP16 with expert offloading",
                        "model": model, "hardware": "rtx-a5000", "system": system or row,
                        "knobs": {"dtype": "fp16"}, "workload": {"num_requests": 1},
                        "figure": "tpot_s", "published": value, "split": "held-out", "not_expressible": why,
                        "column": label})
    return out
