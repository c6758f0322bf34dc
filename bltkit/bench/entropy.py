"""The entropy model and patcher of the patching and generation figures.

The bench measures what bltkit's entropy patching really costs: the patching engineer's
``entropy_model.model.EntropyModel`` (``configs/entropy/<name>.yaml``; ``small`` is the anchor's
patcher: 8 layers, 512 wide, 8 heads, FFN 1536, window 512 with EOS resets, blt-reference §2)
behind ``bltkit.patching.patcher.Patcher`` with the global-threshold entropy rule (§3.2: strict
``H_t > θ`` in nats starts byte t+1; bytes 0 and 1 always start). Random weights: speed does not
depend on them, only the patch count does, and the train figure fixes that separately.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import nn


def load_bench_entropy_model(name: str, device: torch.device, attn_impl: Optional[str] = None) -> tuple[nn.Module, str]:
    """(``EntropyModel`` from config ``name`` on ``device``, eval and frozen; a description).
    ``attn_impl`` overrides the config's (the uncached generation loop uses ``sdpa``: its prefix
    grows a byte a step, and compiled FlexAttention would recompile at every length)."""
    from entropy_model.model import EntropyModel, load_entropy_config

    cfg = load_entropy_config(name)
    if attn_impl is not None:
        cfg = dataclasses.replace(cfg, attn_impl=attn_impl)
    with torch.device(device):
        model = EntropyModel(cfg)
    model.eval().requires_grad_(False)
    return model, f"entropy_model.EntropyModel ({name}: {cfg.n_layers} layers, dim {cfg.dim}, window {cfg.window})"


def entropy_patcher(model: nn.Module, threshold: float, precision: str = "auto"):
    """bltkit's ``Patcher`` with the global entropy threshold (nats), scoring with ``model`` at
    ``precision`` (``auto``: bf16 autocast on CUDA, fp32 elsewhere)."""
    from ..patching.patcher import Patcher

    return Patcher(scheme="entropy", threshold=threshold, scorer=model, precision=precision)
