"""Patcher settings: one typed schema for YAML (training configs, bundles) and for the
``patcher.yaml`` that ``bltkit calibrate`` writes beside an entropy model (blt-reference §3.2).

``threshold`` means the global θ (nats, ``> θ`` starts a patch) for ``scheme: entropy`` and the
relative θ (entropy rise) for ``scheme: monotonic``; ``threshold_add`` turns ``entropy`` into the
global + monotonic rule. The reference's default global θ, 1.335442066192627, belongs to its 100M
model; any other entropy model needs its own, hence calibration.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from .. import config as cfgio

PATCHER_FILE = "patcher.yaml"
REFERENCE_THRESHOLD = 1.335442066192627


@dataclass
class CalibrationRecord:
    """How a threshold was found: by bisection on a sample (``entropy_model.calibrate``)."""

    target_mean: float
    achieved_mean: float
    documents: int
    bytes: int
    data: list[str] = field(default_factory=list)


@dataclass
class PatcherConfig:
    scheme: Literal["entropy", "monotonic", "static", "space", "byte"] = "entropy"
    threshold: Optional[float] = None
    threshold_add: Optional[float] = None
    patch_size: int = 4  # static K
    max_patch_length: Optional[int] = None
    entropy_model: Optional[str] = None  # directory of the scorer (entropy, monotonic)
    calibration: Optional[CalibrationRecord] = None

    def validate(self) -> None:
        """Value checks that need no scorer; ``check_ready`` adds those that need the threshold."""
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {self.patch_size}")
        if self.max_patch_length is not None and self.max_patch_length < 1:
            raise ValueError(f"max_patch_length must be >= 1 or null, got {self.max_patch_length}")
        if self.threshold is not None:
            check_threshold(self.threshold, relative=self.scheme == "monotonic")
        if self.threshold_add is not None:
            if self.scheme != "entropy":
                raise ValueError(f"threshold_add (global + monotonic) goes with scheme 'entropy', not {self.scheme!r}")
            check_threshold(self.threshold_add, relative=True, name="threshold_add")

    def check_ready(self) -> None:
        self.validate()
        if self.scheme in ("entropy", "monotonic") and self.threshold is None:
            raise ValueError(f"scheme {self.scheme!r} needs a threshold: give one, or run `bltkit calibrate` "
                             "on the entropy model to write its patcher.yaml")

    @property
    def needs_scores(self) -> bool:
        return self.scheme in ("entropy", "monotonic")


def check_threshold(value: float, relative: bool, name: str = "threshold") -> None:
    """A global θ must be finite and >= 0 (entropies are >= 0); a relative one must be finite."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if not relative and v < 0:
        raise ValueError(f"global {name} must be >= 0 nats, got {value!r} (a relative threshold belongs to scheme 'monotonic')")


def load_patcher_settings(directory: str | os.PathLike) -> Optional[PatcherConfig]:
    """``DIR/patcher.yaml`` as a ``PatcherConfig``, or None when the directory has none."""
    p = Path(directory) / PATCHER_FILE
    if not p.is_file():
        return None
    return cfgio.from_dict(PatcherConfig, cfgio.read_yaml(p), source=str(p))


def save_patcher_settings(directory: str | os.PathLike, settings: PatcherConfig) -> Path:
    """Write ``DIR/patcher.yaml`` atomically; returns its path."""
    settings.validate()
    p = Path(directory) / PATCHER_FILE
    cfgio.write_yaml(settings, p)
    return p
