"""Evaluate a bundle: held-out bits per byte of data sources, and downstream tasks through
lm-evaluation-harness.

  bltkit eval --model runs/tiny builtin:valid                     # bits per byte, per source and over all
  bltkit eval --model runs/tiny builtin/kjv:valid data/*.jsonl --json
  bltkit eval --model runs/tiny --tasks hellaswag,arc_easy        # needs: pip install "bltkit[eval]"
  bltkit eval --model runs/tiny --tasks my_task --include-path my_tasks/

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
    parser.add_argument("--tasks", default=None, metavar="A,B", help="lm-evaluation-harness tasks, comma-separated")
    parser.add_argument("--include-path", default=None, metavar="DIR", help="a folder of local task YAMLs for --tasks")
    parser.add_argument("--no-builtin-tasks", action="store_true",
                        help="find --tasks in --include-path only (skips indexing the harness's built-in tasks)")
    parser.add_argument("--num-fewshot", type=int, default=None, metavar="N")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="at most N examples a task")
    parser.add_argument("--window", type=int, default=None, metavar="W",
                        help="most ids one forward reads, BOS included (default: the handle's max_context, 16384)")
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
    if not args.data and not args.tasks:
        raise ValueError("nothing to evaluate: give DATA sources (bits per byte) and/or --tasks")
    if args.include_path and not args.tasks:
        raise ValueError("--include-path names task folders: it needs --tasks")
    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else []
    if args.tasks and not all(tasks):
        raise ValueError(f"--tasks {args.tasks!r} holds an empty task name")
    if tasks:
        from ..evaluation.tasks import require_harness

        require_harness()  # before loading anything, so a missing extra is the first thing said
    from ..inference.api import load

    handle = load(args.model, device=args.device, dtype=args.dtype)
    out: dict = {"model": args.model}
    if args.data:
        from ..evaluation.bpb import evaluate_sources, format_report

        report = evaluate_sources(handle, args.data, window=args.window, overlap=args.overlap,
                                  batch_size=args.batch_size, text_field=args.text_field,
                                  heldout_fraction=args.heldout, max_documents=args.max_docs,
                                  progress=not args.no_progress)
        out["bits_per_byte"] = report.to_dict()
        if not args.json:
            print(format_report(report))
    if tasks:
        from ..evaluation.tasks import format_results, run_tasks

        results = run_tasks(handle, tasks, include_path=args.include_path, builtin_tasks=not args.no_builtin_tasks,
                            num_fewshot=args.num_fewshot, limit=args.limit, batch_size=args.batch_size,
                            window=args.window, overlap=args.overlap, progress=not args.no_progress)
        out["tasks"] = results
        if not args.json:
            print(("\n" if args.data else "") + format_results(results))
    if args.json:
        json.dump(out, sys.stdout, ensure_ascii=False, default=str)
        sys.stdout.write("\n")
    return 0
