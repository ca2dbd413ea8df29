"""The layers of sliver point one way.

Every import between sliver's packages is read from the source (module-level and
function-level alike; ``if TYPE_CHECKING:`` blocks excepted) and checked against the
layer order:

    common  →  ir  →  passes  →  frontend  →  backends  →  sliver (api, packaging)  →  tools
    common  →  runtime  (the device side: it never imports the compiler)

A package may import its own modules and the layers it is allowed below it; nothing may
import a layer above it, and no two files may import each other, directly or through a
circle of files.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]

#: dotted package → folder (pyproject's package-dir)
FOLDERS = {
    "sliver.common": "common",
    "sliver.ir": "ir",
    "sliver.passes": "passes",
    "sliver.frontend": "frontend",
    "sliver.backends": "backends",
    "sliver.runtime": "runtime",
    "sliver.tools": "tools",
    "sliver.benchmarks": "benchmarks",
    "sliver": "sliver",
}

#: layer → the layers it may import (besides itself)
ALLOWED = {
    "sliver.common": set(),
    "sliver.runtime": {"sliver.common"},
    "sliver.ir": {"sliver.common"},
    "sliver.passes": {"sliver.common", "sliver.ir"},
    "sliver.frontend": {"sliver.common", "sliver.ir", "sliver.passes"},
    "sliver.backends": {"sliver.common", "sliver.ir", "sliver.passes"},
    "sliver": {"sliver.common", "sliver.runtime", "sliver.ir", "sliver.passes", "sliver.frontend",
               "sliver.backends"},
    "sliver.tools": {"sliver.common", "sliver.runtime", "sliver.ir", "sliver.passes", "sliver.frontend",
                     "sliver.backends", "sliver"},
    "sliver.benchmarks": {"sliver.common", "sliver.runtime", "sliver.ir", "sliver.passes",
                          "sliver.frontend", "sliver.backends", "sliver", "sliver.tools"},
}


def layer_of(module: str) -> str | None:
    """The layer a dotted module name belongs to (the longest package prefix)."""
    for pkg in sorted(FOLDERS, key=len, reverse=True):
        if module == pkg or module.startswith(pkg + "."):
            return pkg
    return None


def modules() -> dict[str, Path]:
    """Every Python module of sliver by dotted name."""
    out = {}
    for pkg, folder in FOLDERS.items():
        base = ROOT / folder
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if pkg == "sliver" and parts and parts[0] in {f.rsplit(".", 1)[-1] for f in FOLDERS if f != "sliver"}:
                continue
            out[".".join([pkg, *parts])] = path
    return out


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                lines.update(range(sub.lineno, (sub.end_lineno or sub.lineno) + 1))
    return lines


def imports_of(name: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported sliver module, line) for every import in ``path``: ``from a.b import c``
    counts as an import of ``a.b.c`` when that is a module, else of ``a.b``."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_lines(tree)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("sliver")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("sliver"):
                continue
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.append((sub if sub in known else mod, node.lineno))
    return out


def import_graph() -> nx.DiGraph:
    mods = modules()
    known = set(mods)
    g = nx.DiGraph()
    g.add_nodes_from(mods)
    for name, path in mods.items():
        for target, line in imports_of(name, path, known):
            # `import sliver` / `from sliver import x` reach the lazy roof, not a layer below
            if target == "sliver" or target == name or target not in known:
                continue
            g.add_edge(name, target, line=line)
    return g


def upward_imports(g: nx.DiGraph) -> set[tuple[str, str]]:
    bad = set()
    for a, b in g.edges:
        la, lb = layer_of(a), layer_of(b)
        if la != lb and lb not in ALLOWED[la]:
            bad.add((a, b))
    return bad


def file_cycles(g: nx.DiGraph) -> set[frozenset[str]]:
    """The strongly connected sets of files: each is a circle of imports."""
    return {frozenset(c) for c in nx.strongly_connected_components(g) if len(c) > 1}


#: Imports that still point up, being removed; the list only ever shrinks.
KNOWN_UPWARD: set[tuple[str, str]] = set()

#: Circles of files still to be cut; the list only ever shrinks.
KNOWN_CYCLES: set[frozenset[str]] = set()


def _fmt(g, a, b):
    return f"{a} imports {b} (line {g.edges[a, b]['line']}): {layer_of(a)} may not import {layer_of(b)}"


def test_the_graph_sees_the_packages():
    g = import_graph()
    assert {"sliver.ir.core", "sliver.passes.manager", "sliver.runtime.artifact", "sliver.api"} <= set(g.nodes)
    assert g.has_edge("sliver.passes.manager", "sliver.ir.core") or any(
        b.startswith("sliver.ir") for b in g.successors("sliver.passes.manager"))


def test_no_import_points_up():
    g = import_graph()
    bad = upward_imports(g)
    new = sorted(bad - KNOWN_UPWARD)
    assert not new, "imports that point up the layer order:\n" + "\n".join(_fmt(g, a, b) for a, b in new)
    fixed = sorted(KNOWN_UPWARD - bad)
    assert not fixed, f"no longer upward, remove from KNOWN_UPWARD: {fixed}"


def test_no_file_cycles():
    g = import_graph()
    cycles = file_cycles(g)
    new = [sorted(c) for c in cycles - KNOWN_CYCLES]
    assert not new, f"files that import each other: {new}"
    fixed = [sorted(c) for c in KNOWN_CYCLES - cycles]
    assert not fixed, f"no longer circular, remove from KNOWN_CYCLES: {fixed}"


def test_the_checker_catches_an_upward_import_and_a_cycle(tmp_path):
    g = nx.DiGraph()
    g.add_edge("sliver.ir.core", "sliver.passes.dce", line=3)
    g.add_edge("sliver.passes.dce", "sliver.ir.core", line=1)
    g.add_edge("sliver.runtime.artifact", "sliver.ir.core", line=9)
    assert upward_imports(g) == {("sliver.ir.core", "sliver.passes.dce"),
                                 ("sliver.runtime.artifact", "sliver.ir.core")}
    assert file_cycles(g) == {frozenset({"sliver.ir.core", "sliver.passes.dce"})}
