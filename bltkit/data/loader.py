"""The training data loader: a seeded, resumable stream of packed batches from a source mixture,
with a held-out split that training never sees (docs/reference-semantics.md §12.3).

Pipeline: ``Mixture`` (weighted, seeded document draws) -> ``BOS + bytes + EOS`` -> patch lengths
(``patch_fn`` on the fly, or ``keyed_patch_fn`` for precomputed per-document entropies) ->
``PatchPacker`` / ``BytePacker`` -> block shuffle of ``shuffle_buffer`` rows (the reference
shuffles within 64 sequences) -> global batch -> this rank's rows.

Determinism and resume: all randomness comes from two numpy generators seeded by
``DataConfig.seed``; ``state_dict()`` holds their states, each source's (epoch, position), the
packer's carry-over bytes and the rows already packed but not yet served. ``load_state_dict`` on a
loader built with the same config continues with exactly the batches the original would have
produced. Documents keep their source order every epoch; randomness is in the mixture draws and
the row shuffle.

Data parallelism: every rank builds the same global batch and keeps rows
``[rank*B/W, (rank+1)*B/W)`` (``shard_batch``), so W processes see exactly what one process sees
at the same global batch, and the state is the same on every rank (resume with another W
works). The price is that each rank packs (and patches) all rows; patching from precomputed
entropies keeps that cheap.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal, Optional, Union

import numpy as np
import torch

from bltkit.data.packing import (BytePacker, PatchFn, PatchPacker, Row, collate, document_ids,
                                 document_patch_lengths, shard_batch, truncate_row)
from bltkit.data.sources import DataSource, Mixture, SourceConfig, heldout_documents

STATE_VERSION = 1


@dataclass(frozen=True)
class DocKey:
    """Names one document for precomputed patching: source spec and index within that source.

    ``index`` counts the non-empty documents of the source in order (``DataSource.documents``),
    the same numbering an offline entropy precompute over that source uses.
    """

    source: str
    index: int


KeyedPatchFn = Callable[[torch.Tensor, DocKey], torch.Tensor]


@dataclass
class DataConfig:
    """What to read and how to pack it (loadable with ``bltkit.config.from_dict`` / ``load``).

    - ``sources``: list of ``SourceConfig`` mappings or plain spec strings (weight 1).
    - ``heldout_fraction``: share of each source's documents held out by content hash, for
      sources without an explicit held-out source.
    - ``packing``: ``"bytes"`` -- rows of ``seq_len`` bytes (byte LMs, entropy model, fixed-K patch
      phase with ``seq_len = K*T``, BLT on fixed-byte rows when a patch function is given);
      ``"patches"`` -- the reference BLT packing, rows of ``seq_len`` patches (needs a patch function).
    - ``max_bytes``: patches packing only: rows longer than this many input bytes are cut, and
      with ``pad_to_max_bytes`` every batch is padded to exactly this width (the reference's
      ``max_encoder_seq_length`` / ``pad_to_max_length``, docs/reference-semantics.md §12.3). Without it the width is
      the longest row of the batch.
    - ``batch_size``: the **global** batch (rows over all ranks).
    - ``shuffle_buffer``: rows shuffled together (block shuffle); 1 keeps packing order.
    - ``final_target``: bytes packing only: ``"masked"`` -- each row's last target is the
      reference's BOE pad, masked (docs/reference-semantics.md §12.2); ``"next"`` -- the real next byte (rows overlap by
      one byte, every byte is scored).
    """

    sources: list[Union[SourceConfig, str]] = field(default_factory=lambda: [SourceConfig(path="builtin")])
    heldout_fraction: float = 0.01
    packing: Literal["bytes", "patches"] = "bytes"
    seq_len: int = 2048
    max_bytes: Optional[int] = None
    pad_to_max_bytes: bool = True
    batch_size: int = 8
    shuffle_buffer: int = 64
    seed: int = 0
    final_target: Literal["masked", "next"] = "masked"

    def __post_init__(self) -> None:
        self.sources = [SourceConfig(path=s) if isinstance(s, str) else s for s in self.sources]

    def validate(self) -> None:
        if not self.sources:
            raise ValueError("sources is empty: name at least one data source (e.g. 'builtin')")
        for s in self.sources:
            s.validate()
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")
        if self.packing not in ("bytes", "patches"):
            raise ValueError(f"packing must be 'bytes' or 'patches', got {self.packing!r}")
        if self.seq_len < (2 if self.packing == "patches" else 1):
            raise ValueError(f"seq_len {self.seq_len} is too small for packing={self.packing!r}")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {self.max_bytes}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be >= 1, got {self.shuffle_buffer}")


def _patcher(cfg: DataConfig, patch_fn: Optional[PatchFn], keyed_patch_fn: Optional[KeyedPatchFn]):
    if patch_fn is not None and keyed_patch_fn is not None:
        raise ValueError("pass patch_fn or keyed_patch_fn, not both")
    if cfg.packing == "patches" and patch_fn is None and keyed_patch_fn is None:
        raise ValueError("packing='patches' needs patch lengths: pass patch_fn or keyed_patch_fn")
    if keyed_patch_fn is not None:
        return keyed_patch_fn
    if patch_fn is not None:
        return lambda ids, key: patch_fn(ids)
    return None


def _packer(cfg: DataConfig, with_patches: bool):
    if cfg.packing == "patches":
        return PatchPacker(cfg.seq_len)
    return BytePacker(cfg.seq_len, with_patches=with_patches, final_target=cfg.final_target)


def _prepare(doc: bytes, key: DocKey, patcher) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    ids = document_ids(doc)
    if patcher is None:
        return ids, None
    where = f"source {key.source!r} document {key.index}"
    return ids, document_patch_lengths(ids, lambda t: patcher(t, key), where)


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
    N + 1, first patch 1) when a patch function is given. ``state_dict`` / ``load_state_dict``
    checkpoint the position exactly.
    """

    def __init__(self, cfg: DataConfig, patch_fn: Optional[PatchFn] = None, *,
                 keyed_patch_fn: Optional[KeyedPatchFn] = None, rank: int = 0, world_size: int = 1):
        cfg.validate()
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        if cfg.batch_size % world_size:
            raise ValueError(f"global batch_size {cfg.batch_size} does not split over world_size {world_size}")
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.patcher = _patcher(cfg, patch_fn, keyed_patch_fn)
        self.sources = [DataSource(s) for s in cfg.sources]
        self.mixture = Mixture(self.sources, [s.weight for s in cfg.sources], seed=cfg.seed,
                               heldout_fraction=cfg.heldout_fraction)
        self.packer = _packer(cfg, with_patches=self.patcher is not None)
        self.shuffle_rng = np.random.Generator(np.random.PCG64([cfg.seed, 1]))
        self._ready: list[Row] = []  # packed, not yet in a shuffle block
        self._block: list[Row] = []  # shuffled, served from the front
        self.batches = 0

    def __iter__(self) -> Iterator[dict]:
        return self

    def _pack_more(self) -> None:
        i, _, index, doc = next(self.mixture)
        ids, pl = _prepare(doc, DocKey(self.sources[i].name, index), self.patcher)
        self.packer.add(ids, pl)
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
        return {"sources": [s.path for s in c.sources], "weights": [s.weight for s in c.sources], "seed": c.seed,
                "packing": c.packing, "seq_len": c.seq_len, "batch_size": c.batch_size,
                "shuffle_buffer": c.shuffle_buffer, "heldout_fraction": c.heldout_fraction,
                "final_target": c.final_target}

    def state_dict(self) -> dict:
        """Everything needed to continue exactly here (plain data and CPU tensors; rank-independent)."""
        return {
            "version": STATE_VERSION,
            "config": self._fingerprint(),
            "batches": self.batches,
            "mixture": self.mixture.state_dict(),
            "packer": self.packer.state_dict(),
            "shuffle_rng": self.shuffle_rng.bit_generator.state,
            "ready": [r.to_dict() for r in self._ready],
            "block": [r.to_dict() for r in self._block],
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data loader state version {state.get('version')!r}, expected {STATE_VERSION}")
        mine = self._fingerprint()
        for k, v in state["config"].items():
            if mine.get(k) != v:
                raise ValueError(f"data loader state was saved with {k}={v!r}, this loader has {k}={mine.get(k)!r}")
        self.batches = state["batches"]
        self.mixture.load_state_dict(state["mixture"])
        self.packer.load_state_dict(state["packer"])
        self.shuffle_rng.bit_generator.state = state["shuffle_rng"]
        self._ready = [Row.from_dict(d) for d in state["ready"]]
        self._block = [Row.from_dict(d) for d in state["block"]]


def heldout_batches(cfg: DataConfig, patch_fn: Optional[PatchFn] = None, *,
                    keyed_patch_fn: Optional[KeyedPatchFn] = None, max_batches: Optional[int] = None,
                    batch_size: Optional[int] = None) -> list[dict]:
    """A fixed evaluation set (for bits per byte) from the held-out documents of every source.

    Sources are read in order, unweighted and unshuffled, each held-out document once, packed
    like training rows; the last row is padded (mask False) and the last batch may be smaller.
    Held-out documents are exactly those the training ``DataLoader`` skips. Rank shares: slice
    each batch with ``shard_batch``.
    """
    cfg.validate()
    patcher = _patcher(cfg, patch_fn, keyed_patch_fn)
    packer = _packer(cfg, with_patches=patcher is not None)
    bs = batch_size or cfg.batch_size
    rows: list[Row] = []
    batches: list[dict] = []

    def full() -> bool:
        return max_batches is not None and len(batches) >= max_batches

    def drain(final: bool = False) -> None:
        while rows and (len(rows) >= bs or final) and not full():
            take = rows[:bs]
            del rows[:bs]
            batches.append(_finish(cfg, take))

    for s in cfg.sources:
        for name, index, doc in heldout_documents(DataSource(s), cfg.heldout_fraction):
            ids, pl = _prepare(doc, DocKey(name, index), patcher)
            packer.add(ids, pl)
            rows.extend(packer.pop_rows())
            drain()
            if full():
                return batches
    rows.extend(packer.flush())
    drain(final=True)
    if not batches:
        raise ValueError(f"no held-out documents in {[s.path for s in cfg.sources]} "
                         f"(heldout_fraction={cfg.heldout_fraction}); raise it or name a held-out source")
    return batches


__all__ = ["DataConfig", "DataLoader", "DocKey", "KeyedPatchFn", "heldout_batches"]
