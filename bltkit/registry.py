"""Names of things that live in higher layers, as ``"module:Name"`` strings: the one sanctioned way
for a lower layer to reach up (docs/contributing.md, "Layers").

A bundle names its model's kind (``bundle.yaml``: ``kind: blt``), a patcher names its entropy model
by a directory; the code that reads them sits below the model kinds, so it holds a string and
imports the class only when it is used. ``MODEL_KINDS`` is the one table of model kinds; a new kind
adds a line here (the trainer's tasks are registered the same way, ``bltkit.training.task.TASKS``).
Every kind's class has ``save_pretrained(dir)`` and ``from_pretrained(dir, device, dtype)``
(``bltkit.weights``).
"""
from __future__ import annotations

import importlib
from typing import Any

MODEL_KINDS: dict[str, str] = {
    "blt": "bltkit.model.blt:ByteLatentTransformer",
    "bytelm": "bltkit.patchtrain.model:ByteLM",
    "entropy": "entropy_model.model:EntropyModel",
    "hnet": "bltkit.model.hnet:HNet",
}


def resolve(target: str, what: str = "target") -> Any:
    """The object that ``"package.module:Name"`` names, imported now. A malformed string or one that
    does not import raises ``ValueError`` naming ``what`` and the string."""
    module, sep, name = target.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"{what} {target!r} is not of the form 'package.module:Name'")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{what} {target!r} is not available: {e}") from None


def model_class(kind: str) -> type:
    """The class of model kind ``kind`` (``MODEL_KINDS``)."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known: {sorted(MODEL_KINDS)}")
    return resolve(MODEL_KINDS[kind], f"model kind {kind!r}")


__all__ = ["MODEL_KINDS", "model_class", "resolve"]
