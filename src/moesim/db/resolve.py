"""Turn names (and what-if overrides) into fully resolved specs."""

from __future__ import annotations

import math
import os
from pathlib import Path

from pydantic import ValidationError

from ..errors import MoesimError, UnknownNameError, kind_list
from ..units import fmt_bytes
from ..specs import AcceleratorSpec, ModelSpec, Platform, PlatformSpec, ScaleOut
from ..limits import MAX_GPUS_UNSTATED
from . import cpus, efficiency_profile_for, gpus, links, load_spec_file, models, networks, normalize, platforms


def get_model(model: str | Path | ModelSpec) -> ModelSpec:
    """A model by database name, alias or Hugging Face id, a moesim YAML file, a Hugging Face
    config.json, a folder holding one (a snapshot), or a Hugging Face id found in the local HF cache."""
    if isinstance(model, ModelSpec):
        return model
    text = _name_or_path("model", model, "a ModelSpec")
    path = Path(text)
    if _is_dir(path):
        if not _is_file(path / "config.json"):
            raise MoesimError(f"model folder {text!r} has no config.json")
        path = path / "config.json"
        text = str(path)
    if text.endswith((".json", ".yaml", ".yml")) or (path.suffix and _exists(path)):
        if not _exists(path):
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
    if _is_file(path):  # a file without an extension: read as a moesim YAML
        return load_spec_file(ModelSpec, path)
    try:
        return table.get(text)  # unknown: the error names the closest entries
    except UnknownNameError as exc:
        if "/" in text:  # a Hugging Face id: say where else it was looked for
            exc.args = (exc.args[0] + f"; {text!r} is not any entry's hf_id and has no config.json in the local "
                        "Hugging Face cache: pass its config.json or snapshot folder",)
        raise


def _name_or_path(what: str, value: object, spec: str) -> str:
    """A name or a file path as text, or a MoesimError saying what ``what`` takes."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
        value = os.fsdecode(value) if isinstance(value, bytes) else value
    if not isinstance(value, str):
        raise MoesimError(f"{what} takes a name or a file path (text), or {spec}; got {repr(value)[:80]}")
    if not value.strip():
        raise MoesimError(f"{what} is empty: give a name or a file path (`moesim list {kind_list(what)}` shows "
                          "the names)")
    if "\0" in value:
        raise MoesimError(f"{what} {value[:60]!r} holds a NUL character")
    return value.strip()


def _probe(test, path: Path) -> bool:
    """``path.is_dir()`` and the like, False where the name cannot be a path here (too long, ...)."""
    try:
        return test(path)
    except (OSError, ValueError):
        return False


def _exists(path: Path) -> bool:
    return _probe(Path.exists, path)


def _is_dir(path: Path) -> bool:
    return _probe(Path.is_dir, path)


def _is_file(path: Path) -> bool:
    return _probe(Path.is_file, path)


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


def _check_overrides(num_gpus: object, cpu: object, host_memory_bytes: object, pcie: object,
                     num_nodes: object = None) -> None:
    """The what-if overrides of get_hardware, each of the kind it takes (a MoesimError naming it otherwise)."""
    for name, value in (("num_gpus", num_gpus), ("num_nodes", num_nodes)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise MoesimError(f"{name} takes a whole number of at least 1, got {value!r}")
    for name, value in (("cpu", cpu), ("pcie", pcie)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise MoesimError(f"{name} takes a name (text), got {value!r}")
    if host_memory_bytes is not None and (isinstance(host_memory_bytes, bool) or
                                          not isinstance(host_memory_bytes, (int, float)) or
                                          not math.isfinite(host_memory_bytes) or host_memory_bytes <= 0):
        raise MoesimError(f"host_memory_bytes takes a finite number of bytes above 0, got {host_memory_bytes!r}")


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
    num_nodes: int | None = None,
    assumptions: tuple[str, ...] = (),
) -> Platform:
    """Resolve the names in a PlatformSpec, applying overrides, into a Platform.

    ``num_gpus`` is the GPUs used in EACH node; ``num_nodes`` (default 1) copies of the node are joined by the
    entry's scale-out network (``network`` x ``nics_per_node``): a platform without one takes only one node."""
    gpu = gpus().get(spec.gpu)
    cpu_spec = cpus().get(cpu or spec.cpu)
    host_link = links().get(pcie or spec.host_link)
    gpu_link = links().get(spec.gpu_link) if spec.gpu_link else None
    scale_out = (ScaleOut(network=networks().get(spec.network), nics_per_node=spec.nics_per_node,
                          gpus_per_board=spec.num_gpus) if spec.network else None)
    nodes = num_nodes or 1
    notes = list(assumptions)
    if nodes > 1 and scale_out is None:
        raise MoesimError(f"--nodes {nodes}: {spec.name} has no scale-out network in its entry (network, "
                          f"nics_per_node), so copies of it cannot be joined; use --nodes 1, or a platform with a "
                          f"network ({', '.join(multi_node_platforms()) or 'none'})")
    if num_gpus is not None and spec.gpu_link is not None and num_gpus > spec.num_gpus:
        more = (f"--gpus counts the GPUs used in EACH node (at most {spec.num_gpus} here): for {num_gpus} GPUs use "
                f"--nodes {-(-num_gpus // spec.num_gpus)} --gpus {spec.num_gpus}" if scale_out is not None else
                f"{spec.name} has no scale-out network, so several nodes are not modelled: use --gpus {spec.num_gpus} "
                "or fewer")
        raise MoesimError(f"{spec.name} is a board of {spec.num_gpus} GPUs joined by {spec.gpu_link}; --gpus {num_gpus} "
                          f"would need {-(-num_gpus // spec.num_gpus)} of them; {more}")
    if num_gpus is not None and spec.gpu_link is None:
        _check_slots(spec, num_gpus)
    if nodes > 1:
        per_node = num_gpus or spec.num_gpus
        notes.append(f"{nodes} nodes of {per_node} x {gpu.name} ({nodes * per_node} GPUs) joined by "
                     f"{scale_out.nics_per_node} x {scale_out.network.name} per node "
                     f"({scale_out.per_gpu_bytes_per_s / 1e9:.0f} GB/s per GPU per direction achieved)")
    if num_gpus is not None and num_gpus != spec.num_gpus and spec.gpu_link is None and num_gpus > 1:
        notes.append(f"{num_gpus} GPUs talk to each other over {host_link.name} (no GPU-GPU link in {spec.name})")
    link_source = None
    measured = spec.host_link_measured
    if measured is not None and host_link.name == links().get(spec.host_link).name:
        host_link, link_note = _measured_link(spec, host_link)
        link_source = f"{measured.source} ({measured.measured_on})"
        if link_note:
            notes.append(link_note)
    empirical = gpu.empirical or efficiency_profile_for(gpu.name)
    from ..calibration.store import calibration_for

    calibration, borrowed_note = calibration_for(gpu)
    if borrowed_note:
        notes.append(borrowed_note)
    elif calibration is None and not empirical.calibrated:
        what = (f"conservative profile '{empirical.name}' (hardware_db/efficiency, from public measurements of the "
                f"{gpu.name})" if empirical.gpu else f"default efficiency profile '{empirical.name}'")
        notes.append(f"{gpu.name}: no calibration measurements; {what} assumed")
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
    try:
        return _platform(changes, spec, gpu, num_gpus, cpu_spec, host_memory_bytes, bandwidth, host_link, gpu_link,
                         empirical, calibration, notes).model_copy(update={
                             "host_kind": spec.host_kind, "host_link_source": link_source,
                             "max_gpus": _max_gpus(spec), "num_nodes": nodes, "scale_out": scale_out})
    except ValidationError as exc:  # what a platform is composed of does not fit together
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise MoesimError(f"platform {spec.name}: {problems}") from None


def multi_node_platforms() -> list[str]:
    """Names of the platform entries with a scale-out network (those that take --nodes above 1)."""
    return sorted(p.name for p in platforms().entries.values() if p.network)


def _max_gpus(spec: PlatformSpec) -> int:
    """GPUs the host takes: its ``max_gpus``; a GPU board (NVLink/NVSwitch) its own GPUs; otherwise the stated
    rule (:data:`moesim.limits.MAX_GPUS_UNSTATED`), and never fewer than the entry's own GPUs."""
    if spec.max_gpus is not None:
        return spec.max_gpus
    if spec.gpu_link is not None:
        return spec.num_gpus
    return max(spec.num_gpus, MAX_GPUS_UNSTATED)


def _check_slots(spec: PlatformSpec, num_gpus: int) -> None:
    """A PCIe host takes the GPUs it has slots for (or its cloud instance offers): more are refused with the
    count of hosts they would need, as a GPU board refuses more GPUs than it has."""
    cap = _max_gpus(spec)
    if num_gpus <= cap:
        return
    why = (f"it takes {cap} GPUs ({spec.max_gpus_source})" if spec.max_gpus is not None else
           f"its entry states no max_gpus, and a PCIe host is taken to hold at most {cap} GPUs")
    several = ("--gpus counts the GPUs of EACH node: use --nodes N with --gpus " + str(cap) + " or fewer"
               if spec.network else "it has no scale-out network, so several nodes are not modelled: use --gpus "
               f"{cap} or fewer")
    raise MoesimError(f"{spec.name} is a PCIe host; {why}; --gpus {num_gpus} would need {-(-num_gpus // cap)} such "
                      f"hosts; {several}")


def _measured_link(spec: PlatformSpec, link):
    """The link entry with the host's measured figures in place of the generation's (pageable figures left out
    scale the measured pinned ones by the entry's pageable/pinned ratio, said in the returned note)."""
    m = spec.host_link_measured
    update = {"h2d_pinned_bytes_per_s": m.h2d_pinned_bytes_per_s, "d2h_pinned_bytes_per_s": m.d2h_pinned_bytes_per_s}
    scaled = []
    for d in ("h2d", "d2h"):
        given = getattr(m, f"{d}_pageable_bytes_per_s")
        if given is None:
            ratio = getattr(link, f"{d}_pageable_bytes_per_s") / getattr(link, f"{d}_pinned_bytes_per_s")
            given = getattr(m, f"{d}_pinned_bytes_per_s") * ratio
            scaled.append(f"{d} pageable = measured pinned x {ratio:.2f}")
        update[f"{d}_pageable_bytes_per_s"] = given
    if m.latency_s is not None:
        update["latency_s"] = m.latency_s
    for d in ("h2d", "d2h"):
        if update[f"{d}_pinned_bytes_per_s"] > link.theoretical_bytes_per_s:
            raise MoesimError(f"platform {spec.name}: host_link_measured.{d}_pinned_bytes_per_s "
                              f"({update[f'{d}_pinned_bytes_per_s'] / 1e9:.1f} GB/s) exceeds {link.name}'s theoretical "
                              f"{link.theoretical_bytes_per_s / 1e9:.1f} GB/s")
    note = (f"{spec.name}: host link figures measured on {m.measured_on}; not measured there: "
            f"{', '.join(scaled)} (the {link.name} entry's assumed ratio)") if scaled else None
    return link.model_copy(update=update), note


def _platform(changes, spec, gpu, num_gpus, cpu_spec, host_memory_bytes, bandwidth, host_link, gpu_link, empirical,
              calibration, notes) -> Platform:
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
    num_nodes: int | None = None,
) -> Platform:
    """A platform by name, a GPU name (its documented default host, one GPU), or a YAML file.

    Overrides compose a platform that no entry describes. ``num_gpus`` counts the GPUs used in each node;
    ``num_nodes`` joins that many copies of the node by its scale-out network (None or 1: one node).
    """
    _check_overrides(num_gpus, cpu, host_memory_bytes, pcie, num_nodes)
    if num_nodes == 1:
        num_nodes = None  # one node is every platform's own
    overrides = dict(num_gpus=num_gpus, cpu=cpu, host_memory_bytes=host_memory_bytes, pcie=pcie, num_nodes=num_nodes)
    if isinstance(hardware, Platform):
        if any(v is not None for v in overrides.values()):
            raise MoesimError("overrides apply to hardware names, not to a resolved Platform; use model_copy")
        return hardware
    if isinstance(hardware, PlatformSpec):
        return resolve_platform(hardware, **overrides)
    text = _name_or_path("hardware", hardware, "a Platform or a PlatformSpec")
    path = Path(text)
    if text.endswith((".yaml", ".yml")):
        return resolve_platform(load_spec_file(PlatformSpec, path), **overrides)
    spec = platforms().find(text)
    if spec is not None:
        return resolve_platform(spec, **overrides)
    gpu = gpus().find(text)
    if gpu is None:
        if _is_dir(path):
            raise MoesimError(f"hardware {text!r} is a folder: give a platform or GPU name, or a platform YAML file")
        if _is_file(path):  # a file without a YAML extension: read as one (a binary file is refused clearly)
            return resolve_platform(load_spec_file(PlatformSpec, path), **overrides)
        suggestions = platforms().suggest(text, 2) + gpus().suggest(text, 3)
        raise UnknownNameError("hardware", text, suggestions[:4])
    host = default_platform_for(gpu)
    if host is None:
        raise MoesimError(f"{gpu.name} has no default host platform in hardware_db/platforms")
    note = f"{gpu.name} placed in its documented default host '{host.name}'"
    return resolve_platform(
        host, **{**overrides, "num_gpus": num_gpus or 1}, assumptions=(note,)
    )
