"""Weights and config I/O shared by every bltkit model kind.

A model directory is ``DIR/config.yaml`` (the model's typed config as plain YAML) and
``DIR/model.safetensors`` (its state dict). Every model kind (``ByteLatentTransformer``, the entropy
model, ``ByteLM``, ``HNet``) saves and loads through this module (its ``Pretrained`` mixin gives
each the same ``save_pretrained`` / ``from_pretrained``), and so do the converters (``bltkit.interop``)
and the trainers' ``init_from``. Writes are atomic (temporary name, then rename); reads check every
tensor against the model (names, shapes, floating-point dtypes, finite values) and raise
``ValueError`` naming the offending tensor and file. Only YAML/JSON and safetensors are read:
nothing is unpickled.

This module sits at the bottom layer (docs/contributing.md): it imports only ``bltkit.config``,
torch and safetensors, so any model kind may use it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, TypeVar

import torch
from torch import nn

from . import config as cfgio

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"

M = TypeVar("M", bound=nn.Module)
C = TypeVar("C")


def save_config_and_weights(model: nn.Module, config: Any, directory: str | os.PathLike) -> None:
    """Write ``config`` (a config dataclass or plain dict) as ``DIR/config.yaml`` and ``model``'s
    state dict as ``DIR/model.safetensors``, each to a temporary name renamed into place. Other
    files already in ``directory`` (a ``patcher.yaml``, say) are left alone."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfgio.write_yaml(cfgio.to_dict(config), d / CONFIG_FILE)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = d / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, d / WEIGHTS_FILE)


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of one safetensors file, on CPU. A missing file raises ``FileNotFoundError``, a
    file that is not safetensors (a pickle, a truncated download) ``ValueError``, each naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file not found: {p}")
    try:
        return load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{p} is not a readable safetensors file ({e}); only safetensors weights are read") from None


def check_weights(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], source: str,
                  origin: Callable[[str], str] = lambda k: k) -> None:
    """Raise ``ValueError`` unless ``state`` fits the model whose state dict is ``expected`` (meta
    tensors will do): the same names and shapes, a floating-point tensor wherever the model has
    one (an integer tensor there would be cast silently), and only finite values (NaN or inf
    weights load fine and then generate nothing and score NaN). Messages name ``source`` and the
    tensor as ``origin`` names it (a converter passes the source checkpoint's own names)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors {[origin(k) for k in missing[:8]]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected tensors {[origin(k) for k in unexpected[:8]]}{' ...' if len(unexpected) > 8 else ''}")
        raise ValueError(f"{source}: {'; '.join(parts)} (the config does not match these weights)")
    for k, v in expected.items():
        t = state[k]
        if tuple(t.shape) != tuple(v.shape):
            raise ValueError(f"{source}: tensor {origin(k)} has shape {tuple(t.shape)}, the config expects {tuple(v.shape)}")
        if t.is_floating_point() != v.is_floating_point():
            raise ValueError(f"{source}: tensor {origin(k)} is {t.dtype}, where the model holds {v.dtype}"
                             + (" (a floating-point tensor belongs there)" if v.is_floating_point() else ""))
        if t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise ValueError(f"{source}: tensor {origin(k)} holds {bad} NaN or infinite value(s) of {t.numel()}; "
                                 f"refusing weights that compute NaN")


def assign_weights(model: M, state: Mapping[str, torch.Tensor], source: str,
                   origin: Callable[[str], str] = lambda k: k, device=None,
                   dtype: Optional[torch.dtype] = None) -> M:
    """Check ``state`` against ``model`` (``check_weights``) and assign its tensors (``model`` may
    live on the meta device), cast to ``dtype`` (floating-point tensors only) and moved to
    ``device`` when given. Returns ``model``."""
    check_weights(model.state_dict(), state, source, origin)
    tensors = {}
    for k, v in state.items():
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        if device is not None:
            v = v.to(device)
        tensors[k] = v.contiguous()
    model.load_state_dict(tensors, assign=True)
    return model


def load_weights_into(model: M, path: str | os.PathLike, device=None, dtype: Optional[torch.dtype] = None) -> M:
    """Load the safetensors file ``path`` into ``model``, checking every tensor (``assign_weights``)."""
    return assign_weights(model, read_weights(path), str(Path(path)), device=device, dtype=dtype)


def load_pretrained(directory: str | os.PathLike, parse_config: Callable[[dict, str], C],
                    build: Callable[[C], M], device=None, dtype: Optional[torch.dtype] = None,
                    what: str = "model") -> M:
    """The model saved in ``directory`` by ``save_config_and_weights``.

    ``parse_config(data, source)`` turns ``config.yaml``'s mapping into the typed config (rejecting
    unknown keys); ``build(config)`` constructs the module, here on the meta device, so no memory
    is spent on an initialisation that the weights replace. A missing directory or file raises
    ``FileNotFoundError`` naming it (``what`` says which kind of directory was expected)."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"{what} directory not found: {d}")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (d / name).is_file():
            raise FileNotFoundError(f"{what} directory {d} has no {name}")
    cfg = parse_config(cfgio.read_yaml(d / CONFIG_FILE), str(d / CONFIG_FILE))
    with torch.device("meta"):
        model = build(cfg)
    return load_weights_into(model, d / WEIGHTS_FILE, device=device, dtype=dtype)


class Pretrained:
    """``save_pretrained`` / ``from_pretrained`` for a module whose typed config is ``self.config``.

    A model kind mixes this in and names its config dataclass (``config_class``, parsed with
    unknown keys rejected) and what its directory is called in errors (``kind_name``)."""

    config_class: type
    kind_name: str = "model"

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.yaml`` and ``model.safetensors``, each atomically; other files in the
        directory (a ``patcher.yaml``) are left alone."""
        save_config_and_weights(self, self.config, directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device | None = None,
                        dtype: Optional[torch.dtype] = None):
        """Load a directory written by ``save_pretrained``. A missing directory or file raises
        ``FileNotFoundError`` naming it; a missing, unexpected or mis-shaped tensor raises
        ``ValueError`` naming the tensor and the file."""
        return load_pretrained(directory, lambda data, src: cfgio.from_dict(cls.config_class, data, source=src), cls,
                               device=device, dtype=dtype, what=cls.kind_name)
