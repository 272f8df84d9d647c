"""Registry of serving systems.

A new serving system is one new module in this package defining a :class:`ServingSystem`
subclass with a ``name``; it is discovered at import, nothing else needs editing. ``ORDER``
only fixes the order in which systems are listed and compared. Systems share code through
:mod:`.base` and the :mod:`.shared` package (not searched for systems), never by importing
one another.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil

from ..db import normalize
from ..errors import UnknownNameError
from .base import Plan, ServingSystem, StepSim

ORDER = ("gpu-resident", "vllm", "sglang", "trtllm", "llama-cpp", "ktransformers", "deepspeed", "flexgen", "moe-lightning",
         "moe-gen", "moe-gen-gpu", "transformers")  # on a tie, auto keeps the earlier one


def _discover() -> dict[str, type[ServingSystem]]:
    found: dict[str, type[ServingSystem]] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.ispkg or info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            if (isinstance(obj, type) and issubclass(obj, ServingSystem) and obj.__module__ == module.__name__
                    and getattr(obj, "name", None) and not getattr(obj, "__abstractmethods__", None)):
                found[obj.name] = obj
    rank = {n: i for i, n in enumerate(ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (rank.get(kv[0], len(ORDER)), kv[0])))


SYSTEMS: dict[str, type[ServingSystem]] = _discover()


def get_system(name: str) -> type[ServingSystem]:
    for key, cls in SYSTEMS.items():
        if normalize(key) == normalize(name):
            return cls
    close = difflib.get_close_matches(name.lower(), list(SYSTEMS) + ["auto"], n=3, cutoff=0.4)
    raise UnknownNameError("system", name, close)


__all__ = ["SYSTEMS", "Plan", "ServingSystem", "StepSim", "get_system"]
