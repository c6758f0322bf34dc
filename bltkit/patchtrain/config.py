"""Typed configuration of ``ByteLM``, the byte-level LM on BLT's global-transformer backbone.

``ByteLMConfig`` *is* a ``bltkit.nn.StackConfig`` (the config of every bltkit stack, the BLT's
``global_model`` included) with the LM's own fields added, so "the same block, RoPE, norm and
init" is one implementation and one config: a ByteLM of the sizes of a BLT's global model can
initialise it (``task.init_global_from``, ``bltkit.training.blt_init``). The backbone takes patch vectors of its own width, so no
input projection exists (docs/architecture.md, "Data flow": the projection to G is there only
when k*De differs from G). Attention is causal with no window;
``doc_reset`` resets it after an EOS (block-causal; docs/architecture.md, "Masks").
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, Optional

from .. import config as cfgio
from ..data.vocab import VOCAB_SIZE
from ..nn.stack import StackConfig


@dataclass
class ByteLMConfig(StackConfig):
    dim: int = 128
    n_layers: int = 2
    n_heads: int = 4
    vocab_size: int = VOCAB_SIZE
    attn_impl: Literal["sdpa", "flex", "auto"] = "auto"  # auto: flex on CUDA with doc_reset, sdpa elsewhere
    init_seed: int = 42

    def validate(self) -> None:
        super().validate()
        if self.vocab_size != VOCAB_SIZE:
            raise ValueError(f"vocab_size must be {VOCAB_SIZE} (bytes + 4 specials), got {self.vocab_size}")
        if self.window is not None:
            raise ValueError(f"window must be null, got {self.window}: ByteLM's backbone is the BLT's global "
                             f"model, which attends to every earlier position")


def bytelm_config_from_dict(data: dict, source: Optional[str] = None) -> ByteLMConfig:
    return cfgio.from_dict(ByteLMConfig, data, source=source)  # validates


def load_bytelm_config(name_or_path: str | os.PathLike, overrides: Optional[list[str]] = None) -> ByteLMConfig:
    """A ByteLM config from a YAML path or a shipped name under ``configs/bytelm/`` (``tiny``)."""
    return cfgio.build_config(bytelm_config_from_dict, name_or_path, "bytelm", overrides, flag="model_overrides")[0]
