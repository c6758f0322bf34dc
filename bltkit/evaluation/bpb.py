"""Held-out bits per byte of data sources under a bundle: ``bltkit eval --model BUNDLE DATA...``.

The BLT paper's measure, with the byte accounting stated:

- A document is scored on its own, after BOS, as ``Handle.score(document)`` scores it: the same
  number for a document that fits the window. A longer one is scored in windows with at least
  ``overlap`` bytes of context (the rule is in ``bltkit.inference.scoring``).
- Bytes are the raw bytes of the document as its source yields them (UTF-8 for text): BOS, EOS
  and padding are never counted, and EOS is not scored.
- bits per byte = sum of nats / (ln 2 * sum of bytes), over every document of a source, and
  over every document of all sources for the overall figure (a long document weighs by its bytes).

Standard error over documents: bits per byte is a ratio R = sum(x_i) / sum(n_i) of each
document's bits x_i and bytes n_i, so its standard error is the ratio estimator's (the delta
method): sqrt(D / (D - 1) * sum((x_i - R n_i)^2)) / sum(n_i) over D documents. When every
document has the same length this is the familiar std(per-document bpb) / sqrt(D). One document
has none (``None``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterator, Optional, Sequence

import numpy as np

from ..data.sources import DataSource, SourceConfig, heldout_documents
from ..inference.scoring import LN2, check_batch_size, resolve_window, score_spans

CHUNK_DOCUMENTS = 256  # documents scored together: enough to fill batches, few enough to stream


@dataclass
class SourceResult:
    source: str
    documents: int
    bytes: int
    bits: float  # sum over the documents
    bits_per_byte: float
    stderr: Optional[float]  # standard error over documents (None for one document)


@dataclass
class EvalReport:
    sources: list[SourceResult]
    overall: SourceResult
    window: int
    overlap: int

    def to_dict(self) -> dict:
        return {"window": self.window, "overlap": self.overlap, "sources": [asdict(s) for s in self.sources],
                "overall": asdict(self.overall)}


def ratio_stderr(bits: np.ndarray, nbytes: np.ndarray) -> Optional[float]:
    """Standard error of sum(bits) / sum(nbytes) over documents (module docstring)."""
    d = len(bits)
    if d < 2:
        return None
    r = bits.sum() / nbytes.sum()
    return float(math.sqrt(d / (d - 1) * float(((bits - r * nbytes) ** 2).sum())) / nbytes.sum())


def summarize(name: str, bits: np.ndarray, nbytes: np.ndarray) -> SourceResult:
    total_bits, total_bytes = float(bits.sum()), int(nbytes.sum())
    return SourceResult(name, len(bits), total_bytes, total_bits, total_bits / total_bytes, ratio_stderr(bits, nbytes))


def source_documents(source: DataSource, heldout_fraction: Optional[float] = None,
                     max_documents: Optional[int] = None) -> Iterator[bytes]:
    """The documents of ``source``, or with ``heldout_fraction`` only those training holds out of
    it (its explicit held-out split, ``builtin`` -> its ``valid`` files, else the hash split of
    that fraction); at most ``max_documents``."""
    docs = (d for _, _, d in heldout_documents(source, heldout_fraction)) if heldout_fraction is not None \
        else source.documents()
    for i, doc in enumerate(docs):
        if max_documents is not None and i >= max_documents:
            return
        yield doc


def document_bits(handle, documents: Iterator[bytes], window: int, overlap: int, batch_size: int = 8,
                  progress: bool = False, desc: str = "scoring") -> tuple[np.ndarray, np.ndarray]:
    """(bits, bytes) of each document, scored ``CHUNK_DOCUMENTS`` at a time."""
    from tqdm.auto import tqdm

    bits, nbytes = [], []
    bar = tqdm(desc=desc, unit="B", unit_scale=True, disable=not progress)  # bytes read (windows overlap)

    def score(chunk: list[bytes]) -> None:
        scores = score_spans(handle, chunk, window=window, overlap=overlap, batch_size=batch_size, bar=bar)
        bits.extend(s.total_nats / LN2 for s in scores)
        nbytes.extend(len(d) for d in chunk)

    chunk = []
    for doc in documents:
        chunk.append(doc)
        if len(chunk) == CHUNK_DOCUMENTS:
            score(chunk)
            chunk = []
    if chunk:
        score(chunk)
    bar.close()
    return np.array(bits, dtype=np.float64), np.array(nbytes, dtype=np.int64)


def evaluate_sources(handle, specs: Sequence[str], window: Optional[int] = None, overlap: Optional[int] = None,
                     batch_size: int = 8, text_field: str = "text", heldout_fraction: Optional[float] = None,
                     max_documents: Optional[int] = None, progress: bool = False) -> EvalReport:
    """Bits per byte of each source in ``specs`` (any source spec training accepts) and over all,
    under ``handle`` (a loaded bundle)."""
    if not specs:
        raise ValueError("no data source given")
    if heldout_fraction is not None and not 0 < heldout_fraction < 1:
        raise ValueError(f"heldout fraction must be between 0 and 1, got {heldout_fraction}")
    if max_documents is not None and max_documents < 1:
        raise ValueError(f"max documents must be >= 1, got {max_documents}")
    window, overlap = resolve_window(handle, window, overlap)
    check_batch_size(batch_size)
    sources = [DataSource(SourceConfig(path=s, text_field=text_field)) for s in specs]  # bad specs fail first
    results, parts = [], []
    for src in sources:
        docs = source_documents(src, heldout_fraction, max_documents)
        bits, nbytes = document_bits(handle, docs, window, overlap, batch_size, progress, desc=src.name)
        if not len(bits):
            which = "held-out documents" if heldout_fraction is not None else "documents"
            raise ValueError(f"data source {src.name!r} has no {which} to score (empty documents are skipped)")
        results.append(summarize(src.name, bits, nbytes))
        parts.append((bits, nbytes))
    overall = summarize("all", np.concatenate([b for b, _ in parts]), np.concatenate([n for _, n in parts]))
    return EvalReport(results, overall, window, overlap)


def format_report(report: EvalReport) -> str:
    """The table ``bltkit eval`` prints."""
    rows = report.sources + ([report.overall] if len(report.sources) > 1 else [])
    width = max(len("source"), *(len(r.source) for r in rows))
    lines = [f"{'source':<{width}}  {'documents':>9}  {'bytes':>12}  {'bits/byte':>9}  {'± s.e.':>8}"]
    for r in rows:
        se = f"{r.stderr:.4f}" if r.stderr is not None else "-"
        lines.append(f"{r.source:<{width}}  {r.documents:>9}  {r.bytes:>12}  {r.bits_per_byte:>9.4f}  {se:>8}")
    lines.append(f"(window {report.window} bytes with BOS, overlap {report.overlap} bytes)")
    return "\n".join(lines)


__all__ = ["SourceResult", "EvalReport", "ratio_stderr", "summarize", "source_documents", "document_bits",
           "evaluate_sources", "format_report"]
