"""The Byte Latent Transformer (Pagnoni et al. 2024, arXiv 2412.09871), read top to bottom.

Axes
  B  batch rows              N  bytes a row (model input)
  P  patches a row           k  cross-attention vectors a patch
  De encoder width           G  global width               Dd decoder width (= De)
  V  vocabulary (260)

Data flow (blt-reference §0):
  ids (B, N) --byte + hash n-gram embeddings--> (B, N, De)
    --local encoder: byte self-attention, then pooling + cross-attention--> patches (B, P*k, De)
    --view (B, P, k*De), global transformer over patches--> (B, P, G)
    --local decoder: byte i cross-attends to patch pid(i+1)-1, self-attention--> logits (B, N, V)

``patch_lengths`` (B, P) follow the reference: the first patch is 1 byte and every row sums to
N + 1, the last patch holding the target of the last byte (§3.6). The model never computes
patch lengths; patchers do (``bltkit.patching``). The loss lives outside (``bltkit.training``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .. import config as cfgio
from ..data.vocab import check_ids
from ..nn.rope import rope_angles
from ..patching.lengths import validate_patch_lengths
from .config import BLTConfig
from .global_transformer import GlobalTransformer
from .hash_embedding import HashNgramEmbedding
from .local_decoder import LocalDecoder
from .local_encoder import LocalEncoder
from .masks import BLTMasks, build_masks

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"


class ByteLatentTransformer(nn.Module):
    def __init__(self, config: BLTConfig):
        super().__init__()
        self.config = config
        self.encoder_hash_tok_embedding = HashNgramEmbedding(config.hash, config.encoder.dim)
        self.local_encoder = LocalEncoder(config)
        self.global_transformer = GlobalTransformer(config)
        self.local_decoder = LocalDecoder(config)
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    # ---- forward --------------------------------------------------------------------------------
    def forward(self, ids: torch.Tensor, patch_lengths: torch.Tensor, validate: bool = True,
                attn_impl: Optional[str] = None) -> torch.Tensor:
        """Next-byte logits (B, N, V) in fp32 for ``ids`` (B, N) split by ``patch_lengths`` (B, P).

        ``validate`` checks ids and patch lengths (it syncs with the host: training loops that
        built their batches with the packer may turn it off). ``attn_impl`` overrides the config.
        """
        if validate:
            self.check_inputs(ids, patch_lengths)
        cfg = self.config
        b, n = ids.shape
        p = patch_lengths.shape[1]
        impl = self.resolve_attn_impl(ids.device, attn_impl)
        masks: BLTMasks = build_masks(ids, patch_lengths, cfg, form="flex" if impl == "flex" else "dense")

        # 1. Byte embeddings: token + sum of hash n-gram rows, unscaled (§4.1).
        x = self.local_encoder.tok_embeddings(ids) + self.encoder_hash_tok_embedding(ids)  # (B, N, De)

        # 2. Local encoder -> byte states and k vectors a patch.
        byte_pos = torch.arange(n, device=ids.device)
        rope_enc = rope_angles(byte_pos, cfg.encoder.head_dim, cfg.encoder.rope_theta)
        h, patches = self.local_encoder(x, rope_enc, masks.enc_local, masks.enc_cross, masks.patch_ids, p)
        # h (B, N, De); patches (B, P*k, De)

        # 3. Global transformer over patches: the k vectors of a patch side by side (pitfall 6).
        g_in = patches.reshape(b, p, cfg.global_input_dim)  # (B, P, k*De)
        rope_glob = rope_angles(torch.arange(p, device=ids.device), cfg.global_.head_dim, cfg.global_.rope_theta)
        g = self.global_transformer(g_in, rope_glob, masks.global_)  # (B, P, G)

        # 4. Local decoder: encoder byte states + projected patch states -> logits.
        rope_dec = rope_enc if cfg.decoder.head_dim == cfg.encoder.head_dim and cfg.decoder.rope_theta == cfg.encoder.rope_theta \
            else rope_angles(byte_pos, cfg.decoder.head_dim, cfg.decoder.rope_theta)
        dec_patches = self.local_decoder.project_patches(g)  # (B, P*k, Dd)
        return self.local_decoder(h, dec_patches, rope_dec, masks.dec_local, masks.dec_cross)  # (B, N, V)

    def resolve_attn_impl(self, device: torch.device, override: Optional[str] = None) -> str:
        impl = override or self.config.attn_impl
        if impl == "auto":
            impl = "flex" if device.type == "cuda" and self.config.cross_attn.empty_rows == "zero" else "sdpa"
        if impl not in ("sdpa", "flex"):
            raise ValueError(f"attn_impl must be 'sdpa', 'flex' or 'auto', got {impl!r}")
        return impl

    def check_inputs(self, ids: torch.Tensor, patch_lengths: torch.Tensor) -> None:
        """Clear errors for the mistakes a caller makes (bad ids, shapes, patch sums)."""
        if ids.dim() != 2:
            raise ValueError(f"ids must be (batch, bytes), got shape {tuple(ids.shape)}")
        if patch_lengths.dim() != 2 or patch_lengths.shape[0] != ids.shape[0]:
            raise ValueError(
                f"batch dimensions disagree: ids {tuple(ids.shape)} vs patch_lengths {tuple(patch_lengths.shape)}"
            )
        check_ids(ids)
        validate_patch_lengths(patch_lengths, ids.shape[1], extra=1, first_one=True)

    # ---- parameters -----------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self, seed: Optional[int] = None) -> None:
        """Set every initial value (blt-reference pitfall 23), deterministic in ``config.init_seed``:

        - byte and hash embeddings: trunc-normal ±3σ, σ = De^-1/2
        - wq, wk, wv, wo, w1, w3 (self and cross): σ = (layer width)^-1/2; w2: σ = hidden^-1/2
        - patch and global projections: σ = (input width)^-1/2; output head σ = Dd^-1/2
        - norm weights 1
        The global RNG is left as it was.
        """
        dev = next(self.parameters()).device
        devices = [dev.index or 0] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=dev.type if dev.type != "cpu" else "cuda"):
            torch.manual_seed(self.config.init_seed if seed is None else seed)
            self.encoder_hash_tok_embedding.reset_parameters()
            self.local_encoder.reset_parameters()
            self.global_transformer.reset_parameters()
            self.local_decoder.reset_parameters()

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameter count; ``exclude_embeddings`` drops the byte and hash embedding tables."""
        skip = {id(self.encoder_hash_tok_embedding.weight), id(self.local_encoder.tok_embeddings.weight)} if exclude_embeddings else set()
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)

    # ---- persistence ----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """``config.yaml`` + ``model.safetensors``, each written to a temporary name and renamed."""
        save_config_and_weights(self, blt_config_to_dict(self.config), directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device | None = None,
                        dtype: Optional[torch.dtype] = None) -> "ByteLatentTransformer":
        d = Path(directory)
        cfg = load_blt_config(d / CONFIG_FILE)
        with torch.device("meta"):
            model = cls(cfg)
        load_weights_into(model, d / WEIGHTS_FILE, device=device, dtype=dtype)
        return model


# ---- config I/O: YAML writes ``global`` (``global_`` in Python, a keyword clash) ----------------
def blt_config_from_dict(data: dict, source: Optional[str] = None) -> BLTConfig:
    data = dict(data)
    if "global" in data:
        if "global_" in data:
            raise cfgio.ConfigError(f"both 'global' and 'global_' given{' in ' + source if source else ''}")
        data["global_"] = data.pop("global")
    try:
        return cfgio.from_dict(BLTConfig, data, source=source)
    except cfgio.ConfigError as e:
        raise cfgio.ConfigError(str(e).replace("'global_", "'global")) from None


def blt_config_to_dict(cfg: BLTConfig) -> dict:
    d = cfgio.to_dict(cfg)
    return {("global" if k == "global_" else k): v for k, v in d.items()}


def load_blt_config(path: str | os.PathLike, overrides: Optional[list[str]] = None) -> BLTConfig:
    """A model config from a YAML file or a shipped name (``tiny``, ``bench-s``, ``400m``, ``1b``)."""
    data, p = cfgio.read_config(path, "model", overrides)
    return blt_config_from_dict(data, source=str(p))


# ---- weights I/O shared by every bltkit model ---------------------------------------------------
def save_config_and_weights(model: nn.Module, config_dict: dict, directory: str | os.PathLike) -> None:
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfgio.write_yaml(config_dict, d / CONFIG_FILE)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = d / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, d / WEIGHTS_FILE)


def load_weights_into(model: nn.Module, path: str | os.PathLike, device=None, dtype=None) -> None:
    """Load safetensors weights into ``model`` (possibly on the meta device), checking every tensor.

    Missing, unexpected or mis-shaped tensors raise ``ValueError`` naming them and the file; a file
    that is not safetensors raises naming the file. Nothing is unpickled.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file not found: {p}")
    try:
        state = load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{p} is not a readable safetensors file: {e}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{p}: missing tensors {missing[:8]}{'...' if len(missing) > 8 else ''}; "
                         f"unexpected tensors {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(f"{p}: tensor {k} has shape {tuple(state[k].shape)}, the config expects {tuple(v.shape)}")
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    if device is not None:
        state = {k: v.to(device) for k, v in state.items()}
    model.load_state_dict(state, assign=True)
