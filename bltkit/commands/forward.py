"""Run a BLT forward pass on built-in text and print what came out (a smoke check of the install).

Builds the model from a shipped config (random weights unless --model names a bundle), patches a
sentence with fixed 4-byte patches, and prints the shapes, the bits per byte of the random model
(about log2(260) = 8.02 untrained) and its top next-byte guesses.
"""
from __future__ import annotations

import argparse
import math

import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="tiny", help="model config name or YAML path (default: tiny)")
    parser.add_argument("--text", default="Bytes in, patches inside, bytes out: no tokenizer anywhere.")


def run(args) -> int:
    from ..data.vocab import encode_tensor
    from ..model import ByteLatentTransformer, load_blt_config

    model = ByteLatentTransformer(load_blt_config(args.config)).eval()
    ids = encode_tensor(args.text)[None]  # (1, T): BOS + bytes + EOS
    x, y = ids[:, :-1], ids[:, 1:]
    n = x.shape[1]
    rest = [4] * (n // 4) + ([n % 4] if n % 4 else [])
    pl = torch.tensor([[1] + rest])  # first patch BOS alone; rows sum to N + 1
    with torch.no_grad():
        logits = model(x, pl)
    nats = torch.nn.functional.cross_entropy(logits[0], y[0], reduction="sum").item()
    print(f"model: {args.config}, {model.num_parameters() / 1e6:.2f}M parameters")
    print(f"input: {n} bytes in {pl.shape[1]} patches {pl[0].tolist()}")
    print(f"logits: {tuple(logits.shape)}, bits per byte {nats / math.log(2) / n:.3f} (untrained: ~{math.log2(260):.2f})")
    return 0
