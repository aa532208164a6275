#!/usr/bin/env python
"""Fail on import cycles between the portal's own modules.

The layers contract (import-linter) keeps apps importing downwards, but says nothing
about two modules of one app importing each other, or a package's ``__init__`` and a
module under it: such a cycle works only in the one import order that happens to run
first, and breaks when someone imports the other end. This check builds the import
graph of the first-party packages (``root_packages`` of ``[tool.importlinter]`` in
pyproject.toml) with grimp, which counts function-local imports as well, finds every
strongly connected component of more than one module and prints each import inside
it as ``file:line``. Exit status 1 when there is any.

A cycle may be let through only by naming it in ``ALLOWED`` below with the reason it
cannot be broken. The one shape that can be unavoidable is a package whose
``__init__`` re-exports its modules while one of them must import a name through the
package (a name whose home is the ``__init__`` itself); every other cycle has a
straightforward fix (import the sibling module directly, or move the shared name
down).

Usage: ``python tools/check_import_cycles.py [--root DIR]`` (DIR: where pyproject.toml
and the packages are; the current directory by default).
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path

# frozenset of module names -> why the cycle cannot be broken. Empty: none can't.
ALLOWED: dict[frozenset[str], str] = {}


def root_packages(root: Path) -> list[str]:
    config = tomllib.loads((root / "pyproject.toml").read_text())
    return list(config["tool"]["importlinter"]["root_packages"])


def build_graph(root: Path, packages: list[str]):
    import grimp

    sys.path.insert(0, str(root))
    try:
        return grimp.build_graph(*packages, cache_dir=None)
    finally:
        sys.path.remove(str(root))


def strongly_connected(modules: set[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (the graph is deep enough to hit the recursion
    limit); components of one module without a self-import are left out."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(modules):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges.get(node, ()):
                    found.append(sorted(component))
    return sorted(found)


def module_file(root: Path, module: str) -> str:
    parts = module.split(".")
    package = root.joinpath(*parts) / "__init__.py"
    path = package if package.exists() else root.joinpath(*parts[:-1]) / f"{parts[-1]}.py"
    return os.path.relpath(path)


def find_cycles(root: Path) -> list[tuple[list[str], list[tuple[str, int, str, str]]]]:
    """Each cycle's modules, and the imports inside it as (file, line, importer,
    imported), sorted."""
    graph = build_graph(root, root_packages(root))
    edges = {module: set(graph.find_modules_directly_imported_by(module))
             for module in graph.modules}
    cycles = []
    for component in strongly_connected(set(graph.modules), edges):
        if frozenset(component) in ALLOWED:
            continue
        members = set(component)
        imports = []
        for importer in component:
            for imported in sorted(edges[importer] & members):
                for detail in graph.get_import_details(importer=importer,
                                                       imported=imported):
                    imports.append((module_file(root, importer), detail["line_number"],
                                    importer, imported))
        cycles.append((component, sorted(imports)))
    return cycles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path.cwd())
    args = parser.parse_args(argv)
    cycles = find_cycles(args.root.resolve())
    for number, (component, imports) in enumerate(cycles, 1):
        print(f"import cycle {number} ({len(component)} modules): {', '.join(component)}")
        for path, line, importer, imported in imports:
            print(f"{path}:{line}: {importer} imports {imported}")
    if cycles:
        print(f"{len(cycles)} import cycle(s) among first-party modules; break each by "
              "importing the module that defines a name, or moving the shared name down.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
