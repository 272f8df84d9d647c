"""Where calibration profiles live (``hardware_db/calibration/<gpu>.yaml``, beside the GPU
entries) and which profile a platform uses.

Rule for a GPU without measurements of its own (documented in the README): it borrows the
profile of a measured GPU of the same architecture family. The curves are fractions of peak,
so applying them to the unmeasured GPU's own peaks is scaling by the spec ratios. Measured
copy bandwidths belong to the measured host's link: they apply to a platform only when its
host link is the same link entry (``ops`` checks that). Otherwise the default profile.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import yaml

from ..db import data_root, gpus, load_spec_file, normalize
from ..specs import AcceleratorSpec, CalibrationProfile


def gpu_slug(gpu_name: str) -> str:
    """File and folder name of a GPU: 'H100 SXM' -> 'h100-sxm'."""
    return re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")


def profile_path(gpu_name: str, root: Path | None = None) -> Path:
    base = root or data_root("hardware_db") / "calibration"
    return base / f"{gpu_slug(gpu_name)}.yaml"


@lru_cache(maxsize=None)
def _profiles() -> dict[str, CalibrationProfile]:
    folder = data_root("hardware_db") / "calibration"
    found = {}
    if folder.is_dir():
        for path in sorted(folder.glob("*.yaml")):
            prof = load_spec_file(CalibrationProfile, path)
            found[normalize(prof.gpu)] = prof
    return found


def calibration_for(gpu: AcceleratorSpec) -> tuple[CalibrationProfile | None, str | None]:
    """(profile, note): the GPU's own profile, or one borrowed from its architecture, or none."""
    profiles = _profiles()
    own = profiles.get(normalize(gpu.name))
    if own is not None:
        return own, None
    for key, prof in profiles.items():
        donor = gpus().find(prof.gpu)
        if donor is not None and donor.architecture == gpu.architecture:
            return prof, (f"{gpu.name}: no measurements of its own; efficiency curves borrowed from the "
                              f"{donor.name} calibration (same {gpu.architecture} architecture), applied to its own peaks")
    return None, None


def save_profile(profile: CalibrationProfile, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = profile.model_dump(mode="json")
    header = ("# Fitted by `moesim calibrate` from the measurements named below; do not edit by hand.\n"
              "# Curves: eta_compute = compute_max * rows / (rows + rows_half); "
              "eta_memory = memory_max * bytes / (bytes + bytes_half).\n"
              "# Tensor-core compute time T0 -> T0 / (r + (1 - r) (tau / T0) (1 - exp(-T0 / tau))), "
              "r = sustained_clock, tau = clock_tau_s (s).\n"
              "# Host: overhead_s before an operation's first call, then dispatch_s per further call "
              "(index_call_s for calls that sort, select or index by a tensor).\n")
    path.write_text(header + yaml.safe_dump(data, sort_keys=False))
    _profiles.cache_clear()
