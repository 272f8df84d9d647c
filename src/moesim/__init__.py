"""moesim: predict MoE LLM inference performance from declarative specs.

    import moesim
    moesim.predict(model="mixtral-8x7b", hardware="h100-sxm")
"""

from .db.resolve import get_hardware, get_model
from .errors import InfeasibleError, MoesimError, SpecError, UnknownNameError
from .predict import Prediction, predict

__version__ = "0.1.0"
__all__ = ["InfeasibleError", "MoesimError", "Prediction", "SpecError", "UnknownNameError", "get_hardware",
           "get_model", "predict"]
