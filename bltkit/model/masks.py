"""The four masks of one BLT forward, built from ids and patch lengths (the rules:
docs/reference-semantics.md §5, §8). Axes: B batch, N bytes, P patches, k cross vectors per patch.

| mask           | queries     | keys        | rule                                                  |
|----------------|-------------|-------------|-------------------------------------------------------|
| local          | bytes N     | bytes N     | causal, ``q - s < window``, same document (EOS ends)    |
| encoder cross  | P*k patch   | bytes N     | ``pid[s] == q // k`` (patch vector sees its own bytes) |
| global         | patches P   | patches P   | causal; block_causal also resets after EOS patches    |
| decoder cross  | bytes N     | P*k patch   | ``dpid[q] == s // k`` (the patch before the target's) |

``form="dense"`` gives boolean tensors for SDPA (the reference path), except the local masks,
which follow ``cfg.local_attention`` (``blocked``: O(N x window), ``bltkit.nn.masks``);
``form="flex"`` gives FlexAttention BlockMasks whose ``mask_mod`` reads the id vectors, so no
(N x P) tensor exists.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..data.vocab import EOS_ID
from ..nn.masks import document_ids, local_causal_mask, local_self_mask
from ..patching.lengths import decoder_patch_ids, patch_ids_from_lengths


@dataclass
class BLTMasks:
    enc_local: Any
    dec_local: Any
    enc_cross: Any
    global_model: Any  # patch-level: causal or block-causal
    dec_cross: Any
    patch_ids: torch.Tensor  # (B, N)
    dec_patch_ids: torch.Tensor  # (B, N)


def patch_document_ids(ids: torch.Tensor, patch_ids: torch.Tensor, n_patches: int) -> torch.Tensor:
    """Document index of each patch, (B, P): the number of earlier patches holding an EOS.

    The reference marks a patch EOS when it contains an EOS byte (``global_tokens``, docs/reference-semantics.md §1)
    and the block-causal mask starts a new block after it (docs/reference-semantics.md §8.3).
    """
    b = ids.shape[0]
    has_eos = torch.zeros(b, n_patches, dtype=torch.int32, device=ids.device)
    has_eos.scatter_reduce_(1, patch_ids, (ids == EOS_ID).to(torch.int32), reduce="amax", include_self=True)
    return torch.cumsum(has_eos, dim=1) - has_eos


def first_true(mask: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (B, width) of each row's first ``width`` True entries of ``mask`` (B, T), in order,
    and which of them exist (the rest point at index 0): the patches that close in a cached step."""
    t = mask.shape[1]
    ar = torch.arange(t, device=mask.device)
    order = torch.sort(torch.where(mask, ar, t + ar), dim=1).values[:, :width]  # True entries first
    ok = order < t
    return torch.where(ok, order, 0), ok


def encoder_cross_mask(pid: torch.Tensor, n_patches: int, k: int) -> torch.Tensor:
    """Dense (B, 1, P*k, N): patch vector q sees the bytes s with ``pid[s] == q // k``. A byte
    whose ``pid`` is outside [0, P) (a cached step's bytes of no patch asked for) is seen by none."""
    qpatch = torch.arange(n_patches * k, device=pid.device) // k  # (P*k,) patch of each query vector
    return (pid[:, None, :] == qpatch[None, :, None])[:, None]


def decoder_cross_mask(dpid: torch.Tensor, n_patches: int, k: int) -> torch.Tensor:
    """Dense (B, 1, N, P*k): byte i sees the k vectors of patch ``dpid[i]``."""
    qpatch = torch.arange(n_patches * k, device=dpid.device) // k
    return (dpid[:, :, None] == qpatch[None, None, :])[:, None]


def build_masks(ids: torch.Tensor, patch_lengths: torch.Tensor, cfg, form: str = "dense") -> BLTMasks:
    n = ids.shape[1]
    p = patch_lengths.shape[1]
    pid = patch_ids_from_lengths(patch_lengths, n)  # (B, N)
    dpid = decoder_patch_ids(patch_lengths, n)  # (B, N)
    pdoc = patch_document_ids(ids, pid, p) if cfg.global_model.doc_reset else None
    return masks_from_patch_ids(ids, pid, dpid, p, cfg, form, pdoc)


def byte_masks(ids: torch.Tensor, cfg, form: str = "dense") -> tuple[Any, Any]:
    """The encoder's and the decoder's local self-attention masks (one object when they agree)."""
    if form not in ("dense", "flex"):
        raise ValueError(f"unknown mask form {form!r}")
    impl = "flex" if form == "flex" else "sdpa"
    doc = document_ids(ids)  # (B, N)
    enc_local = local_self_mask(doc, cfg.encoder.window, cfg.encoder.doc_reset, impl, cfg.local_attention)
    same = (cfg.decoder.window, cfg.decoder.doc_reset) == (cfg.encoder.window, cfg.encoder.doc_reset)
    dec_local = enc_local if same else \
        local_self_mask(doc, cfg.decoder.window, cfg.decoder.doc_reset, impl, cfg.local_attention)
    return enc_local, dec_local


def masks_from_patch_ids(ids: torch.Tensor, pid: torch.Tensor, dpid: torch.Tensor, n_patches: int, cfg,
                         form: str = "dense", pdoc: Optional[torch.Tensor] = None,
                         n_read: Optional[int] = None, local: Optional[tuple[Any, Any]] = None) -> BLTMasks:
    """The masks from each byte's patch ``pid`` (B, N) and the patch its decoder reads ``dpid``
    (B, N). ``pdoc`` (B, P): each patch's document (block-causal global) or None (causal).
    ``n_read``: the decoder's key patches (default ``n_patches``; learned boundaries add a null).
    ``local``: the byte masks ``byte_masks`` already built, if any."""
    b, n = ids.shape
    p, k = n_patches, cfg.cross_attn.k
    n_read = p if n_read is None else n_read
    enc_local, dec_local = local if local is not None else byte_masks(ids, cfg, form)
    if form == "dense":
        ppos = torch.arange(p, device=ids.device)
        enc_cross = encoder_cross_mask(pid, p, k)  # (B, 1, P*k, N)
        dec_cross = decoder_cross_mask(dpid, n_read, k)  # (B, 1, N, P*k)
        zdoc = pdoc if pdoc is not None else torch.zeros(b, p, dtype=torch.int32, device=ids.device)
        glob = local_causal_mask(zdoc, zdoc, ppos, ppos, None, pdoc is not None)  # (B, 1, P, P)
        return BLTMasks(enc_local, dec_local, enc_cross, glob, dec_cross, pid, dpid)
    return _flex_masks(b, n, p, k, pid, dpid, pdoc, enc_local, dec_local, n_read)


def _flex_masks(b, n, p, k, pid, dpid, pdoc, enc_local, dec_local, n_read) -> BLTMasks:
    from torch.nn.attention.flex_attention import create_block_mask

    dev = pid.device

    def enc_cross_mod(bi, h, q, s):
        return pid[bi, s] == q // k

    def dec_cross_mod(bi, h, q, s):
        return dpid[bi, q] == s // k

    if pdoc is not None:
        def global_mod(bi, h, q, s):
            return (s <= q) & (pdoc[bi, q] == pdoc[bi, s])
    else:
        def global_mod(bi, h, q, s):
            return s <= q

    enc_cross = create_block_mask(enc_cross_mod, B=b, H=None, Q_LEN=p * k, KV_LEN=n, device=dev)
    dec_cross = create_block_mask(dec_cross_mod, B=b, H=None, Q_LEN=n, KV_LEN=n_read * k, device=dev)
    glob = create_block_mask(global_mod, B=b, H=None, Q_LEN=p, KV_LEN=p, device=dev)
    return BLTMasks(enc_local, dec_local, enc_cross, glob, dec_cross, pid, dpid)
