"""The package's import graph: no cycle, and no import from a later stage into an earlier one.

The graph is read from the source with ``ast`` (module-level and function-level imports alike), so a lazy import
inside a function counts as much as one at the top. The order (README "Architecture"):

    helpers (errors, fsutil, csvio, locks, progress, versions, workdir, manifest, geometry, viz, batchsize)
    <  io, sample_data  <  ingest  <  masks  <  models  <  train  <  generate  <  evaluate  <  api  <  demo  <  cli

A module may import its own area and earlier ones. In addition: ``train`` is used only by the entry points
(api, demo, cli), not by generate or evaluate (they read a MODEL_DIR through ``models``); only ``cli`` imports
typer or rich.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "medsoft_aug"

RANK = {"": 0, "batchsize": 0, "errors": 0,
        "fsutil": 0, "csvio": 0, "locks": 0, "progress": 0, "versions": 0, "workdir": 0,
        "manifest": 0, "geometry": 0, "viz": 0, "io": 1, "sample_data": 1, "ingest": 2, "masks": 3, "models": 4,
        "train": 5, "generate": 6, "evaluate": 7, "api": 8, "demo": 9, "cli": 10}
TRAIN_USERS = {"train", "api", "demo", "cli"}
CLI_ONLY = {"typer", "rich", "click"}
# Known breaks being removed by another change; each names why. Keep this empty when possible.
KNOWN: dict[tuple[str, str], str] = {}


def module_files(package: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(package.rglob("*.py")):
        parts = (package.name, *p.relative_to(package).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def import_graph(package: Path) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges between the package's modules, third-party top-level names imported) for every module."""
    mods = module_files(package)
    edges: dict[str, set[str]] = defaultdict(set)
    external: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = pkg[:len(pkg) - node.level + 1] if node.level else []
                mod = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in mods] or [mod]
            else:
                continue
            for t in targets:
                if t in mods:
                    if t != name:
                        edges[name].add(t)
                elif not t.startswith(package.name + ".") and t != package.name:
                    external[name].add(t.split(".")[0])
    return edges, external


def area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
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
                found.append(sorted(comp))

    for v in sorted(set(edges) | {w for ws in edges.values() for w in ws}):
        if v not in index:
            visit(v)
    return found


def breaks(edges: dict[str, set[str]], external: dict[str, set[str]]) -> list[str]:
    """Every import that breaks the stage order (see module docstring), as readable lines."""
    bad = []
    for a in sorted(edges):
        for b in sorted(edges[a]):
            sa, sb = area(a), area(b)
            if (a, b) in KNOWN:
                continue
            if sa not in RANK or sb not in RANK:
                bad.append(f"{a} -> {b}: area not placed in the stage order (add it to RANK and the README)")
            elif RANK[sb] > RANK[sa]:
                bad.append(f"{a} -> {b}: {sa or 'package'} imports the later stage {sb}")
            elif sb == "train" and sa not in TRAIN_USERS:
                bad.append(f"{a} -> {b}: only {', '.join(sorted(TRAIN_USERS))} may import train")
    for a in sorted(external):
        for lib in sorted(external[a] & CLI_ONLY):
            if area(a) != "cli":
                bad.append(f"{a} imports {lib}: only the CLI does")
    return bad


def test_no_import_cycle():
    edges, _ = import_graph(PACKAGE)
    assert cycles(edges) == []


def test_no_import_from_a_later_stage():
    edges, external = import_graph(PACKAGE)
    assert breaks(edges, external) == []


def test_the_checker_finds_cycles_and_backward_imports(tmp_path):
    pkg = tmp_path / "medsoft_aug"
    for rel, text in {"__init__.py": "", "errors.py": "", "generate/__init__.py": "",
                      "generate/stage.py": "def f():\n    from .runner import g\n",
                      "generate/runner.py": "from . import stage\nfrom ..train.data import x\n",
                      "train/__init__.py": "", "train/data.py": "from ..errors import E\n",
                      "masks/__init__.py": "", "masks/stage.py": "import typer\nfrom medsoft_aug.models import m\n",
                      "models/__init__.py": "", "models/m.py": "from .. import errors\n"}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    edges, external = import_graph(pkg)
    assert edges["medsoft_aug.models.m"] == {"medsoft_aug.errors"}
    assert cycles(edges) == [["medsoft_aug.generate.runner", "medsoft_aug.generate.stage"]]
    found = breaks(edges, external)
    assert any(line.startswith("medsoft_aug.generate.runner -> medsoft_aug.train.data: only") for line in found)
    assert any(line.startswith("medsoft_aug.masks.stage -> medsoft_aug.models.m: masks imports the later") for line
               in found)
    assert "medsoft_aug.masks.stage imports typer: only the CLI does" in found and len(found) == 3
