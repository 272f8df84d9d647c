"""Turn names (and what-if overrides) into fully resolved specs."""

from __future__ import annotations

from pathlib import Path

from ..errors import MoesimError, UnknownNameError
from ..units import fmt_bytes
from ..specs import AcceleratorSpec, ModelSpec, Platform, PlatformSpec
from . import cpus, default_profile, gpus, links, load_spec_file, models, normalize, platforms


def get_model(model: str | Path | ModelSpec) -> ModelSpec:
    """A model by database name, alias or Hugging Face id, a moesim YAML file, a Hugging Face
    config.json, a folder holding one (a snapshot), or a Hugging Face id found in the local HF cache."""
    if isinstance(model, ModelSpec):
        return model
    text = str(model)
    path = Path(text)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MoesimError(f"model folder {text!r} has no config.json")
        path = path / "config.json"
        text = str(path)
    if text.endswith((".json", ".yaml", ".yml")) or (path.suffix and path.exists()):
        if not path.exists():
            raise MoesimError(f"model file {text!r} does not exist")
        if path.suffix == ".json":
            from .hf_config import model_from_hf_config

            return model_from_hf_config(path)
        return load_spec_file(ModelSpec, path)
    table = models()
    found = table.find(text) or next((m for m in table.entries.values() if m.hf_id and normalize(m.hf_id) ==
                                      normalize(text)), None)
    if found is not None:
        return found
    cached = hf_cache_config(text) if "/" in text else None
    if cached is not None:
        from .hf_config import model_from_hf_config

        return model_from_hf_config(cached)
    try:
        return table.get(text)  # unknown: the error names the closest entries
    except UnknownNameError as exc:
        if "/" in text:  # a Hugging Face id: say where else it was looked for
            exc.args = (exc.args[0] + f"; {text!r} is not any entry's hf_id and has no config.json in the local "
                        "Hugging Face cache: pass its config.json or snapshot folder",)
        raise


def hf_cache_config(repo_id: str) -> Path | None:
    """config.json of ``repo_id`` in the local Hugging Face cache (``$HF_HUB_CACHE``, else
    ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``; layout ``models--ORG--NAME/snapshots/REV/``),
    the newest snapshot first; None where it is not cached. Nothing is downloaded."""
    import os

    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(os.environ.get("HF_HOME") or
                                                         os.path.join(Path.home(), ".cache", "huggingface"), "hub")
    snapshots = Path(hub) / ("models--" + repo_id.strip("/").replace("/", "--")) / "snapshots"
    configs = sorted(snapshots.glob("*/config.json"), key=lambda p: p.stat().st_mtime, reverse=True) \
        if snapshots.is_dir() else []
    return configs[0] if configs else None


def default_platform_for(gpu: AcceleratorSpec) -> PlatformSpec | None:
    for spec in platforms().entries.values():
        if spec.default_for_gpu and normalize(spec.default_for_gpu) == normalize(gpu.name):
            return spec
    return None


def resolve_platform(
    spec: PlatformSpec,
    *,
    num_gpus: int | None = None,
    cpu: str | None = None,
    host_memory_bytes: float | None = None,
    pcie: str | None = None,
    assumptions: tuple[str, ...] = (),
) -> Platform:
    """Resolve the names in a PlatformSpec, applying overrides, into a Platform."""
    gpu = gpus().get(spec.gpu)
    cpu_spec = cpus().get(cpu or spec.cpu)
    host_link = links().get(pcie or spec.host_link)
    gpu_link = links().get(spec.gpu_link) if spec.gpu_link else None
    notes = list(assumptions)
    if num_gpus is not None and num_gpus != spec.num_gpus and spec.gpu_link is None and num_gpus > 1:
        notes.append(f"{num_gpus} GPUs talk to each other over {host_link.name} (no GPU-GPU link in {spec.name})")
    empirical = gpu.empirical or default_profile()
    from ..calibration.store import calibration_for

    calibration, borrowed_note = calibration_for(gpu)
    if borrowed_note:
        notes.append(borrowed_note)
    elif calibration is None and not empirical.calibrated:
        notes.append(f"{gpu.name}: no calibration measurements; default efficiency profile '{empirical.name}' assumed")
    changes = []
    if cpu is not None and cpu_spec.name != cpus().get(spec.cpu).name:
        changes.append(f"CPU {cpu_spec.name} instead of {cpus().get(spec.cpu).name}")
    if host_memory_bytes is not None and host_memory_bytes != spec.host_memory_bytes:
        changes.append(f"{fmt_bytes(host_memory_bytes)} of host memory instead of {fmt_bytes(spec.host_memory_bytes)}")
    if pcie is not None and host_link.name != links().get(spec.host_link).name:
        changes.append(f"host link {host_link.name} instead of {links().get(spec.host_link).name}")
    if changes:
        notes.append(f"composed platform: {spec.name} with {'; '.join(changes)} (no database entry describes it)")
    bandwidth = spec.host_memory_bandwidth_bytes_per_s
    if cpu is not None or bandwidth is None:
        bandwidth = cpu_spec.memory_bandwidth_bytes_per_s * spec.num_cpus
    return Platform(
        name=f"{spec.name} (composed)" if changes else spec.name,
        gpu=gpu,
        num_gpus=num_gpus or spec.num_gpus,
        cpu=cpu_spec,
        num_cpus=spec.num_cpus,
        host_memory_bytes=host_memory_bytes or spec.host_memory_bytes,
        host_memory_bandwidth_bytes_per_s=bandwidth,
        host_link=host_link,
        gpu_link=gpu_link,
        disk=spec.disk,
        empirical=empirical,
        calibration=calibration,
        assumptions=tuple(notes),
        price_usd_excluding_gpus=spec.price_usd_excluding_gpus,
    )


def get_hardware(
    hardware: str | Path | Platform | PlatformSpec,
    *,
    num_gpus: int | None = None,
    cpu: str | None = None,
    host_memory_bytes: float | None = None,
    pcie: str | None = None,
) -> Platform:
    """A platform by name, a GPU name (its documented default host, one GPU), or a YAML file.

    Overrides compose a platform that no entry describes.
    """
    overrides = dict(num_gpus=num_gpus, cpu=cpu, host_memory_bytes=host_memory_bytes, pcie=pcie)
    if isinstance(hardware, Platform):
        if any(v is not None for v in overrides.values()):
            raise MoesimError("overrides apply to hardware names, not to a resolved Platform; use model_copy")
        return hardware
    if isinstance(hardware, PlatformSpec):
        return resolve_platform(hardware, **overrides)
    text = str(hardware)
    if text.endswith((".yaml", ".yml")):
        return resolve_platform(load_spec_file(PlatformSpec, Path(text)), **overrides)
    spec = platforms().find(text)
    if spec is not None:
        return resolve_platform(spec, **overrides)
    gpu = gpus().find(text)
    if gpu is None:
        suggestions = platforms().suggest(text, 2) + gpus().suggest(text, 3)
        raise UnknownNameError("hardware", text, suggestions[:4])
    host = default_platform_for(gpu)
    if host is None:
        raise MoesimError(f"{gpu.name} has no default host platform in hardware_db/platforms")
    note = f"{gpu.name} placed in its documented default host '{host.name}'"
    return resolve_platform(
        host, **{**overrides, "num_gpus": num_gpus or 1}, assumptions=(note,)
    )
