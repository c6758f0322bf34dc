"""Entropy-model (patcher LM) weights in the HF and reference formats <-> bltkit's ``EntropyModel``.

Why separate: the entropy model belongs to the ``entropy_model`` package (the patching
engineer's), which bltkit's converters must not require. Both foreign formats name it like the
reference ``LMTransformer`` (blt-reference §2): ``tok_embeddings``, ``layers.{i}.attention.wq``,
``feed_forward.w1``, ``attention_norm``, ``ffn_norm``, ``norm``, ``output`` (HF's
``model.patcher.*`` is renamed to these in ``hf.py``). When ``entropy_model.model.EntropyModel``
is not installed, ``build`` returns ``None`` with the reason and the converters say so instead of
failing: the BLT itself converts either way.

Semantics (§2, §11.3.1): the reference loader hard-codes a 512 sliding window with EOS resets
and RoPE theta 10000; HF's patcher is plain causal with its own ``rope_parameters``.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..nn.ffn import ffn_hidden_dim

REFERENCE_ENTROPY_WINDOW = 512  # load_entropy_model hard-codes it (blt-reference §2)
REFERENCE_ENTROPY_THETA = 10000.0  # rope_theta is not passed on by load_entropy_model


@dataclass
class EntropySpec:
    """What an entropy model computes, independent of either library's config class."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: Optional[int]
    ffn_hidden: int
    rope_theta: float
    norm_eps: float
    window: Optional[int]  # keys in (q - window, q]; None = unbounded
    doc_reset: bool  # attention stops at EOS


def spec_from_hf(pc: Any) -> EntropySpec:
    from .hf import rope_theta_of

    return EntropySpec(dim=pc.hidden_size, n_layers=pc.num_hidden_layers, n_heads=pc.num_attention_heads,
                       n_kv_heads=None if pc.num_key_value_heads in (None, pc.num_attention_heads) else pc.num_key_value_heads,
                       ffn_hidden=int(pc.intermediate_size), rope_theta=rope_theta_of(pc, "patcher_config"),
                       norm_eps=float(pc.rms_norm_eps), window=None, doc_reset=False)


def spec_from_reference(args: dict, source: str) -> EntropySpec:
    """The reference loader keeps only dim, n_layers, n_heads, ffn_dim_multiplier (§2)."""
    try:
        dim, n_layers, n_heads = int(args["dim"]), int(args["n_layers"]), int(args["n_heads"])
    except KeyError as e:
        raise ValueError(f"{source}: entropy-model field {e.args[0]!r} is missing") from None
    vocab = args.get("vocab_size", 260)
    if vocab not in (260, -1, None):
        raise ValueError(f"{source}: entropy-model field 'vocab_size' is {vocab!r}; the byte vocabulary has 260 ids")
    mult = float(args.get("ffn_dim_multiplier") or 1.0)
    return EntropySpec(dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=None,
                       ffn_hidden=ffn_hidden_dim(dim, mult), rope_theta=REFERENCE_ENTROPY_THETA, norm_eps=1e-5,
                       window=REFERENCE_ENTROPY_WINDOW, doc_reset=True)


# ---- bltkit's EntropyModel, when installed -------------------------------------------------------
def _api() -> tuple[Optional[type], Optional[type], str]:
    """(EntropyModel, its config class, reason if unusable)."""
    try:
        mod = importlib.import_module("entropy_model.model")
    except ImportError:
        return None, None, "bltkit's entropy_model package has no model module (entropy_model/model.py) installed"
    cls = getattr(mod, "EntropyModel", None)
    if cls is None:
        return None, None, "entropy_model.model has no EntropyModel"
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    hints = typing.get_type_hints(cls.__init__) if params else {}
    cfg_cls = hints.get(params[0].name) if params else None
    if cfg_cls is None or not dataclasses.is_dataclass(cfg_cls):
        return None, None, "EntropyModel's constructor does not take a config dataclass this converter understands"
    return cls, cfg_cls, ""


# spec field -> candidate config field names (first present wins)
_FIELDS = {
    "dim": ("dim",), "n_layers": ("n_layers",), "n_heads": ("n_heads",), "n_kv_heads": ("n_kv_heads",),
    "ffn_hidden": ("ffn_hidden",), "rope_theta": ("rope_theta",), "norm_eps": ("norm_eps",),
    "window": ("window", "sliding_window"), "doc_reset": ("doc_reset",),
}


def multiplier_for(dim: int, hidden: int) -> Optional[float]:
    """An ``ffn_dim_multiplier`` whose reference rounding gives ``hidden``, or None if none does
    (the rounding only reaches multiples of 256)."""
    base = int(2 * 4 * dim / 3)
    if hidden % 256 or base == 0:
        return None
    mult = hidden / base
    return mult if ffn_hidden_dim(dim, mult) == hidden else None


def _config_for(spec: EntropySpec, cfg_cls: type) -> tuple[Optional[Any], str]:
    names = {f.name for f in dataclasses.fields(cfg_cls)}
    kwargs: dict[str, Any] = {}
    for key, candidates in _FIELDS.items():
        value = getattr(spec, key)
        name = next((c for c in candidates if c in names), None)
        if name is not None:
            kwargs[name] = value
        elif key == "n_kv_heads" and value is None:
            continue
        elif key == "ffn_hidden" and "ffn_dim_multiplier" in names:
            mult = multiplier_for(spec.dim, value)
            if mult is None:
                return None, f"{cfg_cls.__name__} cannot express an FFN width of {value} for dim {spec.dim}"
            if mult != 1.0:
                kwargs["ffn_dim_multiplier"] = mult
        else:
            return None, f"{cfg_cls.__name__} has no field for {key} = {value!r}"
    try:
        return cfg_cls(**kwargs), ""
    except (TypeError, ValueError) as e:
        return None, f"{cfg_cls.__name__}({kwargs}) failed: {e}"


def build(spec: EntropySpec, state: dict[str, torch.Tensor], source: str,
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
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None, "EntropyModel has no .config"
    get = lambda key, default=None: next((getattr(cfg, c) for c in _FIELDS[key] if hasattr(cfg, c)), default)  # noqa: E731
    dim, heads = int(get("dim")), int(get("n_heads"))
    changes = []
    if get("window") is not None:
        changes.append(f"entropy model window {get('window')} -> none: HF's patcher has no sliding window")
    if get("doc_reset", False):
        changes.append("entropy model doc_reset true -> false: HF's patcher does not stop at EOS")
    hidden = get("ffn_hidden") or getattr(cfg, "hidden", None) or ffn_hidden_dim(dim)
    pc = dict(hidden_size=dim, num_hidden_layers=int(get("n_layers")), num_attention_heads=heads,
              num_key_value_heads=int(get("n_kv_heads") or heads), intermediate_size=int(hidden),
              rms_norm_eps=float(get("norm_eps", 1e-5)),
              rope_parameters={"rope_type": "default", "rope_theta": float(get("rope_theta", REFERENCE_ENTROPY_THETA))})
    state = {lm_to_hf_patcher_name(k): v for k, v in model.state_dict().items()}
    return (pc, state, changes), ""
