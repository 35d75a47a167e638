"""The shape of the code, as a test: no import cycles, no forbidden arrows, small modules.

The imports are read from the source (AST), not by importing it, so an import
inside a function counts as much as one at the top: a cycle hidden in a function
is still a cycle. `from pkg import name` counts as importing ``pkg.name`` when
that is a module, else ``pkg``; the implicit import of a parent package is not
an edge (as import-linter reads imports too).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("provision", "payload", "bench")
MAX_LINES = 400
# Over the limit for now, with the reason.
TOO_LONG_FOR_NOW: dict[str, str] = {}


def within(name: str, prefix: str) -> bool:
    """Whether module `name` is `prefix` or inside it (``provision.cli`` is not in
    ``provision.client``)."""
    return name == prefix or name.startswith(prefix + ".")


# (importer, what it must never import, why), importers and targets as module prefixes.
RULES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("provision.cloud",
     ("provision.nodes", "provision.configure", "provision.client", "provision.context",
      "provision.lifecycle", "fabric", "paramiko", "invoke"),
     "cloud/ never opens SSH: node setup takes ClusterInfo from it"),
    ("provision.nodes", ("boto3", "botocore", "moto", "provision.cloud.aws"),
     "nodes/ never calls a cloud API"),
    ("payload", ("provision",), "payload/ never imports provision: it takes a Client or a view"),
)


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every first-party module by dotted name."""
    found = {}
    for package in FIRST_PARTY:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports(path: Path, name: str, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(module imported, line) for every import statement in the file, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield (candidate if candidate in known else base), node.lineno


def graph(root: Path = ROOT) -> tuple[dict[str, set[str]], list[str]]:
    """First-party import edges, and every forbidden arrow as a readable line."""
    known = modules(root)
    edges: dict[str, set[str]] = {name: set() for name in known}
    broken = []
    for name, path in known.items():
        for target, line in imports(path, name, known):
            where = f"{path.relative_to(root)}:{line}"
            if target in known and target != name:
                edges[name].add(target)
            for importer, never, why in RULES:
                if within(name, importer) and any(within(target, n) for n in never):
                    broken.append(f"{where}: {name} imports {target} ({why})")
            if within(target, "provision.cli") and not within(name, "provision.cli"):
                broken.append(f"{where}: {name} imports {target} (nothing imports the CLI)")
            if within(target, "provision.cloud.aws") and not within(name, "provision.cloud"):
                broken.append(f"{where}: {name} imports {target} (only the contract in "
                              "provision.cloud routes to a provider)")
    return edges, broken


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of modules (Tarjan), each one a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in edges[v]:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def shortest_cycle(group: list[str], edges: dict[str, set[str]]) -> str:
    """One cycle through a group's first module, as ``a -> b -> a``: what to cut."""
    start, members = group[0], set(group)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(edges[v] & members):
            if w == start:
                return " -> ".join([*paths[v], start])
            if w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    return " -> ".join(group)


def too_long(root: Path = ROOT) -> list[str]:
    """Modules of provision/ and payload/ over `MAX_LINES`, except the allow-listed."""
    long = []
    for name, path in modules(root).items():
        rel = path.relative_to(root).as_posix()
        if name.startswith("bench") or rel in TOO_LONG_FOR_NOW:
            continue
        n = len(path.read_text().splitlines())
        if n > MAX_LINES:
            long.append(f"{rel}: {n} lines")
    return long


@pytest.fixture(scope="module")
def first_party() -> tuple[dict[str, set[str]], list[str]]:
    return graph()


def test_the_walk_sees_the_first_party_modules_and_their_imports(first_party):
    edges, _ = first_party
    assert {"provision.lifecycle", "provision.cloud", "provision.cloud.aws.instances",
            "payload.search", "provision.cli"} <= set(edges)
    assert "provision.configure" in edges["provision.lifecycle"]
    assert "provision.cloud.aws.api" in edges["provision.cloud.aws.instances"]


def test_no_first_party_module_imports_itself_back(first_party):
    edges, _ = first_party
    assert [shortest_cycle(group, edges) for group in cycles(edges)] == []


def test_no_forbidden_arrow(first_party):
    _, broken = first_party
    assert broken == []


def test_no_module_is_over_400_lines():
    assert too_long() == []
