"""Batched scoring: the log-probability of every byte of many byte strings, long ones in windows.

``Handle.score``, ``bltkit eval``'s bits per byte and the lm-evaluation-harness model all read
their numbers from ``forward_rows`` and ``score_spans`` here, so a figure is the same whichever
of them reports it.

Rows (BOS + bytes) of different lengths share one forward: each is right-padded with BOE ids up
to the longest, and for a BLT the padding forms one extra patch after the row's own patches.
Every model here is causal (local attention looks back, hash n-grams look back, the global
transformer is causal over patches and a byte is decoded from the patch *before* its own), so
padding after a row changes none of the row's predictions; a row scores the same alone or in any
batch (tested). A BLT row is patched on its own, as the bundle patches the whole string.

Sharing: a row whose input ids are a prefix of another row's input ids needs no forward of its
own, because causal predictions at its positions are the same inside the longer row. Requests
that score several continuations of one context (multiple choice) often share their context and
first continuation byte, and identical requests collapse to one row.

Windows (a text longer than the window):

- ``window`` W (default 4096) bounds BOS + a window's bytes, as ``max_context`` bounds BOS +
  text for ``Handle.score``; ``overlap`` C (default W // 4) is the least context, in bytes,
  that a byte scored by a later window sees besides BOS; 0 <= C <= W - 2.
- A text of n bytes with n + 1 <= W is one window: the whole text, as ``Handle.score`` does.
- Otherwise window 0 reads BOS + bytes [0, W - 1) and scores all of them; window k >= 1 scores
  the next W - 1 - C bytes [a, b) and reads BOS + bytes [a - C, b), so each of its bytes has at
  least C bytes of context before it. The windows lie on this grid from the text's start, so
  every byte is scored exactly once, by one window, whatever span of the text is asked for.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ..data.vocab import BOE_ID, BOS_ID, OFFSET

LN2 = math.log(2)
# The default window: long enough to give a held-out document's bytes a few thousand bytes of
# context, short enough that CPU attention (dense masks, quadratic in the row) stays affordable.
DEFAULT_WINDOW = 4096


@dataclass(frozen=True)
class Window:
    """BOS + bytes [start, end) of a text are read; bytes [first, end) are scored."""

    start: int
    end: int
    first: int


@dataclass
class SpanScore:
    """Scores of bytes [first, n) of one text (``score_spans``)."""

    nats: np.ndarray  # (n - first,) float64, -log p of each byte in nats
    greedy: np.ndarray  # (n - first,) bool

    @property
    def total_nats(self) -> float:
        return float(self.nats.sum())

    @property
    def is_greedy(self) -> bool:
        return bool(self.greedy.all())


def check_window(window: int, overlap: int) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        raise ValueError(f"window must be an integer >= 2 ids (BOS + bytes), got {window!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap <= window - 2:
        raise ValueError(f"overlap must be an integer from 0 to window - 2 = {window - 2} bytes, got {overlap!r}")


def check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")


def resolve_window(handle, window: Optional[int] = None, overlap: Optional[int] = None) -> tuple[int, int]:
    """(window, overlap), checked; by default ``DEFAULT_WINDOW`` (or the handle's smaller
    ``max_context``) and a quarter of the window, so a long text costs 4/3 of one pass."""
    window = min(DEFAULT_WINDOW, handle.max_context) if window is None else window
    if overlap is None and isinstance(window, int):
        overlap = window // 4
    check_window(window, overlap)
    return window, overlap


def plan_windows(n: int, window: int, overlap: int, first: int = 0) -> list[Window]:
    """The windows that score bytes [first, n) of an n-byte text (the rule in the module docstring)."""
    check_window(window, overlap)
    if not 0 <= first < n:
        raise ValueError(f"nothing to score: bytes [{first}, {n}) of a {n}-byte text")
    if n + 1 <= window:
        return [Window(0, n, first)]
    step = window - 1 - overlap
    out, a, b = [], 0, window - 1
    while True:
        if b > first:
            out.append(Window(a - overlap if a else 0, b, max(a, first)))
        if b >= n:
            return out
        a, b = b, min(b + step, n)


@torch.no_grad()
def forward_rows(handle, inputs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, Optional[list[list[int]]]]:
    """Next-byte log-probabilities (B, N, V) fp32, on the handle's device, after each of
    ``inputs`` (id rows, BOS first, any lengths) in one padded forward (see the module
    docstring); and for a BLT each row's patch lengths (row i sums to len(inputs[i]) + 1)."""
    lengths = [len(r) for r in inputs]
    n = max(lengths)
    x = torch.full((len(inputs), n), BOE_ID, dtype=torch.int64)  # (B, N)
    for i, row in enumerate(inputs):
        x[i, : len(row)] = torch.as_tensor(row, dtype=torch.int64)
    dev = handle.device
    if handle.external_patcher is None:  # the model patches itself (or has no patches)
        return torch.log_softmax(handle.model(x.to(dev)).float(), dim=-1), None
    from ..patching.lengths import pad_rows

    rows = handle._patcher()([x[i, :m] for i, m in enumerate(lengths)], include_next_token=True).rows()
    # The padding is one patch after the row's own, so nothing of the row sees it.
    pl = pad_rows([r + ([n - m] if m < n else []) for r, m in zip(rows, lengths)])  # (B, P), rows sum to N + 1
    return torch.log_softmax(handle.model(x.to(dev), pl.to(dev)).float(), dim=-1), rows


def gather_targets(logprobs: torch.Tensor, targets: Sequence[int], at: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(-log p, is-argmax) of ``targets`` at positions ``at``, ``at + 1``, ... of one row (N, V)."""
    y = torch.as_tensor(targets, dtype=torch.int64, device=logprobs.device)  # (m,)
    lp = logprobs[at:at + len(y)]  # (m, V)
    nats = -lp.gather(1, y[:, None])[:, 0]
    return nats.double().cpu().numpy(), (lp.argmax(-1) == y).cpu().numpy()


def score_spans(handle, texts: Sequence[bytes], firsts: Optional[Sequence[int]] = None, window: Optional[int] = None,
                overlap: Optional[int] = None, batch_size: int = 8, progress: bool = False,
                desc: str = "scoring", bar=None) -> list[SpanScore]:
    """Scores of bytes [firsts[i], len(texts[i])) of each text after BOS (all bytes by default).

    Texts longer than ``window`` (``default_window(handle)``) are scored in windows with at
    least ``overlap`` bytes of context (default a quarter of the window; the module docstring
    gives the rule). Rows are sorted by length, longest first, and go ``batch_size`` at a time.
    ``progress`` shows a bar of the bytes read (or ``bar``, a tqdm bar to update, is given).
    """
    check_batch_size(batch_size)
    window, overlap = resolve_window(handle, window, overlap)
    firsts = [0] * len(texts) if firsts is None else list(firsts)
    if len(firsts) != len(texts):
        raise ValueError(f"{len(firsts)} span starts for {len(texts)} texts")
    # A row is keyed by the bytes it reads after BOS (a window's bytes but its last) and serves
    # every (text, window) reading them.
    rows: dict[bytes, list[tuple[int, Window]]] = {}
    for t, (text, first) in enumerate(zip(texts, firsts)):
        if not isinstance(text, (bytes, bytearray)):
            raise ValueError(f"text {t} must be bytes, got {type(text).__name__}")
        if not text:
            raise ValueError(f"text {t} is empty: there is no byte to score")
        for w in plan_windows(len(text), window, overlap, first):
            rows.setdefault(bytes(text[w.start:w.end - 1]), []).append((t, w))
    # A row that is a prefix of another is served by the longer one (it sorts just before it).
    keys = sorted(rows)
    owner = list(range(len(keys)))
    for i in range(len(keys) - 2, -1, -1):
        if keys[i + 1].startswith(keys[i]):
            owner[i] = owner[i + 1]
    served: dict[int, list[tuple[int, Window]]] = {}
    for i, k in enumerate(keys):
        served.setdefault(owner[i], []).extend(rows[k])
    order = sorted(served, key=lambda i: -len(keys[i]))
    nats = [np.zeros(len(t) - f) for t, f in zip(texts, firsts)]
    greedy = [np.zeros(len(t) - f, dtype=bool) for t, f in zip(texts, firsts)]
    own_bar = bar is None
    if own_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(keys[i]) + 1 for i in order), desc=desc, unit="B", unit_scale=True,
                   disable=not progress)
    for at in range(0, len(order), batch_size):
        batch = order[at:at + batch_size]
        logprobs, _ = forward_rows(handle, [[BOS_ID] + [b + OFFSET for b in keys[i]] for i in batch])
        for row, i in enumerate(batch):
            for t, w in served[i]:
                span = slice(w.first - firsts[t], w.end - firsts[t])
                targets = [b + OFFSET for b in texts[t][w.first:w.end]]
                nats[t][span], greedy[t][span] = gather_targets(logprobs[row], targets, at=w.first - w.start)
        bar.update(sum(len(keys[i]) + 1 for i in batch))
    if own_bar:
        bar.close()
    return [SpanScore(a, g) for a, g in zip(nats, greedy)]


__all__ = ["Window", "SpanScore", "LN2", "DEFAULT_WINDOW", "check_window", "check_batch_size", "resolve_window",
           "plan_windows", "forward_rows", "gather_targets", "score_spans"]
