"""Typed configuration of a comparison (``configs/experiments/*.yaml``), unknown keys rejected.

    budget: {kind: flops, value: 3.0e12}      # or {kind: bytes, value: 2.0e6}: matched across variants
    base: {data: {...}, optim: {...}, schedule: {...}, seed: 777, ...}   # a TrainConfig, shared
    entropy: {train: {...}, target_mean_patch_length: 4.5}            # for entropy-patched variants
    variants:
      - {name: bytes, kind: bytelm, model: tiny}                          # byte-level baseline (K=1)
      - {name: patch-k4, kind: bytelm, model: tiny, patch_size: 4, patch_fraction: 0.6667}
      - {name: blt-entropy, kind: blt, model: tiny, patcher: {scheme: entropy}}
      - {name: blt-static4, kind: blt, model: tiny, patcher: {scheme: static, patch_size: 4}}
      - {name: blt-space, kind: blt, model: tiny, patcher: {scheme: space}}
      - {name: hnet, kind: hnet, model: tiny}                             # H-Net: learned chunks
      - {name: blt-learned, kind: blt, model: tiny, patcher: {scheme: learned, target_ratio: 4.0}}

Every variant reads the same data settings (``base.data``), so all are scored on the same held-out
rows; a variant's ``set`` overrides (``key=value``, as ``bltkit train --set``) may change its
optimiser, schedule and batch size but not the data. BLT variants may also run the two-phase
schedule (docs/fixed-k.md, "With BLT"): ``patch_fraction`` λ of the bytes with
``patch_phase_patcher`` (default static ``patch_size``-byte patches), then ``patcher``.

A variant's ``patcher`` and ``patch_phase_patcher`` are ``PatcherConfig``s (docs/patching.md), as a
run config's ``patcher:`` is: an unknown key or a bad value is refused when the config is read,
naming the variant's key and the file. They are resolved as every entry point resolves patcher
settings (``resolve_patcher``, in ``EntropyPatching.resolve``), the comparison's shared entropy model
and calibrated threshold under the variant's own settings.

A variant whose model chooses its own boundaries (``kind: hnet``, its target compression in its
model config; a BLT with ``patcher: {scheme: learned, target_ratio: N}``) is planned at its
target (docs/compare.md).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from .. import config as cfgio
from ..patching.config import PatcherConfig
from ..patchtrain.schedule import Budget, PhaseSettings, check_k_lambda

# data keys a variant may override (the rest would change the held-out text or the row layout)
VARIANT_DATA_KEYS = {"data.batch_size"}


@dataclass
class VariantConfig:
    name: str = ""
    kind: Literal["blt", "bytelm", "hnet"] = "blt"
    model: str = "tiny"  # a shipped config of the kind (configs/model/, configs/bytelm/, configs/hnet/) or a path
    model_overrides: list[str] = field(default_factory=list)
    patcher: Optional[PatcherConfig] = None  # blt: static / space / entropy / monotonic / byte
    patch_size: int = 1  # K of the patch phase (bytelm; blt two-phase: the static patch size)
    patch_fraction: float = 0.0  # λ: share of the training bytes in the patch phase
    patch_phase_patcher: Optional[PatcherConfig] = None  # blt two-phase: phase-1 patcher (static K when unset)
    patch_phase: PhaseSettings = field(default_factory=PhaseSettings)
    byte_phase: PhaseSettings = field(default_factory=PhaseSettings)
    init_global_from: Optional[str] = None  # blt: a bytelm variant's name whose backbone starts the global model
    set: list[str] = field(default_factory=list)  # key=value overrides of the shared run config

    def validate(self) -> None:
        if not self.name or any(c in self.name for c in "/\\ ") or self.name.startswith("."):
            raise ValueError(f"variant name {self.name!r} must be a non-empty directory name without spaces or slashes")
        check_k_lambda(self.patch_size, self.patch_fraction)
        if self.kind == "blt" and (self.patcher is None or self.patcher.scheme is None):
            raise ValueError(f"variant {self.name!r}: a blt variant needs patcher: {{scheme: static|space|entropy, ...}}")
        if self.kind == "bytelm" and (self.patcher is not None or self.patch_phase_patcher is not None
                                      or self.init_global_from):
            raise ValueError(f"variant {self.name!r}: a bytelm variant takes patch_size / patch_fraction, "
                             f"not patcher / patch_phase_patcher / init_global_from")
        if self.kind == "hnet" and (self.patcher is not None or self.patch_phase_patcher is not None
                                    or self.init_global_from or self.patch_size != 1 or self.patch_fraction != 0):
            raise ValueError(f"variant {self.name!r}: an hnet variant chooses its own chunks (their target is "
                             f"chunking.target_ratio of its model config, set through model_overrides); it takes "
                             f"no patcher / patch_phase_patcher / init_global_from / patch_size / patch_fraction")
        for item in self.set:
            key = item.split("=", 1)[0]
            if key.startswith("data.") and key not in VARIANT_DATA_KEYS or key in ("kind", "model", "patcher", "task", "steps", "data"):
                raise ValueError(f"variant {self.name!r}: set {item!r} is not allowed (every variant shares the data and "
                                 f"gets its steps from the budget; allowed data keys: {sorted(VARIANT_DATA_KEYS)})")


@dataclass
class EntropySetup:
    """The entropy model of entropy-patched variants: an existing one (``model``: a bundle or model
    directory) or one trained here from ``train`` (a TrainConfig of kind ``entropy``), then its
    threshold calibrated on training text to ``target_mean_patch_length``. With ``precompute``
    its entropies of the documents the variants read are computed once (``bltkit precompute``'s
    shards, in ``OUT/_entropy_model/entropies/``) and every variant patching with it reads them."""

    model: Optional[str] = None
    train: dict[str, Any] = field(default_factory=dict)
    target_mean_patch_length: float = 4.5
    calibration_bytes: int = 200_000  # training text used to calibrate the threshold
    # Entropies of the base data computed once for every variant (docs/compare.md). Without
    # base.data.limit_bytes that is all of every training source: false patches on the fly instead,
    # for a corpus much larger than the variants read.
    precompute: bool = True

    def validate(self) -> None:
        if self.target_mean_patch_length <= 1:
            raise ValueError(f"entropy.target_mean_patch_length must be > 1, got {self.target_mean_patch_length}")


@dataclass
class CompareConfig:
    budget: Budget = field(default_factory=Budget)
    base: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields shared by every variant
    entropy: Optional[EntropySetup] = None
    variants: list[VariantConfig] = field(default_factory=list)
    eval_points: int = 4  # held-out evaluations a phase (the curve's points)

    def validate(self) -> None:
        if not self.variants:
            raise ValueError("variants lists nothing to compare")
        names = [v.name for v in self.variants]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"variant names must be unique, repeated: {dup}")
        for key in ("kind", "model", "patcher", "task", "steps"):
            if key in self.base:
                raise ValueError(f"base.{key} is set per variant (or by the budget), not in base")
        for v in self.variants:
            if v.init_global_from is not None:
                src = next((w for w in self.variants if w.name == v.init_global_from), None)
                if src is None or src.kind != "bytelm" or names.index(src.name) > names.index(v.name):
                    raise ValueError(f"variant {v.name!r}: init_global_from {v.init_global_from!r} must name an "
                                     f"earlier bytelm variant of this config (variants: {names})")
        if self.eval_points < 1:
            raise ValueError(f"eval_points must be >= 1, got {self.eval_points}")

    def select(self, names: Optional[list[str]]) -> list[VariantConfig]:
        """The variants named (all when ``names`` is empty), in config order; an unknown name is an error."""
        if not names:
            return list(self.variants)
        known = [v.name for v in self.variants]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"variant {unknown[0]!r} is not defined in the config (variants: {known})")
        chosen = set(names)
        for v in self.variants:  # a variant initialised from another needs it
            if v.name in chosen and v.init_global_from:
                chosen.add(v.init_global_from)
        return [v for v in self.variants if v.name in chosen]


def load_compare_config(name_or_path: str | os.PathLike, overrides: Optional[list[str]] = None) -> tuple[CompareConfig, Path]:
    """(config, its file) from a path or a shipped name under ``configs/experiments/``."""
    return cfgio.build_config(lambda d, s: cfgio.from_dict(CompareConfig, d, source=s), name_or_path, "experiments",
                              overrides)
