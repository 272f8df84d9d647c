"""Reusable buffers: rings of slots that make a producer wait for the consumer of an earlier use."""

from __future__ import annotations

from ..errors import SimulationError


class BufferRing:
    """A ring of ``slots`` reusable buffers (double buffering when slots=2).

    The i-th use of the ring must wait until the consumer of use i - slots has finished:
    ``acquire()`` returns that consumer (or None), ``release(task)`` records this use's consumer.
    """

    def __init__(self, slots: int):
        if slots < 1:
            raise SimulationError("a buffer ring needs at least one slot")
        self.slots = slots
        self._consumers: list[int] = []

    def acquire(self) -> int | None:
        n = len(self._consumers)
        return self._consumers[n - self.slots] if n >= self.slots else None

    def release(self, consumer_task: int) -> None:
        self._consumers.append(consumer_task)
