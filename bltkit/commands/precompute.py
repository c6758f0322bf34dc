"""Write a corpus's entropies to disk shards for training (resumable).

    bltkit precompute --entropy-model runs/entropy builtin --out runs/entropies

Every document (BOS + bytes + EOS) gets its per-id entropies as float16 in safetensors shards,
listed in OUT/index.json with patch statistics per source (using the model's calibrated
patcher.yaml, or --threshold). Rerunning the same command after an interruption continues where
it stopped; finished shards are never recomputed. The entropy model runs on --device (a CUDA GPU
when there is one) in --precision; index.json records the precision it resolved to. Read back with
entropy_model.precompute.EntropyShards(OUT). See entropy_model/precompute.py.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", nargs="+", help="data sources: files, folders, globs or 'builtin'")
    parser.add_argument("--entropy-model", required=True, help="entropy model directory")
    parser.add_argument("--out", required=True, help="output directory (index.json + shards)")
    parser.add_argument("--shard-docs", type=int, default=256, help="documents a shard (default 256)")
    parser.add_argument("--limit-bytes", type=int, default=None, help="stop after this many bytes of data (>= 1; the last document is cut to fit)")
    parser.add_argument("--threshold", type=float, default=None, help="threshold for the statistics, of the "
                        "model's calibrated scheme (default: its patcher.yaml)")
    parser.add_argument("--batch-size", type=int, default=16, help="chunks a forward pass")
    parser.add_argument("--device", default="auto", help="auto (a CUDA GPU when there is one), cpu, cuda, cuda:N")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="what the entropy model computes in (default auto: bf16 autocast on CUDA, fp32 on "
                        "a CPU; bf16 is faster on a CPU with bf16 matrix units, docs/benchmarks.md); recorded "
                        "in index.json, and a rerun in another precision is refused")


def run(args) -> int:
    from bltkit.runtime import resolve_device
    from entropy_model.calibrate import histogram_text
    from entropy_model.precompute import precompute

    index = precompute(args.entropy_model, args.data, args.out, shard_docs=args.shard_docs,
                       limit_bytes=args.limit_bytes, threshold=args.threshold, batch_size=args.batch_size,
                       device=resolve_device(args.device), precision=args.precision)
    print(f"{args.out}: {index['documents']} documents in {len(index['shards'])} shards "
          f"({index['computed']} computed now){'' if index['finished'] else ', not finished'}")
    for src, s in index["stats"].items():
        mean = s["mean_patch_length"]
        print(f"{src}: {s['documents']} documents, {s['bytes']} bytes"
              + (f", mean patch length {mean:.3f}" if mean else " (no threshold: no patch statistics)"))
        if s["histogram"]:
            print(histogram_text({int(k): v for k, v in s["histogram"].items()}))
    return 0
