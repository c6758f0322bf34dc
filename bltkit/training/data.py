"""A run's data: the one config (``data:``) and the one pipeline every training task reads
(docs/reference-semantics.md §12.3; docs/training.md, "Data").

Pipeline: ``Mixture`` (weighted, seeded document draws from the training sources, held-out
documents removed) -> ``BOS + bytes + EOS`` -> patch lengths from the run's ``DocumentPatcher``
(BLT only; entropies on the fly or from precomputed shards) -> ``PatchPacker`` (rows of
``seq_len`` patches, the reference's BLT packing) or ``BytePacker`` (rows of ``seq_len`` bytes)
-> block shuffle of ``shuffle_buffer`` rows -> global batch -> this rank's rows.

Held out (never trained on) is ``data.eval`` when given, else each training source's own split
(``bltkit.data.sources.heldout_share``: ``builtin``'s fixed ``valid`` files, else the
hash-chosen ``eval_fraction`` of its documents). ``heldout_documents`` is that set, read by
the evaluation batches, the comparison and the demo alike.

Determinism and resume: all randomness comes from two numpy generators seeded by the run's seed;
``state_dict()`` holds their states, each source's position, the packer's carry-over bytes, the
documents patched but not yet packed and the rows packed but not yet served. ``load_state_dict``
on a loader built with the same config continues with exactly the batches the original would have
produced. Documents keep their source order every epoch; randomness is in the mixture draws and
the row shuffle.

Data parallelism: every rank builds the same global batch and keeps rows
``[rank*B/W, (rank+1)*B/W)`` (``shard_batch``), so W processes see exactly what one process sees
at the same global batch, and the state is the same on every rank (resume with another W
works). The price is that each rank packs (and patches) all rows; patching from precomputed
entropies keeps that cheap.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
from dataclasses import dataclass, field
from typing import ClassVar, Iterator, Literal, Optional, Union

import numpy as np
import torch

from .. import config as cfgio
from ..data.packing import BytePacker, PatchPacker, Row, collate, document_ids, shard_batch, truncate_row
from ..data.sources import (DataSource, DocumentStream, Mixture, SourceConfig, check_byte_limit,
                            heldout_documents as source_heldout, is_path_spec)
from ..patching.documents import DocumentPatcher

STATE_VERSION = 2
PATCH_GROUP = 64  # documents an entropy-model pass patches at once (the lengths are the same one by one)


@dataclass
class DataConfig:
    """``data:`` of a run config. Sources are spec strings or ``SourceConfig`` mappings
    (``{path, weight, text_field, heldout, ...}``, bltkit/data/sources.py); docs/training.md
    lists every key."""

    # Old keys, each with the key that replaced it (bltkit.config.from_dict names both).
    RENAMED: ClassVar[dict[str, str]] = {
        "sources": "'data.train' (spec strings or {path, weight, ...} mappings)",
        "heldout_fraction": "'data.eval_fraction'",
        "shuffle": "'data.shuffle_buffer' (rows shuffled together; 1 keeps the packing order)",
        "seed": "the run's top-level 'seed', which seeds the data order too"}

    train: list[Union[SourceConfig, str]] = field(default_factory=lambda: ["builtin"])
    eval: list[Union[SourceConfig, str]] = field(default_factory=list)
    eval_fraction: float = 0.05
    text_field: str = "text"
    limit_bytes: Optional[int] = None
    packing: Literal["bytes", "patches"] = "bytes"
    seq_len: int = 256
    max_bytes: Optional[int] = None
    pad_to_max_bytes: bool = True
    batch_size: int = 8
    eval_rows: int = 32
    shuffle_buffer: int = 64
    final_target: Literal["next", "masked"] = "next"

    def __post_init__(self) -> None:
        def source(s: Union[SourceConfig, str]) -> SourceConfig:
            s = SourceConfig(path=s) if isinstance(s, str) else s
            return s if s.text_field is not None else dataclasses.replace(s, text_field=self.text_field)

        self.train = [source(s) for s in self.train]
        self.eval = [source(s) for s in self.eval]

    def validate(self) -> None:
        if not self.train:
            raise ValueError("data.train lists no sources: name at least one (e.g. 'builtin')")
        for s in self.train + self.eval:
            s.validate()
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"data.eval_fraction must be in [0, 1), got {self.eval_fraction}")
        check_byte_limit(self.limit_bytes, "data.limit_bytes")
        if self.seq_len < 2:
            raise ValueError(f"data.seq_len must be >= 2, got {self.seq_len}")
        if self.max_bytes is not None and (self.max_bytes < 1 or self.packing != "patches"):
            raise ValueError(f"data.max_bytes {self.max_bytes}: a cut of patch-packed rows (packing: patches), >= 1")
        for name, value in (("batch_size", self.batch_size), ("eval_rows", self.eval_rows),
                            ("shuffle_buffer", self.shuffle_buffer)):
            if value < 1:
                raise ValueError(f"data.{name} must be >= 1, got {value}")

    @property
    def hash_fraction(self) -> float:
        """The share of each training source held out by hash: none when ``eval`` is given."""
        return 0.0 if self.eval else self.eval_fraction

    def resolved(self, base_dir: Optional[str | os.PathLike]) -> "DataConfig":
        """This config with relative local paths found as given or beside ``base_dir`` (the run
        config's folder; ``bltkit.config.resolve_path``)."""
        def path(spec: str) -> str:
            return str(cfgio.resolve_path(spec, base_dir)) if is_path_spec(spec) else spec

        def source(s: SourceConfig) -> SourceConfig:
            return dataclasses.replace(s, path=path(s.path), heldout=None if s.heldout is None else path(s.heldout),
                                       data_files=None if s.data_files is None else [path(f) for f in s.data_files])

        return dataclasses.replace(self, train=[source(s) for s in self.train], eval=[source(s) for s in self.eval])


def heldout_documents(cfg: DataConfig) -> Iterator[tuple[str, int, bytes]]:
    """The run's held-out documents in order, as (source name, index in that source, document):
    ``data.eval``, else each training source's own held-out split."""
    if cfg.eval:
        for s in cfg.eval:
            src = DataSource(s)
            for i, doc in enumerate(src.documents()):
                yield src.name, i, doc
        return
    for s in cfg.train:
        yield from source_heldout(DataSource(s), cfg.hash_fraction)


def training_documents(cfg: DataConfig, limit_bytes: Optional[int] = None) -> Iterator[bytes]:
    """The training documents of one pass over the sources in order (no mixture, no epochs),
    stopping after the document that reaches ``limit_bytes`` in all (for calibration samples)."""
    total = 0
    for s in cfg.train:
        stream = DocumentStream(DataSource(s), cfg.hash_fraction, cfg.limit_bytes)
        for epoch, _, doc in stream:
            if epoch:
                break
            yield doc
            total += len(doc)
            if limit_bytes is not None and total >= limit_bytes:
                return


def patched_sources(cfg: DataConfig) -> list[tuple[str, str]]:
    """(source spec, role) of every source whose documents a run patches: the training sources
    and the held-out ones (``data.eval``, or each source's own held-out split)."""
    out: list[tuple[str, str]] = []
    for s in cfg.train:
        out.append((s.path, "data.train"))
        held = None if cfg.eval else DataSource(s).heldout_source()
        if held is not None:
            out.append((held.name, f"held-out split of {s.path!r}"))
    out.extend((s.path, "data.eval") for s in cfg.eval)
    return out


def _check_patcher(cfg: DataConfig, patcher: Optional[DocumentPatcher]) -> None:
    if cfg.packing == "patches" and patcher is None:
        raise ValueError("data.packing 'patches' cuts rows by patch count and needs patch lengths, but this model "
                         "kind has no patcher: use packing: bytes")


def _packer(cfg: DataConfig, with_patches: bool, shift: int = 1):
    if cfg.packing == "patches":
        return PatchPacker(cfg.seq_len)
    return BytePacker(cfg.seq_len, with_patches=with_patches, final_target=cfg.final_target, shift=shift)


def _group(patcher: Optional[DocumentPatcher]) -> int:
    """Documents patched in one pass: ``PATCH_GROUP`` when a scorer runs over every byte, else 1."""
    return PATCH_GROUP if patcher is not None and patcher.config.needs_scores else 1


def _patched(docs: list[tuple[str, int, bytes]], patcher: Optional[DocumentPatcher]
             ) -> list[tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """(ids, patch lengths or None) of each (source, index, document), patched in one pass."""
    ids = [document_ids(doc) for _, _, doc in docs]
    if patcher is None:
        return [(x, None) for x in ids]
    names = [f"source {name!r} document {index}" for name, index, _ in docs]
    return list(zip(ids, patcher.lengths(ids, names)))


def _finish(cfg: DataConfig, rows: list[Row]) -> dict:
    pad_to = None
    if cfg.packing == "patches" and cfg.max_bytes is not None:
        rows = [truncate_row(r, cfg.max_bytes) for r in rows]
        pad_to = cfg.max_bytes if cfg.pad_to_max_bytes else None
    elif cfg.packing == "bytes":
        pad_to = cfg.seq_len
    return collate(rows, pad_to=pad_to)


class DataLoader:
    """Endless iterator of batches ``{"ids", "targets", "mask"[, "patch_lengths"]}`` for this rank.

    Shapes: (B/W, N) int64 / int64 / bool, and (B/W, P) int64 patch lengths (each row sums to
    N + 1, first patch 1) with a ``patcher``. ``target_shift=K`` (bytes packing, no patcher) makes
    each position's targets the bytes K ahead: the fixed-K patch phase. ``state_dict`` /
    ``load_state_dict`` checkpoint the position exactly.
    """

    def __init__(self, cfg: DataConfig, patcher: Optional[DocumentPatcher] = None, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1, target_shift: int = 1):
        cfg.validate()
        _check_patcher(cfg, patcher)
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        if cfg.batch_size % world_size:
            raise ValueError(f"data.batch_size {cfg.batch_size} (the global batch) does not split over "
                             f"world size {world_size}")
        self.cfg, self.seed, self.rank, self.world_size, self.shift = cfg, seed, rank, world_size, target_shift
        self.patcher = patcher
        self.group = _group(patcher)
        self.sources = [DataSource(s) for s in cfg.train]
        self.mixture = Mixture(self.sources, [s.weight for s in cfg.train], seed=seed,
                               heldout_fraction=cfg.hash_fraction, limit_bytes=cfg.limit_bytes)
        self.packer = _packer(cfg, with_patches=patcher is not None, shift=target_shift)
        self.shuffle_rng = np.random.Generator(np.random.PCG64([seed, 1]))
        self._docs: list[tuple[torch.Tensor, Optional[torch.Tensor]]] = []  # patched, not yet packed
        self._ready: list[Row] = []  # packed, not yet in a shuffle block
        self._block: list[Row] = []  # shuffled, served from the front
        self.batches = 0

    def __iter__(self) -> Iterator[dict]:
        return self

    @property
    def epoch(self) -> int:
        """Passes completed over the most-repeated training source."""
        return self.mixture.epoch

    def _pack_more(self) -> None:
        if not self._docs:
            drawn = [next(self.mixture) for _ in range(self.group)]
            self._docs = _patched([(self.sources[i].name, index, doc) for i, _, index, doc in drawn], self.patcher)
        self.packer.add(*self._docs.pop(0))
        self._ready.extend(self.packer.pop_rows())

    def _next_row(self) -> Row:
        if not self._block:
            while len(self._ready) < self.cfg.shuffle_buffer:
                self._pack_more()
            block, self._ready = self._ready[: self.cfg.shuffle_buffer], self._ready[self.cfg.shuffle_buffer:]
            order = self.shuffle_rng.permutation(len(block)) if len(block) > 1 else [0]
            self._block = [block[int(j)] for j in order]
        return self._block.pop(0)

    def next_global_batch(self) -> dict:
        """The whole global batch (all ranks' rows)."""
        rows = [self._next_row() for _ in range(self.cfg.batch_size)]
        self.batches += 1
        return _finish(self.cfg, rows)

    def __next__(self) -> dict:
        return shard_batch(self.next_global_batch(), self.rank, self.world_size)

    def _fingerprint(self) -> dict:
        c = self.cfg
        return {"train": [s.path for s in c.train], "weights": [s.weight for s in c.train],
                "eval": [s.path for s in c.eval], "eval_fraction": c.eval_fraction, "limit_bytes": c.limit_bytes,
                "seed": self.seed, "packing": c.packing, "seq_len": c.seq_len, "batch_size": c.batch_size,
                "shuffle_buffer": c.shuffle_buffer, "final_target": c.final_target, "target_shift": self.shift}

    def state_dict(self) -> dict:
        """Everything needed to continue exactly here (plain data and CPU tensors; rank-independent)."""
        return {
            "version": STATE_VERSION,
            "config": self._fingerprint(),
            "batches": self.batches,
            "mixture": self.mixture.state_dict(),
            "packer": self.packer.state_dict(),
            "shuffle_rng": self.shuffle_rng.bit_generator.state,
            "docs": [{"ids": ids.to(torch.int16), "pl": pl} for ids, pl in self._docs],
            "ready": [r.to_dict() for r in self._ready],
            "block": [r.to_dict() for r in self._block],
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"the checkpoint's data loader state has version {state.get('version')!r}, this bltkit "
                             f"reads version {STATE_VERSION}: it cannot resume that run (start afresh with --force)")
        mine = self._fingerprint()
        for k, v in state["config"].items():
            if mine.get(k) != v:
                raise ValueError(f"data loader state was saved with {k}={v!r}, this loader has {k}={mine.get(k)!r}")
        self.batches = state["batches"]
        self.mixture.load_state_dict(state["mixture"])
        self.packer.load_state_dict(state["packer"])
        self.shuffle_rng.bit_generator.state = state["shuffle_rng"]
        self._docs = [(d["ids"].to(torch.int64), d["pl"]) for d in state["docs"]]
        self._ready = [Row.from_dict(d) for d in state["ready"]]
        self._block = [Row.from_dict(d) for d in state["block"]]


def heldout_batches(cfg: DataConfig, patcher: Optional[DocumentPatcher] = None, *,
                    max_rows: Optional[int] = None, batch_size: Optional[int] = None) -> list[dict]:
    """The fixed evaluation set (bits per byte): the first ``max_rows`` (default ``data.eval_rows``)
    rows of the held-out documents (``heldout_documents``), read in order, unweighted and unshuffled,
    packed like training rows, in batches of ``data.batch_size``; the last row is padded (mask
    False) and the last batch may be smaller. Every rank scores all of them."""
    cfg.validate()
    _check_patcher(cfg, patcher)
    packer = _packer(cfg, with_patches=patcher is not None)
    n_rows = cfg.eval_rows if max_rows is None else max_rows
    bs = batch_size or cfg.batch_size
    group = _group(patcher)
    rows: list[Row] = []
    docs = heldout_documents(cfg)
    while len(rows) < n_rows:
        drawn = list(itertools.islice(docs, group))
        if not drawn:
            rows.extend(packer.flush())
            break
        for ids, pl in _patched(drawn, patcher):
            packer.add(ids, pl)
            rows.extend(packer.pop_rows())
    rows = rows[:n_rows]
    if not rows and cfg.eval:
        raise ValueError(f"data.eval {[s.path for s in cfg.eval]} holds no documents (empty files?): give held-out "
                         f"text there, or leave data.eval empty to hold out data.eval_fraction of data.train")
    if not rows:
        raise ValueError(f"no held-out documents for data.train {[s.path for s in cfg.train]} (data.eval_fraction="
                         f"{cfg.eval_fraction}): give data.eval or raise data.eval_fraction")
    return [_finish(cfg, rows[i:i + bs]) for i in range(0, len(rows), bs)]


def heldout_patched(cfg: DataConfig) -> Iterator[tuple[str, int, bytes]]:
    """The held-out documents ``heldout_batches`` patches with an entropy patcher: its groups of
    ``PATCH_GROUP`` documents until ``data.eval_rows`` rows are packed. Rows of bytes
    (``packing: bytes``) are cut by bytes alone, so the groups are found without patching; rows
    of patches depend on the patches, and then every held-out document is listed."""
    docs = heldout_documents(cfg)
    if cfg.packing == "patches":
        yield from docs
        return
    packer, rows = _packer(cfg, with_patches=False), 0
    while rows < cfg.eval_rows:
        drawn = list(itertools.islice(docs, PATCH_GROUP))
        if not drawn:
            return
        for name, index, doc in drawn:
            packer.add(document_ids(doc))
            rows += len(packer.pop_rows())
            yield name, index, doc


__all__ = ["DataConfig", "DataLoader", "heldout_batches", "heldout_documents", "heldout_patched", "training_documents",
           "patched_sources"]
