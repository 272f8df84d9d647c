"""Online serving: requests arriving over time, served by a continuous-batching scheduler.

The scheduler is generic (:mod:`.scheduler`); a serving system takes part by pricing steps through
the :class:`StepTimeModel` interface (:mod:`.model`), which it returns from
``ServingSystem.online_model``. Entry point: :func:`simulate`, giving an :class:`OnlineResult`.
"""

from .arrivals import Requests, poisson_arrivals, sample_lengths, sample_requests
from .model import Capacity, Chunk, Step, StepTimeModel
from .result import OnlineResult, Percentiles
from .scheduler import Trace, run
from .simulate import online_systems, simulate

__all__ = ["Capacity", "Chunk", "OnlineResult", "Percentiles", "Requests", "Step", "StepTimeModel", "Trace",
           "online_systems", "poisson_arrivals", "run", "sample_lengths", "sample_requests", "simulate"]
