"""A bundle: one directory that holds everything needed to use a trained model.

    BUNDLE/
      bundle.yaml            kind (blt | bytelm | entropy | hnet), patcher settings (scheme, threshold...)
      model/                 config.yaml + model.safetensors of the main model
      entropy_model/         config.yaml + model.safetensors (+ patcher.yaml) when patching needs it

A finished training run's output directory is a bundle (the trainer writes ``bundle.yaml`` and
``model/`` there). Loading reads YAML and safetensors only: nothing in a bundle is executed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from . import config as cfgio
from .patching.config import PatcherConfig, resolve_patcher
from .registry import model_class
from .weights import WEIGHTS_FILE

BUNDLE_FILE = "bundle.yaml"
MODEL_SUBDIR = "model"
ENTROPY_SUBDIR = "entropy_model"


@dataclass
class BundleMeta:
    kind: Literal["blt", "bytelm", "entropy", "hnet"] = "blt"
    patcher: Optional[PatcherConfig] = None  # a BLT's patching (bltkit.patching.resolve_patcher)
    has_entropy_model: bool = False
    note: str = ""


def read_bundle(directory: str | os.PathLike) -> BundleMeta:
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"bundle directory not found: {d}")
    f = d / BUNDLE_FILE
    if not f.is_file():
        raise FileNotFoundError(f"{d} is not a bundle: {BUNDLE_FILE} is missing")
    meta = cfgio.from_dict(BundleMeta, cfgio.read_yaml(f), source=str(f))
    if not (d / MODEL_SUBDIR).is_dir():
        raise FileNotFoundError(f"bundle {d} is missing its model directory {d / MODEL_SUBDIR}")
    if meta.has_entropy_model and not (d / ENTROPY_SUBDIR).is_dir():
        raise FileNotFoundError(f"bundle {d} says it has an entropy model but {d / ENTROPY_SUBDIR} is missing")
    return meta


def weights_file(directory: str | os.PathLike) -> Path:
    """``model.safetensors`` of a bundle (``DIR/model/``) or of a model directory (a run's
    ``init_from``)."""
    d = Path(directory)
    for cand in (d / MODEL_SUBDIR / WEIGHTS_FILE, d / WEIGHTS_FILE):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"{d}: no {MODEL_SUBDIR}/{WEIGHTS_FILE} or {WEIGHTS_FILE} there (a bundle or a model directory)")


def bundle_patcher(directory: str | os.PathLike, *, entropy_model: str | os.PathLike | None = None,
                   overrides=None, ready: bool = True) -> PatcherConfig:
    """The patcher settings that apply to the bundle in ``directory`` (``resolve_patcher``): its
    entropy model's calibrated ``patcher.yaml``, then its ``bundle.yaml`` patcher, then
    ``overrides``. Its own ``entropy_model/`` is the entropy model unless ``entropy_model`` or
    ``overrides`` name another; errors name ``bundle.yaml``."""
    d = Path(directory)
    meta = read_bundle(d)
    if entropy_model is None and meta.has_entropy_model:
        entropy_model = d / ENTROPY_SUBDIR
    return resolve_patcher(meta.patcher or PatcherConfig(), entropy_model=entropy_model, overrides=overrides,
                           base_dir=d, ready=ready, source=str(d / BUNDLE_FILE))

def write_bundle_meta(directory: str | os.PathLike, meta: BundleMeta) -> None:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfgio.write_yaml(meta, d / BUNDLE_FILE)


def save_bundle(directory: str | os.PathLike, model, kind: str, patcher: PatcherConfig | dict | None = None,
                entropy_model=None) -> None:
    """Write ``model`` (and optionally an entropy model, a module or a directory) as a bundle."""
    import shutil

    d = Path(directory)
    model.save_pretrained(d / MODEL_SUBDIR)
    has_em = entropy_model is not None
    if has_em:
        if isinstance(entropy_model, (str, os.PathLike)):
            src = Path(entropy_model)
            if src.resolve() != (d / ENTROPY_SUBDIR).resolve():
                shutil.copytree(src, d / ENTROPY_SUBDIR, dirs_exist_ok=True)
        else:
            entropy_model.save_pretrained(d / ENTROPY_SUBDIR)
    if isinstance(patcher, dict):
        patcher = cfgio.from_dict(PatcherConfig, patcher, source=f"{d / BUNDLE_FILE} patcher", prefix="patcher") if patcher else None
    write_bundle_meta(d, BundleMeta(kind=kind, patcher=patcher, has_entropy_model=has_em))


def load_bundle_models(directory: str | os.PathLike, device=None, dtype=None):
    """(meta, model, entropy_model or None) from a bundle directory."""
    d = Path(directory)
    meta = read_bundle(d)
    model = model_class(meta.kind).from_pretrained(d / MODEL_SUBDIR, device=device, dtype=dtype)
    em = model_class("entropy").from_pretrained(d / ENTROPY_SUBDIR, device=device, dtype=dtype) if meta.has_entropy_model else None
    return meta, model, em
