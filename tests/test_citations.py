"""The repository stands on its own: code, tests, docs and configs cite only the repo's own pages
(``docs/X.md §N``) or papers, and every cited section exists.

A reader who checks a comment against the rule it cites must find that rule in the checkout:
notes kept beside the repository, numbered "pitfalls" of such notes and paths outside the tree
are not part of what a user gets.
"""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("*.py", "*.md", "*.yaml", "*.yml", "*.toml", "*.sh", "*.cfg", "*.txt")
SKIP_DIRS = {".git", ".venv", "build", "runs", "out", "__pycache__", ".pytest_cache"}
HERE = Path(__file__).resolve()

# Citations of material that is not in the repository. Built from parts so this file does not
# match itself when the patterns are shown in a failure.
OUTSIDE = [
    ("notes beside the repository", re.compile("blt" + r"-reference")),
    ("a numbered pitfall of outside notes", re.compile(r"\b[Pp]itfalls? \d")),
    ("a page that is not in docs/", re.compile(r"\b(?:patch-training|layout|dynamic-chunking)\.md")),
    ("a path outside the repository", re.compile(r"(?:/work/|\.\./shared|(?<![\w-])shared/(?:anchors|design|runs))")),
    ("the anchor's script outside the repository", re.compile(r"hf_blt" + r"_bench|(?<![\w-])anchors/")),
    ("measurement notes not cited as docs/measurement.md",
     re.compile(r"(?<![/\[(\w-])measurement\.md(?!\]\()")),
]

# ``docs/X.md §N`` (or a markdown link ``[X.md](X.md) §N`` inside docs/), then ``, §M`` / ``-§M``.
CITE = re.compile(r"(?:docs/|\]\()?(?P<page>[\w-]+)\.md\)? §(?P<first>\d+(?:\.\d+)*)"
                  r"(?P<chain>(?:\s*(?:,|-|–|and)\s*§\d+(?:\.\d+)*)*)")
CHAINED = re.compile(r"§(\d+(?:\.\d+)*)")
PAPER = re.compile(r"(?:[Pp]aper(?:'s)?|arXiv \S+) §\d+(?:\.\d+)*(?:\s*(?:,|and)\s*§\d+(?:\.\d+)*)*")
HEADING = re.compile(r"^#{2,4} §(?P<num>\d+(?:\.\d+)*)\b")
ITEM = re.compile(r"^(\d+)\. ")


def scanned_files() -> list[Path]:
    out = []
    for pattern in SCANNED:
        for p in ROOT.rglob(pattern):
            rel = p.relative_to(ROOT)
            if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts):
                continue
            if p.resolve() == HERE:
                continue
            out.append(p)
    return sorted(set(out))


def sections(page: Path) -> set[str]:
    """A page's numbered headings (``## §N``, ``### §N.M``), and the items of a numbered list
    directly under a heading ``§N`` as ``§N.i``."""
    out, current = set(), None
    for line in page.read_text(encoding="utf-8").splitlines():
        h = HEADING.match(line)
        if h:
            current = h.group("num")
            out.add(current)
        elif line.startswith("#"):
            current = None
        elif current is not None and (item := ITEM.match(line)):
            out.add(f"{current}.{item.group(1)}")
    return out


def test_the_scan_sees_the_package_tests_docs_and_configs():
    names = {p.relative_to(ROOT).as_posix() for p in scanned_files()}
    for must in ("README.md", "docs/reference-semantics.md", "bltkit/model/blt.py", "tests/test_model.py",
                 "entropy_model/model.py", "pyproject.toml"):
        assert must in names
    assert any(n.startswith("bltkit/configs/") and n.endswith(".yaml") for n in names)


def test_no_citation_of_material_outside_the_repository():
    found = []
    for p in scanned_files():
        for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for what, rx in OUTSIDE:
                if rx.search(line):
                    found.append(f"{p.relative_to(ROOT)}:{i}: {what}: {line.strip()[:120]}")
    assert not found, "citations of material outside the repository:\n" + "\n".join(found)


def test_every_cited_section_exists():
    """Every ``docs/X.md §N`` names a page in docs/ with a heading ``## §N``; so does every ``§M``
    chained after it on the same line."""
    bad, seen = [], 0
    for p in scanned_files():
        for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for m in CITE.finditer(line):
                page = ROOT / "docs" / f"{m.group('page')}.md"
                nums = [m.group("first")] + CHAINED.findall(m.group("chain"))
                seen += len(nums)
                where = f"{p.relative_to(ROOT)}:{i}"
                if not page.is_file():
                    bad.append(f"{where}: docs/{page.name} does not exist")
                    continue
                missing = [n for n in nums if n not in sections(page)]
                if missing:
                    bad.append(f"{where}: docs/{page.name} has no section {', '.join('§' + n for n in missing)}")
    assert seen > 100, f"only {seen} section citations found: the pattern no longer matches the citation style"
    assert not bad, "\n".join(bad)


def test_no_section_sign_without_a_page():
    """A ``§N`` outside the section pages belongs to a cited page on its line or to a paper, so no
    reader has to guess which document it means."""
    bad = []
    section_pages = {pg for pg in (ROOT / "docs").glob("*.md") if sections(pg)}
    for p in scanned_files():
        text_lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
        for i, line in enumerate(text_lines, 1):
            if "§" not in line:
                continue
            rest = PAPER.sub("", CITE.sub("", line))
            if "§" not in rest:
                continue
            if p in section_pages:  # a page's bare §N refers to its own sections
                own = sections(p)
                missing = [n for n in CHAINED.findall(rest) if n not in own]
                if missing:
                    bad.append(f"{p.relative_to(ROOT)}:{i}: no own section {missing}")
                continue
            bad.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()[:120]}")
    assert not bad, "section signs that name no page:\n" + "\n".join(bad)


@pytest.mark.parametrize("page", ["reference-semantics.md", "measurement.md"])
def test_section_pages_are_numbered_and_linked(page):
    path = ROOT / "docs" / page
    nums = sections(path)
    top = sorted(int(n) for n in nums if "." not in n)
    assert top == list(range(1, len(top) + 1)), f"{page}: top-level sections {top} are not 1..n"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"docs/{page}" in readme, f"README's documentation list does not link docs/{page}"
