"""Entropy-model (patcher LM) weights in the HF and reference formats <-> bltkit's ``EntropyModel``.

Why separate: the entropy model is its own package (``entropy_model``), and its weights have
their own names. Both foreign formats name it like the reference ``LMTransformer``
(docs/reference-semantics.md §3): ``tok_embeddings``, ``layers.{i}.attention.wq``,
``feed_forward.w1``, ``attention_norm``, ``ffn_norm``, ``norm``, ``output`` (HF's
``model.patcher.*`` is renamed to these in ``hf.py``). When a source's entropy model does not fit
``EntropyModel``'s config, ``build`` returns ``None`` with the reason and the converters say so
instead of failing: the BLT itself converts either way.

Semantics (docs/reference-semantics.md §3, §16.1): the reference loader hard-codes a 512 sliding window with EOS resets
and RoPE theta 10000; HF's patcher is plain causal with its own ``rope_parameters``.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..nn.stack import StackConfig

REFERENCE_ENTROPY_WINDOW = 512  # load_entropy_model hard-codes it (docs/reference-semantics.md §3)
REFERENCE_ENTROPY_THETA = 10000.0  # rope_theta is not passed on by load_entropy_model


def spec_from_hf(pc: Any) -> StackConfig:
    """The stack HF's ``patcher_config`` computes: plain causal, no window."""
    from .hf import rope_theta_of

    return StackConfig(dim=pc.hidden_size, n_layers=pc.num_hidden_layers, n_heads=pc.num_attention_heads,
                       n_kv_heads=None if pc.num_key_value_heads in (None, pc.num_attention_heads) else pc.num_key_value_heads,
                       ffn_hidden=int(pc.intermediate_size), rope_theta=rope_theta_of(pc, "patcher_config"),
                       norm_eps=float(pc.rms_norm_eps), window=None, doc_reset=False)


def spec_from_reference(args: dict, source: str) -> StackConfig:
    """The reference loader keeps only dim, n_layers, n_heads, ffn_dim_multiplier (docs/reference-semantics.md §3)."""
    try:
        dim, n_layers, n_heads = int(args["dim"]), int(args["n_layers"]), int(args["n_heads"])
    except KeyError as e:
        raise ValueError(f"{source}: entropy-model field {e.args[0]!r} is missing") from None
    vocab = args.get("vocab_size", 260)
    if vocab not in (260, -1, None):
        raise ValueError(f"{source}: entropy-model field 'vocab_size' is {vocab!r}; the byte vocabulary has 260 ids")
    mult = float(args.get("ffn_dim_multiplier") or 1.0)
    return StackConfig(dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=None, ffn_dim_multiplier=mult,
                       rope_theta=REFERENCE_ENTROPY_THETA, norm_eps=1e-5, window=REFERENCE_ENTROPY_WINDOW,
                       doc_reset=True)


# ---- bltkit's EntropyModel -----------------------------------------------------------------------
def _api() -> tuple[Optional[type], Optional[type], str]:
    """(EntropyModel, its config class, reason if unusable): its config is a ``StackConfig``, which
    is what the converter maps the source's fields to."""
    from entropy_model.model import EntropyModel, EntropyModelConfig

    return EntropyModel, EntropyModelConfig, ""


def _config_for(spec: StackConfig, cfg_cls: type) -> tuple[Optional[Any], str]:
    """The entropy model's config with the stack ``spec`` (its config is a ``StackConfig``)."""
    try:
        return cfg_cls(**{f.name: getattr(spec, f.name) for f in dataclasses.fields(StackConfig)}), ""
    except (TypeError, ValueError) as e:
        return None, f"{cfg_cls.__name__} of {spec} failed: {e}"


def build(spec: StackConfig, state: dict[str, torch.Tensor], source: str,
          origin: Callable[[str], str] = lambda k: k) -> tuple[Optional[torch.nn.Module], str]:
    """(EntropyModel with ``state`` loaded, "") or (None, why it could not be built)."""
    from .checkpoint import load_checked

    cls, cfg_cls, why = _api()
    if cls is None:
        return None, why
    cfg, why = _config_for(spec, cfg_cls)
    if cfg is None:
        return None, why
    state = {k: v for k, v in state.items() if not k.endswith("rope.freqs_cis")}
    return load_checked(lambda: cls(cfg), state, source, origin), ""


def to_hf_patcher(directory: str | os.PathLike):
    """((HF patcher_config dict, HF ``model.patcher.*`` tensors, semantic changes) | None, why).

    The caller decides whether the semantic changes are acceptable."""
    from .hf import lm_to_hf_patcher_name

    cls, cfg_cls, why = _api()
    if cls is None:
        return None, why
    model = cls.from_pretrained(Path(directory))
    cfg = model.config  # a StackConfig
    changes = []
    if cfg.window is not None:
        changes.append(f"entropy model window {cfg.window} -> none: HF's patcher has no sliding window")
    if cfg.doc_reset:
        changes.append("entropy model doc_reset true -> false: HF's patcher does not stop at EOS")
    pc = dict(hidden_size=cfg.dim, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
              num_key_value_heads=cfg.n_kv_heads or cfg.n_heads, intermediate_size=cfg.hidden,
              rms_norm_eps=float(cfg.norm_eps),
              rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_theta)})
    state = {lm_to_hf_patcher_name(k): v for k, v in model.state_dict().items()}
    return (pc, state, changes), ""
