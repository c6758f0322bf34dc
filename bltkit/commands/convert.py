"""Convert checkpoints between bltkit, Hugging Face transformers' BLT and the reference format.

    bltkit convert --from hf SRC OUT          HF save_pretrained directory -> bltkit bundle
    bltkit convert --to hf SRC OUT            bltkit bundle (or model directory) -> HF directory
    bltkit convert --from reference SRC OUT   reference params.json + consolidated.pth -> bltkit bundle

The converted model gives the same logits as the source for the same ids and patch lengths.
HF's BLT differs from the reference in attention masks and cross-attention details
(docs/reference-semantics.md §16); bltkit holds both behaviours as config options, so --from hf and
--from reference are exact. --to hf refuses a model whose HF counterpart would compute something
else (sliding-window or EOS-reset local attention, block-causal global attention, ...) unless
--allow-semantic-change is given, and then it lists each change. Only safetensors (and, for the
reference, torch.load with weights_only=True) are read; nothing is downloaded.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from", dest="from_format", choices=["hf", "reference"],
                           help="convert a foreign checkpoint SRC into a bltkit bundle OUT")
    direction.add_argument("--to", dest="to_format", choices=["hf"],
                           help="convert a bltkit bundle or model directory SRC into format OUT")
    parser.add_argument("src", help="source directory")
    parser.add_argument("out", help="output directory (created; must be empty unless --force)")
    parser.add_argument("--allow-semantic-change", action="store_true",
                        help="--to hf: convert even when HF would compute different logits (each change is listed)")
    parser.add_argument("--entropy-model", default=None,
                        help="--from reference: the entropy model's directory (params.json + consolidated.pth); "
                             "default SRC/entropy_model when present")
    parser.add_argument("--force", action="store_true", help="replace a non-empty OUT")


def run(args) -> int:
    from ..interop import convert

    if args.entropy_model is not None and args.from_format != "reference":
        raise ValueError("--entropy-model applies to --from reference only (HF keeps its patcher inside the checkpoint)")
    if args.allow_semantic_change and args.to_format is None:
        raise ValueError("--allow-semantic-change applies to --to hf only (imports are exact)")
    if args.from_format == "hf":
        report = convert.hf_to_bundle(args.src, args.out, force=args.force)
        what = "bltkit bundle"
    elif args.from_format == "reference":
        report = convert.reference_to_bundle(args.src, args.out, entropy_dir=args.entropy_model, force=args.force)
        what = "bltkit bundle"
    else:
        report = convert.blt_to_hf(args.src, args.out, allow_semantic_change=args.allow_semantic_change,
                                   force=args.force)
        what = "Hugging Face BltForCausalLM directory"
    print(f"wrote {what}: {report.out}")
    for line in report.config_lines:
        print(f"  {line}")
    for change in report.semantic_changes:
        print(f"  semantic change: {change}")
    for note in report.notes:
        print(f"  note: {note}")
    return 0
