"""Size grids of the measurement campaign: ``full`` for a GPU (about 4.5 minutes on an H200),
``quick`` for the CPU (CI runs it to test the harness code)."""

from __future__ import annotations

MIXTRAL = dict(hidden=4096, ffn=14336, experts=8, top_k=2)
V2_LITE = dict(hidden=2048, ffn=1408, experts=64, top_k=6)
OLMOE = dict(hidden=2048, ffn=1024, experts=64, top_k=8)
MB = 2**20


def full() -> dict[str, list[dict]]:
    g: dict[str, list[dict]] = {}
    g["hbm_copy"] = [{"nbytes": n * MB} for n in (16, 64, 256, 1024, 2048)]
    g["launch"] = [{}]
    g["host_sync"] = [{}]
    g["copy"] = [{"nbytes": n * MB, "kind": k} for k in ("h2d_pinned", "d2h_pinned", "h2d_pageable", "d2h_pageable",
                                                          "d2d") for n in (1, 8, 64, 256, 1024)]
    gemm = [{"m": s, "n": s, "k": s, "dtype": dt} for dt in ("bf16", "fp16", "fp32", "fp8") for s in (512, 1024, 2048,
                                                                                                   4096, 8192)]
    gemm += [{"m": m, "n": n, "k": k, "dtype": "bf16"} for (n, k) in ((2 * 14336, 4096), (4096, 14336),
                                                                     (2 * 1408, 2048), (2048, 1408))
             for m in (1, 8, 32, 128, 512, 2048, 8192, 16384)]
    g["gemm"] = gemm
    g["copy_beside_gemm"] = [{"nbytes": 512 * MB, "m": 8192, "n": 8192, "k": 8192}]
    g["expert_ffn"] = [{**{k: v for k, v in s.items() if k in ("hidden", "ffn")}, "tokens": t, "dtype": "bf16"}
                       for s in (MIXTRAL, V2_LITE) for t in (1, 4, 16, 64, 256, 1024, 4096, 16384)]
    g["moe_layer"] = [{**s, "tokens": t, "impl": impl, "dtype": "bf16"} for s in (MIXTRAL, V2_LITE, OLMOE)
                      for impl in ("loop", "fused") for t in (1, 16, 64, 256, 1024, 4096, 16384)]
    att = []
    for q_heads, kv_heads in ((32, 8), (32, 4)):
        for L in (512, 2048, 8192):
            att.append({"batch": max(1, 16384 // L), "q_heads": q_heads, "kv_heads": kv_heads, "head_dim": 128,
                        "q_len": L, "kv_len": L, "causal": True, "dtype": "bf16"})
        for L in (512, 2048, 8192, 32768):
            for b in (1, 8, 32, 128):
                if b * L * kv_heads * 128 * 2 * 2 <= 8e9:
                    att.append({"batch": b, "q_heads": q_heads, "kv_heads": kv_heads, "head_dim": 128, "q_len": 1,
                                "kv_len": L, "causal": True, "dtype": "bf16"})
    g["attention"] = att
    g["mla_decode"] = [{"batch": b, "heads": h, "kv_lora_rank": 512, "rope_dim": 64, "kv_len": L, "dtype": "bf16"}
                       for h in (16, 128) for L in (512, 2048, 8192) for b in (1, 8, 64)]
    g["offloaded_moe_layer"] = [{**s, "tokens": t, "dtype": "bf16"} for s in (MIXTRAL, V2_LITE)
                                for t in (64, 1024, 16384, 131072)]
    g["decode_step"] = [{"model": m, "layers": 3, "batch": b, "kv_len": 512, "micro_batch": mb, "dtype": "bf16"}
                        for m, batches in (("mixtral-8x7b", (256, 1024)), ("deepseek-v2-lite", (256, 1024, 4096)))
                        for b in batches for mb in (64, 256)]
    return g


def quick() -> dict[str, list[dict]]:
    """Tiny sizes for the CPU: the same code paths, a few seconds in all."""
    small = dict(hidden=64, ffn=96, experts=8, top_k=2)
    return {
        "hbm_copy": [{"nbytes": MB}],
        "launch": [{}],
        "host_sync": [{}],
        "copy": [{"nbytes": MB, "kind": k} for k in ("h2d_pinned", "d2h_pinned", "h2d_pageable", "d2h_pageable", "d2d")],
        "gemm": [{"m": 64, "n": 64, "k": 64, "dtype": dt} for dt in ("bf16", "fp32")],
        "copy_beside_gemm": [{"nbytes": MB, "m": 64, "n": 64, "k": 64}],
        "expert_ffn": [{"hidden": 64, "ffn": 96, "tokens": t, "dtype": "bf16"} for t in (1, 32)],
        "moe_layer": [{**small, "tokens": 32, "impl": i, "dtype": "bf16"} for i in ("loop", "fused")],
        "attention": [{"batch": 2, "q_heads": 4, "kv_heads": 2, "head_dim": 16, "q_len": q, "kv_len": 32,
                       "causal": True, "dtype": "bf16"} for q in (1, 32)],
        "mla_decode": [{"batch": 2, "heads": 4, "kv_lora_rank": 32, "rope_dim": 8, "kv_len": 32, "dtype": "bf16"}],
        "offloaded_moe_layer": [{**small, "tokens": 32, "dtype": "bf16"}],
        "decode_step": [{"model": "tiny", "layers": 2, "batch": 8, "kv_len": 16, "micro_batch": 4, "dtype": "bf16"}],
    }
