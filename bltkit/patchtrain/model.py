"""ByteLM: a plain byte-level LM on BLT's global-transformer backbone (docs/fixed-k.md, arXiv 2407.12665).

    ids (B, N) --tok_embeddings--> (B, N, D)
      [patch phase, K > 1: mean of each K consecutive byte embeddings -> (B, N/K, D)]
      --global_transformer (BLT's GlobalTransformer: same TransformerBlock, RoPE, RMSNorm, init)-->
      --norm, output--> logits (B, T, 260) fp32,  T = N / K

The backbone *is* ``bltkit.model.global_transformer.GlobalTransformer`` (built from the
``ByteLMConfig``, a ``StackConfig`` like the BLT's ``global_model``), not a copy: the same code path initialises it (the rules listed in
``ByteLatentTransformer.init_weights``) and its state-dict keys (``global_transformer.layers.*``) are BLT's, so a
patch-trained ByteLM can initialise a BLT's global transformer (``task.init_global_from``,
``bltkit.training.blt_init``).
RoPE positions count patches in the patch phase and bytes otherwise (no rescaling). With
``doc_reset`` attention is block-causal: a patch (or byte) holding an EOS ends its document (docs/architecture.md, "Masks").
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from .. import config as cfgio
from .. import weights
from ..data.vocab import EOS_ID, check_ids
from ..model.global_transformer import GlobalTransformer
from ..model.masks import patch_document_ids
from ..nn import RMSNorm, trunc_normal_
from ..nn.kv_cache import StackCache
from ..nn.masks import local_causal_mask
from ..nn.rope import rope_angles
from .config import ByteLMConfig


def check_patch_size(patch_size: int, n_bytes: int) -> None:
    """K >= 1 and the row length a multiple of K, else ``ValueError`` naming both."""
    if not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch size K must be an integer >= 1, got {patch_size!r}")
    if n_bytes % patch_size:
        raise ValueError(f"a row of {n_bytes} bytes is not divisible by the patch size K={patch_size}: "
                         f"the patch phase needs rows of K*T bytes")


def patch_documents(ids: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Document index of each patch (B, T): earlier patches holding an EOS (as BLT's global, docs/reference-semantics.md §8.3)."""
    b, n = ids.shape
    pid = (torch.arange(n, device=ids.device) // patch_size).expand(b, n)
    return patch_document_ids(ids, pid, n // patch_size)


class ByteLM(weights.Pretrained, nn.Module):
    config_class = ByteLMConfig  # save_pretrained / from_pretrained: bltkit.weights.Pretrained
    kind_name = "byte LM"

    def __init__(self, config: ByteLMConfig):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.global_transformer = GlobalTransformer(config, input_dim=config.dim)  # no input projection
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    def forward(self, ids: torch.Tensor, patch_size: int = 1, validate: bool = True,
                attn_impl: Optional[str] = None, cache: Optional[StackCache] = None,
                valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits (B, N/K, V) fp32: position i predicts the next patch's bytes (K=1: the next byte).

        With ``cache`` (``new_cache``; K = 1 only), ``ids`` are the next bytes of each row and
        ``valid`` (B, T) marks the real ones, as in ``EntropyModel.forward``.
        """
        if cache is not None:
            if patch_size != 1:
                raise ValueError(f"a cached ByteLM step runs byte by byte (patch size 1), got K={patch_size}")
            valid = torch.ones_like(ids, dtype=torch.bool) if valid is None else valid
            pos, mask = cache.advance(valid, ids == EOS_ID)  # (B, T), (B, 1, T, S)
            rope = rope_angles(pos.clamp(min=0), self.config.head_dim, self.config.rope_theta)
            g = self.global_transformer
            h = g(self.tok_embeddings(ids), rope, mask, cache)
            return self.output(self.norm(h)).float()  # (B, T, V)
        if validate:
            if ids.dim() != 2:
                raise ValueError(f"ids must be (batch, bytes), got shape {tuple(ids.shape)}")
            check_ids(ids)
        b, n = ids.shape
        check_patch_size(patch_size, n)
        t = n // patch_size
        x = self.tok_embeddings(ids)  # (B, N, D)
        if patch_size > 1:
            x = x.view(b, t, patch_size, -1).mean(dim=2)  # (B, T, D): the mean of K byte embeddings
        cfg = self.config
        rope = rope_angles(torch.arange(t, device=ids.device), cfg.head_dim, cfg.rope_theta)
        h = self.global_transformer(x, rope, self._mask(ids, patch_size, attn_impl))  # (B, T, D)
        return self.output(self.norm(h)).float()  # (B, T, V)

    def _mask(self, ids: torch.Tensor, patch_size: int, attn_impl: Optional[str]) -> Any:
        cfg = self.config
        b, n = ids.shape
        t = n // patch_size
        doc = patch_documents(ids, patch_size) if cfg.doc_reset else torch.zeros(b, t, dtype=torch.int32, device=ids.device)
        impl = attn_impl or cfg.attn_impl
        if impl == "auto":
            impl = "flex" if ids.device.type == "cuda" else "sdpa"
        if impl == "flex":
            from ..nn.masks import local_causal_block_mask

            return local_causal_block_mask(doc, None, cfg.doc_reset)
        if impl != "sdpa":
            raise ValueError(f"attn_impl must be 'sdpa', 'flex' or 'auto', got {impl!r}")
        pos = torch.arange(t, device=ids.device)
        return local_causal_mask(doc, doc, pos, pos, None, cfg.doc_reset)  # (B, 1, T, T)

    def new_cache(self, batch: int, max_len: int) -> StackCache:
        """An empty cache for ``batch`` rows of up to ``max_len`` bytes: no window (the global
        backbone's attention), block-causal after EOS with ``doc_reset``."""
        return StackCache(self.global_transformer.layers, batch, max_len, None, self.config.doc_reset)

    @torch.no_grad()
    def init_weights(self, seed: Optional[int] = None) -> None:
        """BLT's init (docs/reference-semantics.md §13): embeddings and head trunc-normal σ = D^-1/2, the backbone by
        ``GlobalTransformer.reset_parameters``, norm 1; deterministic in ``init_seed``, global RNG kept."""
        dev = next(self.parameters()).device
        devices = [dev.index or 0] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=dev.type if dev.type != "cpu" else "cuda"):
            torch.manual_seed(self.config.init_seed if seed is None else seed)
            trunc_normal_(self.tok_embeddings.weight, self.config.dim ** -0.5)
            self.global_transformer.reset_parameters()
            self.norm.reset_parameters()
            trunc_normal_(self.output.weight, self.config.dim ** -0.5)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        skip = {id(self.tok_embeddings.weight)} if exclude_embeddings else set()
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)


__all__ = ["ByteLM", "check_patch_size", "patch_documents"]
