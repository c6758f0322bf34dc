"""``bltkit`` command line: one sub-command a module under ``bltkit/commands/``.

Each command module defines ``add_arguments(parser)`` and ``run(args) -> int``, and its module
docstring's first line is the command's one-line help. Modules are imported only when their
command runs, so ``bltkit --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("bltkit.commands.demo", "the main job: entropy model, BLT and baselines trained and compared end to end"),
    "forward": ("bltkit.commands.forward", "run the tiny BLT forward on built-in text (smoke check)"),
    "train": ("bltkit.commands.train", "train a model (BLT, entropy model, fixed-K or byte LM) from a YAML config"),
    "train-entropy": ("bltkit.commands.train_entropy", "train the byte-level entropy model"),
    "calibrate": ("bltkit.commands.calibrate", "find the entropy threshold that gives a target mean patch length"),
    "precompute": ("bltkit.commands.precompute", "write a corpus's entropies to disk shards for training"),
    "patch": ("bltkit.commands.patch", "show text split into patches, with entropies"),
    "compare": ("bltkit.commands.compare", "train patching variants at matched compute and compare them"),
    "generate": ("bltkit.commands.generate", "generate text from a bundle"),
    "score": ("bltkit.commands.score", "bits per byte and per-byte surprisal of text under a bundle"),
    "eval": ("bltkit.commands.eval", "held-out bits per byte of data sources; downstream tasks through lm-evaluation-harness"),
    "convert": ("bltkit.commands.convert", "convert checkpoints between bltkit, Hugging Face and the reference format"),
    "bench": ("bltkit.commands.bench", "benchmark training step, entropy patching and generation"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bltkit", description="Tokenizer-free byte-level language models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_usage(sys.stderr)
            print(f"bltkit: unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"bltkit {name}", description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except (ValueError, FileNotFoundError) as e:  # user mistakes: a clear message, no traceback
        print(f"bltkit {name}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
