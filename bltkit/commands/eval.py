"""Evaluate a bundle: held-out bits per byte of data sources.

  bltkit eval --model runs/tiny builtin:valid                     # bits per byte, per source and over all
  bltkit eval --model runs/tiny builtin/kjv:valid data/*.jsonl --json

DATA is any source spec training accepts (builtin:valid, files, folders, globs, hf:NAME...);
each document is scored on its own after BOS, bytes are its raw bytes (never BOS, EOS or
padding), and bits per byte is the sum of nats over the sum of bytes, with a standard error over
documents. Documents longer than --window are scored in windows: each later window scores new
bytes with at least --overlap bytes of context (docs/evaluation.md). On CUDA the model runs in
bf16 unless --dtype says otherwise. --json prints one JSON object with everything.
"""
from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", nargs="*", metavar="DATA", help="data source specs to score (bits per byte)")
    parser.add_argument("--model", required=True, metavar="DIR", help="bundle directory")
    parser.add_argument("--window", type=int, default=None, metavar="W",
                        help="most bytes one forward reads, BOS included (default 4096)")
    parser.add_argument("--overlap", type=int, default=None, metavar="C",
                        help="least context in bytes of a byte scored by a later window (default: W // 4)")
    parser.add_argument("--batch-size", type=int, default=8, metavar="N", help="rows a forward (default 8)")
    parser.add_argument("--heldout", type=float, default=None, metavar="FRACTION",
                        help="score only the documents training holds out of each source (its held-out split, "
                             "or the hash split of this fraction)")
    parser.add_argument("--max-docs", type=int, default=None, metavar="N", help="at most N documents a source")
    parser.add_argument("--text-field", default="text", help="text column of JSON/parquet sources (default: text)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda (default: cuda when present)")
    parser.add_argument("--dtype", default=None, help="fp32 | bf16 (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    if not args.data:
        raise ValueError("nothing to evaluate: give DATA sources (bits per byte)")
    from ..evaluation.bpb import evaluate_sources, format_report
    from ..inference.api import load

    handle = load(args.model, device=args.device, dtype=args.dtype)
    report = evaluate_sources(handle, args.data, window=args.window, overlap=args.overlap, batch_size=args.batch_size,
                              text_field=args.text_field, heldout_fraction=args.heldout, max_documents=args.max_docs,
                              progress=not args.no_progress)
    if args.json:
        json.dump({"model": args.model, "bits_per_byte": report.to_dict()}, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        print(format_report(report))
    return 0
