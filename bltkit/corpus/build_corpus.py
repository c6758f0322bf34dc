"""Rebuild the built-in corpus from its sources (a developer tool; the library never runs it).

Why it exists: the shipped ``*.jsonl.gz`` files must be reproducible from public, redistributable
inputs, so anyone can check what is in them (see README.md beside this file for provenance and
licences). Run on a Debian machine with the package files unpacked::

    apt-get download bible-kjv bible-kjv-text dict-devil dict-jargon
    for f in *.deb; do dpkg-deb -x "$f" x; done
    x/usr/bin/bible -p x/usr/lib -l 100000 "gen1:1-rev22:21" > kjv.txt
    python bltkit/corpus/build_corpus.py --kjv kjv.txt \\
        --jargon x/usr/share/dictd/jargon --devil x/usr/share/dictd/devil --out bltkit/corpus

Documents are a few hundred to a few thousand bytes. The held-out split is fixed: every
``VALID_EVERY``-th document of each source (by position) goes to ``<name>.valid.jsonl.gz``.
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
from pathlib import Path

VALID_EVERY = 40
TARGET_DOC_BYTES = 1500  # small dictionary entries are grouped up to about this size
MAX_DOC_BYTES = 6000  # long texts are cut at paragraph boundaries below about this size

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64(s: str) -> int:
    n = 0
    for ch in s:
        n = n * 64 + _B64.index(ch)
    return n


def dictd_entries(base: Path) -> list[str]:
    """Entries of a dictd database (``base.index`` + ``base.dict.dz``), in file order, dedented."""
    data = gzip.open(str(base) + ".dict.dz").read()
    spans = []
    for line in Path(str(base) + ".index").read_text(encoding="utf-8").splitlines():
        word, off, length = line.split("\t")[:3]
        if word.startswith("00-database") or word.startswith("00database"):
            continue
        spans.append((_b64(off), _b64(length)))
    out, seen = [], set()
    for off, length in sorted(set(spans)):
        if off in seen:
            continue
        seen.add(off)
        text = data[off: off + length].decode("utf-8")
        text = "\n".join(l[4:] if l.startswith("    ") else l for l in text.splitlines()).strip()
        if text:
            out.append(text)
    return out


def group(pieces: list[str], target: int) -> list[str]:
    """Join consecutive pieces with blank lines until each document reaches ``target`` bytes."""
    docs, cur = [], []
    for p in pieces:
        cur.append(p)
        if len("\n\n".join(cur).encode()) >= target:
            docs.append("\n\n".join(cur))
            cur = []
    if cur:
        docs.append("\n\n".join(cur))
    return docs


def split_long(text: str, limit: int) -> list[str]:
    """Cut ``text`` at blank lines into pieces of at most about ``limit`` bytes."""
    if len(text.encode()) <= limit:
        return [text]
    out, cur = [], []
    for para in re.split(r"\n\s*\n", text):
        if cur and len("\n\n".join(cur + [para]).encode()) > limit:
            out.append("\n\n".join(cur))
            cur = []
        cur.append(para)
    if cur:
        out.append("\n\n".join(cur))
    return out


def kjv_chapters(path: Path) -> list[str]:
    """One document per chapter: ``Book N`` heading, then one verse per line."""
    text = path.read_text(encoding="utf-8")
    chapters = re.split(r"\n(?=[1-3]? ?[A-Z][A-Za-z ]+ \d+\n\n)", "\n" + text.strip("\n"))
    docs = []
    for ch in chapters:
        ch = "\n".join(l.strip() for l in ch.strip().splitlines())
        if ch:
            docs.extend(split_long(ch, MAX_DOC_BYTES))
    return docs


def pydoc_topics() -> list[str]:
    """Python's language-reference help topics (``pydoc_data.topics``), long ones cut."""
    from pydoc_data.topics import topics

    docs = []
    for key in sorted(topics):
        docs.extend(split_long(topics[key].strip(), MAX_DOC_BYTES))
    return docs


def write(name: str, docs: list[str], out: Path) -> None:
    splits = {"train": [], "valid": []}
    for i, d in enumerate(docs):
        splits["valid" if i % VALID_EVERY == VALID_EVERY - 1 else "train"].append(d)
    for split, items in splits.items():
        p = out / f"{name}.{split}.jsonl.gz"
        # mtime=0: the same input gives byte-identical files.
        with open(p, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as f:
            for d in items:
                f.write((json.dumps({"text": d}, ensure_ascii=False) + "\n").encode("utf-8"))
        print(f"{p}: {len(items)} documents, {sum(len(d.encode()) for d in items)} bytes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kjv", type=Path, required=True)
    ap.add_argument("--jargon", type=Path, required=True)
    ap.add_argument("--devil", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    write("kjv", kjv_chapters(a.kjv), a.out)
    write("jargon", group(dictd_entries(a.jargon), TARGET_DOC_BYTES), a.out)
    write("devil", group(dictd_entries(a.devil), TARGET_DOC_BYTES), a.out)
    write("pydoc", pydoc_topics(), a.out)


if __name__ == "__main__":
    main()
