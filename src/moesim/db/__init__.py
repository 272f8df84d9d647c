"""The model and hardware databases: YAML files, one entry each, validated at load.

Names are matched case- and punctuation-insensitively (``DeepSeek-R1`` == ``deepseek_r1``
== ``deepseekr1``) and through each entry's aliases. Unknown names raise
:class:`~moesim.errors.UnknownNameError` with the closest matches.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Generic, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import SpecError, UnknownNameError, describe_type
from ..limits import MAX_SPEC_DEPTH, MAX_SPEC_FILE_BYTES, MAX_SPEC_VALUES
from ..specs import AcceleratorSpec, CPUSpec, EmpiricalProfile, LinkSpec, ModelSpec, NetworkSpec, PlatformSpec
from ..specs.system import SystemConstants
from ..units import fmt_bytes

T = TypeVar("T", bound=BaseModel)


def normalize(name: str) -> str:
    """Case- and punctuation-insensitive key: 'RTX 4090' -> 'rtx4090'."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def data_root(kind: str) -> Path:
    """Directory of ``models_db``, ``hardware_db`` or ``systems_db``: inside the installed package, else the
    source tree."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_db" / kind, here.parent.parent / kind):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"cannot find the {kind} directory (looked in {here / '_db'} and the source tree)")


#: libyaml's parser where PyYAML was built with it (same safe resolver and constructors, ~10x faster)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_spec_text(path: str | Path) -> str:
    """The text of a spec file, refused (a SpecError naming the file) before anything parses it when it
    is a folder, unreadable, larger than :data:`~moesim.limits.MAX_SPEC_FILE_BYTES`, or not UTF-8 text."""
    path = Path(path)
    cap = MAX_SPEC_FILE_BYTES
    try:
        if path.is_dir():
            raise SpecError(str(path), [("(file)", "is a folder, not a spec file")])
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            raw = fh.read(cap + 1) if size <= cap else b""  # a pipe reports 0: read at most the cap
    except FileNotFoundError:
        raise SpecError(str(path), [("(file)", "does not exist")]) from None
    except (OSError, ValueError) as exc:  # permissions, a name too long, a NUL byte in the name
        why = getattr(exc, "strerror", None) or exc
        raise SpecError(str(path)[:200], [("(file)", f"cannot read it: {why}")]) from None
    if size > cap or len(raw) > cap:
        raise SpecError(str(path), [("(file)", f"{fmt_bytes(max(size, len(raw)))} is above moesim's cap of "
                                     f"{fmt_bytes(cap)} on spec files (real ones are a few KB): is it the right "
                                     "file?")])
    if b"\0" in raw:
        raise SpecError(str(path), [("(file)", "binary content, not a YAML or JSON text file")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(str(path), [("(file)", f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}): "
                                     "a binary file? a spec is YAML or JSON text")]) from None
    return text.removeprefix("\ufeff")


def check_shape(data: object, path: str | Path) -> None:
    """Refuse a parsed spec of more than MAX_SPEC_VALUES values or nested deeper than MAX_SPEC_DEPTH (YAML
    aliases counted each time they are used) before validation walks it."""
    stack: list[tuple[object, int]] = [(data, 0)]
    count = 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_SPEC_VALUES:
            raise SpecError(str(path), [("(file)", f"holds more than {MAX_SPEC_VALUES:,} values (repeated YAML "
                                         "aliases counted each time): no spec is that large")])
        if depth > MAX_SPEC_DEPTH:
            raise SpecError(str(path), [("(file)", f"nested more than {MAX_SPEC_DEPTH} levels deep: no spec is")])
        if isinstance(value, dict):
            count += len(value)  # the keys
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend((v, depth + 1) for v in value)


def unreadable_value(exc: Exception) -> str:
    """Why a parser could not build a value, in words (not Python's advice on its own limits)."""
    if "integer string conversion" in str(exc):
        return "a number of thousands of digits"
    return str(exc)


def load_yaml(path: str | Path) -> dict:
    """A YAML spec file as a mapping; every way it can be wrong is a SpecError naming the file."""
    path = Path(path)
    text = read_spec_text(path)
    try:
        data = yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        raise SpecError(str(path), [("(yaml)", " ".join(str(exc).split()))]) from None
    except RecursionError:
        raise SpecError(str(path), [("(yaml)", f"nested more than {MAX_SPEC_DEPTH} levels deep: no spec is")]) from None
    except (ValueError, TypeError, OverflowError) as exc:  # a value YAML cannot build, e.g. the date 2024-02-30
        raise SpecError(str(path), [("(yaml)", f"cannot read a value: {unreadable_value(exc)}")]) from None
    if data is None or (isinstance(data, str) and not data.strip()):
        raise SpecError(str(path), [("(file)", "is empty; a spec is a YAML mapping of fields (name: ..., ...)")])
    if not isinstance(data, dict):
        raise SpecError(str(path), [("(top level)", "expected a mapping of fields (key: value lines), got "
                                     + describe_type(data))])
    check_shape(data, path)
    return data


def validate(cls: type[T], data: dict, path: str) -> T:
    """Validate ``data`` as ``cls``; on failure raise SpecError naming the file and each field."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = [(".".join(str(p) for p in err["loc"]) or "(entry)", _message(err)) for err in exc.errors()]
        raise SpecError(path, problems) from None


#: pydantic error types whose message reads better with the value that was given
_SHOW_INPUT = ("finite_number", "greater_than", "greater_than_equal", "less_than", "less_than_equal", "literal_error")


def _message(err) -> str:
    """pydantic's message in words: without its prefixes, with the value given where it helps."""
    msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if err["type"] == "extra_forbidden":
        return "unknown field (misspelt?)"
    if err["type"].endswith(("_type", "_parsing")) or err["type"] in _SHOW_INPUT:
        msg += f" (got {describe_type(err.get('input'))})"
    return msg


def load_spec_file(cls: type[T], path: str | Path) -> T:
    path = Path(path)
    return validate(cls, load_yaml(path), str(path))


@dataclass
class Table(Generic[T]):
    """Entries of one kind, indexed by normalized name and aliases."""

    kind: str
    entries: dict[str, T]  # canonical name -> spec
    index: dict[str, str]  # normalized name/alias -> canonical name
    files: dict[str, Path]

    def get(self, name: str) -> T:
        key = normalize(name)
        if key in self.index:
            return self.entries[self.index[key]]
        raise UnknownNameError(self.kind, name, self.suggest(name))

    def find(self, name: str) -> T | None:
        canonical = self.index.get(normalize(name))
        return self.entries[canonical] if canonical else None

    def suggest(self, name: str, n: int = 3) -> list[str]:
        key = normalize(name)
        hits = difflib.get_close_matches(key, list(self.index), n=n * 3, cutoff=0.5)
        hits += [k for k in self.index if key and (key in k or k in key) and k not in hits]
        seen: list[str] = []
        for hit in hits:
            canonical = self.index[hit]
            if canonical not in seen:
                seen.append(canonical)
        return seen[:n]

    def names(self) -> list[str]:
        return sorted(self.entries)


def load_table(cls: type[T], kind: str, directory: Path) -> Table[T]:
    entries: dict[str, T] = {}
    index: dict[str, str] = {}
    files: dict[str, Path] = {}
    for path in sorted(directory.glob("*.yaml")):
        spec = load_spec_file(cls, path)
        name = spec.name  # type: ignore[attr-defined]
        for alias in (name, path.stem, *spec.aliases):  # type: ignore[attr-defined]
            key = normalize(alias)
            if index.get(key, name) != name:
                raise SpecError(str(path), [("aliases", f"{alias!r} is already a name of {index[key]!r}")])
            index[key] = name
        entries[name] = spec
        files[name] = path
    return Table(kind, entries, index, files)


@lru_cache(maxsize=1)
def models() -> Table[ModelSpec]:
    return load_table(ModelSpec, "model", data_root("models_db"))


@lru_cache(maxsize=1)
def gpus() -> Table[AcceleratorSpec]:
    return load_table(AcceleratorSpec, "gpu", data_root("hardware_db") / "gpus")


@lru_cache(maxsize=1)
def cpus() -> Table[CPUSpec]:
    return load_table(CPUSpec, "cpu", data_root("hardware_db") / "cpus")


@lru_cache(maxsize=1)
def links() -> Table[LinkSpec]:
    return load_table(LinkSpec, "link", data_root("hardware_db") / "links")


@lru_cache(maxsize=1)
def networks() -> Table[NetworkSpec]:
    """Scale-out NICs (``hardware_db/networks``): what joins the nodes of a multi-node platform."""
    return load_table(NetworkSpec, "network", data_root("hardware_db") / "networks")


@lru_cache(maxsize=1)
def platforms() -> Table[PlatformSpec]:
    return load_table(PlatformSpec, "platform", data_root("hardware_db") / "platforms")


@lru_cache(maxsize=1)
def systems() -> Table[SystemConstants]:
    """Serving systems' software constants (``systems_db/<system>.yaml``; ``shared.yaml`` for several)."""
    return load_table(SystemConstants, "systems_db entry", data_root("systems_db"))


def system_constants(name: str) -> SystemConstants:
    return systems().get(name)


@lru_cache(maxsize=1)
def default_profile() -> EmpiricalProfile:
    """The documented uncalibrated profile (``hardware_db/efficiency/default.yaml``)."""
    return load_spec_file(EmpiricalProfile, data_root("hardware_db") / "efficiency" / "default.yaml")


def _profile_slug(gpu_name: str) -> str:
    """File name of a GPU's conservative profile: 'RTX A5000' -> 'rtx-a5000' (as calibration profiles)."""
    return re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")


@lru_cache(maxsize=None)
def efficiency_profile_for(gpu_name: str) -> EmpiricalProfile:
    """The uncalibrated profile of ``gpu_name``: ``hardware_db/efficiency/<gpu-slug>.yaml`` where there is one
    (the fields it sets, each from public measurements of that GPU, over ``default.yaml``'s), else the default.

    A per-GPU file must name its GPU (``gpu:``) and may not claim ``calibrated: true``: calibration is
    fitted by ``moesim calibrate`` into ``hardware_db/calibration``."""
    folder = data_root("hardware_db") / "efficiency"
    path = folder / f"{_profile_slug(gpu_name)}.yaml"
    if not path.is_file():
        return default_profile()
    data = load_yaml(path)
    base = load_yaml(folder / "default.yaml")
    base.pop("sources", None)
    merged = {**base, **data}
    profile = validate(EmpiricalProfile, merged, str(path))
    if profile.gpu is None or normalize(profile.gpu) != normalize(gpu_name):
        raise SpecError(str(path), [("gpu", f"names {profile.gpu!r}, but the file is the profile of {gpu_name!r}")])
    if profile.calibrated:
        raise SpecError(str(path), [("calibrated", "a conservative profile is not a calibration (see "
                                     "hardware_db/calibration)")])
    return profile


@lru_cache(maxsize=None)
def collective_profile(platform_name: str):
    """The collectives measured on ``platform_name`` (``hardware_db/collectives/<platform-slug>.yaml``, fitted by
    ``python -m moesim.calibration.collectives`` from ``validation/torchbench/multi_gpu.py`` runs), or None."""
    from ..calibration.store import gpu_slug
    from ..specs.collectives import CollectiveProfile

    path = data_root("hardware_db") / "collectives" / f"{gpu_slug(platform_name)}.yaml"
    return load_spec_file(CollectiveProfile, path) if path.exists() else None


def check_all() -> dict[str, int]:
    """Load every entry and check cross references; returns counts per kind."""
    from .resolve import resolve_platform

    for spec in platforms().entries.values():
        resolve_platform(spec)
    for gpu in gpus().entries.values():
        links().get(gpu.host_interface)
        efficiency_profile_for(gpu.name)
    default_profile()
    known = {_profile_slug(g) for g in gpus().entries}
    for path in (data_root("hardware_db") / "efficiency").glob("*.yaml"):
        if path.stem != "default" and path.stem not in known:
            raise SpecError(str(path), [("(file)", "no GPU entry has this name; a per-GPU profile is named after "
                                         "its GPU (e.g. rtx-a5000.yaml)")])
    return {
        "systems": len(systems().entries),
        "models": len(models().entries),
        "gpus": len(gpus().entries),
        "cpus": len(cpus().entries),
        "links": len(links().entries),
        "networks": len(networks().entries),
        "platforms": len(platforms().entries),
    }
