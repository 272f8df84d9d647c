"""KTransformers' DeepSeek-V3/R1 measurements (kvcache-ai/ktransformers ``doc/en/DeepseekR1_V3_tutorial.md``, as
transcribed in ``shared/reference/published-measurements.md``) as published-corpus cells.

Machine as stated: two Intel Xeon Gold 6454S (32 cores each, 2 NUMA nodes), 1 TB DDR5-4800 (8 channels per
socket), one RTX 4090 24 GB (V0.2.1) or RTX 4090D 24 GB (V0.2); routed experts on the CPU, MLA, shared experts and
the KV cache on the GPU. moesim platform: ``hardware_db/platforms/ktransformers-6454s-4090.yaml`` (CPU entry
``hardware_db/cpus/xeon-gold-6454s.yaml``), both sockets as the tutorial runs them by default.

Cells set: the platform, the model (DeepSeek-V3; R1 has its architecture), weights in Q4_K_M (the routed experts
read as the GGUF stores them, ``gguf_type=q4_k_m``: Q4_K gate/up, Q6_K down in 27 of the 58 MoE layers, 4.82 bits
a weight; the GPU part at moesim's int4, which KLinearMarlin's 4-bit requantisation is, less its group-64 scales),
V0.2.1's bf16 LM head, one request (local chat), the prompt and the generated tokens the table states, and the
experts per token (6 or 8: KTransformers' option to route fewer experts, moesim's ``top_k``). Figures: prefill and
decode tok/s.

Not expressible yet: V0.2's table ran on an RTX 4090D (no hardware_db entry: a cut-down 4090, 114 SMs), and
V0.3-preview quantises online to int8 for the CPU's AMX and int4 for the GPU (two weight formats by device, not a
moesim knob). They are listed with their figures.

Split: every cell held out (nothing of moesim was or will be fitted on them).
"""

from __future__ import annotations

CITATION = "KTransformers doc/en/DeepseekR1_V3_tutorial.md (kvcache-ai/ktransformers), DeepSeek-V3/R1 tables"
PLATFORM = "ktransformers-6454s-4090"
SETUP_V021 = ("2x Xeon Gold 6454S (32 cores each), 1 TB DDR5-4800, RTX 4090 24 GB; KTransformers V0.2.1; "
              "DeepSeek-V3/R1 Q4_K_M; {prompt}-token prompt, 300 generated; {k} experts")
#: what the tutorial states of the V0.2.1 runs: its dual-socket local_chat command passes ``--cpu_infer 65``
#: ("As we use dual socket, we set cpu_infer to 65"); V0.2.x computes the CPU experts with the llamafile
#: kernels (doc/en/AMX.md: "Before version v0.3, KTransformers performed CPU matrix multiplications based on
#: operators provided by llamafile") on the GGUF it names ("DeepseekV3-q4km": llama.cpp's Q4_K_M file type);
#: and V0.2.1's rule file (optimize_rules/DeepSeek-V3-Chat.yaml at tag v0.2.1) has no lm_head rule, so the LM head
#: stays a bf16 torch Linear (the Marlin lm_head rule arrives in v0.2.2)
PARAMS_V021 = {"cpu_infer": 65, "cpu_kernel": "llamafile", "gguf_type": "q4_k_m", "lm_head_marlin": False}
#: V0.2.1: experts -> prompt -> (prefill tok/s, decode tok/s)
V021 = {8: {969: (88.2, 13.5), 1930: (88.5, 13.4), 3846: (81.9, 13.2), 7678: (80, 12.4)},
        6: {969: (111, 15.9), 1930: (112.5, 15.4), 3846: (102, 14.9), 7678: (101, 13.9)}}
#: V0.2 (RTX 4090D), 500-token prompt: column -> (prefill, decode)
V02 = {"KTransformers V0.2 dual socket, 6 experts": (97.32, 13.69), "KTransformers V0.2 dual socket, 8 experts": (82.94, 12.208),
       "KTransformers V0.2 single socket, 6 experts": (65.14, 10.303), "KTransformers V0.2 single socket, 8 experts": (54.21, 8.73),
       "llama.cpp (8 experts, dual socket)": (10.31, 4.51)}
#: V0.3-preview, 8 experts, prefill tok/s by prompt
V03 = {1024: 185.96, 2048: 255.26, 4096: 252.58, 8192: 195.62}


def cells() -> list[dict]:
    out = []
    for k, by_prompt in V021.items():
        for prompt, (prefill, decode) in by_prompt.items():
            for figure, value in (("prefill_tok_s", prefill), ("decode_tok_s", decode)):
                out.append({"key": f"V0.2.1|{k}experts|{prompt}|{figure}", "citation": CITATION,
                            "setup": SETUP_V021.format(prompt=prompt, k=k), "row": f"KTransformers V0.2.1, {k} experts",
                            "model": "deepseek-v3", "hardware": PLATFORM, "system": "ktransformers",
                            "knobs": {"dtype": "int4", "top_k": k}, "params": PARAMS_V021, "figure": figure,
                            "published": value,
                            "workload": {"num_requests": 1, "prompt_tokens": prompt, "gen_tokens": 300},
                            "table": "V0.2.1", "split": "held-out"})
    for row, (prefill, decode) in V02.items():
        for figure, value in (("prefill_tok_s", prefill), ("decode_tok_s", decode)):
            out.append({"key": f"V0.2|{row}|{figure}", "citation": CITATION,
                        "setup": "2x Xeon Gold 6454S, 1 TB DDR5-4800, RTX 4090D 24 GB; DeepSeek-V3 Q4_K_M; 500-token prompt",
                        "row": row, "model": "deepseek-v3", "hardware": PLATFORM,
                        "system": "llama-cpp" if row.startswith("llama") else "ktransformers",
                        "figure": figure, "published": value, "table": "V0.2",
                        "workload": {"num_requests": 1, "prompt_tokens": 500},
                        "not_expressible": "GPU RTX 4090D has no hardware_db entry (and the single-socket runs need "
                                           "a one-NUMA-node platform of this machine)"})
    for prompt, value in V03.items():
        out.append({"key": f"V0.3-preview|{prompt}", "citation": CITATION,
                    "setup": "2x Xeon Gold 6454S, 644 GB DRAM used, RTX 4090; BF16 weights quantised online to int8 "
                             "(CPU, AMX) and int4 (GPU); 8 experts", "row": "KTransformers V0.3-preview",
                    "model": "deepseek-v3", "hardware": PLATFORM, "system": "ktransformers", "figure": "prefill_tok_s",
                    "published": value, "table": "V0.3-preview",
                    "workload": {"num_requests": 1, "prompt_tokens": prompt},
                    "not_expressible": "one weight format per device (int8 CPU experts via AMX, int4 on the GPU) is "
                                       "not a moesim knob"})
    return out
