"""Generate text from a bundle: bltkit generate --model DIR [options] PROMPT...

Several prompts form one batch (each row patched and cached on its own). Greedy unless
--temperature > 0. --json prints one JSON object a prompt (prompt, text, stop_reason, new_ids);
otherwise each prompt's text on its own, separated by blank lines. --no-cache reruns the patcher
and the whole model on the full prefix for every byte (the reference's way). --speculative D
drafts D bytes past each patch boundary before one global-model call verifies them (greedy BLT
only; the same bytes). --compile compiles the one-byte step; --max-autotune compiles it with its
matrix products autotuned on the frozen weights.
"""
from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompts", nargs="+", metavar="PROMPT", help="prompt text ('' starts from BOS alone)")
    parser.add_argument("--model", required=True, metavar="DIR", help="bundle directory (a training run's output)")
    parser.add_argument("--max-new-bytes", type=int, default=256, metavar="N")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--stop", action="append", default=None, metavar="TEXT", help="stop string (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda (default: cuda when present)")
    parser.add_argument("--dtype", default=None, help="fp32 | bf16 (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--json", action="store_true", help="one JSON object a prompt")
    parser.add_argument("--no-cache", action="store_true", help="recompute everything every byte (slow; reference)")
    parser.add_argument("--stream", action="store_true", help="print text as it comes (one prompt)")
    parser.add_argument("--speculative", type=int, default=None, metavar="D",
                        help="self-speculative decoding (BLT-S), drafting D bytes past a patch boundary; greedy only")
    parser.add_argument("--compile", action="store_true", help="compile the one-byte decode step (torch.compile)")
    parser.add_argument("--max-autotune", action="store_true",
                        help="compile the step with its matrix products autotuned on the frozen weights (minutes)")


def run(args) -> int:
    from ..inference.api import load
    from ..inference.stepper import TUNED

    handle = load(args.model, device=args.device, dtype=args.dtype)
    kw = dict(max_new_bytes=args.max_new_bytes, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
              stop=args.stop, use_cache=not args.no_cache,
              speculative=False if args.speculative is None else args.speculative,
              compile=TUNED if args.max_autotune else args.compile)
    if args.stream:
        if len(args.prompts) != 1 or args.json:
            raise ValueError("--stream takes exactly one prompt and no --json")
        for piece in handle.stream(args.prompts[0], seed=args.seed, **kw):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    gens = handle.generate(list(args.prompts), seed=args.seed, details=True, **kw)
    for i, (prompt, g) in enumerate(zip(args.prompts, gens)):
        if args.json:
            print(json.dumps({"prompt": prompt, "text": g.text, "stop_reason": g.stop_reason, "new_ids": g.new_ids},
                             ensure_ascii=False))
        else:
            print(("\n" if i else "") + g.text)
    return 0
