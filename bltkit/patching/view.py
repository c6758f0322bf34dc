"""Text split into patches, as a person reads it: the rule, the patches between bars, and each
patch's bytes with the entropy of each byte's prediction (docs/patching.md).

``bltkit patch`` prints it (``learned_view`` for an H-Net's learned chunks) and ``bltkit demo`` shows it; both pass the text's own bytes (BOS's
1-byte patch left out, so the lengths sum to the number of bytes) and the entropy of byte k's
prediction (from BOS and bytes < k) for every byte k.
"""
from __future__ import annotations

from typing import Optional, Sequence

from .config import PatcherConfig


def shown(b: bytes) -> str:
    """Bytes as printable text: invalid UTF-8 as backslash escapes, newlines and tabs escaped."""
    return b.decode("utf-8", errors="backslashreplace").replace("\n", "\\n").replace("\t", "\\t")


def describe_rule(cfg: PatcherConfig) -> str:
    """The rule of filled settings ``cfg`` in words: ``global threshold 1.3, max patch length 16``."""
    rule = {"entropy": f"global threshold {cfg.threshold}", "monotonic": f"relative threshold {cfg.threshold}",
            "static": f"K = {cfg.patch_size}", "space": "SpaceByte rule", "byte": "one patch a byte",
            "learned": f"the BLT's router, target {cfg.target_ratio} bytes a patch"}[cfg.scheme]
    if cfg.threshold_add is not None:
        rule += f" + relative {cfg.threshold_add}"
    if cfg.max_patch_length:
        rule += f", max patch length {cfg.max_patch_length}"
    return rule


def split(data: bytes, lengths: Sequence[int]) -> list[bytes]:
    """``data`` cut into consecutive pieces of ``lengths`` (which sum to ``len(data)``)."""
    if sum(lengths) != len(data):
        raise ValueError(f"patch lengths sum to {sum(lengths)}, the text has {len(data)} bytes")
    pieces, start = [], 0
    for length in lengths:
        pieces.append(data[start:start + length])
        start += length
    return pieces


def text_view(data: bytes, lengths: Sequence[int], entropies: Optional[Sequence[float]], cfg: PatcherConfig) -> str:
    """The view of ``data`` split by ``lengths`` under settings ``cfg`` (see the module docstring);
    the per-patch entropy table only when ``entropies`` (one a byte) are given."""
    n = len(data)
    pieces = split(data, lengths)
    mean = n / len(lengths) if lengths else 0.0
    out = [f"{cfg.scheme} ({describe_rule(cfg)}): {n} bytes in {len(lengths)} patches, mean {mean:.2f} bytes a patch",
           "|" + "|".join(shown(p) for p in pieces) + "|"]
    if entropies is not None:
        if len(entropies) != n:
            raise ValueError(f"{len(entropies)} entropies for a text of {n} bytes")
        out.append(f"{'patch':>5} {'bytes':>5}  {'max H':>6}  text / entropy of each byte's prediction (nats)")
        out += _per_piece(lengths, pieces, entropies, with_max=True)
    return "\n".join(out)


def _per_piece(lengths: Sequence[int], pieces: list[bytes], values: Sequence[float], with_max: bool) -> list[str]:
    """One line a patch or chunk: its index, length, (the largest value,) text and each byte's value."""
    lines, start = [], 0
    for k, (length, p) in enumerate(zip(lengths, pieces)):
        seg = [float(v) for v in values[start:start + length]]
        top = f"{max(seg):6.3f}  " if with_max else ""
        lines.append(f"{k:>5} {length:>5}  {top}{shown(p)!s:<16} " + " ".join(f"{v:.2f}" for v in seg))
        start += length
    return lines


def learned_view(data: bytes, lengths: Sequence[int], probs: Sequence[float], unit: str = "chunk") -> str:
    """The view of ``data`` split into the chunks an H-Net's router chose (docs/hnet.md), or the
    patches of a BLT with learned boundaries (``unit="patch"``, docs/patching.md), with each
    byte's boundary probability p (one opens where p > 0.5)."""
    n = len(data)
    pieces = split(data, lengths)
    if len(probs) != n:
        raise ValueError(f"{len(probs)} boundary probabilities for a text of {n} bytes")
    mean = n / len(lengths) if lengths else 0.0
    who = "H-Net router" if unit == "chunk" else "the BLT's router"
    units = {"chunk": "chunks", "patch": "patches"}[unit]
    out = [f"learned ({who}): {n} bytes in {len(lengths)} {units}, mean {mean:.2f} bytes a {unit}",
           "|" + "|".join(shown(p) for p in pieces) + "|",
           f"{unit:>5} {'bytes':>5}  text / boundary probability p of each byte"]
    return "\n".join(out + _per_piece(lengths, pieces, probs, with_max=False))


__all__ = ["text_view", "learned_view", "describe_rule", "shown", "split"]
