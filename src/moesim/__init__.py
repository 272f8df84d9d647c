"""moesim: predict MoE LLM inference performance from declarative specs.

    import moesim
    moesim.predict(model="mixtral-8x7b", hardware="h100-sxm")
    s = moesim.Scenario(model="mixtral-8x7b", hardware="c2", prompt_tokens=1024)
    moesim.predict(s);  moesim.predict_online(s.replace(system="vllm", arrival_rate_per_s=2.0))
"""

from .db.resolve import get_hardware, get_model
from .errors import InfeasibleError, MoesimError, SpecError, UnknownNameError
from .predict import Prediction, predict, predict_online
from .scenario import Scenario

__version__ = "0.1.0"
__all__ = ["InfeasibleError", "MoesimError", "Prediction", "Scenario", "SpecError", "UnknownNameError",
           "get_hardware", "get_model", "predict", "predict_online"]
