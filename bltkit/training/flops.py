"""Analytic FLOPs, the BLT paper's convention (docs/measurement.md §2; BLT paper §4.5, appendix).

- a matrix multiply costs 2 FLOPs per multiply-add; training = 3 x forward (backward = 2 x);
- embedding look-ups (byte and hash n-gram tables) cost 0; the output head counts;
- attention scores and values cost ``4 * heads * head_dim`` a (query, key) pair, counted with the
  keys each query really sees: the local window cut at documents for byte layers (docs/reference-semantics.md §8.1), the
  patch prefix (cut at EOS patches when block-causal, docs/reference-semantics.md §8.3) for the global model, the patch's own
  bytes for encoder cross-attention and the k vectors of one patch for decoder cross-attention;
- the global model's cost is counted per real (non-empty) patch, so its FLOPs per byte are its
  FLOPs per patch over the mean patch length;
- norms, RoPE, softmax and activations are not counted (they are not matrix multiplies);
- learned boundaries (``boundaries: learned``) add the router's two De x De projections a byte,
  and count the patches the router chose (their lengths from ``lengths_from_boundaries``); the
  EMA over patches is elementwise, not counted.

Axes: B rows, N bytes a row, P patches a row.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..data.vocab import EOS_ID
from ..nn.masks import document_ids


def block_linear_flops(dim: int, n_heads: int, n_kv_heads: Optional[int], head_dim: int, hidden: int) -> int:
    """Forward FLOPs of one token through a block's projections and SwiGLU (no attention products)."""
    kv = n_kv_heads or n_heads
    qo = 2 * 2 * dim * n_heads * head_dim  # wq, wo
    kvp = 2 * 2 * dim * kv * head_dim  # wk, wv
    ffn = 2 * 3 * dim * hidden  # w1, w3, w2
    return qo + kvp + ffn


def attention_pair_flops(n_heads: int, head_dim: int) -> int:
    """Forward FLOPs of one (query, key) pair: a score and a value product over every head."""
    return 4 * n_heads * head_dim


def _run_starts(groups: torch.Tensor) -> torch.Tensor:
    """Index of the first position of each position's run of equal ``groups`` values, (B, T)."""
    b, t = groups.shape
    idx = torch.arange(t, device=groups.device).expand(b, t)
    start = torch.ones_like(groups, dtype=torch.bool)
    start[:, 1:] = groups[:, 1:] != groups[:, :-1]
    return torch.where(start, idx, torch.zeros_like(idx)).cummax(dim=1).values


def local_pairs(ids: torch.Tensor, window: Optional[int], doc_reset: bool) -> int:
    """(query, key) pairs of local block-causal attention over ``ids`` (B, N)."""
    b, n = ids.shape
    pos = torch.arange(n, device=ids.device).expand(b, n)
    start = _run_starts(document_ids(ids, EOS_ID)) if doc_reset else torch.zeros_like(pos)
    ctx = pos - start + 1
    if window is not None:
        ctx = ctx.clamp(max=window)
    return int(ctx.sum())


def causal_pairs(lengths: torch.Tensor, groups: Optional[torch.Tensor] = None) -> int:
    """(query, key) pairs of causal attention over the first ``lengths[b]`` positions of each row;
    ``groups`` (B, T) restarts the prefix where its value changes (block-causal)."""
    total = 0
    for b, n in enumerate(lengths.tolist()):
        if n <= 0:
            continue
        if groups is None:
            total += n * (n + 1) // 2
        else:
            g = groups[b, :n][None]
            pos = torch.arange(n, device=g.device)[None]
            total += int((pos - _run_starts(g) + 1).sum())
    return total


def stack_flops(n_tokens: int, pairs: int, dim: int, n_layers: int, n_heads: int, n_kv_heads: Optional[int],
                head_dim: int, hidden: int) -> int:
    """Forward FLOPs of ``n_layers`` blocks over ``n_tokens`` tokens with ``pairs`` attention pairs a layer."""
    per_layer = n_tokens * block_linear_flops(dim, n_heads, n_kv_heads, head_dim, hidden)
    per_layer += pairs * attention_pair_flops(n_heads, head_dim)
    return n_layers * per_layer


def blt_forward_flops(cfg, ids: torch.Tensor, patch_lengths: torch.Tensor, attention: bool = True) -> dict[str, int]:
    """Forward FLOPs of one BLT batch by component: encoder, global, decoder (head included).

    ``attention=False`` leaves out the score and value products (only the linear layers remain).
    """
    a = 1 if attention else 0
    from ..model.masks import patch_document_ids
    from ..patching.lengths import patch_ids_from_lengths

    ids = ids.detach().cpu()
    pl = patch_lengths.detach().cpu()
    b, n = ids.shape
    n_bytes = b * n
    e, g, d, c = cfg.encoder, cfg.global_model, cfg.decoder, cfg.cross_attn
    k = c.k
    real_patches = (pl > 0).sum(dim=1)  # (B,)
    n_patches = int(real_patches.sum())

    # Encoder: byte layers, patch projection (De -> k*De), cross steps with P*k queries.
    enc = stack_flops(n_bytes, a * local_pairs(ids, e.window, e.doc_reset), e.dim, e.n_layers, e.n_heads,
                      e.n_kv_heads, e.head_dim, e.hidden)
    enc += n_patches * 2 * e.dim * e.dim * k
    inner_e = c.n_heads * (e.dim // c.n_heads)
    # queries: wq + wo on P*k vectors; keys/values: wk + wv on N bytes; each query vector sees its patch's bytes.
    cross_e = n_patches * k * 2 * 2 * e.dim * inner_e + n_bytes * 2 * 2 * e.dim * inner_e
    cross_e += a * k * n_bytes * 4 * inner_e
    enc += cfg.n_encoder_cross * cross_e
    if cfg.boundaries == "learned":  # the router: q_proj and k_proj (De x De) on every byte
        enc += n_bytes * 2 * 2 * e.dim * e.dim

    # Global: optional input projection, layers over real patches with the (block-)causal prefix.
    glob = n_patches * 2 * cfg.global_input_dim * g.dim if cfg.global_projection else 0
    groups = None
    if g.doc_reset:
        groups = patch_document_ids(ids, patch_ids_from_lengths(pl, n), pl.shape[1])
    glob += stack_flops(n_patches, a * causal_pairs(real_patches, groups), g.dim, g.n_layers, g.n_heads,
                        g.n_kv_heads, g.head_dim, g.hidden)

    # Decoder: patch projection (G -> k*Dd), cross steps (bytes query k vectors of one patch), layers, head.
    dec = n_patches * 2 * g.dim * d.dim * k
    inner_d = c.n_heads * (d.dim // c.n_heads)
    cross_d = n_bytes * 2 * 2 * d.dim * inner_d + n_patches * k * 2 * 2 * d.dim * inner_d + a * n_bytes * k * 4 * inner_d
    dec += cfg.n_decoder_cross * cross_d
    dec += stack_flops(n_bytes, a * local_pairs(ids, d.window, d.doc_reset), d.dim, d.n_layers, d.n_heads,
                       d.n_kv_heads, d.head_dim, d.hidden)
    dec += n_bytes * 2 * d.dim * cfg.vocab_size
    return {"encoder": enc, "global": glob, "decoder": dec}


def lm_forward_flops(ids: torch.Tensor, dim: int, n_layers: int, n_heads: int, n_kv_heads: Optional[int],
                     head_dim: int, hidden: int, vocab: int, window: Optional[int], doc_reset: bool,
                     n_positions: Optional[int] = None) -> int:
    """Forward FLOPs of a plain byte LM (the entropy model, a byte-level baseline) over ``ids`` (B, T):
    blocks with local block-causal attention, then the output head (embedding look-up free)."""
    ids = ids.detach().cpu()
    n_tok = ids.numel() if n_positions is None else n_positions
    pairs = local_pairs(ids, window, doc_reset)
    return stack_flops(n_tok, pairs, dim, n_layers, n_heads, n_kv_heads, head_dim, hidden) + n_tok * 2 * dim * vocab


def training_flops(forward: int) -> int:
    """Forward + backward: 3 x forward (docs/measurement.md §2)."""
    return 3 * forward


def blt_flops_per_byte(cfg, mean_patch_length: float, context_bytes: int) -> dict[str, float]:
    """Analytic forward FLOPs per byte at a steady state: every byte sees ``min(window, context)``
    local keys (averaged over a context of ``context_bytes``), the global model sees the patch
    prefix of a ``context_bytes / mean_patch_length``-patch row. For planning and plots."""
    n = context_bytes
    ids = torch.full((1, n), 5, dtype=torch.int64)
    p = max(1, round(n / mean_patch_length))
    base, rem = divmod(n + 1 - 1, p)
    lengths = [1] + [base + (1 if i < rem else 0) for i in range(p)]
    pl = torch.tensor([[x for x in lengths if x > 0]], dtype=torch.int64)
    parts = blt_forward_flops(cfg, ids, pl)
    out = {name: v / n for name, v in parts.items()}
    out["total"] = sum(out.values())
    return out


def hnet_forward_flops(cfg, ids: torch.Tensor, boundary: torch.Tensor) -> dict[str, int]:
    """Forward FLOPs of one H-Net batch (``bltkit.model.hnet``; docs/hnet.md) by component, with
    the chunks the router chose (``boundary`` (B, N) bool: byte t opens a chunk).

    - encoder and decoder: byte blocks with the local window cut at documents, as a BLT's local
      models; the head (D0 x V) counts with the decoder;
    - chunking: the router's two D0 x D0 projections and the residual projection per byte
      (6 D0^2 a byte), and the smoothing's two multiply-adds a channel per chunk (4 D0 a chunk);
    - main: the blocks over the real chunks only, with the (block-)causal chunk prefix, as the
      BLT's global model over patches (the padding slots of a batch are not counted).
    """
    ids = ids.detach().cpu()
    bnd = boundary.detach().cpu()
    b, n = ids.shape
    n_bytes = b * n
    e, m, d = cfg.encoder, cfg.main, cfg.decoder
    counts = bnd.sum(dim=1)  # (B,) chunks a row
    n_chunks = int(counts.sum())
    enc = stack_flops(n_bytes, local_pairs(ids, e.window, e.doc_reset), e.dim, e.n_layers, e.n_heads,
                      e.n_kv_heads, e.head_dim, e.hidden)
    chunking = n_bytes * 3 * 2 * e.dim * e.dim + n_chunks * 4 * e.dim
    groups = None
    if m.doc_reset:  # each chunk's document: that of its first byte
        doc = document_ids(ids, EOS_ID)
        m_max = max(1, int(counts.max()))
        groups = torch.zeros(b, m_max, dtype=doc.dtype)
        for r in range(b):
            groups[r, : int(counts[r])] = doc[r][bnd[r]]
    main = stack_flops(n_chunks, causal_pairs(counts, groups), m.dim, m.n_layers, m.n_heads, m.n_kv_heads,
                       m.head_dim, m.hidden)
    dec = stack_flops(n_bytes, local_pairs(ids, d.window, d.doc_reset), d.dim, d.n_layers, d.n_heads,
                      d.n_kv_heads, d.head_dim, d.hidden)
    dec += n_bytes * 2 * d.dim * cfg.vocab_size
    return {"encoder": enc, "chunking": chunking, "main": main, "decoder": dec}


def even_boundaries(valid: torch.Tensor, bytes_per_chunk: float) -> torch.Tensor:
    """(B, N) bool: chunks ``bytes_per_chunk`` bytes apart over each row's real bytes (``valid``
    (B, N) bool), the first real byte opening one: the steady state at which a model that
    chooses its own boundaries is planned (``Task.planning_flops_per_batch``)."""
    pos = valid.long().cumsum(dim=1) - 1  # each real byte's index among its row's real bytes
    r = float(bytes_per_chunk)
    return valid & (torch.floor(pos / r) != torch.floor((pos - 1) / r))


def hnet_flops_per_byte(cfg, bytes_per_chunk: float, context_bytes: int) -> dict[str, float]:
    """Analytic forward FLOPs per byte of an H-Net at a steady state: a row of ``context_bytes``
    bytes in one document whose chunks are ``bytes_per_chunk`` long, evenly spaced. For planning
    (sizing a config to a budget) and plots, like ``blt_flops_per_byte``."""
    n = context_bytes
    ids = torch.full((1, n), 5, dtype=torch.int64)
    k = max(1, round(n / bytes_per_chunk))
    bnd = torch.zeros(1, n, dtype=torch.bool)
    bnd[0, torch.linspace(0, n, k + 1)[:-1].long()] = True
    parts = hnet_forward_flops(cfg, ids, bnd)
    out = {name: v / n for name, v in parts.items()}
    out["total"] = sum(out.values())
    return out
