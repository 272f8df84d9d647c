"""Registry of serving systems. A new system is one new module here plus one line in SYSTEMS."""

from __future__ import annotations

import difflib

from ..db import normalize
from ..errors import UnknownNameError
from .base import Plan, ServingSystem, StepSim
from .gpu_resident import GpuResident
from .moe_gen import MoEGen

SYSTEMS: dict[str, type[ServingSystem]] = {cls.name: cls for cls in (GpuResident, MoEGen)}


def get_system(name: str) -> type[ServingSystem]:
    for key, cls in SYSTEMS.items():
        if normalize(key) == normalize(name):
            return cls
    close = difflib.get_close_matches(name.lower(), list(SYSTEMS) + ["auto"], n=3, cutoff=0.4)
    raise UnknownNameError("system", name, close)


__all__ = ["SYSTEMS", "GpuResident", "MoEGen", "Plan", "ServingSystem", "StepSim", "get_system"]
