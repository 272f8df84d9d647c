"""`moesim list` and `moesim show`: what the databases and the system registry hold."""

from __future__ import annotations

import argparse

from ..units import fmt_bytes, fmt_rate


def add_parsers(subparsers) -> None:
    ls = subparsers.add_parser("list", help="list models, hardware or systems")
    ls.add_argument("what", choices=["models", "hardware", "systems"])
    sh = subparsers.add_parser("show", help="show one entry")
    sh.add_argument("what", choices=["model", "hw", "system"])
    sh.add_argument("name")


def list_entries(args: argparse.Namespace) -> int:
    from .. import db
    from ..systems import SYSTEMS

    if args.what == "models":
        for name, m in sorted(db.models().entries.items()):
            print(f"{name:28s} {m.total_params / 1e9:7.1f}B total {m.active_params() / 1e9:6.1f}B active  {m.default_dtype}")
    elif args.what == "systems":
        for name, cls in SYSTEMS.items():
            print(f"{name:14s} {cls.summary}")
    else:
        print("GPUs:")
        for name, g in sorted(db.gpus().entries.items()):
            print(f"  {name:20s} {fmt_bytes(g.memory_bytes):>10s} {fmt_rate(g.memory_bandwidth_bytes_per_s, 'B/s'):>12s}")
        print("platforms:")
        for name, p in sorted(db.platforms().entries.items()):
            print(f"  {name:32s} {p.num_gpus} x {p.gpu}, {p.cpu}, {fmt_bytes(p.host_memory_bytes)} host")
    return 0


def show(args: argparse.Namespace) -> int:
    import yaml

    from ..db.resolve import get_hardware, get_model

    if args.what == "system":
        print(system_text(args.name))
        return 0
    spec = get_model(args.name) if args.what == "model" else get_hardware(args.name)
    print(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    return 0


def system_text(name: str) -> str:
    """A serving system: what it does, and each parameter with its type, default and meaning (its flag too)."""
    from ..systems import get_system

    cls = get_system(name)
    lines = [f"{cls.name}: {cls.summary}", "", "parameters (--param KEY=VALUE, or --KEY VALUE with dashes):"]
    for key, info in cls.Params.model_fields.items():
        kind = getattr(info.annotation, "__name__", None) or str(info.annotation).replace("typing.", "")
        default = info.get_default(call_default_factory=True)
        lines.append(f"  {key} ({kind}, default {default!r})")
        if info.description:
            lines.append(f"      {info.description}")
    if cls.supports_speculative:
        lines.append("models speculative decoding (--draft)")
    return "\n".join(lines)


