"""A picture of entropy patching: each byte's entropy, the threshold, and the patch boundaries
(the BLT paper's Figure 4 view; docs/reference-semantics.md §4.2). matplotlib is optional (``bltkit[plot]``).

Byte k is drawn at x = k with the entropy of *its own* prediction (the one that decides whether it
starts a patch); a vertical line marks each patch start.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence


def plot_patches(path: str | os.PathLike, entropies: Sequence[float], patch_lengths: Sequence[int],
                 threshold: Optional[float] = None, text: Optional[bytes] = None, relative: bool = False,
                 title: str = "") -> None:
    """Write a PNG to ``path``. ``entropies`` (N,) nats; ``patch_lengths`` sum to N."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("drawing a PNG needs matplotlib: pip install 'bltkit[plot]' (or pip install matplotlib)") from None
    n = len(entropies)
    fig, ax = plt.subplots(figsize=(min(max(6.0, 0.12 * n), 40.0), 3.5))
    ax.plot(range(n), list(entropies), marker=".", lw=1, color="tab:blue", label="entropy of the byte's prediction (nats)")
    if threshold is not None and not relative:
        ax.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    start = 0
    for k, length in enumerate(patch_lengths):
        if k:
            ax.axvline(start - 0.5, color="gray", lw=0.6, alpha=0.7)
        start += int(length)
    if text is not None and n <= 160:
        ax.set_xticks(range(n))
        ax.set_xticklabels([chr(b) if 32 < b < 127 else ("␣" if b == 32 else "·") for b in text[:n]], fontsize=7)
    ax.set_xlabel("byte")
    ax.set_ylabel("nats")
    ax.set_title(title or f"{n} bytes, {len(patch_lengths)} patches")
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=120)
    plt.close(fig)


def plot_text_patches(path: str | os.PathLike, data: bytes, patch_lengths: Sequence[int], entropies: Sequence[float],
                      cfg) -> None:
    """``plot_patches`` of a text's bytes under filled patcher settings ``cfg`` (a ``PatcherConfig``):
    its threshold, drawn when global, and a title naming the scheme, bytes and patches."""
    plot_patches(path, entropies, patch_lengths, cfg.threshold, data, relative=cfg.scheme == "monotonic",
                 title=f"{cfg.scheme} patching: {len(data)} bytes, {len(patch_lengths)} patches")
