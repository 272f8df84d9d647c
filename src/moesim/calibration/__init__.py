"""Calibration against real GPU measurements: map measured cases to operations, fit per-family
efficiency curves on a training split, and report predicted vs measured on fitted and held-out cases."""

from .cases import Case, load_measurements
from .fit import fit_profile
from .report import validation_report
from .store import calibration_for, profile_path, save_profile

__all__ = ["Case", "calibration_for", "fit_profile", "load_measurements", "profile_path", "save_profile",
           "validation_report"]
