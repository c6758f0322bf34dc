"""Starting a BLT run from earlier weights: the patch-training extension (docs/fixed-k.md,
"With BLT"), for ``kind: blt`` runs through the one loop.

``task:`` keys of a BLT run config (read by ``BLTTask.build_model``):

- ``init_from``: a BLT bundle or model directory: every weight (the two-phase BLT schedule: a
  cheap fixed-K static patch phase, then entropy patches; only the weights cross the transition);
- ``init_global_from``: a ByteLM bundle or model directory (a patch-trained backbone): its
  ``global_transformer`` initialises the BLT's (same block, RoPE, norm: ``ByteLM`` is built on
  ``GlobalTransformer``); the widths must match.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from torch import nn

BLT_INIT_KEYS = ("init_from", "init_global_from")


def apply_blt_init(model: nn.Module, task: dict[str, Any], resolve: Callable[[str], str] = str) -> None:
    """Load ``task``'s initial weights into a freshly built BLT (nothing when neither key is set)."""
    from ..weights import load_weights_into
    from .model import ByteLM, init_blt_global_from
    from .task import weights_file

    unknown = sorted(set(task) - set(BLT_INIT_KEYS))
    if unknown:
        raise ValueError(f"unknown key 'task.{unknown[0]}' for kind 'blt'; it accepts: {', '.join(BLT_INIT_KEYS)}")
    if task.get("init_from"):
        load_weights_into(model, weights_file(resolve(task["init_from"])))
    if task.get("init_global_from"):
        f = weights_file(resolve(task["init_global_from"]))
        init_blt_global_from(model, ByteLM.from_pretrained(Path(f).parent))
