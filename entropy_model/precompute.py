"""Offline entropies: every document's per-id entropies written once to disk shards, so training
patches without running the entropy model (docs/reference-semantics.md §3, §4.5; the
reference's ``preprocess_entropies.py`` writes float16 arrow columns).

    OUT/
      index.json                 settings, finished shards, patch statistics per source
      shard-00000.safetensors    bytes (uint8, documents concatenated), entropies (float16, one a
                                 document id: BOS + bytes + EOS), offsets (int64, D + 1 byte offsets)

Resumable: documents are read in a fixed order and cut into shards of ``shard_docs`` documents; a
shard is written to a temporary name and renamed, then the index (also written atomically) lists
it. A rerun skips listed shards without recomputing them, adopts a shard file that was renamed
but not yet listed when its stored fingerprint matches, and refuses to continue with other
settings (data, model weights or config, shard size, the patcher of the statistics: threshold,
scheme...), naming what differs: the index records what its shards were computed with. Only safetensors and JSON are
written; nothing is pickled.

Patch statistics (mean length, histogram) per source use the patcher settings training resolves
(``bltkit.patching.resolve_patcher``: the entropy model's calibrated ``patcher.yaml``, its scheme
and ``max_patch_length`` included, with ``threshold`` over it when given) on the stored fp16
entropies, as training will.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import torch

from bltkit.data.vocab import encode_tensor

INDEX_FILE = "index.json"
FORMAT_VERSION = 1


def _fingerprint_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _docs_fingerprint(docs: Sequence[bytes]) -> str:
    h = hashlib.sha256()
    for d in docs:
        h.update(len(d).to_bytes(8, "little"))
        h.update(d)
    return h.hexdigest()[:16]


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def _iter_sourced(data: Sequence[str], limit_bytes: Optional[int]) -> Iterator[tuple[str, bytes]]:
    """(source, document) in order, ``limit_bytes`` in all (the last document cut to fit)."""
    from bltkit.data.sources import iter_documents, take_bytes

    left = limit_bytes
    for src in data:
        for doc in take_bytes(iter_documents([src]), left):
            yield src, doc
            left = None if left is None else left - len(doc)
        if left is not None and left <= 0:
            return


def _add_stats(acc: dict, src: str, n_docs: int, n_bytes: int, hist: dict[int, int]) -> None:
    s = acc.setdefault(src, {"documents": 0, "bytes": 0, "patches": 0, "ids": 0, "histogram": {}})
    s["documents"] += n_docs
    s["bytes"] += n_bytes
    s["ids"] += n_bytes + 2 * n_docs
    for k, c in hist.items():
        s["histogram"][str(k)] = s["histogram"].get(str(k), 0) + c
        s["patches"] += c


def _shard_stats(patcher, sources: list[str], ids: list[torch.Tensor], ents: list[torch.Tensor]) -> dict:
    """Per-source patch statistics of one shard (empty without a usable patcher)."""
    from .calibrate import length_histogram

    out: dict = {}
    for src in dict.fromkeys(sources):
        sel = [i for i, s in enumerate(sources) if s == src]
        hist: dict[int, int] = {}
        if patcher is not None:
            res = patcher([ids[i] for i in sel], include_next_token=False,
                          scores=[ents[i].float() for i in sel])
            hist = length_histogram(res.patch_lengths)
        _add_stats(out, src, len(sel), sum(int(ids[i].numel()) - 2 for i in sel), hist)
    return out


def _finish_stats(per_shard: list[dict]) -> dict:
    total: dict = {}
    for st in per_shard:
        for src, s in st.items():
            _add_stats(total, src, s["documents"], s["bytes"], {int(k): v for k, v in s["histogram"].items()})
    for s in total.values():
        s["mean_patch_length"] = (s["ids"] / s["patches"]) if s["patches"] else None
    return total


def precompute(entropy_model_dir: str | os.PathLike, data: Sequence[str], out_dir: str | os.PathLike,
               shard_docs: int = 256, limit_bytes: Optional[int] = None, threshold: Optional[float] = None,
               max_new_shards: Optional[int] = None, device=None, batch_size: int = 16,
               log=print, documents: Optional[Callable[[], Iterable[tuple[str, bytes]]]] = None,
               selection: Optional[dict] = None, precision: str = "auto") -> dict:
    """Write (or resume) the entropy shards of ``data`` under ``out_dir``; returns the index.

    ``max_new_shards`` stops after that many newly computed shards (an interruption, for tests
    and for spreading work over jobs). The returned index has ``computed`` (shards computed by
    this call) and ``finished`` (all documents done). ``out_dir`` is locked while this writes
    (``bltkit.rundir``): a second precompute into it fails at once, naming the first's pid.

    ``documents``, when given, returns the (source, document) pairs to compute, in a fixed order,
    instead of reading ``data`` (with ``limit_bytes``): the documents a training run's loader reads
    (``bltkit compare``). ``data`` then names their sources (what training checks the shards
    cover), and ``selection`` (JSON data) records how they were chosen, a setting like the others:
    a rerun with another selection is refused.

    ``precision`` (``auto``: bf16 autocast on CUDA, fp32 elsewhere; ``fp32``; ``bf16``) is what the
    entropy model runs in (``compute_entropies``); the index records the one it resolved to, and a
    rerun in another is refused: a boundary within rounding of the threshold may flip between them.
    """
    from bltkit.data.sources import check_byte_limit
    from bltkit.patching.entropies import check_precision
    from bltkit.rundir import locked

    if shard_docs < 1:
        raise ValueError(f"shard_docs must be >= 1, got {shard_docs}")
    check_precision(precision)  # before the lock: nothing is written for a bad one
    check_byte_limit(limit_bytes)
    if not data:
        raise ValueError("no data sources given")
    with locked(out_dir):
        return _precompute(entropy_model_dir, data, Path(out_dir), shard_docs, limit_bytes, threshold,
                           max_new_shards, device, batch_size, log, documents, selection, precision)


def _precompute(entropy_model_dir, data, out: Path, shard_docs, limit_bytes, threshold, max_new_shards, device,
                batch_size, log, documents=None, selection=None, precision="auto") -> dict:
    from safetensors.torch import save_file

    from bltkit.patching.config import PatcherConfig, load_patcher_settings, resolve_patcher
    from bltkit.patching.config import entropy_model_dir as model_dir
    from bltkit.patching.patcher import Patcher
    from bltkit.weights import CONFIG_FILE, WEIGHTS_FILE

    from bltkit.patching.entropies import compute_entropies
    from bltkit.runtime import autocast_dtype, scorer_precision
    from .model import EntropyModel

    if shard_docs < 1:
        raise ValueError(f"shard_docs must be >= 1, got {shard_docs}")
    if not data:
        raise ValueError("no data sources given")
    em = model_dir(entropy_model_dir)  # a run or bundle directory: its model/
    model = EntropyModel.from_pretrained(em, device=device)
    patcher = None
    cal = load_patcher_settings(em)
    if threshold is not None or (cal is not None and cal.threshold is not None):
        # The one resolution (calibrated patcher.yaml, then the given threshold), as training uses.
        cfg = resolve_patcher(entropy_model=em, overrides=PatcherConfig(threshold=threshold))
        patcher = Patcher(cfg)
    stats_patcher = None if patcher is None else patcher.config.rule()

    # Everything the shards and their statistics depend on: a rerun that differs in any of these
    # (another model, its config, threshold or scheme...) would mix two runs' numbers in one index.
    # What the model computes in, resolved on its device (``auto`` is bf16 on CUDA): the same
    # settings on another machine may mean another precision.
    computed_in = scorer_precision(autocast_dtype(precision, next(model.parameters()).device))
    settings = {"format": FORMAT_VERSION, "data": [str(d) for d in data], "shard_docs": shard_docs,
                "limit_bytes": limit_bytes, "entropy_model": str(em.resolve()),
                "weights": _fingerprint_file(em / WEIGHTS_FILE), "model_config": _fingerprint_file(em / CONFIG_FILE),
                "patcher": stats_patcher, "precision": computed_in}
    if documents is not None:  # (an index written without a selection has no such key)
        settings["selection"] = selection
    index_path = out / INDEX_FILE
    if index_path.is_file():
        index = json.loads(index_path.read_text(encoding="utf-8"))
        old = index.get("settings", {})
        # An index written before precisions were recorded has no "precision": it is not compared.
        diff = sorted(k for k in settings if k != "entropy_model" and old.get(k) != settings[k]
                      and not (k == "precision" and k not in old))
        if diff:
            raise ValueError(f"{out} holds entropies made with other settings ({', '.join(diff)}: "
                             f"{[old.get(k) for k in diff]} vs now {[settings[k] for k in diff]}); use a new --out")
    else:
        index = {"settings": settings, "shards": [], "finished": False}
    index["patcher"] = stats_patcher

    done = len(index["shards"])
    computed = 0
    stream = iter(documents()) if documents is not None else _iter_sourced(data, limit_bytes)
    k, exhausted, stopped = 0, False, False
    while not exhausted:
        batch: list[tuple[str, bytes]] = []
        for item in stream:
            batch.append(item)
            if len(batch) == shard_docs:
                break
        exhausted = len(batch) < shard_docs
        if not batch:
            break
        if k < done:  # finished earlier: read past its documents only
            k += 1
            continue
        if max_new_shards is not None and computed >= max_new_shards:
            stopped = True
            break
        srcs = [s for s, _ in batch]
        docs = [d for _, d in batch]
        fp = _docs_fingerprint(docs)
        path = out / _shard_name(k)
        ids = [encode_tensor(d) for d in docs]
        adopted = False
        if path.is_file():  # renamed before the index listed it: keep it when it is the same work
            from safetensors import safe_open

            try:
                with safe_open(str(path), "pt") as f:
                    meta = f.metadata() or {}
                    if (meta.get("docs_fingerprint") == fp and meta.get("weights") == settings["weights"]
                            and meta.get("precision", computed_in) == computed_in):
                        raw = f.get_tensor("entropies").float()
                        offs = (torch.tensor([0] + [int(x.numel()) for x in ids]).cumsum(0)).tolist()
                        ents = [raw[offs[i]:offs[i + 1]] for i in range(len(ids))]
                        adopted = True
            except Exception:  # a damaged file is simply recomputed
                adopted = False
        if not adopted:
            t0 = time.time()
            ents = compute_entropies(model, ids, batch_size=batch_size, precision=computed_in)
            tensors = {
                "bytes": torch.frombuffer(bytearray(b"".join(docs)), dtype=torch.uint8) if any(docs)
                else torch.zeros(0, dtype=torch.uint8),
                "entropies": torch.cat([e.cpu() for e in ents]).to(torch.float16),
                "offsets": torch.tensor([0] + [len(d) for d in docs], dtype=torch.int64).cumsum(0),
            }
            tmp = path.with_name(path.name + ".tmp")
            save_file(tensors, str(tmp), metadata={"docs_fingerprint": fp, "weights": settings["weights"],
                                                   "precision": computed_in})
            os.replace(tmp, path)
            computed += 1
            ents = [e.to(torch.float16).float() for e in ents]  # stats on what training will read
            log(f"shard {k}: {len(docs)} documents, {sum(map(len, docs))} bytes in {time.time() - t0:.1f}s")
        index["shards"].append({"file": path.name, "documents": len(docs), "bytes": sum(map(len, docs)),
                                "sources": sorted(set(srcs)), "docs_fingerprint": fp,
                                "stats": _shard_stats(patcher, srcs, ids, ents)})
        _write_json_atomic(index_path, index)
        k += 1
        done = k
    index["finished"] = not stopped
    index["stats"] = _finish_stats([s["stats"] for s in index["shards"]])
    index["documents"] = sum(s["documents"] for s in index["shards"])
    _write_json_atomic(index_path, index)
    index["computed"] = computed
    return index


class EntropyShards:
    """Reader of a precomputed directory: ``len``, ``shards[i] -> (ids (T,) int64, entropies (T,)
    fp32)`` with ids = BOS + bytes + EOS, and iteration in document order."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        p = self.dir / INDEX_FILE
        if not p.is_file():
            raise FileNotFoundError(f"{self.dir} has no {INDEX_FILE}: not a precomputed entropy directory")
        self.index = json.loads(p.read_text(encoding="utf-8"))
        self.shards = self.index["shards"]
        self.starts = [0]
        for s in self.shards:
            self.starts.append(self.starts[-1] + s["documents"])
        self._cache: tuple[int, dict] | None = None

    @property
    def finished(self) -> bool:
        return bool(self.index.get("finished"))

    def __len__(self) -> int:
        return self.starts[-1]

    def _load(self, k: int) -> dict:
        if self._cache is None or self._cache[0] != k:
            from safetensors.torch import load_file

            f = self.dir / self.shards[k]["file"]
            if not f.is_file():
                raise FileNotFoundError(f"shard file missing: {f}")
            self._cache = (k, load_file(str(f)))
        return self._cache[1]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"document {i} out of range 0..{len(self) - 1}")
        import bisect

        k = bisect.bisect_right(self.starts, i) - 1
        j = i - self.starts[k]
        t = self._load(k)
        offs = t["offsets"]
        a, b = int(offs[j]), int(offs[j + 1])
        raw = t["bytes"][a:b]
        ids = encode_tensor(bytes(raw.numpy().tobytes()))
        e0 = a + 2 * j  # each earlier document adds BOS and EOS entropies
        return ids, t["entropies"][e0:e0 + ids.numel()].float()

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]
