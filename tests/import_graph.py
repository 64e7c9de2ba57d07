"""The package's import graph, read from the source with `ast` (imports inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "src" / "doublebind"


def modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def imports(path: Path, name: str, known: set[str], top_level_only: bool = False) -> set[str]:
    """The doublebind modules one module imports (a package's `__init__` counts as the package)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: -node.level] if not path.name == "__init__.py" else name.split(".")[: len(name.split(".")) - node.level + 1]
                mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
            else:
                mod = node.module or ""
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}
    return {m for m in found if m in known and m != name}


def graph(top_level_only: bool = False) -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(path, name, known, top_level_only) for name, path in mods.items()}


def reach(g: dict[str, set[str]], start: str) -> dict[str, str | None]:
    """Every module reachable from `start`, each with the module it was reached from."""
    parent: dict[str, str | None] = {start: None}
    todo = [start]
    while todo:
        m = todo.pop()
        for n in sorted(g.get(m, ())):
            if n not in parent:
                parent[n] = m
                todo.append(n)
    return parent


def path_to(parent: dict[str, str | None], end: str) -> list[str]:
    out = [end]
    while parent[out[-1]] is not None:
        out.append(parent[out[-1]])
    return out[::-1]


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
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

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out
