"""llama.cpp's published MoE prompt-processing benchmarks with documented GPUs: the CUDA maintainer's
``llama-bench`` tables in pull requests ggml-org/llama.cpp #15631 (RTX 4090) and #15525 (RTX 3090), as
transcribed in ``shared/reference/published-measurements.md``.

Setup as stated: one GPU (host not stated: moesim's default host of that GPU), ``llama-bench`` prompt processing
of ``pp`` tokens (one sequence, no generation) with the physical batch ``-ub`` of each row; every other flag at
llama-bench's defaults (all layers on the GPU). Model files: qwen3moe 30B-A3B Q4_0, gpt-oss-20b MXFP4,
deepseek2 16B (DeepSeek-V2-Lite) Q4_0. moesim's formats: Q4_0 as int4 (4.0 bits a weight against Q4_0's 4.5),
MXFP4 as mxfp4. Figure: prefill tok/s. Where a PR table gives master and PR figures, the PR's (the merged code)
is the cell; master's is in ``note``.

Not expressible yet: the community CPU-only runs (EPYC 9B14, no GPU; a secondary source) - moesim has no such
CPU entry nor a GPU-less platform.

Split: every cell held out.
"""

from __future__ import annotations

PR15631 = "llama.cpp PR ggml-org/llama.cpp#15631 (CUDA maintainer's llama-bench table, RTX 4090)"
PR15525 = "llama.cpp PR ggml-org/llama.cpp#15525 (CUDA maintainer's llama-bench table, RTX 3090)"
#: (citation, GPU, model, moesim dtype, model file, pp tokens, ubatch, figure, master figure or None)
ROWS = [
    *[(PR15631, "rtx-4090", "qwen3-30b-a3b", "int4", "qwen3moe 30B-A3B Q4_0", 4096, ub, pr, master)
      for ub, master, pr in ((1, 194.24, 205.87), (2, 202.61, 211.62), (4, 352.72, 365.39), (8, 580.35, 597.34),
                             (16, 936.35, 959.90), (32, 1519.77, 1556.32), (64, 2456.92, 2508.44))],
    *[(PR15631, "rtx-4090", "gpt-oss-20b", "mxfp4", "gpt-oss-20b MXFP4", 4096, ub, v, None)
      for ub, v in ((1024, 11078), (2048, 10649), (4096, 8951))],
    *[(PR15525, "rtx-3090", "deepseek-v2-lite", "int4", "deepseek2 16B Q4_0", 512, ub, pr, master)
      for ub, master, pr in ((1, None, 180.9), (8, 374.1, 475.5), (64, 1268.9, 1803.0), (512, None, 4261))],
]
COMMUNITY = [("gpt-oss-120b", "pp512", 205.86, "prefill_tok_s"), ("gpt-oss-120b", "tg128", 49.31, "decode_tok_s"),
             ("qwen3-30b-a3b", "pp512", 325.44, "prefill_tok_s"), ("qwen3-30b-a3b", "tg128", 59.78, "decode_tok_s")]


def cells() -> list[dict]:
    out = []
    for citation, gpu, model, dtype, file, pp, ub, value, master in ROWS:
        out.append({"key": f"{gpu}|{model}|pp{pp}|ub{ub}", "citation": citation,
                    "setup": f"1x {gpu}, host not stated; llama-bench pp{pp} -ub {ub}; {file}",
                    "row": "llama.cpp", "model": model, "hardware": gpu, "system": "llama-cpp",
                    "knobs": {"dtype": dtype}, "params": {"ubatch_tokens": ub}, "figure": "prefill_tok_s",
                    "published": float(value), "table": citation.split(" (")[0],
                    "workload": {"num_requests": 1, "prompt_tokens": pp, "gen_tokens": 1}, "split": "held-out",
                    "note": f"master before the PR: {master}" if master else ""})
    for model, test, value, figure in COMMUNITY:
        out.append({"key": f"epyc-9b14|{model}|{test}", "citation": "r/LocalLLaMA community llama-bench (secondary)",
                    "setup": "AMD EPYC 9B14 96 cores, 12-channel DDR5-4800, CPU only", "row": "llama.cpp CPU only",
                    "model": model, "hardware": "none", "system": "llama-cpp", "figure": figure,
                    "published": value, "table": "community",
                    "not_expressible": "CPU-only host (EPYC 9B14, no GPU): no such CPU entry nor a GPU-less platform"})
    return out
