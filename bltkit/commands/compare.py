"""Train patching variants at matched compute and compare them (held-out bits per byte against FLOPs).

    bltkit compare compare-tiny --out runs/cmp                 # configs/experiments/compare-tiny.yaml
    bltkit compare my.yaml --out runs/cmp --only bytes --only patch-k4
    bltkit compare compare-gpu --out runs/cmp --set budget.value=2e17

Each variant (byte-level baseline, fixed-K patch training, BLT with entropy / static / space /
learned patches, the H-Net's learned chunks; docs/compare.md) is trained with the one training
loop at the budget the config names (training FLOPs or bytes), then scored on the same held-out rows. Writes OUT/<variant>/ (a bundle each),
OUT/results.json, OUT/results.md (the table) and OUT/bpb_vs_flops.png.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="comparison config: a YAML path or a shipped name under configs/experiments/")
    parser.add_argument("--out", required=True, help="output directory (one bundle a variant, results, plot)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only this variant (repeatable; a variant it initialises from runs too)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set budget.value=1e13 (repeatable)")


def run(args) -> int:
    from ..compare.config import load_compare_config
    from ..compare.report import RESULTS_MD
    from ..compare.runner import run_compare

    cfg, path = load_compare_config(args.config, args.overrides)
    cfg.select(args.only)  # an unknown variant name fails before any training
    out = Path(args.out)
    run_compare(cfg, out, source=str(path), config_dir=Path(path).resolve().parent, only=args.only)
    print((out / RESULTS_MD).read_text())
    print(f"wrote {out}")
    return 0
