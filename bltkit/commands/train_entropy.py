"""Train the byte-level entropy model (the patcher LM) with the shared training loop.

    bltkit train-entropy tiny --out runs/entropy-tiny       # configs/train/entropy-tiny.yaml (kind: entropy)

The same loop as ``bltkit train`` with the entropy task (docs/reference-semantics.md §12.2): a plain byte LM,
``model(ids) -> logits``. OUT/model/ (config.yaml + model.safetensors) loads with
``EntropyModel.from_pretrained``; OUT is also a bundle of kind ``entropy``; the held-out bits per
byte are printed and logged in OUT/metrics.jsonl.
"""
from __future__ import annotations

import argparse

from . import train as _train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _train.add_arguments(parser)


def run(args) -> int:
    from ..config import CONFIG_ROOT

    if not args.config.endswith((".yaml", ".yml")) and (CONFIG_ROOT / "train" / f"entropy-{args.config}.yaml").is_file():
        args.config = str(CONFIG_ROOT / "train" / f"entropy-{args.config}.yaml")
    return _train.run(args, kind="entropy")
