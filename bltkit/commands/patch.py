"""Show text split into patches, with each byte's entropy (docs/reference-semantics.md §4).

    bltkit patch --entropy-model runs/entropy "The quick brown fox"        # calibrated threshold
    bltkit patch --scheme static --patch-size 4 "The quick brown fox"
    bltkit patch --model runs/blt --json "Hello"                           # a bundle's patcher
    bltkit patch --model runs/hnet "The quick brown fox"                   # an H-Net's learned chunks
    bltkit patch --model runs/blt-learned "The quick brown fox"            # a BLT's learned patches
    echo text | bltkit patch --scheme space -

The text is patched as a document prefix: BOS + its bytes (no EOS), include_next_token=False.
BOS always forms the first 1-byte patch and is left out of what is shown, so the patch lengths
sum to N, the number of bytes of the text. The entropy shown for byte k is that of its own
prediction (from BOS and bytes < k): with the global rule byte k > 0 starts a patch when it
exceeds the threshold (strict, nats). ``--json`` prints
``{"bytes": N, "patch_lengths": [...], "entropies": [...]}`` (entropies null without a model).
Settings come from, lowest first: the entropy model's patcher.yaml, the bundle's patcher, then
these flags (bltkit.patching.resolve_patcher, as training and bltkit.load use); a flag that
changes the scheme drops the stored threshold.
"""
from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", help="text to patch ('-' reads standard input)")
    parser.add_argument("--scheme", choices=["entropy", "monotonic", "static", "space", "byte"], default=None,
                        help="patching scheme (default: the model's calibrated scheme, else entropy)")
    parser.add_argument("--entropy-model", default=None, help="entropy model directory (config.yaml + model.safetensors)")
    parser.add_argument("--model", default=None, help="bundle directory; its entropy model is DIR/entropy_model/")
    parser.add_argument("--threshold", type=float, default=None, help="global (entropy) or relative (monotonic) threshold, nats")
    parser.add_argument("--threshold-add", type=float, default=None, help="relative threshold of the global + monotonic rule")
    parser.add_argument("--patch-size", type=int, default=None, help="K of the static scheme (default 4)")
    parser.add_argument("--max-patch-length", type=int, default=None, help="split patches longer than this")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the text view")
    parser.add_argument("--png", default=None, help="also draw entropies, threshold and boundaries to this PNG")


def _settings(args):
    """The patcher settings and its entropy model directory (``bltkit.patching.resolve_patcher``:
    the model's patcher.yaml, then the bundle's patcher, then these flags)."""
    from ..patching.config import PatcherConfig, resolve_patcher

    if args.model and args.entropy_model:
        raise ValueError("give --model (a bundle) or --entropy-model, not both")
    flags = PatcherConfig(scheme=args.scheme, threshold=args.threshold, threshold_add=args.threshold_add,
                          patch_size=args.patch_size, max_patch_length=args.max_patch_length)
    if flags.needs_scores and not (args.model or args.entropy_model):
        raise ValueError(f"scheme {flags.scheme or 'entropy'!r} needs an entropy model: give --entropy-model DIR "
                         "or --model BUNDLE (or choose --scheme static, space or byte)")
    if args.model:
        from ..bundle import bundle_patcher

        cfg = bundle_patcher(args.model, overrides=flags)
    else:
        cfg = resolve_patcher(entropy_model=args.entropy_model, overrides=flags)
    return cfg, cfg.entropy_model


def _learned(args, data: bytes, unit: str) -> int:
    """An H-Net bundle or a BLT with learned boundaries: the chunks (patches) its router chose
    (docs/hnet.md, docs/patching.md), with each byte's boundary probability p (one opens where
    p > 0.5). BOS opens the first and is left out."""
    from ..inference.api import load

    given = [f for f, v in (("--scheme", args.scheme), ("--entropy-model", args.entropy_model),
                            ("--threshold", args.threshold), ("--threshold-add", args.threshold_add),
                            ("--patch-size", args.patch_size), ("--max-patch-length", args.max_patch_length),
                            ("--png", args.png)) if v is not None]
    if given:
        what = "an H-Net bundle, whose chunks" if unit == "chunk" else "a BLT bundle whose patches"
        raise ValueError(f"{args.model} is {what} are learned; these options do not apply to it: {', '.join(given)}")
    res = load(args.model).patch(data)
    lengths = [n - 1 if k == 0 else n for k, n in enumerate(res.lengths)]  # BOS left out of the first chunk
    probs = res.boundary_probs[1:]
    if lengths and lengths[0] == 0:
        lengths = lengths[1:]
    if args.json:
        print(json.dumps({"bytes": len(data), "patch_lengths": lengths, "entropies": None,
                          "boundary_probs": [round(float(v), 4) for v in probs]}))
        return 0
    from ..patching.view import learned_view

    print(learned_view(data, lengths, probs, unit))
    return 0


def run(args) -> int:
    import torch

    from ..data.vocab import encode_tensor
    from ..patching.patcher import Patcher

    import os

    # Bytes are bytes: standard input is read undecoded, and an argument gets back the bytes the
    # shell passed (Python decodes argv with surrogateescape; os.fsencode undoes exactly that).
    data = sys.stdin.buffer.read() if args.text == "-" else os.fsencode(args.text)
    if args.model:
        from ..bundle import read_bundle

        meta = read_bundle(args.model)
        if meta.kind == "hnet":
            return _learned(args, data, "chunk")
        if meta.kind == "blt" and meta.patcher is not None and meta.patcher.learned:
            return _learned(args, data, "patch")
    cfg, em_dir = _settings(args)
    scorer = None
    if em_dir is not None:
        from entropy_model.model import EntropyModel

        scorer = EntropyModel.from_pretrained(em_dir)
    patcher = Patcher(cfg, scorer=scorer)
    ids = encode_tensor(data, bos=True, eos=False)  # (N + 1,)
    res = patcher(ids[None], include_next_token=False)
    lengths = res.rows()[0][1:]  # drop the BOS patch: lengths over the text's bytes, sum N
    n = len(data)
    ents = None
    if res.scores is not None:
        ents = res.scores[0, :n]
    elif scorer is not None:
        ents = patcher.entropies([ids])[0][:n]
    ent_list = None if ents is None else [round(float(v), 4) for v in ents]
    if args.png:
        if ent_list is None:
            raise ValueError("--png draws entropies: give --entropy-model DIR or --model BUNDLE")
        from ..patching.plot import plot_text_patches

        try:
            plot_text_patches(args.png, data, lengths, ent_list, cfg)
        except ImportError as e:
            raise ValueError(str(e)) from None
    if args.json:
        print(json.dumps({"bytes": n, "patch_lengths": lengths, "entropies": ent_list}))
        return 0
    from ..patching.view import text_view

    print(text_view(data, lengths, None if ents is None else ents.tolist(), cfg))
    if args.png:
        print(f"wrote {args.png}")
    return 0
