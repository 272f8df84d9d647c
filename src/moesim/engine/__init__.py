"""Discrete-event engine: resources as in-order streams, tasks with dependencies, memory pools.

* :mod:`.schedule`: :class:`Engine` and :class:`Task`, the in-order-stream semantics;
* :mod:`.memory`: buffers held over time, peaks per pool, the capacity check;
* :mod:`.buffers`: :class:`BufferRing`, reusable slots (double buffering);
* :mod:`.overlap`: how much of a transfer compute hides;
* :mod:`.trace`: Chrome/Perfetto trace and networkx exports.
"""

from .buffers import BufferRing
from .memory import Buffer
from .schedule import Engine, Task

__all__ = ["Buffer", "BufferRing", "Engine", "Task"]
