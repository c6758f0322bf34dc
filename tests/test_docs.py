"""Every example in README.md and docs/*.md runs as written.

The fenced ```python and ```bash blocks of each page run in order, in a fresh directory (so a
page's later blocks may use what its earlier ones made: ``runs/...``, ``my_data.jsonl``), python
blocks with this interpreter and bash blocks with ``bash -euo pipefail``. A block preceded by
``<!-- skip-doc-test: REASON -->`` is not run (GPUs, torchrun across machines, the test suite
itself); such blocks must give a reason and stay few. The README's first block (the install +
demo and install + test commands) is exempt: CI runs it (tests/test_readme_cli.py).

The pages use tiny configs and step counts, so the runs are the documented ones, not stand-ins.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bltkit.cli import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^(?P<fence>`{3,})(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=fence)[ \t]*$", re.S | re.M)
SKIP = re.compile(r"^<!--\s*skip-doc-test:\s*(?P<reason>[^>]*?)\s*-->\s*$")
MAX_SKIPPED = 8  # across all pages: skipped examples are the exception


def blocks(page: Path) -> list[dict]:
    """Fenced blocks of ``page``: language, body, line, skip reason (None when it runs)."""
    text = page.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        out.append({"lang": m.group("lang"), "body": m.group("body"), "line": text.count("\n", 0, m.start()) + 1,
                    "skip": skip.group("reason") if skip else None})
    if page.name == "README.md" and out:
        out[0] = dict(out[0], skip="the README's install + demo / test commands (CI runs them)")
    return out


def runnable(page: Path) -> list[dict]:
    return [b for b in blocks(page) if b["lang"] in ("python", "bash") and b["skip"] is None]


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")  # this env's bltkit
    return env


def test_pages_and_their_examples_are_found():
    names = [p.name for p in PAGES]
    for required in ("README.md", "architecture.md", "patching.md", "training.md", "fixed-k.md", "contributing.md"):
        assert required in names, f"docs page {required} is missing"
    assert sum(len(runnable(p)) for p in PAGES) >= 15
    assert runnable(ROOT / "README.md"), "the README has no runnable example"


def test_skipped_examples_say_why_and_are_few():
    skipped = [(p.name, b["line"], b["skip"]) for p in PAGES for b in blocks(p)[(p.name == "README.md"):]
               if b["skip"] is not None]
    for name, line, reason in skipped:
        assert len(reason) >= 8, f"{name}:{line}: skip-doc-test needs a reason"
    assert len(skipped) <= MAX_SKIPPED, f"too many skipped examples: {skipped}"


def test_skip_markers_sit_right_before_a_block():
    for p in PAGES:
        text = p.read_text(encoding="utf-8")
        for m in re.finditer(r"^<!--\s*skip-doc-test", text, re.M):  # a marker line (prose may quote one)
            rest = text[m.end():]
            after = rest[rest.index("-->") + 3:].lstrip(" \t\n")
            line = text.count("\n", 0, m.start()) + 1
            assert after.startswith("```"), f"{p.name}:{line}: skip-doc-test must come right before a fenced block"


def test_relative_links_resolve():
    for p in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", p.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            if target.endswith(".png"):  # pictures written by a run (runs/...), not shipped
                continue
            assert (p.parent / target).exists(), f"{p.name}: link to {target} does not resolve"


def test_readme_cli_table_lists_every_command():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in COMMANDS:
        assert f"`bltkit {name}" in text, f"README's CLI table does not list `bltkit {name}`"


@pytest.mark.parametrize("page", [p for p in PAGES if runnable(p)], ids=lambda p: p.name)
def test_examples_run(page, tmp_path):
    env = _env()
    for b in runnable(page):
        where = f"{page.name}:{b['line']} ({b['lang']})"
        cmd = [sys.executable, "-c", b["body"]] if b["lang"] == "python" else ["bash", "-euo", "pipefail", "-c", b["body"]]
        r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{where} failed (exit {r.returncode}):\n{b['body']}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}"
