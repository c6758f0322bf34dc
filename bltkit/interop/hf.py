"""Hugging Face transformers' BLT (``BltConfig`` / ``BltForCausalLM``, pinned 5.17.0) <-> bltkit.

Why this exists: a converted model must give the *same logits* in both libraries, so every HF
behaviour that differs from the reference (docs/reference-semantics.md §16) is expressed by a bltkit option:

| HF behaviour                                          | bltkit config                               |
|-------------------------------------------------------|---------------------------------------------|
| local self-attention plain causal (no window, no EOS) | ``encoder/decoder.window: null, doc_reset: false`` |
| global plain causal                                   | ``global_model.doc_reset: false``           |
| additive ``finfo.min`` cross mask: empty row = mean   | ``cross_attn.empty_rows: uniform``          |
| encoder re-pools patch queries at every cross step    | ``cross_attn.repool_each_layer: true``      |
| cross heads = the component's heads, always ``amax``  | ``cross_attn.n_heads``, ``pooling: max``    |
| per-component ``rope_parameters`` (5e5 by default)    | ``<stack>.rope_theta``                      |
| per-component ``intermediate_size``, ``rms_norm_eps`` | ``<stack>.ffn_hidden``, ``<stack>.norm_eps`` |

Weights map by renaming path segments (docs/reference-semantics.md §16): ``self_attn``/``attention``, ``q_proj``/``wq``,
``mlp.gate_proj``/``feed_forward.w1``, ``up_proj``/``w3``, ``down_proj``/``w2``,
``input_layernorm``/``attention_norm``, ``post_attention_layernorm``/``ffn_norm``,
``embed_tokens``/``tok_embeddings``, cross ``q_norm``/``cross_attn_norm_q``,
``k_norm``/``cross_attn_norm_kv``; ``model.`` prefix; top-level ``lm_head`` is
``local_decoder.output``. The fused hash table has the same row order in both (table index *
vocab + hash). Both rotate *adjacent* pairs (HF's interleaved ``rotate_half``), so q/k need no
permutation (tests/test_hf_parity.py checks the logits). HF's ``model.patcher.*`` is the
entropy model (``interop.entropy``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch

from ..model.config import BLTConfig, CrossAttentionConfig, HashEmbeddingConfig
from ..nn.stack import StackConfig
from ..nn.ffn import ffn_hidden_dim

HF_DEFAULT_THETA = 500000.0  # BltConfig.default_theta for the three BLT stacks
HF_LOCAL_MAX_POSITIONS = 24576  # HF defaults; its default RoPE has no table, so these do not cap inputs
HF_GLOBAL_MAX_POSITIONS = 4096

# HF path segment -> bltkit (= reference) path segment; the map is one-to-one.
SEGMENT_HF_TO_BLT = {
    "self_attn": "attention",
    "mlp": "feed_forward",
    "q_proj": "wq",
    "k_proj": "wk",
    "v_proj": "wv",
    "o_proj": "wo",
    "gate_proj": "w1",
    "up_proj": "w3",
    "down_proj": "w2",
    "input_layernorm": "attention_norm",
    "post_attention_layernorm": "ffn_norm",
    "embed_tokens": "tok_embeddings",
    "q_norm": "cross_attn_norm_q",
    "k_norm": "cross_attn_norm_kv",
}
SEGMENT_BLT_TO_HF = {v: k for k, v in SEGMENT_HF_TO_BLT.items()}
HF_LM_HEAD = "lm_head.weight"
BLT_OUTPUT = "local_decoder.output.weight"
HF_PATCHER_PREFIX = "model.patcher."


def require_transformers():
    """The ``transformers`` module, or a clear error naming the extra that provides it."""
    try:
        import transformers
    except ImportError:  # pragma: no cover - the dev/test environment has it
        raise ValueError("converting Hugging Face checkpoints needs transformers: pip install 'bltkit[hf]'") from None
    return transformers


# ---- names --------------------------------------------------------------------------------------
def _rename(name: str, table: dict[str, str]) -> str:
    return ".".join(table.get(s, s) for s in name.split("."))


def hf_to_blt_name(name: str) -> str:
    """``model.local_encoder.layers.0.self_attn.q_proj.weight`` -> ``local_encoder.layers.0.attention.wq.weight``."""
    if name == HF_LM_HEAD:
        return BLT_OUTPUT
    if not name.startswith("model."):
        raise ValueError(f"unexpected tensor {name} in a BltForCausalLM checkpoint (expected 'model.*' or 'lm_head.weight')")
    return _rename(name[len("model."):], SEGMENT_HF_TO_BLT)


def blt_to_hf_name(name: str) -> str:
    if name == BLT_OUTPUT:
        return HF_LM_HEAD
    return "model." + _rename(name, SEGMENT_BLT_TO_HF)


def hf_patcher_to_lm_name(name: str) -> str:
    """HF patcher tensor (prefix stripped) -> reference LMTransformer name (``lm_head`` is ``output``)."""
    return ".".join({"lm_head": "output"}.get(s, SEGMENT_HF_TO_BLT.get(s, s)) for s in name.split("."))


def lm_to_hf_patcher_name(name: str) -> str:
    return HF_PATCHER_PREFIX + ".".join({"output": "lm_head"}.get(s, SEGMENT_BLT_TO_HF.get(s, s)) for s in name.split("."))


def split_hf_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, str]]:
    """HF state -> (bltkit BLT state, patcher state in LMTransformer names, bltkit name -> HF name)."""
    blt, patcher, origin = {}, {}, {}
    for k, v in state.items():
        if k.startswith(HF_PATCHER_PREFIX):
            patcher[hf_patcher_to_lm_name(k[len(HF_PATCHER_PREFIX):])] = v
            continue
        nk = hf_to_blt_name(k)
        blt[nk], origin[nk] = v, k
    return blt, patcher, origin


def blt_state_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {blt_to_hf_name(k): v for k, v in state.items()}


# ---- config: HF -> bltkit -----------------------------------------------------------------------
def rope_theta_of(sub: Any, where: str) -> float:
    """The RoPE theta of an HF sub-config; anything but default RoPE has no bltkit equivalent."""
    rp = getattr(sub, "rope_parameters", None) or {}
    rope_type = rp.get("rope_type", "default")
    if rope_type != "default":
        raise ValueError(f"{where}.rope_parameters.rope_type {rope_type!r} has no bltkit equivalent (plain RoPE only)")
    theta = rp.get("rope_theta", getattr(sub, "rope_theta", None))
    return float(theta if theta is not None else getattr(type(sub), "default_theta", 10000.0))


def _ffn(dim: int, intermediate: int) -> Optional[int]:
    """``ffn_hidden`` only when it differs from the reference rounding (keeps configs readable)."""
    return None if intermediate == ffn_hidden_dim(dim) else int(intermediate)


def _kv(heads: int, kv: Optional[int]) -> Optional[int]:
    return None if kv in (None, heads) else int(kv)


def _hf_stack(sub: Any, name: str, n_kv_heads: Optional[int]) -> StackConfig:
    """An HF sub-config as a bltkit stack with HF's attention: no window, no reset at EOS."""
    return StackConfig(dim=sub.hidden_size, n_layers=sub.num_hidden_layers, n_heads=sub.num_attention_heads,
                       n_kv_heads=n_kv_heads, ffn_hidden=_ffn(sub.hidden_size, sub.intermediate_size),
                       norm_eps=float(sub.rms_norm_eps), rope_theta=rope_theta_of(sub, name), window=None,
                       doc_reset=False)


def hf_config_to_blt(hfc: Any, source: str = "config.json") -> BLTConfig:
    """bltkit ``BLTConfig`` that computes what HF ``BltConfig`` ``hfc`` computes (table above)."""
    enc, dec, glob = hfc.encoder_config, hfc.decoder_config, hfc.global_config
    problems = []
    if hfc.vocab_size != 260 or enc.vocab_size != 260 or dec.vocab_size != 260:
        problems.append(f"vocab_size {hfc.vocab_size} (encoder {enc.vocab_size}, decoder {dec.vocab_size}) must be 260")
    if enc.hidden_size != dec.hidden_size:
        problems.append(f"encoder_config.hidden_size {enc.hidden_size} != decoder_config.hidden_size {dec.hidden_size}")
    if not (hfc.cross_attn_k == enc.cross_attn_k == dec.cross_attn_k):
        problems.append(f"cross_attn_k differs: top level {hfc.cross_attn_k}, encoder {enc.cross_attn_k}, decoder {dec.cross_attn_k}")
    if dec.hidden_size_global != glob.hidden_size:
        problems.append(f"decoder_config.hidden_size_global {dec.hidden_size_global} != global_config.hidden_size {glob.hidden_size}")
    for name, sub in (("encoder_config", enc), ("decoder_config", dec)):
        if sub.num_key_value_heads not in (None, sub.num_attention_heads):
            problems.append(f"{name}.num_key_value_heads {sub.num_key_value_heads} != num_attention_heads "
                            f"{sub.num_attention_heads}: HF's cross-attention would share K/V heads, bltkit's does not")
    if enc.num_attention_heads != dec.num_attention_heads:
        problems.append(f"encoder_config.num_attention_heads {enc.num_attention_heads} != decoder_config's "
                        f"{dec.num_attention_heads}: bltkit has one cross_attn.n_heads for both")
    for name, sub in (("encoder_config", enc), ("decoder_config", dec), ("global_config", glob)):
        act = getattr(sub, "hidden_act", "silu")
        if act != "silu":
            problems.append(f"{name}.hidden_act {act!r}: bltkit's FFN is SwiGLU (silu)")
    if problems:
        raise ValueError(f"{source}: no bltkit equivalent: " + "; ".join(problems))

    k = int(hfc.cross_attn_k)
    return BLTConfig(
        hash=HashEmbeddingConfig(group_sizes=[int(n) for n in hfc.encoder_hash_byte_group_size],
                                 n_functions=int(hfc.encoder_hash_byte_group_nb_functions),
                                 vocab=int(hfc.encoder_hash_byte_group_vocab)),
        encoder=_hf_stack(enc, "encoder_config", n_kv_heads=None),
        global_model=_hf_stack(glob, "global_config", n_kv_heads=_kv(glob.num_attention_heads, glob.num_key_value_heads)),
        decoder=_hf_stack(dec, "decoder_config", n_kv_heads=None),
        cross_attn=CrossAttentionConfig(k=k, n_heads=enc.num_attention_heads,
                                        encoder_all_layers=bool(enc.cross_attn_all_layers),
                                        decoder_all_layers=bool(dec.cross_attn_all_layers),
                                        pooling="max", empty_rows="uniform", repool_each_layer=True),
        attn_impl="auto",  # resolves to SDPA: the uniform empty rows need the dense path
    )


def hf_patcher_settings(hfc: Any, entropy_subdir: Optional[str]) -> dict:
    """Bundle patcher settings that reproduce what HF's forward does without ``patch_lengths``.

    HF patches by entropy only with ``patch_in_forward`` and ``patching_mode: entropy``; otherwise
    every byte is a patch (docs/reference-semantics.md §16.2).
    """
    if hfc.patch_in_forward and hfc.patching_mode == "entropy" and hfc.patch_size is not None:
        # HF thresholds the entropies its patcher computes, unrounded.
        out: dict[str, Any] = {"scheme": "entropy", "threshold": float(hfc.patching_threshold), "entropies_fp16": False}
        if hfc.max_patch_length is not None:
            out["max_patch_length"] = int(hfc.max_patch_length)
        if entropy_subdir:
            out["entropy_model"] = entropy_subdir
        return out
    return {"scheme": "static", "patch_size": 1}


# ---- config: bltkit -> HF -----------------------------------------------------------------------
def hf_blockers(cfg: BLTConfig) -> list[str]:
    """bltkit settings HF cannot hold at all (weights would not fit)."""
    out = []
    for name, stack in (("encoder", cfg.encoder), ("decoder", cfg.decoder)):
        if stack.n_kv_heads not in (None, stack.n_heads):
            out.append(f"{name}.n_kv_heads {stack.n_kv_heads}: HF's {name} cross-attention would share K/V heads "
                       f"with its self-attention, bltkit's cross-attention has {cfg.cross_attn.n_heads} full heads")
    c = cfg.cross_attn
    inner = c.n_heads * (cfg.encoder.dim // c.n_heads)
    for name, stack in (("encoder", cfg.encoder), ("decoder", cfg.decoder)):
        hf_inner = stack.n_heads * (stack.dim // stack.n_heads)
        if hf_inner != inner:
            out.append(f"cross_attn.n_heads {c.n_heads} gives {inner}-wide projections, HF's {name} cross-attention "
                       f"uses its {stack.n_heads} heads ({hf_inner} wide)")
    if cfg.hash.n_tables == 0:
        out.append("hash.n_functions 0 (no hash tables): HF always adds hash embeddings")
    return out


def hf_semantic_changes(cfg: BLTConfig) -> list[str]:
    """What would compute differently in HF (docs/reference-semantics.md §16); empty when logits match."""
    out = []
    for name, stack in (("encoder", cfg.encoder), ("decoder", cfg.decoder)):
        if stack.window is not None:
            out.append(f"{name}.window {stack.window} -> none: HF's local attention has no sliding window")
        if stack.doc_reset:
            out.append(f"{name}.doc_reset true -> false: HF's local attention does not stop at EOS")
    if cfg.global_model.doc_reset:
        out.append("global_model.doc_reset true -> false: HF's global model is causal, it does not reset after "
                   "EOS patches")
    c = cfg.cross_attn
    if c.empty_rows != "uniform":
        out.append(f"cross_attn.empty_rows {c.empty_rows} -> uniform: a patch with no bytes gets the mean of all "
                   f"keys instead of 0 (such rows do not reach the logits for N+1 patch lengths)")
    if c.encoder_all_layers and not c.repool_each_layer and cfg.encoder.n_layers > 1:
        out.append("cross_attn.repool_each_layer false -> true: HF re-pools the patch queries at every encoder "
                   "cross step instead of pooling once")
    if c.pooling != "max":
        out.append(f"cross_attn.pooling {c.pooling} -> max: HF always pools with amax")
    for name, stack in (("encoder", cfg.encoder), ("decoder", cfg.decoder)):
        if c.n_heads != stack.n_heads:
            out.append(f"cross_attn.n_heads {c.n_heads} -> {stack.n_heads} in the {name}: HF's cross-attention "
                       f"uses the {name}'s heads")
    return out


def check_hf_blockers(cfg: BLTConfig) -> None:
    blockers = hf_blockers(cfg)
    if blockers:
        raise ValueError("this bltkit model has no Hugging Face equivalent: " + "; ".join(blockers))


def refuse_semantic_changes(changes: list[str]) -> None:
    """Raise listing every change, when there is any (the caller has no --allow-semantic-change)."""
    if changes:
        raise ValueError("Hugging Face's BLT would compute differently from this model:\n  - "
                         + "\n  - ".join(changes)
                         + "\nconvert with --allow-semantic-change to accept these changes")


def blt_config_to_hf(cfg: BLTConfig, patcher: Optional[dict] = None, patcher_config: Optional[dict] = None,
                     allow_semantic_change: bool = False) -> tuple[Any, list[str]]:
    """(HF ``BltConfig``, semantic changes applied). Refuses when HF cannot hold the model, and
    when it would compute something else unless ``allow_semantic_change``."""
    check_hf_blockers(cfg)
    changes = hf_semantic_changes(cfg)
    if not allow_semantic_change:
        refuse_semantic_changes(changes)
    transformers = require_transformers()
    e, g, d, c = cfg.encoder, cfg.global_model, cfg.decoder, cfg.cross_attn

    def local(stack: StackConfig, all_layers: bool) -> dict:
        return dict(hidden_size=stack.dim, num_hidden_layers=stack.n_layers, num_attention_heads=stack.n_heads,
                    num_key_value_heads=stack.n_heads, intermediate_size=stack.hidden, rms_norm_eps=stack.norm_eps,
                    cross_attn_all_layers=all_layers, cross_attn_k=c.k, hidden_size_global=g.dim,
                    max_position_embeddings=HF_LOCAL_MAX_POSITIONS,
                    rope_parameters={"rope_type": "default", "rope_theta": float(stack.rope_theta)})

    patcher = dict(patcher or {})
    entropy = patcher.get("scheme") == "entropy"
    kwargs: dict[str, Any] = dict(
        vocab_size=cfg.vocab_size,
        patch_in_forward=patcher_config is not None,
        patching_mode="entropy" if entropy else "byte",
        patch_size=4 if entropy else None,
        patching_threshold=float(patcher.get("threshold", 1.335442066192627)),
        max_patch_length=patcher.get("max_patch_length"),
        cross_attn_k=c.k,
        encoder_hash_byte_group_size=list(cfg.hash.group_sizes),
        encoder_hash_byte_group_vocab=cfg.hash.vocab,
        encoder_hash_byte_group_nb_functions=cfg.hash.n_functions,
        encoder_config=local(e, c.encoder_all_layers),
        decoder_config=local(d, c.decoder_all_layers),
        global_config=dict(hidden_size=g.dim, num_hidden_layers=g.n_layers, num_attention_heads=g.n_heads,
                           num_key_value_heads=g.n_kv_heads or g.n_heads, intermediate_size=g.hidden,
                           rms_norm_eps=g.norm_eps, max_position_embeddings=HF_GLOBAL_MAX_POSITIONS,
                           rope_parameters={"rope_type": "default", "rope_theta": float(g.rope_theta)}),
        tie_word_embeddings=False,
        use_cache=False,  # HF's BLT cache serves only the decoder (docs/reference-semantics.md §16.9)
        bos_token_id=1,
        eos_token_id=2,
        # transformers 5.17's DynamicCache reads a top-level num_hidden_layers (the decoder's layers)
        num_hidden_layers=d.n_layers,
    )
    if patcher_config is not None:
        kwargs["patcher_config"] = patcher_config
    hfc = transformers.BltConfig(**kwargs)
    hfc.architectures = ["BltForCausalLM"]
    return hfc, changes


# ---- whole checkpoints --------------------------------------------------------------------------
def read_hf_checkpoint(directory: str | os.PathLike) -> tuple[Any, dict[str, torch.Tensor]]:
    """(``BltConfig``, tensors) of a ``save_pretrained`` directory; nothing is downloaded."""
    from .checkpoint import read_safetensors_dir

    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"Hugging Face model directory not found: {d}")
    if not (d / "config.json").is_file():
        raise FileNotFoundError(f"{d} is not a Hugging Face model directory: config.json is missing")
    transformers = require_transformers()
    try:
        hfc = transformers.AutoConfig.from_pretrained(str(d), local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"cannot read {d / 'config.json'}: {e}") from None
    if getattr(hfc, "model_type", None) != "blt":
        raise ValueError(f"{d / 'config.json'} has model_type {getattr(hfc, 'model_type', None)!r}, expected 'blt'")
    return hfc, read_safetensors_dir(d)


def write_hf_checkpoint(directory: str | os.PathLike, hfc: Any, state: dict[str, torch.Tensor]) -> None:
    """``config.json`` + ``model.safetensors`` as ``BltForCausalLM.from_pretrained`` reads them."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    hfc.save_pretrained(str(d))
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    tmp = d / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, d / "model.safetensors")
