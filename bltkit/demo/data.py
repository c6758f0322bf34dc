"""The demo's data: your files in place of the built-in corpus, and held-out text to show.

``--data PATH...`` replaces ``compare.base.data.train`` (and the entropy model's training data
when the config gives it apart), so every part of the demo (entropy model, calibration, every
variant) trains on the same documents, and all are scored on the same held-out ones: ``--eval
PATH...`` when given, else the hash-chosen ``eval_fraction`` of your documents (never trained on;
the run's split, ``bltkit.training.data.heldout_documents``). Paths are checked before anything
trains.

The text patched on screen and the generation prompts default to the start of held-out
documents, so what the demo shows is text no model saw, in the style of the data it trained on.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Optional, Sequence

from .config import DemoConfig


def use_data(cfg: DemoConfig, train: Sequence[str], eval_: Sequence[str] = (), text_field: Optional[str] = None) -> None:
    """Point ``cfg`` (in place) at the sources ``train`` / ``eval_``; a missing path raises
    ``FileNotFoundError`` naming it."""
    from ..data.sources import DataSource

    if not train:
        raise ValueError("--data needs at least one path (a file, folder, glob or 'builtin')")
    for spec in list(train) + list(eval_):
        DataSource(spec)  # names a missing path before any training
    sections = [cfg.compare.base]
    if cfg.compare.entropy is not None and "data" in cfg.compare.entropy.train:
        sections.append(cfg.compare.entropy.train)
    for sec in sections:
        data = sec.setdefault("data", {})
        data["train"] = list(train)
        data["eval"] = list(eval_)
        if text_field:
            data["text_field"] = text_field


def heldout_documents(data: dict, n: int, config_dir: Optional[Path] = None) -> list[bytes]:
    """The first ``n`` non-empty held-out documents of a run's ``data:`` mapping: the ones the
    trainer holds out (``bltkit.training.data.heldout_documents``)."""
    from .. import config as cfgio
    from ..training.data import DataConfig, heldout_documents as run_heldout

    cfg = cfgio.from_dict(DataConfig, data, prefix="data").resolved(config_dir)
    return list(itertools.islice((doc for _, _, doc in run_heldout(cfg) if doc.strip()), n))


def utf8_prefix(doc: bytes, n: int) -> str:
    """The first ``n`` bytes of ``doc`` or fewer, cut at a character (and, when one is near, a space)."""
    piece = doc[:n]
    for cut in range(min(4, len(piece)) + 1):  # a character is at most 4 bytes long
        try:
            text = piece[:len(piece) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    else:  # not UTF-8 (bytes are bytes): shown with replacement characters
        return piece.decode("utf-8", errors="replace")
    cut = text.rfind(" ")
    return text[:cut + 1] if len(doc) > n and cut > len(text) // 2 else text
