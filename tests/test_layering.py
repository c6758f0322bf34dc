"""The layering rules of docs/contributing.md ("Layers"), checked from the source.

Every module of ``bltkit/`` and ``entropy_model/`` is parsed with ``ast``; every import counts,
at the top of a file or inside a function, relative ones resolved. The layers are read from the
table in docs/contributing.md itself, so the page and the check cannot drift apart. A failure
names the file, the line and the rule broken.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bltkit", "entropy_model")
DYNAMIC_IMPORT_ALLOWED = {"bltkit/registry.py", "bltkit/cli.py"}
MODEL_CODE = ("bltkit.model", "bltkit.patchtrain.model", "bltkit.patchtrain.config", "entropy_model.model")
MODEL_CODE_MAY_IMPORT = ("foundations", "patching")
MODEL_CODE_MAY_ALSO_IMPORT = ("bltkit.model",)


@dataclass(frozen=True)
class Edge:
    src: str  # importing module (dotted)
    dst: str  # imported module (dotted), inside the project
    file: str  # importing file, relative to the repository root
    line: int


# ---- reading the rules and the code -------------------------------------------------------------
def read_layers(doc: Path) -> list[tuple[str, list[str]]]:
    """[(layer name, [unit, ...])] lowest first, from the table between the layer markers."""
    text = doc.read_text(encoding="utf-8")
    m = re.search(r"<!-- layers: begin -->(.*?)<!-- layers: end -->", text, re.S)
    if m is None:
        raise AssertionError(f"{doc}: no table between <!-- layers: begin --> and <!-- layers: end -->")
    layers = []
    for row in m.group(1).strip().splitlines()[2:]:  # skip the header and its rule
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        layers.append((cells[0], re.findall(r"`([\w.]+)`", cells[1])))
    return layers


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted name -> file for every module of ``packages`` under ``root``."""
    out = {}
    for pkg in packages:
        for f in sorted((root / pkg).rglob("*.py")):
            out[module_name(f, root)] = f
    return out


def imports_of(path: Path, root: Path, modules: dict[str, Path]) -> tuple[list[Edge], list[tuple[int, str]]]:
    """(imports of project modules, dynamic-import calls as (line, what)) of one file."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    rel = str(path.relative_to(root))
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
    edges, dynamic = [], []

    def add(target: str, line: int) -> None:
        while target and target not in modules:  # `import a.b.c` of a name inside a module: its module
            target = target.rpartition(".")[0]
        if target and target != name:
            edges.append(Edge(name, target, rel, line))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level - 1 > len(base_parts) - 1:
                    raise AssertionError(f"{rel}:{node.lineno}: relative import beyond the top-level package")
                base = ".".join(base_parts[:len(base_parts) - (node.level - 1)])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for alias in node.names:  # `from pkg import mod` imports the module pkg.mod
                full = f"{base}.{alias.name}"
                add(full if full in modules else base, node.lineno)
        elif isinstance(node, ast.Call):
            f = node.func
            called = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            if called in ("import_module", "__import__"):
                dynamic.append((node.lineno, called))
    return edges, dynamic


def unit_of(module: str, units: set[str]) -> str | None:
    """The longest listed unit that ``module`` is or lies in. A unit with listed units inside it
    (``bltkit``: the package's face, ``bltkit/__init__.py``) is its own module alone."""
    if module in units:
        return module
    best = None
    for u in units:
        is_face = any(v.startswith(u + ".") for v in units)
        if not is_face and module.startswith(u + ".") and (best is None or len(u) > len(best)):
            best = u
    return best


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def check(root: Path, doc: Path, packages=PACKAGES) -> list[str]:
    """Every broken rule, one line each: ``file:line: what``."""
    layers = read_layers(doc)
    rank = {u: i for i, (_, us) in enumerate(layers) for u in us}
    layer_name = {u: name for name, us in layers for u in us}
    units = set(rank)
    modules = project_modules(root, packages)
    problems: list[str] = []
    edges: list[Edge] = []
    for mod, path in modules.items():
        if unit_of(mod, units) is None:
            problems.append(f"{path.relative_to(root)}:1: module {mod} is in no layer of {doc.name} "
                            f"(give its package a row in the layer table)")
        e, dyn = imports_of(path, root, modules)
        edges += e
        rel = str(path.relative_to(root))
        for line, what in dyn:
            if rel not in DYNAMIC_IMPORT_ALLOWED:
                problems.append(f"{rel}:{line}: calls {what}: a lower layer reaches up only through a "
                                f"'module:Name' string resolved by bltkit.registry.resolve")

    unit_graph: dict[str, set[str]] = {}
    unit_edges: dict[tuple[str, str], list[Edge]] = {}
    for e in edges:
        a, b = unit_of(e.src, units), unit_of(e.dst, units)
        if a is None or b is None or a == b:
            continue
        unit_graph.setdefault(a, set()).add(b)
        unit_edges.setdefault((a, b), []).append(e)
        if rank[b] > rank[a]:
            problems.append(f"{e.file}:{e.line}: {a} (layer '{layer_name[a]}') imports {e.dst} (layer "
                            f"'{layer_name[b]}'): a lower layer must not import a higher one")
    for comp in cycles(unit_graph):
        ties = [ed for (a, b), es in sorted(unit_edges.items()) if a in comp and b in comp for ed in es[:1]]
        problems.append("import cycle between " + ", ".join(comp) + ": "
                        + "; ".join(f"{ed.file}:{ed.line} imports {ed.dst}" for ed in ties))

    module_graph: dict[str, set[str]] = {}
    first: dict[tuple[str, str], Edge] = {}
    for e in edges:
        module_graph.setdefault(e.src, set()).add(e.dst)
        first.setdefault((e.src, e.dst), e)
    for comp in cycles(module_graph):
        ties = [first[(a, b)] for a in comp for b in sorted(module_graph.get(a, ())) if b in comp]
        problems.append("module import cycle between " + ", ".join(comp) + ": "
                        + "; ".join(f"{ed.file}:{ed.line} imports {ed.dst}" for ed in ties))

    allowed = {u for name, us in layers if name in MODEL_CODE_MAY_IMPORT for u in us} | set(MODEL_CODE_MAY_ALSO_IMPORT)
    for e in edges:
        if any(e.src == m or e.src.startswith(m + ".") for m in MODEL_CODE):
            b = unit_of(e.dst, units)
            if b not in allowed and not any(e.dst == m or e.dst.startswith(m + ".") for m in MODEL_CODE):
                problems.append(f"{e.file}:{e.line}: model code {e.src} imports {e.dst}: model code imports only "
                                f"{', '.join(MODEL_CODE_MAY_IMPORT)} and {', '.join(MODEL_CODE_MAY_ALSO_IMPORT)}")
    return sorted(set(problems))


# ---- the tests ----------------------------------------------------------------------------------
def test_the_code_keeps_the_layering_rules():
    problems = check(ROOT, ROOT / "docs" / "contributing.md")
    assert not problems, "docs/contributing.md, \"Layers\":\n" + "\n".join(problems)


def test_every_listed_unit_exists_once():
    layers = read_layers(ROOT / "docs" / "contributing.md")
    listed = [u for _, us in layers for u in us]
    assert len(listed) == len(set(listed)), listed
    modules = project_modules(ROOT)
    assert [u for u in listed if not any(m == u or m.startswith(u + ".") for m in modules)] == []


DOC = """
<!-- layers: begin -->
| layer | packages and modules | what |
| --- | --- | --- |
| bottom | `pkg.low` | x |
| middle | `pkg.mid` | x |
| top | `pkg.top`, `pkg` | x |
<!-- layers: end -->
"""


def _tree(tmp_path: Path, files: dict[str, str]) -> tuple[Path, Path]:
    for name, text in {"pkg/__init__.py": "", **files}.items():
        f = tmp_path / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    (tmp_path / "rules.md").write_text(DOC)
    return tmp_path, tmp_path / "rules.md"


def test_checker_finds_upward_imports_at_any_depth_and_resolves_relative_ones(tmp_path):
    root, doc = _tree(tmp_path, {
        "pkg/low/__init__.py": "",
        "pkg/low/a.py": "import os\n\ndef f():\n    from ..mid import b  # upward, inside a function\n",
        "pkg/low/c.py": "from . import a\nfrom pkg.low import a as again\n",  # same unit: fine
        "pkg/mid/__init__.py": "",
        "pkg/mid/b.py": "from pkg.low.a import f\nimport pkg.top.t\n",  # down fine, up not
        "pkg/top/__init__.py": "",
        "pkg/top/t.py": "from ..mid.b import f\nimport importlib\nimportlib.import_module('x')\n",
    })
    problems = check(root, doc, packages=("pkg",))
    assert any(p.startswith("pkg/low/a.py:4: pkg.low (layer 'bottom') imports pkg.mid.b (layer 'middle')")
               for p in problems), problems
    assert any(p.startswith("pkg/mid/b.py:2: pkg.mid (layer 'middle') imports pkg.top.t (layer 'top')")
               for p in problems), problems
    assert any(p.startswith("import cycle between pkg.low, pkg.mid, pkg.top: pkg/low/a.py:4 imports pkg.mid.b;")
               for p in problems), problems
    assert any(p.startswith("pkg/top/t.py:3: calls import_module") for p in problems), problems
    assert not any("pkg/low/c.py" in p for p in problems), problems


def test_checker_finds_cycles_inside_a_layer_and_unplaced_packages(tmp_path):
    root, doc = _tree(tmp_path, {
        "pkg/top/__init__.py": "",
        "pkg/top/x.py": "from .y import g\n",
        "pkg/top/y.py": "from pkg.top import x\n",
        "pkg/stray.py": "",
    })
    problems = check(root, doc, packages=("pkg",))
    assert any(p.startswith("module import cycle between pkg.top.x, pkg.top.y: pkg/top/x.py:1 imports pkg.top.y")
               for p in problems), problems
    assert "pkg/stray.py:1: module pkg.stray is in no layer of rules.md (give its package a row in the layer table)" in problems


@pytest.mark.parametrize("line", ["from pkg import mid", "import pkg.mid", "from .mid import b", "from pkg.mid.b import *"])
def test_every_import_form_counts(tmp_path, line):
    root, doc = _tree(tmp_path, {"pkg/low.py": line + "\n", "pkg/mid/__init__.py": "", "pkg/mid/b.py": ""})
    problems = check(root, doc, packages=("pkg",))
    assert any(p.startswith("pkg/low.py:1: pkg.low (layer 'bottom') imports pkg.mid") for p in problems), problems
