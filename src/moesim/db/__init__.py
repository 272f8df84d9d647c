"""The model and hardware databases: YAML files, one entry each, validated at load.

Names are matched case- and punctuation-insensitively (``DeepSeek-R1`` == ``deepseek_r1``
== ``deepseekr1``) and through each entry's aliases. Unknown names raise
:class:`~moesim.errors.UnknownNameError` with the closest matches.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Generic, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import SpecError, UnknownNameError
from ..specs import AcceleratorSpec, CPUSpec, EmpiricalProfile, LinkSpec, ModelSpec, PlatformSpec
from ..specs.system import SystemConstants

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


def load_yaml(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.load(fh, Loader=_LOADER)
    except yaml.YAMLError as exc:
        raise SpecError(str(path), [("(yaml)", str(exc).replace("\n", " "))]) from None
    except OSError as exc:
        raise SpecError(str(path), [("(file)", exc.strerror or str(exc))]) from None
    if not isinstance(data, dict):
        raise SpecError(str(path), [("(top level)", "expected a mapping of fields")])
    return data


def validate(cls: type[T], data: dict, path: str) -> T:
    """Validate ``data`` as ``cls``; on failure raise SpecError naming the file and each field."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = [(".".join(str(p) for p in err["loc"]) or "(entry)", err["msg"]) for err in exc.errors()]
        raise SpecError(path, problems) from None


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


def check_all() -> dict[str, int]:
    """Load every entry and check cross references; returns counts per kind."""
    from .resolve import resolve_platform

    for spec in platforms().entries.values():
        resolve_platform(spec)
    for gpu in gpus().entries.values():
        links().get(gpu.host_interface)
    default_profile()
    return {
        "systems": len(systems().entries),
        "models": len(models().entries),
        "gpus": len(gpus().entries),
        "cpus": len(cpus().entries),
        "links": len(links().entries),
        "platforms": len(platforms().entries),
    }
