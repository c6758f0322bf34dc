"""Entropies for training read from ``bltkit precompute`` shards instead of an entropy model run.

The reference trains on entropies computed offline and stored as float16, cast to float32 before
thresholding (docs/reference-semantics.md §3, §4.5). The trainer
does the same with ``patcher: {scheme: entropy, entropy_model: DIR, precomputed: SHARDS}``: each
document's entropies come from the shards (``entropy_model.precompute.EntropyShards``) and go
through the run's patcher (threshold, monotonic, ``max_patch_length``) as on the fly. Because
on-the-fly patching also rounds entropies to float16 by default (patch_source.py), batches built
either way are equal, bit for bit.

Documents are found by **content** (a hash of their bytes), so the same lookup serves the
loader whatever order, mixture or held-out split reads them. What is checked, each with an error naming the mismatch:

- the directory is a finished precompute (``index.json``, ``finished: true``);
- it was made with the run's entropy model (the fingerprint of ``model.safetensors``);
- it covers every source the run patches (training and held-out sources, by name);
- every document the run patches is in it (a changed file, a larger ``limit_bytes``...).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..data.sources import is_path_spec
from ..data.vocab import OFFSET


def _doc_key(raw: bytes) -> bytes:
    return hashlib.blake2b(raw, digest_size=16).digest()


def _ids_key(ids: torch.Tensor) -> bytes:
    """The content key of a document given as ids BOS + bytes + EOS (ids ``b + OFFSET``)."""
    body = ids[1:-1] - OFFSET
    return _doc_key(body.to(torch.uint8).numpy().tobytes())


def _same_source(a: str, b: str) -> bool:
    """Source specs naming the same data: equal names, or local paths that resolve alike."""
    if a == b:
        return True
    if not (is_path_spec(a) and is_path_spec(b)):
        return False
    return Path(a).resolve() == Path(b).resolve()


class PrecomputedEntropies:
    """Per-document fp32 entropies (float16 values) from a precompute directory, by content."""

    def __init__(self, directory: str | os.PathLike, entropy_model_dir: Optional[str | os.PathLike] = None):
        from entropy_model.precompute import EntropyShards

        self.dir = Path(directory)
        if not self.dir.is_dir():
            raise FileNotFoundError(f"precomputed entropy directory not found: {self.dir}")
        self.shards = EntropyShards(self.dir)  # FileNotFoundError without index.json
        index = self.shards.index
        self.settings = index.get("settings", {})
        self.sources: list[str] = [str(s) for s in self.settings.get("data", [])]
        if not self.shards.finished:
            raise ValueError(f"precomputed entropies in {self.dir} are not finished ({len(self.shards)} documents "
                             f"so far): rerun the same `bltkit precompute` command to complete them")
        if entropy_model_dir is not None:
            self._check_weights(Path(entropy_model_dir))
        self._where: dict[bytes, int] = {}
        self._build_index()

    def _check_weights(self, em_dir: Path) -> None:
        from ..weights import WEIGHTS_FILE
        from entropy_model.precompute import _fingerprint_file

        mine = _fingerprint_file(em_dir / WEIGHTS_FILE)
        theirs = self.settings.get("weights")
        if mine != theirs:
            raise ValueError(f"precomputed entropies in {self.dir} were made with another entropy model "
                             f"({self.settings.get('entropy_model')}, weights {theirs}) than patcher.entropy_model "
                             f"{em_dir} (weights {mine}): precompute again with this model")

    def _build_index(self) -> None:
        """Content key -> document number, from every shard's bytes and offsets."""
        from safetensors import safe_open

        j = 0
        for shard in self.shards.shards:
            f = self.dir / shard["file"]
            if not f.is_file():
                raise FileNotFoundError(f"shard file missing: {f} (listed in {self.dir / 'index.json'})")
            with safe_open(str(f), "pt") as st:
                raw = st.get_tensor("bytes").numpy().tobytes()
                offs = st.get_tensor("offsets").tolist()
            for a, b in zip(offs[:-1], offs[1:]):
                self._where.setdefault(_doc_key(raw[a:b]), j)
                j += 1

    def __len__(self) -> int:
        return len(self.shards)

    def check_sources(self, run_sources: Sequence[tuple[str, str]]) -> None:
        """``run_sources``: (spec, role) of every source the run patches; each must be precomputed."""
        missing = [(spec, role) for spec, role in run_sources
                   if not any(_same_source(spec, s) for s in self.sources)]
        if missing:
            names = ", ".join(f"{spec!r} ({role})" for spec, role in missing)
            raise ValueError(f"precomputed entropies in {self.dir} cover sources {self.sources}, but the run also "
                             f"patches {names}: run `bltkit precompute` over every source the run reads "
                             f"(training and held-out)")

    def entropies(self, ids: torch.Tensor, where: str = "a document") -> torch.Tensor:
        """Entropies (T,) fp32 of document ``ids`` (BOS + bytes + EOS), as stored (float16 values)."""
        j = self._where.get(_ids_key(ids))
        if j is None:
            head = bytes((ids[1:41] - OFFSET).clamp(0, 255).tolist())
            limit = self.settings.get("limit_bytes")
            raise ValueError(f"{where} ({ids.numel() - 2} bytes, starting {head!r}) is not in the precomputed "
                             f"entropies {self.dir} ({len(self)} documents of {self.sources}"
                             f"{f', limit_bytes={limit}' if limit else ''}): the data changed or reads past what "
                             f"was precomputed; run `bltkit precompute` again on the run's data")
        stored_ids, ent = self.shards[j]
        if not torch.equal(stored_ids, ids.cpu()):  # a hash collision would be astronomically rare
            raise ValueError(f"{where}: precomputed document {j} in {self.dir} has the same hash but other bytes")
        return ent


__all__ = ["PrecomputedEntropies"]
