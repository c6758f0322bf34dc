"""Checkpoint plumbing shared by the converters: safetensors reading and tensor checks.

Why one place: every conversion ends the same way (foreign names mapped to bltkit names, then
each tensor checked against a bltkit model built on the meta device), and every mistake must
name the offending file or tensor *in the source's own naming* so the user can find it.
Nothing here unpickles: safetensors only (the reference's ``.pth`` is read in ``reference.py``
with ``torch.load(weights_only=True)``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch
from torch import nn

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_NAMES = ("pytorch_model.bin", "model.bin", "consolidated.pth", "model.pt", "model.pth")


def read_safetensors_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of one safetensors file (on CPU); a missing or foreign file raises naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file not found: {p}")
    try:
        return load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{p} is not a safetensors file ({e}); only safetensors weights are read") from None


def read_safetensors_dir(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weights of a ``save_pretrained`` directory: ``model.safetensors`` or its sharded index.

    A directory holding only pickled weights (``pytorch_model.bin``...) is refused by name: they
    would have to be unpickled, which a converter must not do with untrusted files.
    """
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {d}")
    if (d / SAFETENSORS_FILE).is_file():
        return read_safetensors_file(d / SAFETENSORS_FILE)
    if (d / SAFETENSORS_INDEX).is_file():
        try:
            index = json.loads((d / SAFETENSORS_INDEX).read_text(encoding="utf-8"))
            shards = sorted(set(index["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{d / SAFETENSORS_INDEX} is not a safetensors index ({e!r})") from None
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(read_safetensors_file(d / shard))
        return state
    pickled = [n for n in PICKLE_NAMES if (d / n).is_file()]
    if pickled:
        raise ValueError(f"{d} holds {pickled[0]} (pickle), not {SAFETENSORS_FILE}; re-save it with "
                         f"safetensors (save_pretrained(..., safe_serialization=True))")
    raise FileNotFoundError(f"{d} has no {SAFETENSORS_FILE} (nor {SAFETENSORS_INDEX})")


def load_checked(model_factory: Callable[[], nn.Module], state: Mapping[str, torch.Tensor], source: str,
                 origin: Callable[[str], str] = lambda k: k, dtype: Optional[torch.dtype] = None) -> nn.Module:
    """Build a model on the meta device, check ``state`` against it (names, shapes, floating-point
    dtypes, finite values: ``bltkit.model.blt.check_weights``), and assign the tensors."""
    from ..model.blt import check_weights

    with torch.device("meta"):
        model = model_factory()
    check_weights(model.state_dict(), state, source, origin)
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
               for k, v in state.items()}
    model.load_state_dict(tensors, assign=True)
    return model.eval()
