"""Threshold calibration: the entropy threshold that gives a target mean patch length on a sample
of data (BLT paper §2.3, §4: patch size 4.5 by entropy; docs/reference-semantics.md §4.2).

The threshold of an entropy model is not portable (the reference's 1.3354 nats belongs to its
100M model), so it is fitted to data: documents are read as in training (BOS + bytes + EOS),
their entropies computed once, and the threshold searched over them. The mean patch length is
measured exactly as the patcher produces it for training documents (include_next_token=False):
``Σ document ids / Σ patches``, BOS and EOS included, after ``max_patch_length`` splitting.

Search: the number of patches never grows when the threshold rises (each start bit is ``x > θ``
for a fixed x; splitting long patches keeps that order), and it only changes at a value that some
comparison sees. So the search is a bisection over the sorted candidate values (the entropies, or
for the relative rule the entropy rises): about 20 counts for a million bytes, each one pass of the
vectorised rule (``bltkit.patching.boundaries``), and the result is the best achievable threshold,
not an approximation of it. Entropies are computed like the patcher does (fp32 on CPU, bf16
autocast on CUDA); a boundary within rounding of θ may flip under other precision (docs/reference-semantics.md §3).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from bltkit.data.vocab import encode_tensor
from bltkit.patching.boundaries import lengths_from_starts, split_long, start_mask
from bltkit.patching.config import (CalibrationRecord, PatcherConfig, check_threshold, load_patcher_settings,
                                    save_patcher_settings)

__all__ = ["CalibrationResult", "calibrate_threshold", "calibrate_directory", "sample_documents", "document_entropies",
           "load_patcher_settings", "histogram_text", "length_histogram"]


@dataclass
class CalibrationResult:
    threshold: float
    achieved_mean: float
    target_mean: float
    patches: int
    ids: int  # Σ document ids (bytes + BOS + EOS)
    documents: int
    histogram: dict[int, int]  # patch length -> count


def sample_documents(paths: Sequence[str], sample_bytes: Optional[int]) -> list[bytes]:
    """Documents of ``paths`` in order until ``sample_bytes`` bytes are read, the last one cut to
    fit (the data helper's ``iter_documents``; missing paths raise ``FileNotFoundError`` naming them)."""
    from bltkit.data.sources import check_byte_limit, iter_documents

    check_byte_limit(sample_bytes, "sample_bytes")
    docs = list(iter_documents(list(paths), limit_bytes=sample_bytes))
    if not any(docs):
        raise ValueError(f"no bytes to calibrate on in {list(paths)}")
    return docs


def _count(flat: torch.Tensor, lengths: torch.Tensor, scheme: str, threshold: float, threshold_add: Optional[float],
           max_patch_length: Optional[int]) -> tuple[int, torch.Tensor, torch.Tensor]:
    row, _, start = start_mask(scheme, lengths, 0, scores=flat, threshold=threshold, threshold_add=threshold_add)
    if max_patch_length is not None:
        start = split_long(start, max_patch_length)
    return int(start.sum()), start, row


def length_histogram(patch_lengths: torch.Tensor) -> dict[int, int]:
    """Patch length -> count over the non-zero entries of ``patch_lengths``."""
    v = patch_lengths[patch_lengths > 0]
    counts = torch.bincount(v)
    return {int(k): int(c) for k, c in enumerate(counts.tolist()) if c}


def histogram_text(hist: dict[int, int], width: int = 40, cap: int = 16) -> str:
    """A text bar chart of patch lengths, lengths above ``cap`` pooled."""
    pooled: dict[str, int] = {}
    for k in sorted(hist):
        key = str(k) if k <= cap else f">{cap}"
        pooled[key] = pooled.get(key, 0) + hist[k]
    total = max(1, sum(pooled.values()))
    top = max(pooled.values(), default=1)
    lines = []
    for key, c in pooled.items():
        bar = "#" * max(1 if c else 0, round(width * c / top))
        lines.append(f"{key:>4} {c:>9} {100 * c / total:5.1f}% {bar}")
    return "\n".join(lines)


def calibrate_threshold(entropies: Sequence[torch.Tensor], target_mean: float, monotonic: bool = False,
                        threshold_add: Optional[float] = None, max_patch_length: Optional[int] = None,
                        entropies_fp16: bool = True) -> CalibrationResult:
    """The threshold whose mean patch length over documents with these per-id ``entropies`` is
    closest to ``target_mean`` (global θ ≥ 0, or relative θ with ``monotonic``). With
    ``entropies_fp16`` the entropies are rounded to float16 first, as the patcher then rounds them."""
    if not (isinstance(target_mean, (int, float)) and math.isfinite(target_mean) and target_mean >= 1):
        raise ValueError(f"target mean patch length must be a finite number >= 1, got {target_mean!r}")
    if max_patch_length is not None and max_patch_length < 1:
        raise ValueError(f"max_patch_length must be >= 1, got {max_patch_length}")
    if monotonic and threshold_add is not None:
        raise ValueError("threshold_add (global + monotonic) calibrates the global threshold; do not combine it with monotonic")
    if threshold_add is not None:
        check_threshold(threshold_add, relative=True, name="threshold_add")
    rows = [e.reshape(-1).float().cpu() for e in entropies if e.numel() > 0]
    if not rows:
        raise ValueError("no documents to calibrate on")
    lengths = torch.tensor([r.numel() for r in rows], dtype=torch.int64)
    flat = torch.cat(rows)
    if not bool(torch.isfinite(flat).all()):
        raise ValueError("entropies hold NaN or infinite values")
    if entropies_fp16:
        flat = flat.half().float()
    scheme = "monotonic" if monotonic else "entropy"
    n_ids = int(lengths.sum())
    if monotonic:
        stat = flat[1:] - flat[:-1]
        cands = torch.unique(torch.cat([stat, stat.min(0, keepdim=True).values - 1.0 if stat.numel() else torch.zeros(1)]))
    else:
        cands = torch.unique(torch.cat([flat.clamp(min=0.0), torch.zeros(1)]))
    want = n_ids / target_mean  # patches at the target
    lo, hi = 0, cands.numel() - 1  # patches(cands[lo]) >= patches(cands[hi])
    counts: dict[int, int] = {}

    def patches(k: int) -> int:
        if k not in counts:
            counts[k] = _count(flat, lengths, scheme, float(cands[k]), threshold_add, max_patch_length)[0]
        return counts[k]

    if patches(lo) <= want:
        best = lo
    elif patches(hi) >= want:
        best = hi
    else:
        while hi - lo > 1:  # invariant: patches(lo) > want > ... >= patches(hi)
            mid = (lo + hi) // 2
            if patches(mid) > want:
                lo = mid
            else:
                hi = mid
        best = min((lo, hi), key=lambda k: abs(n_ids / patches(k) - target_mean))
    theta = float(cands[best])
    n_p, start, row = _count(flat, lengths, scheme, theta, threshold_add, max_patch_length)
    pl = lengths_from_starts(start, row, len(rows))
    return CalibrationResult(threshold=theta, achieved_mean=n_ids / n_p, target_mean=float(target_mean), patches=n_p,
                             ids=n_ids, documents=len(rows), histogram=length_histogram(pl))


def document_entropies(model: torch.nn.Module, docs: Sequence[bytes], **kwargs) -> list[torch.Tensor]:
    """Entropies of each document as the trainer sees it: BOS + bytes + EOS."""
    from bltkit.patching.entropies import compute_entropies

    return compute_entropies(model, [encode_tensor(d) for d in docs], **kwargs)


def calibrate_directory(entropy_model_dir: str | os.PathLike, data: Sequence[str], target_mean: float,
                        monotonic: bool = False, sample_bytes: Optional[int] = 1_000_000,
                        threshold_add: Optional[float] = None, max_patch_length: Optional[int] = None,
                        write: bool = True, device=None, entropies_fp16: bool = True) -> CalibrationResult:
    """Calibrate the entropy model in ``entropy_model_dir`` on ``data`` and (``write``) record the
    result in its ``patcher.yaml``, where ``resolve_patcher`` (every entry point) finds it.
    ``entropies_fp16`` (recorded there too): calibrate, and later patch, on float16-rounded entropies."""
    from bltkit.patching.config import entropy_model_dir as model_dir

    from .model import EntropyModel

    entropy_model_dir = model_dir(entropy_model_dir)  # a train-entropy run or bundle directory: its model/
    if not (isinstance(target_mean, (int, float)) and math.isfinite(target_mean) and target_mean >= 1):
        raise ValueError(f"target mean patch length must be a finite number >= 1, got {target_mean!r}")
    model = EntropyModel.from_pretrained(entropy_model_dir, device=device)
    docs = sample_documents(data, sample_bytes)
    ents = document_entropies(model, docs)
    res = calibrate_threshold(ents, target_mean, monotonic=monotonic, threshold_add=threshold_add,
                              max_patch_length=max_patch_length, entropies_fp16=entropies_fp16)
    if write:
        record = CalibrationRecord(target_mean=float(target_mean), achieved_mean=res.achieved_mean,
                                   documents=res.documents, bytes=res.ids - 2 * res.documents,
                                   data=[str(Path(p)) for p in data])
        save_patcher_settings(entropy_model_dir, PatcherConfig(
            scheme="monotonic" if monotonic else "entropy", threshold=res.threshold, threshold_add=threshold_add,
            max_patch_length=max_patch_length, entropies_fp16=entropies_fp16, calibration=record))
    return res
