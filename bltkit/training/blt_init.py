"""Starting a BLT run from earlier weights, for ``kind: blt`` runs through the one loop (the
patch-training extension, docs/fixed-k.md, "With BLT").

``task:`` keys of a BLT run config (``BLTInit``, read by ``BLTTask.build_model``):

- ``init_from``: a BLT bundle or model directory: every weight (the two-phase BLT schedule: a
  cheap fixed-K static patch phase, then entropy patches; only the weights cross the transition);
- ``init_global_from``: a bundle or model directory whose weights hold a ``global_transformer``,
  such as a patch-trained ``bytelm`` (``ByteLM`` is built on the BLT's ``GlobalTransformer``: same
  block, RoPE, norm): it initialises the BLT's global transformer; the widths must match.

Both read safetensors through ``bltkit.weights``: no model of the source's kind is built, so this
module needs nothing from the model kinds above the trainer (docs/contributing.md, "Layers").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import torch
from torch import nn

from .. import config as cfgio
from ..bundle import weights_file
from ..weights import load_weights_into, read_weights

GLOBAL_PREFIX = "global_transformer."


@dataclass
class BLTInit:
    init_from: Optional[str] = None
    init_global_from: Optional[str] = None


def init_global_transformer(blt: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy the ``global_transformer.*`` tensors of ``state`` (a ByteLM's or another BLT's state
    dict) into ``blt.global_transformer``. Names and shapes must fit; tensors the BLT has and the
    source lacks (the BLT's input projection, when its patch vectors are wider) keep their own
    initialisation."""
    src = {k[len(GLOBAL_PREFIX):]: v for k, v in state.items() if k.startswith(GLOBAL_PREFIX)}
    dst = blt.global_transformer.state_dict()
    bad = [k for k, v in src.items() if k not in dst or tuple(dst[k].shape) != tuple(v.shape)]
    if bad or not src:
        raise ValueError(f"{source}: the backbone does not fit this BLT's global transformer: "
                         f"{bad[:4] or 'no global_transformer tensors'} (BLT global dim {blt.config.global_model.dim}, "
                         f"n_layers {blt.config.global_model.n_layers})")
    blt.global_transformer.load_state_dict({k: v.to(dst[k].dtype) for k, v in src.items()}, strict=False)


def apply_blt_init(model: nn.Module, task: dict[str, Any], resolve: Callable[[str], str] = str) -> None:
    """Load ``task``'s initial weights into a freshly built BLT (nothing when neither key is set)."""
    init = cfgio.from_dict(BLTInit, task, source="the run config's task:", prefix="task")
    if init.init_from:
        load_weights_into(model, weights_file(resolve(init.init_from)))
    if init.init_global_from:
        f = weights_file(resolve(init.init_global_from))
        init_global_transformer(model, read_weights(f), str(f))


__all__ = ["BLTInit", "apply_blt_init", "init_global_transformer"]
