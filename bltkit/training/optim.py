"""AdamW with parameter groups (docs/reference-semantics.md §13).

The reference decays every parameter (no groups). ``no_decay_norms_embeddings`` offers the common
alternative: norm weights, biases and embedding tables (byte and hash n-gram) without decay.
Per-stage learning-rate factors (the H-Net, docs/hnet.md) split the groups further.
Fused AdamW is used on CUDA; CPU keeps the default (foreach) implementation.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import OptimConfig


def parameter_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """One group decayed at ``cfg.weight_decay``; with the option, a second one at 0. A model
    with per-parameter learning-rate factors (``lr_multiplier(name)``, the H-Net's stages) has
    each group split by factor, recorded as the group's ``lr_mult`` (``schedule.set_lr``)."""
    return _split_by_lr_multiplier(model, _decay_groups(model, cfg))


def _split_by_lr_multiplier(model: nn.Module, groups: list[dict]) -> list[dict]:
    base = getattr(model, "module", model)  # DDP wraps the model; FSDP2 keeps its class
    factor = getattr(base, "lr_multiplier", None)
    if factor is None:
        return groups
    mult = {id(p): float(factor(name)) for name, p in base.named_parameters()}
    out = []
    for g in groups:
        by: dict[float, list] = {}
        for p in g["params"]:
            by.setdefault(mult[id(p)], []).append(p)
        out.extend({**g, "params": ps, "lr_mult": m} for m, ps in sorted(by.items()))
    return out


def _decay_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not cfg.no_decay_norms_embeddings:
        return [{"params": params, "weight_decay": cfg.weight_decay}]
    no_decay: set[int] = set()
    for module in model.modules():
        name = type(module).__name__.lower()
        # nn.Embedding and table modules such as HashNgramEmbedding; RMSNorm / LayerNorm weights.
        table = isinstance(module, nn.Embedding) or name.endswith("embedding")
        for p in module.parameters(recurse=False):
            if table or "norm" in name or p.dim() < 2:
                no_decay.add(id(p))
    decay = [p for p in params if id(p) not in no_decay]
    keep = [p for p in params if id(p) in no_decay]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if keep:
        groups.append({"params": keep, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    on_cuda = any(p.is_cuda for p in model.parameters())
    return torch.optim.AdamW(parameter_groups(model, cfg), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             fused=True if on_cuda else None)
