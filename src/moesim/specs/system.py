"""Software constants of the serving systems (``systems_db/<system>.yaml``).

What a serving system's code fixes rather than a model or a GPU: how many activation tensors it keeps
live per token, the dtype it holds logits in, a row cap of a temporary buffer. Each value names where
it comes from (the system's code or paper, or a moesim assumption said to be one).
"""

from __future__ import annotations

from pydantic import Field

from .common import Sourced, Spec


class SoftwareConstant(Spec):
    """One value and its provenance."""

    value: int | float | str
    source: str = Field(min_length=1, description="where the value comes from, or why it is assumed")


class SystemConstants(Sourced):
    """The constants of one serving system, or of ``shared`` (used by several)."""

    constants: dict[str, SoftwareConstant] = Field(default_factory=dict)

    def value(self, key: str) -> int | float | str:
        if key not in self.constants:
            raise KeyError(f"systems_db entry {self.name!r} has no constant {key!r} "
                           f"(it has: {', '.join(sorted(self.constants)) or 'none'})")
        return self.constants[key].value

    def names(self, key: str) -> tuple[str, ...]:
        """A comma-separated list constant as its items, stripped, empty items dropped
        (``"a, b,"`` -> ``("a", "b")``)."""
        return tuple(s for s in (x.strip() for x in str(self.value(key)).split(",")) if s)
