"""Bits per byte and per-byte surprisal of text under a bundle: bltkit score --model DIR TEXT...

Each TEXT is scored after BOS (add --eos to score the end of text too). Prints one line a text
(bits per byte, bytes) and, with --bytes, every byte with its surprisal in bits; --json prints one
JSON object a text.
"""
from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("texts", nargs="+", metavar="TEXT")
    parser.add_argument("--model", required=True, metavar="DIR", help="bundle directory")
    parser.add_argument("--eos", action="store_true", help="also score EOS after the text")
    parser.add_argument("--bytes", action="store_true", help="list every byte's surprisal")
    parser.add_argument("--json", action="store_true", help="one JSON object a text")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)


def run(args) -> int:
    from ..inference.api import load

    handle = load(args.model, device=args.device, dtype=args.dtype)
    for text in args.texts:
        s = handle.score(text, eos=args.eos)
        if args.json:
            print(json.dumps({"text": text, "bits_per_byte": s.bits_per_byte, "bytes": len(s.bytes),
                              "surprisal_bits": s.surprisal, "patch_lengths": s.patch_lengths}, ensure_ascii=False))
            continue
        print(f"{s.bits_per_byte:.4f} bits/byte over {len(s.surprisal)} predictions ({len(s.bytes)} bytes): {text!r}")
        if args.bytes:
            labels = [bytes([b]) for b in s.bytes] + ([b"<eos>"] if args.eos else [])
            for lab, bits in zip(labels, s.surprisal):
                print(f"  {lab!r:>10} {bits:7.3f}")
    return 0
