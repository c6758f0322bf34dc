"""Checkpoint plumbing shared by the converters: foreign safetensors directories and checked loading.

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

from ..weights import WEIGHTS_FILE, assign_weights, read_weights

SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_NAMES = ("pytorch_model.bin", "model.bin", "consolidated.pth", "model.pt", "model.pth")


def read_safetensors_dir(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weights of a ``save_pretrained`` directory: ``model.safetensors`` or its sharded index.

    A directory holding only pickled weights (``pytorch_model.bin``...) is refused by name: they
    would have to be unpickled, which a converter must not do with untrusted files.
    """
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {d}")
    if (d / WEIGHTS_FILE).is_file():
        return read_weights(d / WEIGHTS_FILE)
    if (d / SAFETENSORS_INDEX).is_file():
        try:
            index = json.loads((d / SAFETENSORS_INDEX).read_text(encoding="utf-8"))
            shards = sorted(set(index["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{d / SAFETENSORS_INDEX} is not a safetensors index ({e!r})") from None
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(read_weights(d / shard))
        return state
    pickled = [n for n in PICKLE_NAMES if (d / n).is_file()]
    if pickled:
        raise ValueError(f"{d} holds {pickled[0]} (pickle), not {WEIGHTS_FILE}; re-save it with "
                         f"safetensors (save_pretrained(..., safe_serialization=True))")
    raise FileNotFoundError(f"{d} has no {WEIGHTS_FILE} (nor {SAFETENSORS_INDEX})")


def load_checked(model_factory: Callable[[], nn.Module], state: Mapping[str, torch.Tensor], source: str,
                 origin: Callable[[str], str] = lambda k: k, dtype: Optional[torch.dtype] = None) -> nn.Module:
    """Build a model on the meta device, check ``state`` against it and assign the tensors
    (``bltkit.weights.assign_weights``: names, shapes, floating-point dtypes, finite values)."""
    with torch.device("meta"):
        model = model_factory()
    return assign_weights(model, state, source, origin, dtype=dtype).eval()
