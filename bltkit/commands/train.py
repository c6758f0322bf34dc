"""Train a model (BLT, entropy model, fixed-K or byte LM) from a YAML config: one loop for every kind.

    bltkit train tiny --out runs/tiny                      # configs/train/tiny.yaml
    bltkit train my.yaml --out runs/x --set steps=2000 --set optim.lr=1e-3
    bltkit train my.yaml --out runs/x --resume             # continue from the newest checkpoint
    bltkit train my.yaml --out runs/x --force              # replace the run already in runs/x

Writes OUT/metrics.jsonl (loss, lr, bytes, mean patch length, cumulative FLOPs, bytes/s every
step; held-out bits per byte every eval_every steps), OUT/checkpoints/step_*/ (the last
keep_checkpoints kept) and, when finished, a bundle (OUT/bundle.yaml + OUT/model/). OUT is locked
while the run writes: a second run with the same --out stops at once, naming the first one's pid.
An OUT that already holds a run or bundle needs --resume or --force. Several GPUs
or nodes: launch with torchrun (see bltkit/training/distributed.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="train config: a YAML path or a shipped name under configs/train/")
    parser.add_argument("--out", required=True, help="run directory (metrics, checkpoints, final bundle)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set steps=100 --set data.batch_size=16 (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest intact checkpoint in --out (one that does not read back is "
                             "named and passed over)")
    parser.add_argument("--force", action="store_true",
                        help="replace the run or bundle already in --out (its checkpoints, model, metrics and "
                             "config are deleted; other files are left alone)")
    parser.add_argument("--device", default=None,
                        help="auto, cpu, cuda, cuda:N, mps (default: the config's device, auto: cuda when available)")


def run(args, kind: str | None = None) -> int:
    from ..config import apply_overrides, resolve_config_path
    from ..training.config import load_train_config
    from ..training.loop import train

    overrides = list(args.overrides)
    if args.device is not None:
        overrides.append(f"device={args.device}")
    if kind is not None:
        asked = apply_overrides({}, [o for o in overrides if o.split("=", 1)[0].strip() == "kind"]).get("kind", kind)
        if asked != kind:
            raise ValueError(f"this command trains kind {kind!r} only; --set kind={asked} asks for another "
                             f"(use `bltkit train` for that)")
        overrides.append(f"kind={kind}")
    path = resolve_config_path(args.config, "train")
    cfg = load_train_config(path, overrides)
    if kind is not None and cfg.kind != kind:
        raise ValueError(f"{path} trains kind {cfg.kind!r}, not {kind!r}")
    result = train(cfg, Path(args.out), resume=args.resume, force=args.force,
                   config_dir=Path(path).resolve().parent)
    if result.bpb:
        first, last = result.bpb[0], result.bpb[-1]
        print(f"held-out bits per byte: {first[1]:.4f} at step {first[0]} -> {last[1]:.4f} at step {last[0]}")
    print(f"wrote {args.out}")
    return 0
