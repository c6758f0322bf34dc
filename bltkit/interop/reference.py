"""Import of the reference's own checkpoint format (facebookresearch/blt): ``params.json`` +
``consolidated.pth``.

Why a separate mapping: the reference names are bltkit's names (``attention.wq``,
``feed_forward.w1``, ``attention_norm``, ``ffn_norm``, ``cross_attn_norm_q/kv``,
``local_decoder.output``; docs/reference-semantics.md §6-§11), except the hash tables, which are separate
``encoder_hash_tok_embedding.{i}.weight`` embeddings concatenated here in index order into the
fused table (docs/reference-semantics.md §6). The config is the flat ``ByteLatentTransformerArgs``
(docs/reference-semantics.md §15), possibly nested under ``model`` (with ``entropy_model`` and
``data.patcher_args`` beside it).

Semantics carried over (docs/reference-semantics.md §8.1, §8.3, §15):
- ``attn_impl: xformers``: local attention in ``(q - local_attention_window_len, q]`` that stops
  at EOS (``window``, ``doc_reset: true``); global ``attn_bias_type`` ``causal`` or
  ``block_causal`` (``local_block_causal`` on the global stack is the same EOS-patch reset);
- ``attn_impl: sdpa`` (the reference default) or ``flex_attention``: the reference runs plain
  causal masks there (sdpa only with ``BLT_SUPPRESS_ATTN_ERROR=1``), so that is what is imported,
  and the conversion says so;
- cross-attention heads ``cross_attn_nheads``; pooling from ``downsampling_by_pooling``; the
  encoder pools once (``repool_each_layer: false``) and empty patches give 0 (flex).
Options bltkit does not implement are refused, naming the field: n-gram tables, the
non-cross-attention pooling and gather paths (docs/reference-semantics.md §9, §11), cross-attention windows, the BOE-prefixed
legacy mode, and so on. Weights are read with ``torch.load(weights_only=True)``: nothing executes.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional

import torch

from ..model.config import BLTConfig, CrossAttentionConfig, HashEmbeddingConfig
from ..nn.stack import StackConfig
from ..nn.ffn import ffn_hidden_dim
from ..patching.config import PatcherConfig

PARAMS_FILE = "params.json"
WEIGHTS_FILE = "consolidated.pth"
HASH_PREFIX = "encoder_hash_tok_embedding."
REFERENCE_DEFAULT_THETA = 10000.0  # BaseTransformerArgs.rope_theta
REFERENCE_DEFAULT_THRESHOLD = 1.335442066192627  # PatcherArgs.threshold (nats)

# Reference fields whose non-default value selects a path bltkit does not implement.
# field -> (value that is supported, why it matters)
_MUST_BE = {
    "encoder_enable_byte_ngrams": (False, "n-gram embedding tables (docs/reference-semantics.md §6) are not supported"),
    "encoder_ngram_to_size_str": (None, "n-gram embedding tables (docs/reference-semantics.md §6) are not supported"),
    "encoder_ngram_table_dir": (None, "n-gram embedding tables (docs/reference-semantics.md §6) are not supported"),
    "ngram_vocab_sizes": (None, "n-gram embedding tables (docs/reference-semantics.md §6) are not supported"),
    "cross_attn_encoder": (True, "without encoder cross-attention the reference pools or concatenates bytes "
                                 "into patches (docs/reference-semantics.md §9), a path bltkit does not implement"),
    "cross_attn_decoder": (True, "without decoder cross-attention the reference adds gathered patch states "
                                 "to the bytes (docs/reference-semantics.md §11), a path bltkit does not implement"),
    "cross_attn_init_by_pooling": (True, "patch queries must be initialised by pooling (docs/reference-semantics.md §9)"),
    "cross_attn_window_encoder": (None, "cross-attention windows over several patches are not supported"),
    "cross_attn_window_decoder": (None, "cross-attention windows over several patches are not supported"),
    "pm_size": (0, "parameter-mixing tokens are not supported"),
    "non_linearity": ("swiglu", "bltkit's FFN is SwiGLU"),
    "norm_type": ("rmsnorm", "bltkit's norms are RMSNorm"),
    "norm_affine": (True, "bltkit's norms have weights"),
    "pre_norm": (True, "bltkit's blocks are pre-norm"),
    "use_rope": (True, "bltkit's attention uses RoPE"),
    "architecture": ("vanilla", "only the vanilla architecture exists in bltkit"),
    "conv_kernel_size": (None, "convolutional layers are not supported"),
    "global_local_decoder_residual_layer": (None, "a global-to-decoder residual layer is not supported"),
    "share_encoder_decoder_emb": (True, "the decoder reads the encoder's byte states (docs/reference-semantics.md §11)"),
    "weight_tying": (False, "tied weights are not supported"),
}
_DEFAULTS = {  # ByteLatentTransformerArgs defaults of the fields above that a params.json may omit
    "encoder_enable_byte_ngrams": False, "cross_attn_encoder": False, "cross_attn_decoder": False,
    "cross_attn_init_by_pooling": False, "pm_size": 0, "non_linearity": "swiglu", "norm_type": "rmsnorm",
    "norm_affine": True, "pre_norm": True, "use_rope": True, "architecture": "vanilla",
    "share_encoder_decoder_emb": True, "weight_tying": False,
}


def read_params(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"reference params file not found: {p}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{p} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{p} must hold a JSON object, got {type(data).__name__}")
    return data


def split_params(data: dict) -> tuple[dict, Optional[dict], dict]:
    """(model args, entropy-model args or None, patcher args) from a params.json object."""
    model = data["model"] if isinstance(data.get("model"), dict) else data
    entropy = data.get("entropy_model") if isinstance(data.get("entropy_model"), dict) else None
    data_args = data.get("data") if isinstance(data.get("data"), dict) else {}
    patcher = data_args.get("patcher_args") if isinstance(data_args.get("patcher_args"), dict) else {}
    return model, entropy, patcher


def _get(m: dict, key: str, default: Any = None) -> Any:
    v = m.get(key, default)
    return default if v is None and default is not None else v


def _int_list(value: Any, key: str, source: str) -> list[int]:
    if isinstance(value, str):  # the reference accepts "3,4,5" (check_hash_byte_sizes)
        value = [x for x in value.split(",") if x.strip()]
    try:
        return [int(x) for x in value]
    except (TypeError, ValueError):
        raise ValueError(f"{source}: field '{key}' must be a list of integers, got {value!r}") from None


def _pooling(value: Any, source: str) -> str:
    modes = [m.strip() for m in str(value or "").split(",") if m.strip()]
    if len(modes) != 1 or modes[0] not in ("max", "min", "avg", "mean"):
        raise ValueError(f"{source}: field 'downsampling_by_pooling' is {value!r}; bltkit supports exactly one of "
                         f"'max', 'min', 'avg' to initialise the cross-attention queries")
    return {"avg": "mean"}.get(modes[0], modes[0])


def _ffn_hidden(dim: int, m: dict) -> Optional[int]:
    mult = _get(m, "ffn_dim_multiplier", 1.0)
    multiple_of = int(_get(m, "multiple_of", 256))
    hidden = ffn_hidden_dim(dim, float(mult), multiple_of)
    return None if hidden == ffn_hidden_dim(dim) else hidden


def reference_config_to_blt(m: dict, source: str = PARAMS_FILE) -> tuple[BLTConfig, list[str]]:
    """(bltkit config, notes) for reference model args ``m``; unsupported options raise naming the field."""
    for key, (ok, why) in _MUST_BE.items():
        value = m.get(key, _DEFAULTS.get(key))
        if value != ok and not (ok is None and value in (None, "", [], {})):
            raise ValueError(f"{source}: field '{key}' is {value!r}: {why}")
    vocab = m.get("vocab_size", 260)
    if vocab != 260:
        raise ValueError(f"{source}: field 'vocab_size' is {vocab!r}; the byte vocabulary has 260 ids")
    if m.get("patching_mode") == "":
        raise ValueError(f"{source}: field 'patching_mode' is '' (BOE-prefixed legacy patches), which is not supported")

    de, dd, dg = int(m.get("dim_local_encoder", 512)), int(m.get("dim_local_decoder", 512)), int(m.get("dim_global", 512))
    if de != dd:
        raise ValueError(f"{source}: fields 'dim_local_encoder' {de} and 'dim_local_decoder' {dd} must be equal "
                         f"(the decoder reads the encoder's byte states)")
    dim_token = m.get("dim_token")
    if dim_token is None:
        if m.get("use_local_encoder_transformer", False):
            dim_token = de
        else:
            patch_size = m.get("patch_size") or 1
            dim_token = int(dg // patch_size)
    if int(dim_token) != de:
        raise ValueError(f"{source}: field 'dim_token' (or use_local_encoder_transformer false) gives byte "
                         f"embeddings of width {dim_token}, not dim_local_encoder {de}")
    heads = {"encoder": int(m.get("n_heads_local_encoder", 8)), "global": int(m.get("n_heads_global", 8)),
             "decoder": int(m.get("n_heads_local_decoder", 8))}
    dims = {"encoder": de, "global": dg, "decoder": dd}
    head_dim = m.get("head_dim")
    if head_dim is not None:
        for name in dims:
            if dims[name] // heads[name] != int(head_dim):
                raise ValueError(f"{source}: field 'head_dim' {head_dim} differs from the {name}'s width / heads "
                                 f"({dims[name]} / {heads[name]}); bltkit derives head_dim from them")
    cross_heads = m.get("cross_attn_nheads")
    if cross_heads is None:
        raise ValueError(f"{source}: field 'cross_attn_nheads' is missing (cross-attention needs it)")
    k = m.get("cross_attn_k")
    if k is None:
        raise ValueError(f"{source}: field 'cross_attn_k' is missing (cross-attention needs it)")
    hash_sizes = m.get("encoder_hash_byte_group_size")  # None: byte embeddings only (no hash tables)
    notes: list[str] = []
    impl = m.get("attn_impl", "sdpa")
    bias = m.get("attn_bias_type", "causal")
    if impl == "xformers":
        window, reset = m.get("local_attention_window_len"), True
        if bias in ("causal", None):
            glob_reset = False
        elif bias in ("block_causal", "local_block_causal"):
            glob_reset = True
        else:
            raise ValueError(f"{source}: field 'attn_bias_type' is {bias!r}; supported: causal, block_causal")
    elif impl in ("sdpa", "flex_attention"):
        window, reset, glob_reset = None, False, False
        notes.append(f"attn_impl {impl!r}: the reference runs plain causal masks there (no window, no EOS reset"
                     f"{', and only with BLT_SUPPRESS_ATTN_ERROR=1' if impl == 'sdpa' else ''}); imported as such")
    else:
        raise ValueError(f"{source}: field 'attn_impl' is {impl!r}; supported: xformers, sdpa, flex_attention")
    theta = float(_get(m, "rope_theta", REFERENCE_DEFAULT_THETA))
    norm_eps = float(_get(m, "norm_eps", 1e-5))
    n_kv = m.get("n_kv_heads")

    def stack(name: str, layers_key: str, n_kv: Optional[int], window: Optional[int], reset: bool) -> StackConfig:
        return StackConfig(dim=dims[name], n_layers=int(m.get(layers_key, 8)), n_heads=heads[name],
                           n_kv_heads=None if n_kv in (None, heads[name]) else int(n_kv),
                           ffn_hidden=_ffn_hidden(dims[name], m), norm_eps=norm_eps, rope_theta=theta, window=window,
                           doc_reset=reset)

    cfg = BLTConfig(
        hash=HashEmbeddingConfig(group_sizes=_int_list(hash_sizes or [], "encoder_hash_byte_group_size", source),
                                 n_functions=int(m.get("encoder_hash_byte_group_nb_functions", 3)) if hash_sizes else 0,
                                 vocab=int(m.get("encoder_hash_byte_group_vocab", 30000))),
        encoder=stack("encoder", "n_layers_local_encoder", n_kv, window, reset),
        global_model=stack("global", "n_layers_global", m.get("n_kv_heads_global"), None, glob_reset),
        decoder=stack("decoder", "n_layers_local_decoder", n_kv, window, reset),
        cross_attn=CrossAttentionConfig(k=int(k), n_heads=int(cross_heads),
                                        encoder_all_layers=bool(m.get("cross_attn_all_layers_encoder", False)),
                                        decoder_all_layers=bool(m.get("cross_attn_all_layers_decoder", False)),
                                        pooling=_pooling(m.get("downsampling_by_pooling"), source),  # type: ignore[arg-type]
                                        empty_rows="zero", repool_each_layer=False),
        init_seed=int(m.get("seed", 42)),
    )
    try:
        cfg.validate()  # every part
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    return cfg, notes


def reference_patcher_settings(model_args: dict, patcher_args: dict, entropy_subdir: Optional[str]) -> tuple[PatcherConfig, list[str]]:
    """(bundle patcher settings, notes) from ``data.patcher_args`` (else the model's ``patching_*``
    fields). The reference thresholds the entropies its model computes at inference, unrounded; its
    ``monotonicity: true`` is bltkit's ``monotonic`` scheme with the same (relative) threshold, and
    wins over ``threshold_add`` as in the reference's patcher (docs/patching.md, "The schemes")."""
    def get(key: str, model_key: Optional[str] = None):
        return patcher_args.get(key, model_args.get(model_key or key))

    notes: list[str] = []
    mode = get("patching_mode") or "entropy"
    if mode == "entropy":
        threshold = get("threshold", "patching_threshold")
        threshold = float(threshold if threshold is not None else REFERENCE_DEFAULT_THRESHOLD)
        add = get("threshold_add", "patching_threshold_add")
        mpl = get("max_patch_length")
        common = dict(threshold=threshold, max_patch_length=None if mpl is None else int(mpl), entropies_fp16=False,
                      entropy_model=entropy_subdir)
        if get("monotonicity"):
            if add is not None:
                notes.append(f"patcher threshold_add {add} is unused with monotonicity (as in the reference): "
                             "the bundle patches by the relative threshold alone")
            return PatcherConfig(scheme="monotonic", **common), notes
        return PatcherConfig(scheme="entropy", threshold_add=None if add is None else float(add), **common), notes
    if mode in ("space", "byte"):
        return PatcherConfig(scheme=mode), notes
    if mode == "static":
        size = get("patch_size") or 4
        return PatcherConfig(scheme="static", patch_size=int(math.ceil(float(size)))), notes
    raise ValueError(f"patching_mode {mode!r} has no bltkit patcher (bltkit has entropy, static, space and byte)")


def _load_failure(e: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one line and without torch's advice
    to rerun it with ``weights_only=False`` (which would run whatever the pickle holds)."""
    import re

    text = str(e)
    m = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    reason = m.group(1).strip() if m else (text.strip().splitlines() or [type(e).__name__])[0]
    reason = re.split(r" was not an allowed global| Please use", reason)[0]  # torch's allow-listing advice
    if "weights_only" in reason or "safe_globals" in reason:
        reason = type(e).__name__
    return f"{reason} (bltkit reads plain tensors only)"


def load_reference_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``consolidated.pth`` (a state dict, or one under ``model``); never unpickles code."""
    import pickle

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"reference weights file not found: {p}")
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
        raise ValueError(f"{p} is not a plain PyTorch state dict (read with weights_only=True): "
                         f"{_load_failure(e)}") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise ValueError(f"{p} holds a {type(obj).__name__}, not a state dict of tensors")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{p}: entries {bad[:5]} are not tensors")
    return dict(obj)


def reference_state_to_blt(state: dict[str, torch.Tensor], cfg: BLTConfig, source: str) -> tuple[dict, dict]:
    """(bltkit state, bltkit name -> reference name). Hash tables are concatenated in index order."""
    out, origin = {}, {}
    tables: dict[int, torch.Tensor] = {}
    for k, v in state.items():
        if k.endswith("rope.freqs_cis"):  # a derived RoPE table, recomputed by bltkit
            continue
        if k.startswith(HASH_PREFIX):
            idx = k[len(HASH_PREFIX):].split(".")[0]
            if not idx.isdigit() or k != f"{HASH_PREFIX}{idx}.weight":
                raise ValueError(f"{source}: unexpected hash-table tensor {k}")
            tables[int(idx)] = v
            continue
        out[k], origin[k] = v, k
    n, vocab, dim = cfg.hash.n_tables, cfg.hash.vocab, cfg.encoder.dim
    if sorted(tables) != list(range(n)):
        raise ValueError(f"{source}: hash tables {sorted(tables)} found, the config expects {HASH_PREFIX}0..{n - 1} "
                         f"({cfg.hash.n_functions} functions x group sizes {cfg.hash.group_sizes})")
    for i in range(n):
        if tuple(tables[i].shape) != (vocab, dim):
            raise ValueError(f"{source}: tensor {HASH_PREFIX}{i}.weight has shape {tuple(tables[i].shape)}, "
                             f"the config expects {(vocab, dim)}")
    if n:
        out["encoder_hash_tok_embedding.weight"] = torch.cat([tables[i] for i in range(n)], dim=0)
        origin["encoder_hash_tok_embedding.weight"] = f"{HASH_PREFIX}{{0..{n - 1}}}.weight"
    else:  # the reference has no hash module then; bltkit's fused table is simply empty
        out["encoder_hash_tok_embedding.weight"] = torch.zeros(0, dim)
        origin["encoder_hash_tok_embedding.weight"] = "(no hash tables)"
    return out, origin
