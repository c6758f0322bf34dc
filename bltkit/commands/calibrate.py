"""Find the entropy threshold that gives a target mean patch length on data, and save it.

    bltkit calibrate --entropy-model runs/entropy --target-mean 4.5 builtin
    bltkit calibrate --entropy-model runs/entropy --target-mean 6 --monotonic data/*.jsonl

Reads documents (BOS + bytes + EOS, as training does) until --sample-bytes (the last one cut to
fit, so one long document never reads past it), computes their entropies once, and bisects the
threshold so that Σ ids / Σ patches is closest to the target (global threshold, or the relative
one with --monotonic). Prints the achieved mean and a
histogram of patch lengths and writes DIR/patcher.yaml, which `bltkit patch`, `precompute`, the
trainer and inference read. See entropy_model/calibrate.py and docs/reference-semantics.md §4.2.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", nargs="+", help="data sources: files, folders, globs or 'builtin'")
    parser.add_argument("--entropy-model", required=True, help="entropy model directory; patcher.yaml is written there")
    parser.add_argument("--target-mean", type=float, default=4.5, help="target mean patch length in bytes (default 4.5)")
    parser.add_argument("--monotonic", action="store_true", help="calibrate the relative (approximate monotonic) threshold")
    parser.add_argument("--threshold-add", type=float, default=None,
                        help="fixed relative threshold of the global + monotonic rule (calibrates the global one)")
    parser.add_argument("--max-patch-length", type=int, default=None, help="split longer patches (applied while calibrating)")
    parser.add_argument("--sample-bytes", type=int, default=1_000_000, help="bytes of data to sample, >= 1 (default 1,000,000)")
    parser.add_argument("--fp32-entropies", action="store_true", help="threshold float32 entropies instead of "
                        "float16-rounded ones (recorded in patcher.yaml as entropies_fp16: false)")
    parser.add_argument("--dry-run", action="store_true", help="print the result without writing patcher.yaml")


def run(args) -> int:
    from entropy_model.calibrate import calibrate_directory, histogram_text

    res = calibrate_directory(args.entropy_model, args.data, args.target_mean, monotonic=args.monotonic,
                              sample_bytes=args.sample_bytes, threshold_add=args.threshold_add,
                              max_patch_length=args.max_patch_length, write=not args.dry_run,
                              entropies_fp16=not args.fp32_entropies)
    kind = "relative (monotonic)" if args.monotonic else "global"
    print(f"sample: {res.documents} documents, {res.ids - 2 * res.documents} bytes ({res.ids} ids with BOS/EOS)")
    print(f"{kind} threshold {res.threshold:.6f} nats: mean patch length {res.achieved_mean:.3f} "
          f"(target {res.target_mean}), {res.patches} patches")
    print("patch length histogram:")
    print(histogram_text(res.histogram))
    off = abs(res.achieved_mean - res.target_mean) / res.target_mean
    if off > 0.05:
        print(f"warning: the achieved mean is {100 * off:.1f}% off the target: this sample's entropies do not "
              "allow closer (too little data, or a target outside what the rule can reach)")
    if not args.dry_run:
        print(f"wrote {args.entropy_model}/patcher.yaml")
    return 0
