"""Hugging Face's ``BltForCausalLM`` built from the same bltkit config: the peer of every figure.

Built as shared/anchors/hf_blt_bench.py builds it, through ``bltkit.interop.hf.blt_config_to_hf``
(the bltkit <-> HF config mapping): random weights, fixed patch lengths and no patcher for the
training step (``patch_in_forward`` off), the entropy patcher in the forward for patching and
generation. HF cannot express some bltkit semantics (sliding windows, EOS resets, block-causal
global, zero empty rows: blt-reference §11.3); the peer is built *with HF's own semantics* and the
record lists what differs (``semantic_changes``), since this is a speed comparison, not parity.
For FLOPs the peer is counted with the analytic formula on a bltkit config that has HF's
semantics (``hf_semantics``), so its MFU uses the attention it really computes.
"""
from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any, Optional

import torch

from ..model.config import BLTConfig


def hf_available() -> bool:
    return importlib.util.find_spec("transformers") is not None


def hf_semantics(cfg: BLTConfig) -> BLTConfig:
    """``cfg`` with HF's attention semantics (§11.3): no windows or EOS resets, causal global,
    uniform empty rows, cross heads = local heads, re-pooling at every encoder cross step."""
    return dataclasses.replace(
        cfg,
        encoder=dataclasses.replace(cfg.encoder, window=None, doc_reset=False),
        decoder=dataclasses.replace(cfg.decoder, window=None, doc_reset=False),
        global_=dataclasses.replace(cfg.global_, attention="causal"),
        cross_attn=dataclasses.replace(cfg.cross_attn, empty_rows="uniform", repool_each_layer=True,
                                       n_heads=cfg.encoder.n_heads),
        attn_impl="sdpa",
    )


def patcher_config(entropy_model: torch.nn.Module, max_positions: int) -> dict:
    """HF ``patcher_config`` with the bench entropy model's sizes (HF's patcher: full causal)."""
    c = getattr(entropy_model, "cfg", None) or getattr(entropy_model, "config", None)
    return dict(hidden_size=c.dim, num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
                intermediate_size=getattr(c, "ffn_hidden", None) or getattr(c, "hidden"),
                max_position_embeddings=max_positions)


def build_hf_blt(cfg: BLTConfig, device: torch.device, patcher: Optional[dict] = None,
                 threshold: Optional[float] = None) -> tuple[Any, list[str]]:
    """(``BltForCausalLM`` on ``device`` with random weights, semantic changes vs ``cfg``).

    ``patcher`` (an HF ``patcher_config`` dict) puts the entropy patcher in the forward, with
    ``threshold`` in nats; without it the model takes the caller's ``patch_lengths``."""
    from transformers import BltForCausalLM

    from ..interop.hf import blt_config_to_hf

    scheme = {"scheme": "entropy", "threshold": threshold} if patcher is not None else None
    hfc, changes = blt_config_to_hf(cfg, patcher=scheme, patcher_config=patcher, allow_semantic_change=True)
    with torch.device(device):
        model = BltForCausalLM(hfc)
    return model, changes
