"""`moesim list` and `moesim show`: what the databases and the system registry hold."""

from __future__ import annotations

import argparse

from ..units import fmt_bytes, fmt_rate


def add_parsers(subparsers) -> None:
    ls = subparsers.add_parser("list", help="list models, hardware or systems")
    ls.add_argument("what", choices=["models", "hardware", "hw", "systems"])
    sh = subparsers.add_parser("show", help="show one entry")
    sh.add_argument("what", choices=["model", "hw", "system"])
    sh.add_argument("name")
    sh.add_argument("--yaml", action="store_true", help="the whole resolved entry as YAML")
    sh.add_argument("--nodes", type=int, default=None, metavar="N",
                    help="hw: N copies of the platform joined by its scale-out network")


def list_entries(args: argparse.Namespace) -> int:
    from .. import db
    from ..systems import SYSTEMS

    if args.what == "models":
        for name, m in sorted(db.models().entries.items()):
            dtype = m.default_dtype + (f" (experts {m.expert_dtype})" if m.expert_dtype else "")
            print(f"{name:28s} {m.total_params / 1e9:7.1f}B total {m.active_params() / 1e9:6.1f}B active  {dtype}")
    elif args.what == "systems":
        for name, cls in SYSTEMS.items():
            print(f"{name:14s} {cls.summary}")
    else:
        print("GPUs:")
        for name, g in sorted(db.gpus().entries.items()):
            print(f"  {name:20s} {fmt_bytes(g.memory_bytes):>10s} {fmt_rate(g.memory_bandwidth_bytes_per_s, 'B/s'):>12s}")
        print("platforms:")
        for name, p in sorted(db.platforms().entries.items()):
            net = f", network {p.nics_per_node} x {db.networks().get(p.network).name}" if p.network else ""
            print(f"  {name:32s} {p.num_gpus} x {p.gpu}, {p.num_cpus} x {p.cpu}, {fmt_bytes(p.host_memory_bytes)} "
                  f"host{net}")
        print("networks (scale-out NICs; platforms with one take --nodes N):")
        for name, n in sorted(db.networks().entries.items()):
            print(f"  {name:20s} {n.kind}, {n.line_rate_bits_per_s / 1e9:.0f} Gb/s: "
                  f"{fmt_rate(n.achieved_bytes_per_s, 'B/s')} achieved per NIC per direction")
    return 0


def show(args: argparse.Namespace) -> int:
    import yaml

    from ..db.resolve import get_hardware, get_model

    if args.what == "system":
        print(system_text(args.name))
        return 0
    if args.nodes is not None and args.what != "hw":
        from ..errors import MoesimError

        raise MoesimError("--nodes applies to `moesim show hw NAME`")
    spec = get_model(args.name) if args.what == "model" else get_hardware(args.name, num_nodes=args.nodes)
    if args.yaml:
        print(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    else:
        print(model_text(spec) if args.what == "model" else hardware_text(spec))
    return 0


def _rows(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows if v)


def model_text(m) -> str:
    """A model for people: sizes, attention, experts, dtype and context (``--yaml`` for every field)."""
    a, moe = m.attention, m.moe
    attention = f"{a.kind}, {a.num_heads} heads ({a.num_kv_heads} KV), head dim {a.head_dim}"
    if a.kind == "mla":
        attention += f", KV latent {a.kv_lora_rank} + rope {a.qk_rope_head_dim}"
    if a.window_tokens:
        attention += f", {a.window_kind} window {a.window_tokens} tokens"
    experts = (f"{moe.num_experts} routed (top-{moe.top_k}, FFN {moe.expert_intermediate_size})"
               + (f" + {moe.num_shared_experts} shared" if moe.num_shared_experts else "")
               + (f"; first {moe.first_k_dense} layers dense" if moe.first_k_dense else "")) if moe else "none (dense)"
    return _rows([
        ("model", m.name + (f" ({m.hf_id})" if m.hf_id else "")),
        ("parameters", f"{m.total_params / 1e9:.1f}B total, {m.active_params() / 1e9:.1f}B active per token"),
        ("layers", f"{m.num_layers}, hidden {m.hidden_size}, vocabulary {m.vocab_size}"),
        ("attention", attention),
        ("experts", experts),
        ("weights", m.default_dtype + (f" (experts {m.expert_dtype})" if m.expert_dtype else "")
         + f", {fmt_bytes(m.weight_bytes())}"),
        ("context", f"{m.max_context_tokens} tokens"),
        ("sources", "; ".join(getattr(src, "title", None) or str(src) for src in m.sources)),
    ])


def hardware_text(p) -> str:
    """A platform for people: GPUs, CPU, memory, links, disk and calibration (``--yaml`` for every field)."""
    g = p.gpu
    peaks = ", ".join(f"{fmt_rate(g.peak_flop_per_s[d], 'FLOP/s')} {d}" for d in ("bf16", "fp8", "fp4")
                      if d in g.peak_flop_per_s)
    so = p.scale_out
    network = (f"{so.nics_per_node} x {so.network.name} ({so.network.kind}, {so.network.line_rate_bits_per_s / 1e9:.0f} "
               f"Gb/s each): {fmt_rate(so.per_gpu_bytes_per_s, 'B/s')} per GPU per direction achieved "
               f"({fmt_rate(so.per_gpu_theoretical_bytes_per_s, 'B/s')} line rate), "
               f"{fmt_rate(so.node_bytes_per_s, 'B/s')} per node, {so.latency_s * 1e6:.1f} us latency"
               if so else "none (a single machine: --nodes 1 only)")
    nodes = (f"{p.num_nodes} x {p.num_gpus} GPUs = {p.total_gpus} GPUs" if p.num_nodes > 1 else
             "1" + (" (--nodes N joins N of them by the network)" if so else ""))
    rows = [
        ("platform", p.name),
        ("GPUs", f"{p.num_gpus} x {g.name}" + (" per node" if p.num_nodes > 1 else "")
                 + f": {fmt_bytes(g.memory_bytes)}, {fmt_rate(g.memory_bandwidth_bytes_per_s, 'B/s')}"
                 + (f", {peaks} dense" if peaks else "")),
        ("nodes", nodes),
        ("GPU link", (f"{p.gpu_link.name} ({fmt_rate(p.gpu_link.theoretical_bytes_per_s, 'B/s')} per direction)"
                      if p.gpu_link else "none (GPUs talk over the host link)")),
        ("network", network),
        ("CPU", f"{p.num_cpus} x {p.cpu.name}"),
        ("host memory", f"{fmt_bytes(p.host_memory_bytes)}, {fmt_rate(p.host_memory_bandwidth_bytes_per_s, 'B/s')}"),
        ("host", {"cloud_vm": "cloud VM", "bare_metal": "bare metal"}.get(p.host_kind or "", "not stated")
                 + (f", takes up to {p.max_gpus} GPUs" if p.max_gpus else "")),
        ("host link", f"{p.host_link.name}: {fmt_rate(p.host_link.h2d_pinned_bytes_per_s, 'B/s')} H2D / "
                      f"{fmt_rate(p.host_link.d2h_pinned_bytes_per_s, 'B/s')} D2H pinned, "
                      f"{fmt_rate(p.host_link.h2d_pageable_bytes_per_s, 'B/s')} H2D pageable"
                      + (" (measured on such a host)" if p.host_link_source else " (link generation's typical figures)")),
        ("disk", f"{p.disk.name}: {fmt_bytes(p.disk.capacity_bytes)}, {fmt_rate(p.disk.read_bytes_per_s, 'B/s')} read"),
        ("calibrated", "yes" if p.calibration is not None or p.empirical.calibrated else f"no ({'conservative profile ' + repr(p.empirical.name) if p.empirical.gpu else 'default efficiency profile'})"),
    ]
    text = _rows(rows)
    if p.assumptions:
        text += "\n\nassumptions:\n" + "\n".join(f"  - {a}" for a in p.assumptions)
    return text


def system_text(name: str) -> str:
    """A serving system: what it does, and each parameter with its type, default and meaning (its flag too)."""
    from ..systems import get_system

    cls = get_system(name)
    modes = cls.execution_modes
    lines = [f"{cls.name}: {cls.summary}",
             f"execution (as deployed): prefill {modes['prefill']}, decode {modes['decode']} "
             "(eager: PyTorch, host issue per call beside the GPU; graph: GPU time alone, a CUDA-graph replay or kernels "
             "long enough that the host runs ahead; native: kernels launched from C++)",
             "", "parameters (--param KEY=VALUE, or --KEY VALUE with dashes):"]
    for key, info in cls.Params.model_fields.items():
        kind = getattr(info.annotation, "__name__", None) or str(info.annotation).replace("typing.", "")
        default = info.get_default(call_default_factory=True)
        lines.append(f"  {key} ({kind}, default {default!r})")
        if info.description:
            lines.append(f"      {info.description}")
    if cls.supports_speculative:
        lines.append("models speculative decoding (--draft)")
    return "\n".join(lines)


