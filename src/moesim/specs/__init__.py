"""Typed, validated, immutable specs (pydantic v2). SI units, unit in every field name."""

from .calibration import CalibrationProfile, FamilyCurve, LinkCalibration
from .common import BYTES_PER_ELEMENT, Source, Spec, bytes_per_element
from .hardware import (
    AcceleratorSpec,
    CPUSpec,
    DiskSpec,
    EmpiricalProfile,
    HostKind,
    HostLinkMeasurement,
    LinkSpec,
    NetworkSpec,
    Platform,
    PlatformSpec,
    ScaleOut,
)
from .model import AttentionSpec, DenseFFNSpec, LayerKind, ModelSpec, MoESpec, PublishedParams
from .workload import LengthDistribution, OfflineWorkload, OnlineWorkload, Workload

__all__ = [
    "CalibrationProfile",
    "FamilyCurve",
    "LinkCalibration",
    "BYTES_PER_ELEMENT",
    "AcceleratorSpec",
    "AttentionSpec",
    "CPUSpec",
    "DenseFFNSpec",
    "DiskSpec",
    "EmpiricalProfile",
    "HostKind",
    "HostLinkMeasurement",
    "LayerKind",
    "LengthDistribution",
    "LinkSpec",
    "NetworkSpec",
    "ModelSpec",
    "MoESpec",
    "OfflineWorkload",
    "OnlineWorkload",
    "Platform",
    "PlatformSpec",
    "PublishedParams",
    "ScaleOut",
    "Source",
    "Spec",
    "Workload",
    "bytes_per_element",
]
