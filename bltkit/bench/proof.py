"""The GPU proof's summary: ``python -m bltkit.bench.proof [--smoke] OUT`` reads what
``scripts/gpu-proof.sh`` wrote into ``OUT`` and prints ``summary.md``: the stages (exit status,
seconds), the gpu tests' result line, and every figure beside its target (docs/benchmarks.md,
"The GPU proof"). Figures come only from the files; a missing file or figure is shown as missing,
never filled in.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

# (what, target, how the figure is read from the records, comparison); HF's batch-1 generation on
# the anchor's H100 is 13.5 bytes/s, hence the absolute 2,000 bytes/s beside the 150x ratio.
TARGETS = [
    ("generation batch 1, bltkit / HF", 150.0, ("generate", "ratio_bltkit_over_hf", "batch1")),
    ("generation batch 1, bytes/s", 2000.0, ("generate", "bltkit", "batch1", "bytes_per_s")),
    ("generation batch 32, aggregate bytes/s", 30000.0, ("generate", "bltkit", "batch32", "bytes_per_s")),
    ("training bench-S, bltkit / HF bytes/s", 3.0, ("train", "ratio_bltkit_over_hf")),
    ("training bench-S, MFU", 0.40, ("train", "bltkit", "mfu")),
    ("patching, bltkit / HF bytes/s", 4.0, ("patch", "ratio_bltkit_over_hf")),
]


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut off by a stage's time limit
    return out


def dig(records: list[dict], path: Iterable[str]) -> Optional[Any]:
    """``path[0]`` names the figure; the rest are keys into its record."""
    figure, *keys = path
    for rec in records:
        if rec.get("figure") != figure:
            continue
        v: Any = rec
        for k in keys:
            if not isinstance(v, dict) or k not in v:
                return None
            v = v[k]
        return v
    return None


def _fmt(v: Any) -> str:
    if v is None:
        return "missing"
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def summary(out: Path, smoke: bool = False) -> str:
    env = (out / "env.txt").read_text().strip() if (out / "env.txt").is_file() else "env.txt missing"
    lines = ["# GPU proof summary" + (" (CPU smoke: tiny sizes; the figures say nothing about a GPU)" if smoke else ""), "", "```", env, "```", "", "| stage | exit | seconds |", "|---|---|---|"]
    stages = (out / "stages.tsv").read_text().splitlines() if (out / "stages.tsv").is_file() else []
    for row in stages:
        name, rc, secs = (row.split("\t") + ["", "", ""])[:3]
        lines.append(f"| {name} | {rc}{' (time limit)' if rc in ('124', '137') else ''} | {secs} |")
    tests = (out / "gpu-tests.txt").read_text().strip().splitlines() if (out / "gpu-tests.txt").is_file() else []
    lines += ["", f"gpu tests: {tests[-1] if tests else 'no output'}", ""]

    bench = read_jsonl(out / "bench.jsonl")
    lines += ["| figure | measured | target | met |", "|---|---|---|---|"]
    for what, target, path in TARGETS:
        v = dig(bench, path)
        met = "n/a (CPU smoke)" if smoke else ("missing" if v is None else ("yes" if v >= target else "no"))
        lines.append(f"| {what} | {_fmt(v)} | >= {target:g} | {met} |")
    mem_b, mem_h = dig(bench, ("train", "bltkit", "peak_mem_gib")), dig(bench, ("train", "hf", "peak_mem_gib"))
    lines.append(f"| training peak memory GiB, bltkit vs HF | {_fmt(mem_b)} vs {_fmt(mem_h)} | <= HF | "
                 f"{'n/a (CPU smoke)' if smoke else ('missing' if None in (mem_b, mem_h) else ('yes' if mem_b <= mem_h else 'no'))} |")

    compiled = read_jsonl(out / "bench-compiled.jsonl")
    for batch in ("batch1", "batch32"):
        paths = dig(compiled, ("generate", "bltkit", batch, "paths")) or {}
        for name, fig in paths.items():
            lines.append(f"| generation {batch} {name}, bytes/s (x eager) | {_fmt(fig.get('bytes_per_s'))} "
                         f"(x{_fmt(fig.get('over_eager'))}) | | |")
    train400 = read_jsonl(out / "train-400m.jsonl")
    for key in ("bytes_per_s", "mfu", "peak_mem_gib"):
        lines.append(f"| 400m train step {key} | {_fmt(dig(train400, ('train', 'bltkit', key)))} | | |")
    lines.append(f"| 400m train step, bltkit / HF | {_fmt(dig(train400, ('train', 'ratio_bltkit_over_hf')))} | | |")

    lines += ["", "## Top ops / kernels"]
    for prof in sorted(out.glob("profiles*/profile-*.json")):
        rec = json.loads(prof.read_text())
        lines += ["", f"**{prof.parent.name}/{rec['name']}** ({rec['calls']} calls, {rec['sort']})", "",
                  "| op | calls | self us | share |", "|---|---|---|---|"]
        for t in rec["top"][:10]:
            share = f"{100 * t['share']:.1f}%" if t.get("share") is not None else ""
            lines.append(f"| `{t['op'][:70]}` | {t['count']} | {t['self_us']:,.0f} | {share} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    smoke = "--smoke" in argv
    args = [a for a in argv if a != "--smoke"]
    if len(args) != 1 or not Path(args[0]).is_dir():
        print(f"usage: python -m bltkit.bench.proof [--smoke] OUT (a directory written by scripts/gpu-proof.sh); "
              f"got {argv}", file=sys.stderr)
        return 2
    print(summary(Path(args[0]), smoke), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
