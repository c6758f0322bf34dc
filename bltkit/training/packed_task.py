"""Data side shared by the byte-stream tasks (BLT, entropy model): documents packed into rows.

Documents come from the data pipeline's sources (``bltkit.data.sources``: files, folders, globs,
``builtin``, ``hf:``). Held-out documents are ``data.eval`` when given; otherwise each training
source's own held-out split (``builtin`` -> its fixed ``valid`` files; other sources -> the
hash-chosen ``data.eval_fraction`` of documents, ``sources.is_heldout``), which training never sees.
Rows are packed once (batches.py), on first use, and shared by the train and eval sides.

With ``stream:`` set, batches come from the data pipeline's streaming loader instead
(``bltkit.data.loader``: source mixtures, the reference's patch-count packing, documents patched
as they stream in), and held-out batches from its ``heldout_batches``.

``patched_sources`` lists every source whose documents get patched (training and held-out), so
that precomputed entropies (precomputed.py) can be checked against the run's data up front.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from .batches import PatchFn, Rows, StepBatches, eval_batches, pack_rows
from .task import Task


class PackedDataTask(Task):
    def patch_fn(self) -> Optional[PatchFn]:
        """Document ids (T,) -> patch lengths summing to T, or None for byte-level models."""
        return None

    def _resolve(self, spec: str) -> str:
        """A relative path is tried as given, then beside the run config."""
        p = Path(spec)
        if spec.startswith(("builtin", "hf:")) or p.is_absolute() or p.exists() or self.config_dir is None:
            return spec
        cand = self.config_dir / spec
        return str(cand) if cand.exists() else spec

    def _documents(self) -> tuple[list[bytes], list[bytes], list[str]]:
        from ..data.sources import DataSource, SourceConfig, is_heldout

        d = self.cfg.data
        specs = [self._resolve(s) for s in d.train]
        sources = [DataSource(SourceConfig(path=s, text_field=d.text_field)) for s in specs]  # names a missing path
        train: list[bytes] = []
        held: list[bytes] = []
        total = 0
        for src in sources:
            frac = 0.0 if (d.eval or src.heldout_source() is not None) else d.eval_fraction
            for doc in src.documents():
                if d.limit_bytes is not None and total >= d.limit_bytes:
                    break
                if not is_heldout(doc, frac):
                    train.append(doc)
                    total += len(doc)
            if not d.eval:
                explicit = src.heldout_source()
                held.extend(explicit.documents() if explicit is not None
                            else (doc for doc in src.documents() if is_heldout(doc, d.eval_fraction)))
        if d.eval:
            for s in d.eval:
                src = DataSource(SourceConfig(path=self._resolve(s), text_field=d.text_field))
                held.extend(src.documents())
        if not train:
            raise ValueError(f"empty corpus: data.train {specs} holds no training documents")
        if not held and d.eval:
            raise ValueError(f"data.eval {list(d.eval)} holds no documents (empty files?): give held-out text there, "
                             f"or leave data.eval empty to hold out data.eval_fraction of data.train")
        if not held:
            raise ValueError(f"no held-out documents for data.train {specs}: give data.eval or raise data.eval_fraction")
        return train, held, specs

    def patched_sources(self) -> list[tuple[str, str]]:
        """(source spec, role) of every source whose documents this run patches: training sources
        and the held-out ones (``data.eval``, or each source's own held-out split)."""
        from ..data.sources import DataSource, SourceConfig

        out: list[tuple[str, str]] = []
        if self.cfg.stream is not None:
            sc = self._stream_config()
            for src in sc.sources:
                held = DataSource(src).heldout_source()
                out.append((src.path, "stream.sources"))
                if held is not None:
                    out.append((held.name, f"held-out split of {src.path!r}"))
            return out
        d = self.cfg.data
        for spec in (self._resolve(s) for s in d.train):
            out.append((spec, "data.train"))
            if not d.eval:
                held = DataSource(SourceConfig(path=spec, text_field=d.text_field)).heldout_source()
                if held is not None:
                    out.append((held.name, f"held-out split of {spec!r}"))
        out.extend((self._resolve(s), "data.eval") for s in d.eval)
        return out

    def _rows(self) -> tuple[Rows, Rows]:
        if getattr(self, "_cached_rows", None) is None:
            train_docs, held_docs, specs = self._documents()
            fn = self.patch_fn()
            seq = self.cfg.data.seq_len
            self._cached_rows = (pack_rows(train_docs, seq, fn, where=f"data.train {specs}"),
                                 pack_rows(held_docs, seq, fn, where="the held-out data"))
        return self._cached_rows

    def train_batches(self, rank: int, world_size: int):
        if self.cfg.stream is not None:
            from ..data.loader import DataLoader

            return DataLoader(self._stream_config(), keyed_patch_fn=self._keyed(), rank=rank,
                              world_size=world_size)
        d = self.cfg.data
        return StepBatches(self._rows()[0], d.batch_size, rank, world_size, seed=self.cfg.seed, shuffle=d.shuffle)

    def eval_batches(self) -> list[dict[str, torch.Tensor]]:
        d = self.cfg.data
        if self.cfg.stream is not None:
            from ..data.loader import heldout_batches

            sc = self._stream_config()
            return heldout_batches(sc, keyed_patch_fn=self._keyed(),
                                   max_batches=-(-d.eval_rows // sc.batch_size))
        return eval_batches(self._rows()[1], d.eval_rows, d.batch_size)

    def _keyed(self):
        """The streaming loader's patch function; its errors name the source and document."""
        fn = self.patch_fn()
        if fn is None:
            return None
        return lambda ids, key: fn(ids, f"source {key.source!r} document {key.index}")

    def _stream_config(self):
        """The run's ``stream:`` mapping as the data pipeline's ``DataConfig`` (seeded by the run)."""
        from .. import config as cfgio
        from ..data.loader import DataConfig

        data = dict(self.cfg.stream)
        data.setdefault("seed", self.cfg.seed)
        return cfgio.from_dict(DataConfig, data, source="the run config's stream:", prefix="stream")
