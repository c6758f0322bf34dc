"""Where documents come from: files, folders, globs, the built-in corpus and Hugging Face datasets,
mixed with weights. A document is raw ``bytes``; the loader turns it into BOS + bytes + EOS
(docs/reference-semantics.md §2, §4.5).

Source specs (``SourceConfig.path``):

| spec | read as |
|---|---|
| ``builtin``, ``builtin:valid``, ``builtin/kjv`` | the shipped corpus (``bltkit.data.corpus``) |
| ``a.txt`` (``.txt.gz``) | raw bytes; one document per file (``txt_split="file"``) or one per blank-line-separated paragraph (``txt_split="blank_lines"``) |
| ``a.jsonl``, ``a.json``, ``a.parquet`` (``.gz``/``.bz2``/``.zst`` allowed for json) | Hugging Face ``datasets`` (``load_dataset("json"/"parquet", streaming=True)``), the ``text_field`` column |
| a folder | every supported file under it, recursively, in sorted order; a folder written by ``Dataset.save_to_disk`` is loaded with ``load_from_disk`` |
| a glob (``data/*.jsonl``) | the matching files, sorted |
| ``hf:NAME[:CONFIG][@SPLIT]`` | ``datasets.load_dataset(NAME, CONFIG, split=SPLIT or "train", streaming=...)``: a hub name (needs network, never used by tests) or a local path / builder such as ``hf:json`` with ``data_files`` |

Bytes are bytes: ``.txt`` files are never decoded, so non-UTF-8 input is fine; a text field may
also hold ``bytes`` (a binary column).

The built-in corpus is read with ``gzip`` + ``json`` directly rather than through ``datasets``:
it is our own fixed format, twenty times faster that way, and needs no cache folder.

The held-out split is one rule (``heldout_share``, used by both sides: ``DocumentStream`` for
training, ``heldout_documents`` for evaluation): a source with an explicit held-out source
(``SourceConfig.heldout``; automatic for ``builtin``, its fixed ``valid`` files) holds out nothing
of its own documents; any other holds out the documents whose bytes hash below ``fraction``
(``is_heldout``). The choice depends on nothing but the document, so it is the same in every run,
epoch, rank and source order, and a duplicate of a held-out document is held out too.
"""
from __future__ import annotations

import glob as _glob
import gzip
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Optional, Sequence

import numpy as np

from bltkit.data import corpus as _corpus

TXT_SUFFIXES = (".txt", ".txt.gz")
JSON_SUFFIXES = tuple(s + c for s in (".jsonl", ".json") for c in ("", ".gz", ".bz2", ".xz", ".zst"))
PARQUET_SUFFIXES = (".parquet",)
SUPPORTED_SUFFIXES = TXT_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES
_BLANK_LINES = re.compile(rb"\r?\n(?:[ \t]*\r?\n)+")
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass
class SourceConfig:
    """One data source of a mixture (see the module docstring for ``path`` specs).

    ``weight``: relative share of documents drawn from this source. ``text_field``: the column of
    json / parquet / Hugging Face rows (unset: the run's ``data.text_field``, else ``text``).
    ``heldout``: an explicit held-out source spec (read with the same options); when unset the
    hash split of ``data.eval_fraction`` applies (``builtin`` uses its fixed ``valid`` files).
    ``split`` / ``config_name`` / ``data_files`` / ``streaming`` go to ``datasets.load_dataset``
    for ``hf:`` specs and saved ``DatasetDict`` folders.
    """

    path: str
    weight: float = 1.0
    text_field: Optional[str] = None
    txt_split: Literal["file", "blank_lines"] = "file"
    heldout: Optional[str] = None
    split: Optional[str] = None
    config_name: Optional[str] = None
    data_files: Optional[list[str]] = None
    streaming: bool = True

    def validate(self) -> None:
        if not self.path:
            raise ValueError("source path is empty")
        if not (self.weight > 0 and np.isfinite(self.weight)):
            raise ValueError(f"source {self.path!r}: weight must be a positive number, got {self.weight}")


def is_path_spec(spec: str) -> bool:
    """True when ``spec`` names local files (not the built-in corpus, not ``hf:NAME``)."""
    return not (_corpus.is_builtin(spec) or spec.startswith("hf:"))


def is_heldout(doc: bytes, fraction: float) -> bool:
    """True when ``doc`` belongs to the held-out share ``fraction`` (a hash of its bytes)."""
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.blake2b(doc, digest_size=8).digest(), "little")
    return h < fraction * 2.0**64


def _has_suffix(p: Path, suffixes: Sequence[str]) -> bool:
    return any(p.name.lower().endswith(s) for s in suffixes)


def _is_saved_dataset(p: Path) -> bool:
    return p.is_dir() and ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file())


def parse_hf_spec(spec: str) -> tuple[str, Optional[str], Optional[str]]:
    """``hf:NAME[:CONFIG][@SPLIT]`` -> (NAME, CONFIG, SPLIT)."""
    if not spec.startswith("hf:") or len(spec) <= 3:
        raise ValueError(f"{spec!r} is not a Hugging Face spec 'hf:NAME[:CONFIG][@SPLIT]'")
    rest, split = spec[3:], None
    if "@" in rest:
        rest, split = rest.rsplit("@", 1)
    name, config = (rest.split(":", 1) + [None])[:2]
    if not name or (config == "") or (split == ""):
        raise ValueError(f"cannot parse Hugging Face spec {spec!r}; expected 'hf:NAME[:CONFIG][@SPLIT]'")
    return name, config, split


def expand_path(spec: str) -> list[Path]:
    """Files (or saved-dataset folders) that a local ``spec`` names, sorted.

    ``FileNotFoundError`` names a missing path or a glob with no match; ``ValueError`` names a
    file of an unsupported type.
    """
    if _GLOB_CHARS.search(spec):
        hits = sorted(Path(h) for h in _glob.glob(spec, recursive=True))
        hits = [h for h in hits if _is_saved_dataset(h) or (h.is_file() and _has_suffix(h, SUPPORTED_SUFFIXES))]
        if not hits:
            raise FileNotFoundError(f"no supported data files match the pattern {spec!r} (supported: {', '.join(SUPPORTED_SUFFIXES)})")
        return hits
    p = Path(spec)
    if not p.exists():
        raise FileNotFoundError(f"data path not found: {spec!r}")
    if _is_saved_dataset(p):
        return [p]
    if p.is_dir():
        out: list[Path] = []
        for root, dirs, files in os.walk(p):
            dirs.sort()
            rootp = Path(root)
            for d in list(dirs):
                if _is_saved_dataset(rootp / d):
                    out.append(rootp / d)
                    dirs.remove(d)
            out.extend(rootp / f for f in sorted(files) if _has_suffix(rootp / f, SUPPORTED_SUFFIXES))
        if not out:
            raise FileNotFoundError(f"data folder {spec!r} holds no supported files ({', '.join(SUPPORTED_SUFFIXES)})")
        return sorted(out)
    if not _has_suffix(p, SUPPORTED_SUFFIXES):
        raise ValueError(f"data file {spec!r} has an unsupported type; supported: {', '.join(SUPPORTED_SUFFIXES)}")
    return [p]


def _field_bytes(row: dict, key: str, where: str, index: int) -> bytes:
    value = row.get(key) if isinstance(row, dict) else None
    if value is None:
        keys = sorted(k for k, v in row.items() if v is not None) if isinstance(row, dict) else []
        raise ValueError(f"{where}: row {index} has no text field {key!r} (fields present: {keys})")
    if isinstance(value, str):
        return value.encode("utf-8", errors="surrogatepass")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise ValueError(f"{where}: row {index} field {key!r} holds {type(value).__name__}, expected text or bytes")


def _iter_txt(p: Path, txt_split: str) -> Iterator[bytes]:
    data = gzip.open(p, "rb").read() if p.name.lower().endswith(".gz") else p.read_bytes()
    if txt_split == "file":
        yield data
    elif txt_split == "blank_lines":
        yield from _BLANK_LINES.split(data)
    else:
        raise ValueError(f"txt_split must be 'file' or 'blank_lines', got {txt_split!r}")


def _iter_rows(rows, key: str, where: str) -> Iterator[bytes]:
    for i, row in enumerate(rows):
        yield _field_bytes(row, key, where, i)


def _iter_builtin_file(p: Path) -> Iterator[bytes]:
    with gzip.open(p, "rb") as f:
        for i, line in enumerate(f):
            yield _field_bytes(json.loads(line), "text", str(p), i)


def _iter_hf_file(p: Path, key: str) -> Iterator[bytes]:
    import datasets

    if _is_saved_dataset(p):
        yield from _iter_saved(p, key, None)
        return
    if p.stat().st_size == 0:
        return  # an empty file holds no rows
    builder = "parquet" if _has_suffix(p, PARQUET_SUFFIXES) else "json"
    ds = _load_or_empty(lambda: datasets.load_dataset(builder, data_files=[str(p)], split="train", streaming=True))
    if ds is not None:
        yield from _iter_rows(ds, key, str(p))


def _load_or_empty(load):
    """``load()``, or None when the data holds no rows at all.

    ``datasets``' json builder reads the first table to infer the columns and lets that
    ``StopIteration`` escape when there is none (an empty ``.jsonl.gz``, a file of blank lines
    after decompression...). Inside a generator Python turns it into ``RuntimeError: generator
    raised StopIteration``; caught here, the caller sees no documents and reports an empty corpus.
    """
    try:
        return load()
    except StopIteration:
        return None


def _iter_saved(p: Path, key: str, split: Optional[str]) -> Iterator[bytes]:
    import datasets

    ds = datasets.load_from_disk(str(p))
    if isinstance(ds, datasets.DatasetDict):
        split = split or "train"
        if split not in ds:
            raise ValueError(f"saved dataset {str(p)!r} has no split {split!r}; splits: {list(ds)}")
        ds = ds[split]
    if key not in ds.column_names:
        raise ValueError(f"{p}: row 0 has no text field {key!r} (columns: {ds.column_names})")
    yield from _iter_rows(ds, key, str(p))


class DataSource:
    """One source: a finite, ordered, re-readable sequence of documents (``bytes``).

    ``documents(start)`` starts at document ``start`` of the sequence, so a loader can resume
    from a position without keeping file handles in its checkpoint.
    """

    def __init__(self, cfg: SourceConfig | str):
        self.cfg = SourceConfig(path=cfg) if isinstance(cfg, str) else cfg
        self.cfg.validate()
        self.text_field = self.cfg.text_field or "text"
        spec = self.cfg.path
        self.name = spec
        self._heldout: Optional[DataSource] | bool = False  # not looked up yet
        if _corpus.is_builtin(spec):
            self.kind = "builtin"
            self.files = _corpus.builtin_files(spec)
        elif spec.startswith("hf:"):
            self.kind = "hf"
            self.hf = parse_hf_spec(spec)
            self.files = []
        else:
            self.kind = "local"
            self.files = expand_path(spec)  # fails early, naming the path

    def heldout_source(self) -> Optional["DataSource"]:
        """The explicit held-out source (``cfg.heldout``, or ``builtin:valid`` for builtin)."""
        if self._heldout is False:
            spec = self.cfg.heldout
            if spec is None and self.kind == "builtin" and not self.name.endswith(":valid"):
                spec = _corpus.heldout_spec(self.name)
            c = self.cfg
            self._heldout = None if spec is None else DataSource(SourceConfig(
                path=spec, text_field=c.text_field, txt_split=c.txt_split, split=c.split,
                config_name=c.config_name, streaming=c.streaming))
        return self._heldout

    def _all(self) -> Iterator[bytes]:
        c = self.cfg
        if self.kind == "builtin":
            for p in self.files:
                yield from _iter_builtin_file(p)
        elif self.kind == "hf":
            yield from self._iter_hub()
        else:
            for p in self.files:
                if _is_saved_dataset(p):
                    yield from _iter_saved(p, self.text_field, c.split)
                elif _has_suffix(p, TXT_SUFFIXES):
                    yield from _iter_txt(p, c.txt_split)
                else:
                    yield from _iter_hf_file(p, self.text_field)

    def _iter_hub(self) -> Iterator[bytes]:
        import datasets

        name, config, split = self.hf
        config = config or self.cfg.config_name
        split = split or self.cfg.split or "train"
        kwargs: dict[str, Any] = {"split": split, "streaming": self.cfg.streaming}
        if self.cfg.data_files is not None:
            for f in self.cfg.data_files:
                if not _GLOB_CHARS.search(f) and not Path(f).exists():
                    raise FileNotFoundError(f"data file not found: {f!r} (data_files of {self.name!r})")
            kwargs["data_files"] = self.cfg.data_files
        ds = _load_or_empty(lambda: datasets.load_dataset(name, config, **kwargs))
        if ds is not None:
            yield from _iter_rows(ds, self.text_field, self.name)

    def documents(self, start: int = 0) -> Iterator[bytes]:
        """Documents from position ``start`` on (empty documents are skipped and not counted)."""
        i = 0
        for doc in self._all():
            if not doc:
                continue
            if i >= start:
                yield doc
            i += 1

    def __repr__(self) -> str:
        return f"DataSource({self.name!r})"


def iter_documents(paths: Sequence[str] | str, text_field: str = "text", limit_bytes: Optional[int] = None,
                   txt_split: Literal["file", "blank_lines"] = "file") -> Iterator[bytes]:
    """Every document of ``paths`` in order (raw ``bytes``), stopping once ``limit_bytes`` are out
    (the last document cut to fit, ``take_bytes``).

    Raises ``FileNotFoundError`` naming a missing path before reading anything, and ``ValueError``
    when the paths hold no document at all.
    """
    if isinstance(paths, str):
        paths = [paths]
    if not paths:
        raise ValueError("iter_documents: no paths given")
    check_byte_limit(limit_bytes)
    sources = [DataSource(SourceConfig(path=p, text_field=text_field, txt_split=txt_split)) for p in paths]
    n = 0
    for doc in take_bytes((doc for s in sources for doc in s.documents()), limit_bytes):
        n += 1
        yield doc
    if n == 0:
        raise ValueError(f"empty corpus: no documents in {list(paths)}")


def check_byte_limit(limit_bytes: Optional[int], name: str = "limit_bytes") -> None:
    """A byte cap is a whole number >= 1, or ``None`` for no cap (0 would read nothing)."""
    if limit_bytes is not None and (isinstance(limit_bytes, bool) or not isinstance(limit_bytes, int) or limit_bytes < 1):
        raise ValueError(f"{name} must be a whole number of bytes >= 1 (or none, for no limit), got {limit_bytes!r}")


def take_bytes(docs: Iterable[bytes], limit_bytes: Optional[int]) -> Iterator[bytes]:
    """``docs`` until ``limit_bytes`` bytes are out, the last one cut to what is left: a cap cuts
    inside a document, so one huge document (a single-line file) never reads past it."""
    left = limit_bytes
    for doc in docs:
        if left is not None:
            doc = doc[:left]
            left -= len(doc)
        yield doc
        if left is not None and left <= 0:
            return


def heldout_share(source: DataSource, fraction: float) -> float:
    """The share of ``source``'s own documents held out by hash: ``fraction``, or 0 when the source
    has an explicit held-out source (the one split rule; see the module docstring)."""
    return 0.0 if source.heldout_source() is not None else fraction


class DocumentStream:
    """Endless training documents of one source: held-out ones removed, epochs repeated.

    ``limit_bytes`` ends each epoch after the document that reaches that many training bytes
    (whole documents, so each one keeps its content and its precomputed entropies). Position =
    (epoch, next raw document index, training bytes so far this epoch); that is all a checkpoint
    needs. An epoch that yields no training document is an error (an empty corpus would otherwise
    loop forever).
    """

    def __init__(self, source: DataSource, heldout_fraction: float, limit_bytes: Optional[int] = None,
                 epoch: int = 0, position: int = 0, taken: int = 0):
        check_byte_limit(limit_bytes)
        self.source, self.limit = source, limit_bytes
        self.fraction = heldout_share(source, heldout_fraction)
        self.epoch, self.position, self.taken = epoch, position, taken
        self._it: Optional[Iterator[bytes]] = None

    def _next_raw(self) -> Optional[bytes]:
        if self.limit is not None and self.taken >= self.limit:
            return None
        if self._it is None:
            self._it = self.source.documents(self.position)
        return next(self._it, None)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[int, int, bytes]:
        """(epoch, index within the source, document)."""
        restarts = 0
        while True:
            doc = self._next_raw()
            if doc is None:
                if self.taken == 0 or restarts:
                    held = f" after holding out {self.fraction:.3g} of documents" if self.fraction > 0 else ""
                    raise ValueError(f"empty corpus: source {self.source.name!r} yields no training documents{held}")
                self.epoch, self.position, self.taken, self._it = self.epoch + 1, 0, 0, None
                restarts += 1
                continue
            index = self.position
            self.position += 1
            if is_heldout(doc, self.fraction):
                continue
            self.taken += len(doc)
            return self.epoch, index, doc

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "taken": self.taken}


class Mixture:
    """Documents drawn from several sources with probabilities ∝ weights, seeded.

    Each draw picks a source with a numpy PCG64 generator; the generator state and each
    source's position make up the checkpoint, so ``load_state_dict`` resumes exactly.
    """

    def __init__(self, sources: Sequence[DataSource], weights: Sequence[float], seed: int, heldout_fraction: float,
                 limit_bytes: Optional[int] = None):
        if not sources:
            raise ValueError("empty corpus: no data sources given")
        if len(weights) != len(sources):
            raise ValueError(f"{len(weights)} weights for {len(sources)} sources")
        w = np.asarray(weights, dtype=np.float64)
        if not (np.all(w > 0) and np.all(np.isfinite(w))):
            raise ValueError(f"source weights must be positive numbers, got {list(weights)}")
        self.sources = list(sources)
        self.p = w / w.sum()
        self.heldout_fraction, self.limit = heldout_fraction, limit_bytes
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.streams = [DocumentStream(s, heldout_fraction, limit_bytes) for s in self.sources]

    def __iter__(self):
        return self

    def __next__(self) -> tuple[int, int, int, bytes]:
        """(source index, epoch, index within the source, document)."""
        i = int(self.rng.choice(len(self.sources), p=self.p)) if len(self.sources) > 1 else 0
        epoch, index, doc = next(self.streams[i])
        return i, epoch, index, doc

    @property
    def epoch(self) -> int:
        """Passes completed over the most-repeated source."""
        return max(s.epoch for s in self.streams)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "streams": [s.state_dict() for s in self.streams]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["streams"]) != len(self.sources):
            raise ValueError(f"state holds {len(state['streams'])} sources, this mixture has {len(self.sources)}")
        self.rng.bit_generator.state = state["rng"]
        self.streams = [DocumentStream(s, self.heldout_fraction, self.limit, st["epoch"], st["position"], st["taken"])
                        for s, st in zip(self.sources, state["streams"])]


def heldout_documents(source: DataSource, heldout_fraction: float) -> Iterator[tuple[str, int, bytes]]:
    """One pass over the held-out documents of ``source`` (never yielded by ``DocumentStream``),
    as (source name, index within that source, document)."""
    explicit = source.heldout_source()
    if explicit is not None:
        for i, doc in enumerate(explicit.documents()):
            yield explicit.name, i, doc
        return
    for i, doc in enumerate(source.documents()):
        if is_heldout(doc, heldout_fraction):
            yield source.name, i, doc


__all__ = ["SourceConfig", "DataSource", "DocumentStream", "Mixture", "iter_documents", "heldout_documents",
           "heldout_share", "is_heldout", "is_path_spec", "expand_path", "parse_hf_spec", "SUPPORTED_SUFFIXES"]
