"""The built-in corpus: real public-domain / permissively licensed English text shipped as package
data (``bltkit/corpus/``, provenance in its README), so training and evaluation run offline.

Name it as a data source with ``"builtin"`` (training split) or ``"builtin:valid"`` (the fixed
held-out split); ``"builtin:train"`` is the same as ``"builtin"``. A single sub-corpus is named
``"builtin/kjv"``, ``"builtin/jargon:valid"`` and so on.
"""
from __future__ import annotations

from pathlib import Path

BUILTIN = "builtin"
SPLITS = ("train", "valid")


def builtin_corpus_path() -> Path:
    """Folder that holds the built-in corpus files (``<name>.<split>.jsonl.gz``)."""
    return Path(__file__).resolve().parent.parent / "corpus"


def builtin_names() -> list[str]:
    """Sub-corpora shipped, e.g. ``['devil', 'jargon', 'kjv', 'pydoc']``."""
    return sorted({p.name.split(".")[0] for p in builtin_corpus_path().glob("*.train.jsonl.gz")})


def is_builtin(spec: str) -> bool:
    """True when ``spec`` names the built-in corpus (``builtin``, ``builtin:valid``, ``builtin/kjv``...)."""
    return spec == BUILTIN or spec.startswith(BUILTIN + ":") or spec.startswith(BUILTIN + "/")


def builtin_files(spec: str = BUILTIN) -> list[Path]:
    """The files ``spec`` names, sorted; ``ValueError`` naming the bad part otherwise."""
    if not is_builtin(spec):
        raise ValueError(f"{spec!r} does not name the built-in corpus (use 'builtin', 'builtin:valid', 'builtin/kjv')")
    rest = spec[len(BUILTIN):]
    split = "train"
    if ":" in rest:
        rest, split = rest.split(":", 1)
    if split not in SPLITS:
        raise ValueError(f"built-in corpus split {split!r} in {spec!r} is not one of {list(SPLITS)}")
    names = builtin_names()
    if rest.startswith("/"):
        name = rest[1:]
        if name not in names:
            raise ValueError(f"built-in corpus has no part {name!r} (in {spec!r}); parts: {names}")
        names = [name]
    elif rest:
        raise ValueError(f"cannot parse built-in corpus spec {spec!r}")
    files = [builtin_corpus_path() / f"{n}.{split}.jsonl.gz" for n in names]
    missing = [str(f) for f in files if not f.is_file()]
    if missing or not files:
        raise FileNotFoundError(f"built-in corpus files missing (broken install?): {missing or builtin_corpus_path()}")
    return files


def heldout_spec(spec: str) -> str:
    """The held-out counterpart of a built-in spec: ``builtin/kjv`` -> ``builtin/kjv:valid``."""
    base = spec.split(":", 1)[0]
    return base + ":valid"


__all__ = ["BUILTIN", "builtin_corpus_path", "builtin_names", "is_builtin", "builtin_files", "heldout_spec"]
