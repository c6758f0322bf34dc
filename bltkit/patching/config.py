"""Patcher settings: one typed schema, and the one function that says which settings apply.

``PatcherConfig`` is what a training config's ``patcher:``, a bundle's ``bundle.yaml`` and the
``patcher.yaml`` that ``bltkit calibrate`` writes beside an entropy model hold (docs/patching.md).
``threshold`` is the global θ (nats, ``> θ`` starts a patch) for ``scheme: entropy`` and the
relative θ (entropy rise) for ``scheme: monotonic``; ``threshold_add`` turns ``entropy`` into the
global + monotonic rule. The reference's default global θ, 1.335442066192627, belongs to its 100M
model; any other entropy model needs its own, hence calibration.

An unset (null) field means "not decided here". ``resolve_patcher`` is the one place that decides
the settings every entry point uses (training, ``bltkit precompute``, ``bltkit patch``,
``bltkit.load(...)``, generation, the comparison and the demo). Layers, lowest first:

1. the entropy model's calibrated ``patcher.yaml``;
2. the given settings (a training config's ``patcher:``, or a bundle's ``bundle.yaml`` patcher:
   ``bltkit.bundle.bundle_patcher`` reads the bundle and calls this function);
3. overrides (command-line flags, keyword arguments).

A higher layer's set values win. A layer that changes the scheme drops the lower layers'
``threshold``, ``threshold_add`` and calibration record (a global θ is no relative θ); one that
sets a threshold drops the calibration record, which no longer describes it. Everything else
(``max_patch_length``, ``entropies_fp16``...) carries through: a threshold calibrated with a
maximum patch length is only right with it. Unset fields then take their defaults
(``PatcherConfig.filled``).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal, Mapping, Optional, Union

from .. import config as cfgio
from ..weights import WEIGHTS_FILE

PATCHER_FILE = "patcher.yaml"
REFERENCE_THRESHOLD = 1.335442066192627
Scheme = Literal["entropy", "monotonic", "static", "space", "byte", "learned"]
# The values unset fields take once every layer has spoken.
DEFAULTS = {"scheme": "entropy", "patch_size": 4, "entropies_fp16": True, "ratio_loss_weight": 0.03}
# Settings that only the entropy-free rules may not take, by scheme: what a learned scheme rejects.
_NOT_LEARNED = ("threshold", "threshold_add", "patch_size", "max_patch_length", "entropy_model", "precomputed",
                "calibration")


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
    scheme: Optional[Scheme] = None  # entropy when unset
    threshold: Optional[float] = None
    threshold_add: Optional[float] = None
    patch_size: Optional[int] = None  # static K (4 when unset)
    max_patch_length: Optional[int] = None  # longer patches are split into pieces of this length
    # Entropies are rounded to float16 before thresholding (true when unset): the reference trains
    # on float16-stored entropies (docs/reference-semantics.md, "Entropy patching") and
    # `bltkit precompute` stores them so; every path that thresholds (training, precompute
    # statistics, `bltkit patch`, generation) rounds alike, so all give the same patches.
    # Converted HF / reference models threshold float32 entropies as their own inference does.
    entropies_fp16: Optional[bool] = None
    entropy_model: Optional[str] = None  # directory of the scorer (entropy, monotonic)
    # Training only: a `bltkit precompute` directory the trainer reads entropies from instead of
    # running the entropy model; never written into a bundle.
    precomputed: Optional[str] = None
    calibration: Optional[CalibrationRecord] = None
    # scheme learned (docs/patching.md, "Learned boundaries"): the BLT's own router places the
    # boundaries, trained end to end toward ``target_ratio`` bytes a patch (N of the ratio loss,
    # arXiv 2507.07955 §2.2.3; > 1) with the ratio loss weighted by ``ratio_loss_weight``
    # (alpha, 0.03 when unset).
    target_ratio: Optional[float] = None
    ratio_loss_weight: Optional[float] = None

    def validate(self) -> None:
        """Value checks that need no scorer; ``check_ready`` adds those that need the threshold."""
        scheme = self.scheme or DEFAULTS["scheme"]
        if scheme == "learned":
            self._validate_learned()
            return
        for name in ("target_ratio", "ratio_loss_weight"):
            if getattr(self, name) is not None:
                raise ValueError(f"{name} goes with scheme 'learned' (boundaries learned by the BLT), "
                                 f"not {scheme!r} (got {getattr(self, name)})")
        if self.patch_size is not None and self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {self.patch_size}")
        if self.max_patch_length is not None and self.max_patch_length < 1:
            raise ValueError(f"max_patch_length must be >= 1 or null, got {self.max_patch_length}")
        if self.threshold is not None:
            check_threshold(self.threshold, relative=scheme == "monotonic")
        if self.threshold_add is not None:
            if scheme != "entropy":
                raise ValueError(f"threshold_add (global + monotonic) goes with scheme 'entropy', not {scheme!r}")
            check_threshold(self.threshold_add, relative=True, name="threshold_add")
        if self.precomputed is not None and scheme not in ("entropy", "monotonic"):
            raise ValueError(f"precomputed only applies to scheme entropy or monotonic, not {scheme!r}")
        if self.scheme is not None and self.scheme not in ("entropy", "monotonic") and self.threshold is not None:
            raise ValueError(f"scheme {self.scheme!r} takes no threshold (got {self.threshold})")

    def _validate_learned(self) -> None:
        given = [n for n in _NOT_LEARNED if getattr(self, n) is not None]
        if given:
            what = ("an entropy model" if {"entropy_model", "precomputed"} & set(given) else "settings of other schemes")
            raise ValueError(f"scheme 'learned' takes no {', '.join(given)} ({what}: the BLT's router learns its "
                             f"boundaries; give target_ratio and optionally ratio_loss_weight)")
        if self.target_ratio is None:
            raise ValueError("scheme 'learned' needs target_ratio: the bytes a patch the ratio loss trains toward "
                             "(a number > 1, e.g. 4.5)")
        check_finite(self.target_ratio, "target_ratio")
        if not float(self.target_ratio) > 1:
            raise ValueError(f"target_ratio must be > 1 bytes a patch, got {self.target_ratio!r} (the ratio loss "
                             f"is N/(N-1)((N-1)FG + (1-F)(1-G)); a patch a byte is scheme 'byte')")
        if self.ratio_loss_weight is not None:
            check_finite(self.ratio_loss_weight, "ratio_loss_weight")
            if float(self.ratio_loss_weight) < 0:
                raise ValueError(f"ratio_loss_weight must be >= 0, got {self.ratio_loss_weight!r}")

    @property
    def learned(self) -> bool:
        """Whether the BLT's router decides the boundaries (no patcher outside the model)."""
        return self.scheme == "learned"

    def check_ready(self) -> None:
        self.validate()
        if self.needs_scores and self.threshold is None:
            raise ValueError(f"scheme {self.scheme or DEFAULTS['scheme']!r} needs a threshold: give one, or run "
                             "`bltkit calibrate` on the entropy model to write its patcher.yaml")

    def filled(self) -> "PatcherConfig":
        """This config with its scheme's unset settings at their defaults (``patch_size`` for
        static, ``entropies_fp16`` for the entropy schemes); the others stay unset."""
        scheme = self.scheme or DEFAULTS["scheme"]
        out = {"scheme": scheme}
        if scheme == "static" and self.patch_size is None:
            out["patch_size"] = DEFAULTS["patch_size"]
        if scheme in ("entropy", "monotonic") and self.entropies_fp16 is None:
            out["entropies_fp16"] = DEFAULTS["entropies_fp16"]
        if scheme == "learned" and self.ratio_loss_weight is None:
            out["ratio_loss_weight"] = DEFAULTS["ratio_loss_weight"]
        return replace(self, **out)

    @property
    def needs_scores(self) -> bool:
        return (self.scheme or DEFAULTS["scheme"]) in ("entropy", "monotonic")

    def rule(self) -> dict:
        """The settings that decide patches, for records and comparisons (no paths, no history)."""
        f = self.filled()
        if f.learned:
            return {"scheme": f.scheme, "target_ratio": f.target_ratio, "ratio_loss_weight": f.ratio_loss_weight}
        return {"scheme": f.scheme, "threshold": f.threshold, "threshold_add": f.threshold_add,
                "patch_size": f.patch_size, "max_patch_length": f.max_patch_length,
                "entropies_fp16": f.entropies_fp16}

    def for_bundle(self, entropy_model: Optional[str]) -> "PatcherConfig":
        """What a bundle records: the resolved rule, the entropy model as the bundle names it, and
        nothing training-only."""
        return replace(self.filled(), entropy_model=entropy_model if self.needs_scores else None, precomputed=None)


def check_finite(value: float, name: str) -> None:
    """``value`` must be a finite number (not a bool); the error names ``name`` and the value."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")


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


# ---- resolution ---------------------------------------------------------------------------------
Settings = Union[PatcherConfig, Mapping, None]
_SCHEME_BOUND = ("threshold", "threshold_add", "calibration", "target_ratio", "ratio_loss_weight")


def as_patcher_config(settings: Settings, source: str = "patcher settings") -> PatcherConfig:
    """A ``PatcherConfig`` from a config, a mapping (unknown keys rejected) or None (all unset)."""
    if settings is None:
        return PatcherConfig()
    if isinstance(settings, PatcherConfig):
        return settings
    return cfgio.from_dict(PatcherConfig, dict(settings), source=source, prefix="patcher")


def merge(lower: PatcherConfig, upper: PatcherConfig) -> PatcherConfig:
    """``upper``'s set values over ``lower`` by the layering rule of the module docstring."""
    out = {f.name: getattr(lower, f.name) for f in fields(PatcherConfig)}
    if upper.scheme is not None and upper.scheme != (lower.scheme or DEFAULTS["scheme"]):
        out.update({k: None for k in _SCHEME_BOUND})
    if (upper.threshold is not None or upper.threshold_add is not None) and upper.calibration is None:
        out["calibration"] = None
    out.update({f.name: getattr(upper, f.name) for f in fields(PatcherConfig) if getattr(upper, f.name) is not None})
    return PatcherConfig(**out)


def entropy_model_dir(path: str | os.PathLike, base_dir: str | os.PathLike | None = None) -> Path:
    """The directory holding an entropy model's weights: ``path`` itself, or the ``model/`` of a
    ``train-entropy`` run or bundle directory; relative paths as ``bltkit.config.resolve_path``."""
    p = cfgio.resolve_path(path, base_dir)
    if not p.is_dir():
        raise FileNotFoundError(f"entropy model directory not found: {p}")
    if not (p / WEIGHTS_FILE).is_file() and (p / "model" / WEIGHTS_FILE).is_file():
        p = p / "model"
    return p


def resolve_patcher(settings: Settings = None, *, entropy_model: str | os.PathLike | None = None,
                    overrides: Settings = None, base_dir: str | os.PathLike | None = None, ready: bool = True,
                    source: str = "patcher settings") -> PatcherConfig:
    """The patcher settings that apply, filled (see the module docstring).

    ``entropy_model``: an entropy model (or run) directory; ``settings``: a training config's
    ``patcher:`` (or a bundle's, ``bltkit.bundle.bundle_patcher``); ``overrides``: command-line
    values. The entropy model is the first one named by ``overrides``, ``entropy_model``, then
    ``settings``; relative paths are looked up beside ``base_dir`` too. The result names it by its
    resolved directory. With ``ready`` the result must be usable as is: a threshold for the
    entropy schemes, and an entropy model.
    """
    given, over = as_patcher_config(settings, source), as_patcher_config(overrides, "overrides")
    named = over.entropy_model or entropy_model or given.entropy_model
    em: Optional[Path] = entropy_model_dir(named, base_dir) if named is not None else None
    cfg = PatcherConfig()
    for layer in [(load_patcher_settings(em) if em is not None else None) or PatcherConfig(), given, over]:
        cfg = merge(cfg, layer)
    cfg = replace(cfg.filled(), entropy_model=str(em) if em is not None else None)
    try:
        cfg.validate()
        if ready:
            if cfg.needs_scores and em is None:
                raise ValueError(f"scheme {cfg.scheme!r} needs an entropy model (entropy_model: a directory of "
                                 "a trained entropy model, `bltkit train-entropy`)")
            cfg.check_ready()
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    return cfg


__all__ = ["PatcherConfig", "CalibrationRecord", "resolve_patcher", "merge", "as_patcher_config",
           "entropy_model_dir", "load_patcher_settings", "save_patcher_settings", "check_threshold",
           "PATCHER_FILE", "REFERENCE_THRESHOLD"]
