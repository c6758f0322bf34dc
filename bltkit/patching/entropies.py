"""Next-byte entropies of byte rows under a scorer (docs/reference-semantics.md §3: rows scored
independently, entropies rounded as the reference stores them).

``H_t = -Σ_v p_t(v) ln p_t(v)`` over the 260 ids, in **nats**: the uncertainty about byte t+1
given bytes ≤ t. Uniform logits give ln 260 ≈ 5.5607.

How this differs from the reference's ``calculate_entropies``, on purpose:
- **Per row.** The reference flattens the batch, so a row's first bytes see the previous row as
  context. Here every row is scored on its own: a row's entropies never depend on the other rows
  it is batched with (up to float rounding of differently-shaped kernels).
- **Streaming without a context cut.** The reference restarts context every 8192 flattened
  positions. Here a row longer than one chunk is cut into chunks, two ways, both equal to the
  single pass over the whole row (tests/test_entropy_model.py):
  - *carried* (a scorer whose ``new_carry(device)`` gives a carry: bltkit's entropy model on its
    blocked path): each chunk attends to the previous chunk's last ``window - 1`` keys of every
    layer (``bltkit.nn.kv_cache.WindowCarry``), so every position is computed once; the rows
    of a batch go chunk by chunk in lockstep.
  - *overlapping* (any other scorer with ``receptive_field``, and the dense reference mask):
    chunks overlap by the ``receptive_field``; the overlap is context only and its outputs are
    dropped. For a windowed stack that is ``n_layers * (window - 1)``, not ``window - 1``: each
    layer attends ``window - 1`` positions back to states that themselves saw ``window - 1``
    further back (an overlap of ``window - 1`` changes outputs of a 2-layer model by ~0.1 nat).
  RoPE is relative (q·k depends on position differences only), so positions restart in every
  chunk. A scorer without ``receptive_field`` (e.g. full causal attention) is always run on whole
  rows.
- **Precision.** ``precision="auto"`` runs bf16 autocast on CUDA (as the reference's bf16 model)
  and fp32 elsewhere; the entropy itself is computed in fp32 from the logits.

A *scorer* is any ``nn.Module`` mapping ids (B, T) to next-byte logits (B, T, 260). Optional
attributes: ``receptive_field`` (int: how far back an output can depend on the input; enables
streaming), ``max_seqlen`` (a chunk-size hint) and ``new_carry(device)`` (a carry object, or
None, that ``scorer(ids, carry=carry)`` takes chunk after chunk).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import nn

from bltkit.data.vocab import BOE_ID, VOCAB_SIZE
from bltkit.runtime import autocast, autocast_dtype

LN_VOCAB = math.log(VOCAB_SIZE)  # entropy of uniform logits, nats

Rows = Union[torch.Tensor, Sequence[torch.Tensor]]


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats over the last axis, fp32: logits (..., V) -> (...)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def _scorer_device(scorer: nn.Module, fallback: torch.device) -> torch.device:
    for p in scorer.parameters():
        return p.device
    return fallback


def default_chunk_len(scorer: nn.Module, device: torch.device) -> Optional[int]:
    """Chunk length for streaming, or None to run whole rows (no ``receptive_field``).

    A carried chunk (``new_carry``) keeps all its outputs: ``max_seqlen``. An overlapping one keeps
    ``chunk - receptive_field`` outputs, so such chunks are a few receptive fields long.
    Windowed attention (blocked SDPA, or FlexAttention's block-sparse kernel) costs the window,
    so a longer chunk only wastes less overlap: at least ``max_seqlen`` and 4 receptive fields
    (paper model: 14 x 511 = 7154 back, 28616-position chunks, 75% kept). The dense-mask path
    kept for reference (a scorer whose ``config.local_attention`` is ``"dense"``) costs chunk² a
    layer off CUDA: there, a receptive field plus at least 1024 kept positions.
    """
    rf = getattr(scorer, "receptive_field", None)
    if rf is None:
        return None
    rf = int(rf)
    if _carry(scorer, device) is not None:  # nothing recomputed: the chunk is only a batch width
        return int(getattr(scorer, "max_seqlen", 8192))
    dense = getattr(getattr(scorer, "config", None), "local_attention", None) == "dense"
    if dense and device.type != "cuda":
        return rf + max(1024, rf)
    return max(int(getattr(scorer, "max_seqlen", 8192)), 4 * rf)


def _carry(scorer: nn.Module, device: torch.device):
    """The scorer's carry for streaming on ``device`` (module docstring), or None."""
    make = getattr(scorer, "new_carry", None)
    return make(device) if callable(make) else None


def _pieces(length: int, chunk: Optional[int], context: int) -> list[tuple[int, int, int]]:
    """(input start, output start, end) of each chunk of a row of ``length`` positions.

    Chunk k reads positions [input start, end) and keeps outputs [output start, end); every chunk
    reads at most ``chunk`` positions and at least ``context`` positions before its first output
    (or the row start).
    """
    if chunk is None or length <= chunk:
        return [(0, 0, length)]
    stride = chunk - context
    out, a = [], 0
    while a < length:
        s = max(0, a - context)
        e = min(length, s + chunk)
        out.append((s, a, e))
        a = e
    assert stride > 0
    return out


# On a CPU a batch holds at most this many positions (one default chunk of the tiny and paper
# entropy models): beyond it the activations leave the cache, and a 64 KB row scored 16 chunks at a
# time ran at 0.6x the rate of one chunk at a time (docs/benchmarks.md, "Entropy patching").
CPU_BATCH_POSITIONS = 8192

# What a scorer can run in: auto (bf16 autocast on CUDA, fp32 elsewhere: bltkit.runtime), fp32, bf16.
PRECISIONS = ("auto", "fp32", "bf16")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")


def _batches(jobs: list, batch_size: int, max_positions: Optional[int]) -> list[list]:
    """Consecutive groups of ``jobs`` (sorted by width), each of at most ``batch_size`` jobs and,
    when ``max_positions`` is set, at most that many padded positions (a lone wider job alone)."""
    groups: list[list] = []
    for job in jobs:
        width = job[3] - job[1]  # the widest so far: jobs come sorted by width
        last = groups[-1] if groups else None
        if last is not None and len(last) < batch_size and (max_positions is None or width * (len(last) + 1) <= max_positions):
            last.append(job)
        else:
            groups.append([job])
    return groups


@torch.inference_mode()
def compute_entropies(
    scorer: nn.Module,
    rows: Rows,
    *,
    return_logits: bool = False,
    precision: str = "auto",
    chunk_len: Optional[int] = None,
    batch_size: int = 16,
):
    """Entropies (nats, fp32) of every position of ``rows``, and optionally the logits.

    ``rows``: ids (B, T) — every position counts as real — or a list of 1-D id tensors of any
    lengths. Returns entropies in the same form: (B, T), or a list of (T_b,) tensors; with
    ``return_logits`` a pair ``(entropies, logits)`` with logits (B, T, V) / list of (T_b, V).
    Results are on the device of the input rows.

    ``chunk_len`` (default: ``default_chunk_len``) streams rows longer than it in chunks, carried
    or overlapping by the scorer's ``receptive_field`` (module docstring); ``batch_size`` chunks
    go through the scorer at a time (on a CPU, at most ``CPU_BATCH_POSITIONS`` positions a batch).
    """
    check_precision(precision)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    as_tensor = isinstance(rows, torch.Tensor)
    if as_tensor:
        if rows.dim() != 2:
            raise ValueError(f"rows must be ids (batch, positions) or a list of 1-D id tensors, got shape {tuple(rows.shape)}")
        row_list = list(rows.unbind(0))
        out_device = rows.device
    else:
        row_list = [torch.as_tensor(r, dtype=torch.int64) for r in rows]
        for i, r in enumerate(row_list):
            if r.dim() != 1:
                raise ValueError(f"row {i} must be 1-D ids, got shape {tuple(r.shape)}")
        out_device = row_list[0].device if row_list else torch.device("cpu")
    device = _scorer_device(scorer, out_device)
    rf = getattr(scorer, "receptive_field", None)
    chunk = chunk_len if chunk_len is not None else default_chunk_len(scorer, device)
    if chunk_len is not None and chunk_len < 1:
        raise ValueError(f"chunk_len must be >= 1, got {chunk_len}")
    carried = rf is not None and chunk is not None and _carry(scorer, device) is not None
    context = 0 if rf is None or carried else int(rf)
    if rf is None:
        chunk = None  # unbounded reach (full causal attention): only whole rows are exact
    elif chunk is not None and chunk <= context:
        raise ValueError(f"chunk_len {chunk} must exceed the overlap (receptive field) {context}")
    max_positions = CPU_BATCH_POSITIONS if device.type == "cpu" else None

    ent_parts: list[list[tuple[int, torch.Tensor]]] = [[] for _ in row_list]
    logit_parts: list[list[tuple[int, torch.Tensor]]] = [[] for _ in row_list]

    def keep(i: int, a: int, logits: torch.Tensor, ents: torch.Tensor) -> None:
        # outputs of row i from position a on
        ent_parts[i].append((a, ents))
        if return_logits:
            logit_parts[i].append((a, logits))

    amp = autocast_dtype(precision, device)  # auto: bf16 on CUDA, fp32 elsewhere (bltkit.runtime)

    def score(x: torch.Tensor, **kw) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(device, amp):
            logits = scorer(x, **kw)  # (b, C, V)
        logits = logits.float()
        return logits, entropy(logits)  # (b, C, V), (b, C)

    # Rows longer than a chunk stream with a carry when the scorer has one; every other row (and
    # every chunk of an overlapping scorer) is a job (row, input start, output start, end),
    # grouped by length so a batch pads little (right padding with BOE only changes padded
    # positions: attention is causal).
    long = [i for i, r in enumerate(row_list) if carried and int(r.numel()) > chunk]
    streamed = set(long)
    jobs = [(i, s, a, e) for i, r in enumerate(row_list) if i not in streamed
            for (s, a, e) in _pieces(int(r.numel()), chunk, context) if e > s]
    jobs.sort(key=lambda j: j[3] - j[1])
    was_training = scorer.training
    scorer.eval()
    try:
        for group in _batches(jobs, batch_size, max_positions):
            width = max(e - s for _, s, _, e in group)
            x = torch.full((len(group), width), BOE_ID, dtype=torch.int64, device=device)  # (b, C)
            for j, (i, s, a, e) in enumerate(group):
                x[j, : e - s] = row_list[i][s:e].to(device)
            logits, ents = score(x)
            for j, (i, s, a, e) in enumerate(group):
                keep(i, a, logits[j, a - s: e - s], ents[j, a - s: e - s])
        # Long rows in lockstep, at most ``batch_size`` a group (on a CPU at most
        # ``max_positions`` positions a chunk), longest together.
        long.sort(key=lambda i: int(row_list[i].numel()))
        per_group = batch_size if max_positions is None or not long else max(1, min(batch_size, max_positions // chunk))
        for g in range(0, len(long), per_group):
            rows_g = long[g: g + per_group]
            length = max(int(row_list[i].numel()) for i in rows_g)
            carry = _carry(scorer, device)
            for a in range(0, length, chunk):
                e = min(length, a + chunk)
                x = torch.full((len(rows_g), e - a), BOE_ID, dtype=torch.int64, device=device)  # (b, C)
                for j, i in enumerate(rows_g):
                    piece = row_list[i][a:e]
                    x[j, : piece.numel()] = piece.to(device)
                logits, ents = score(x, carry=carry)
                for j, i in enumerate(rows_g):
                    n = max(0, min(e, int(row_list[i].numel())) - a)
                    if n:
                        keep(i, a, logits[j, :n], ents[j, :n])
    finally:
        scorer.train(was_training)

    def assemble(parts, i, tail):
        pieces = [t for _, t in sorted(parts[i], key=lambda p: p[0])]
        if not pieces:
            return torch.zeros((0,) + tail, dtype=torch.float32, device=out_device)
        return torch.cat(pieces).to(out_device)

    ents = [assemble(ent_parts, i, ()) for i in range(len(row_list))]
    logits_out = [assemble(logit_parts, i, (VOCAB_SIZE,)) for i in range(len(row_list))] if return_logits else None
    if as_tensor:
        b, t = rows.shape
        ents_t = torch.stack(ents) if b else torch.zeros(0, t, device=out_device)
        if return_logits:
            logits_t = torch.stack(logits_out) if b else torch.zeros(0, t, VOCAB_SIZE, device=out_device)
            return ents_t, logits_t
        return ents_t
    return (ents, logits_out) if return_logits else ents
