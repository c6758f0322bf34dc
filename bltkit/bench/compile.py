"""Opt-in per-block ``torch.compile`` (the torchtitan habit, layout.md): each transformer block
and each cross-attention module is compiled on its own, in place.

Why per block: the stacks repeat one block, so Dynamo compiles one graph a block type and reuses
it; the mask building, embedding and reshapes between blocks stay eager, so a change of patch
count recompiles little (pad patch counts with ``buckets.pad_patch_columns``). The CPU path is
untouched unless asked; results are those of the eager modules (tests/test_bench.py).
"""
from __future__ import annotations

from torch import nn

from ..nn.attention import CrossAttention
from ..nn.block import TransformerBlock


def compile_blocks(model: nn.Module, **compile_kwargs) -> int:
    """Compile every ``TransformerBlock`` and ``CrossAttention`` of ``model`` in place
    (``nn.Module.compile``); returns how many were compiled. ``compile_kwargs`` go to
    ``torch.compile`` (e.g. ``backend``, ``mode``)."""
    n = 0
    for module in model.modules():
        if isinstance(module, (TransformerBlock, CrossAttention)):
            module.compile(**compile_kwargs)
            n += 1
    return n
