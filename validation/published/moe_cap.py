"""MoE-CAP's measured rows (arXiv, tables A.8 and A.9: its Tables 4, 5 and 6) as published-corpus cells, as
transcribed in ``shared/reference/moe-cap.md`` section 6: hf-chat (Hugging Face transformers), vLLM and SGLang on
A100, RTX A6000 and H20 servers.

Every cell is listed, none is expressible yet, each for a stated reason:

* a cell whose model, system or GPU moesim lacks says so (:func:`moesim.calibration.published.unavailable`); the
  ``transformers`` (hf-chat) and ``sglang`` systems exist, so today that is only a missing GPU entry, if any;
* the workload is not stated: prompts are GSM8K / Arena-Hard / LongBench at their
  natural lengths (the distribution is not printed), and "auto" batches are continuous batching with a request
  count and rate the paper does not give; a reproduction would have to choose them. Such cells stay unexpressible
  (``WORKLOAD_UNSTATED``) until a source of those figures is found.

Figures: Table 4 prefill throughput (its TTFT column is rounded to 10 ms, so the throughput is kept); Table 5 TTFT
and TPOT before the profiler was attached; Table 6 prefill time (TTFT) and decode throughput.
Split: every cell held out.
"""

from __future__ import annotations

from moesim.calibration.published import unavailable

CITATION = "MoE-CAP (arXiv, v6) appendix A.8 Table 4, A.9 Tables 5 and 6"
WORKLOAD_UNSTATED = ("workload not stated: dataset prompts at natural lengths (distribution not printed) and, for "
                     "'auto', continuous batching with unstated request count and rate")
SYSTEMS = {"hf-chat": "transformers", "HF Transformers": "transformers", "HF": "transformers", "sglang": "sglang",
           "SGLang": "sglang", "vllm_moe": "vllm"}
MODELS = {"Qwen1.5-MoE-A2.7B-Chat": "qwen1.5-moe-a2.7b", "Qwen1.5-MoE": "qwen1.5-moe-a2.7b",
          "Qwen3-30B-A3B": "qwen3-30b-a3b", "DBRX-Instruct": "dbrx", "DBRX": "dbrx",
          "Mixtral-8x22B-Instruct": "mixtral-8x22b", "Mixtral-8x7B-Instruct": "mixtral-8x7b",
          "Mixtral-8x7B": "mixtral-8x7b", "Qwen3-235B-A22B": "qwen3-235b-a22b"}
HARDWARE = {"1xA100-80G-SXM4": ("a100-80gb-sxm", 1), "2xA100-80G-SXM4": ("a100-80gb-sxm", 2),
            "8xA100-80G-SXM4": ("a100-80gb-sxm", 8), "4xA100-80G-PCIe": ("a100-80gb-pcie", 4),
            "8xA100-80G-PCIe": ("a100-80gb-pcie", 8), "1xA100-PCIe": ("a100-80gb-pcie", 1),
            "4xRTX A6000": ("rtx-a6000", 4), "4xA6000": ("rtx-a6000", 4), "8xH20": ("h20", 8)}
#: Table 4: (model, method, benchmark, batch, prefill tok/s, device)
TABLE4 = [
    ("Qwen1.5-MoE-A2.7B-Chat", "hf-chat", "GSM8K", "16", 4166.67, "1xA100-80G-SXM4"),
    ("Qwen1.5-MoE-A2.7B-Chat", "hf-chat", "Arena Hard", "16", 4132.63, "1xA100-80G-SXM4"),
    ("Qwen1.5-MoE-A2.7B-Chat", "hf-chat", "LongBench", "1", 561.82, "4xRTX A6000"),
    ("Qwen3-30B-A3B", "sglang", "GSM8K", "auto", 21844.81, "4xRTX A6000"),
    ("Qwen3-30B-A3B", "sglang", "Arena Hard", "auto", 6993.28, "4xRTX A6000"),
    ("Qwen3-30B-A3B", "sglang", "LongBench", "auto", 5652.17, "4xRTX A6000"),
    ("DBRX-Instruct", "vllm_moe", "GSM8K", "auto", 3125.00, "8xA100-80G-PCIe"),
    ("DBRX-Instruct", "vllm_moe", "Arena Hard", "auto", 2083.33, "8xA100-80G-PCIe"),
    ("DBRX-Instruct", "hf-chat", "GSM8K", "16", 625.00, "4xA100-80G-PCIe"),
    ("DBRX-Instruct", "hf-chat", "Arena Hard", "8", 862.07, "4xA100-80G-PCIe"),
    ("Mixtral-8x22B-Instruct", "vllm_moe", "GSM8K", "auto", 1776.54, "8xA100-80G-PCIe"),
    ("Mixtral-8x22B-Instruct", "vllm_moe", "Arena Hard", "auto", 1785.71, "8xA100-80G-PCIe"),
    ("Mixtral-8x22B-Instruct", "hf-chat", "GSM8K", "16", 581.40, "4xA100-80G-PCIe"),
    ("Mixtral-8x22B-Instruct", "hf-chat", "Arena Hard", "8", 925.93, "4xA100-80G-PCIe"),
    ("Mixtral-8x7B-Instruct", "vllm_moe", "GSM8K", "auto", 18932.23, "8xA100-80G-SXM4"),
    ("Mixtral-8x7B-Instruct", "vllm_moe", "Arena Hard", "auto", 5024.03, "8xA100-80G-SXM4"),
    ("Mixtral-8x7B-Instruct", "hf-chat", "GSM8K", "64", 1666.67, "2xA100-80G-SXM4"),
    ("Mixtral-8x7B-Instruct", "hf-chat", "Arena Hard", "16", 1470.59, "2xA100-80G-SXM4"),
]
#: Table 5 (before the profiler): (model, framework, device, batch, TTFT s, TPOT s)
TABLE5 = [("Qwen3-235B-A22B", "SGLang", "8xH20", "auto", 0.067, 0.019),
          ("Qwen3-30B-A3B", "SGLang", "4xA6000", "auto", 0.020, 0.059),
          ("Mixtral-8x7B", "HF Transformers", "2xA100-80G-SXM4", "16", 0.173, 0.179),
          ("DBRX", "HF Transformers", "4xA100-80G-PCIe", "8", 0.290, 0.286)]
#: Table 6 (GSM8K): (model, framework, device, prefill time s, decode tok/s)
TABLE6 = [("Qwen1.5-MoE", "HF", "1xA100-PCIe", 0.05655, 41.3253),
          ("Qwen3-30B-A3B", "SGLang", "4xA6000", 0.00582, 1343.1684),
          ("Qwen3-235B-A22B", "SGLang", "8xH20", 0.06550, 1792.0811)]


def _cell(key, table, model, method, device, batch, figure, value, bench) -> dict:
    system = SYSTEMS[method]
    gpu, n = HARDWARE[device]
    why = unavailable(MODELS[model], system, gpu) or WORKLOAD_UNSTATED
    return {"key": key, "citation": CITATION, "table": table, "row": method,
            "setup": f"{device}; {method}; {bench}; batch {batch}", "model": MODELS[model], "hardware": gpu,
            "knobs": {"num_gpus": n}, "system": system, "figure": figure, "published": value,
            "split": "held-out", "not_expressible": why}


def cells() -> list[dict]:
    out = [_cell(f"T4|{m}|{meth}|{bench}|{dev}", "Table 4", m, meth, dev, b, "prefill_tok_s", v, bench)
           for m, meth, bench, b, v, dev in TABLE4]
    for m, fw, dev, b, ttft, tpot in TABLE5:
        out.append(_cell(f"T5|{m}|{fw}|ttft", "Table 5", m, fw, dev, b, "ttft_s", ttft, "GSM8K"))
        out.append(_cell(f"T5|{m}|{fw}|tpot", "Table 5", m, fw, dev, b, "tpot_s", tpot, "GSM8K"))
    for m, fw, dev, ttft, dec in TABLE6:
        out.append(_cell(f"T6|{m}|{fw}|ttft", "Table 6", m, fw, dev, "not stated", "ttft_s", ttft, "GSM8K"))
        out.append(_cell(f"T6|{m}|{fw}|decode", "Table 6", m, fw, dev, "not stated", "decode_tok_s", dec, "GSM8K"))
    return out
