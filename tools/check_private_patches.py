#!/usr/bin/env python
"""Fail on tests and demo code that patch private names of the portal's own apps.

A test that replaces ``services._enqueue`` or ``engine._claim_run`` pins the inside of
a module: the next time the module is split or a helper renamed, the patch silently
patches nothing (``monkeypatch.setattr`` on a module attribute that moved) or breaks
the test for no change in behaviour. The portal offers public plug-in points instead:
``core.dispatch`` (``PORTAL_TASK_DISPATCH``, ``override``, ``held``) for background
work, ``core.clock.use`` for the time, ``register_executor`` and
``register_health_provider`` for the engine's outside world.

Flagged, with ``file:line``:

- ``monkeypatch.setattr(obj, "_name", ...)`` and ``mock.patch.object(obj, "_name")``
  where ``obj`` is a first-party module or class, or an object the file did not import
  (an instance of one of ours, as far as a reader can tell);
- ``monkeypatch.setattr("pkg.mod._name", ...)`` and ``mock.patch("pkg.mod._name")``
  (any private component) where ``pkg`` is a first-party package;
- patching ``django.utils.timezone.now`` in any of these forms: read the time through
  ``core.clock`` and install another with ``core.clock.use(lambda: when)``.

First-party packages are ``root_packages`` of ``[tool.importlinter]`` in
pyproject.toml. Exit status 1 when anything is flagged.

Usage: ``python tools/check_private_patches.py [--root DIR] [PATH ...]`` (default
paths: tests, demo_fleet, bench and demo under DIR).
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

DEFAULT_PATHS = ("tests", "demo_fleet", "bench", "demo")
CLOCK = "django.utils.timezone.now"


def root_packages(root: Path) -> set[str]:
    config = tomllib.loads((root / "pyproject.toml").read_text())
    return set(config["tool"]["importlinter"]["root_packages"])


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a chain of attributes on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def imported_names(tree: ast.AST) -> dict[str, str]:
    """Local name -> the dotted path it was imported as, for every import in the file
    (function-local ones included: a name is a name)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def resolve(expression: str, names: dict[str, str]) -> str | None:
    """The dotted path ``expression`` names through the file's imports, or None when
    its first name was not imported (a local variable, a fixture, a parameter)."""
    first, _, rest = expression.partition(".")
    if first not in names:
        return None
    return f"{names[first]}.{rest}" if rest else names[first]


class Finder:
    def __init__(self, path: Path, first_party: set[str]):
        self.path = path
        self.first_party = first_party
        self.tree = ast.parse(path.read_text(), filename=str(path))
        self.names = imported_names(self.tree)

    def ours(self, dotted_path: str) -> bool:
        return dotted_path.split(".")[0] in self.first_party

    def check_target_string(self, target: str) -> str | None:
        if target == CLOCK:
            return f"patches {CLOCK}: install a time with core.clock.use(lambda: when)"
        parts = target.split(".")
        if self.ours(target) and any(is_private(part) for part in parts):
            return f"patches the private name {target!r} of a first-party app"
        return None

    def check_object_attribute(self, obj: ast.AST, attribute: str) -> str | None:
        expression = dotted(obj)
        where = resolve(expression, self.names) if expression else None
        if where is not None and f"{where}.{attribute}" == CLOCK:
            return f"patches {CLOCK}: install a time with core.clock.use(lambda: when)"
        if not is_private(attribute):
            return None
        if where is None:
            return (f"patches the private attribute {attribute!r} of "
                    f"{expression or 'an object'} (not imported here: one of ours?)")
        if self.ours(where):
            return f"patches the private name {where}.{attribute} of a first-party app"
        return None

    def problems(self) -> Iterator[tuple[int, str]]:
        for node in ast.walk(self.tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = dotted(node.func) or ""
            last = func.rsplit(".", 1)[-1]
            first = node.args[0]
            found = None
            if last in ("setattr", "delattr") and "." in func:
                # monkeypatch.setattr("pkg.mod.name", value) or (obj, "name", value)
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    found = self.check_target_string(first.value)
                elif len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) \
                        and isinstance(node.args[1].value, str):
                    found = self.check_object_attribute(first, node.args[1].value)
            elif func.endswith("patch.object") or func == "object" and \
                    self.names.get("object", "").endswith("patch.object"):
                if len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) \
                        and isinstance(node.args[1].value, str):
                    found = self.check_object_attribute(first, node.args[1].value)
            elif last == "patch" and (func == "patch" or func.endswith("mock.patch")):
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    found = self.check_target_string(first.value)
            if found:
                yield node.lineno, found


def python_files(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_file() and path.suffix == ".py":
            yield path
        elif path.is_dir():
            yield from sorted(p for p in path.rglob("*.py")
                              if "__pycache__" not in p.parts)


def find(root: Path, paths: list[Path]) -> list[tuple[str, int, str]]:
    first_party = root_packages(root)
    found = []
    for path in python_files(paths):
        for line, message in Finder(path, first_party).problems():
            found.append((os.path.relpath(path), line, message))
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path.cwd())
    parser.add_argument("paths", nargs="*", type=Path)
    args = parser.parse_args(argv)
    root = args.root.resolve()
    paths = args.paths or [root / p for p in DEFAULT_PATHS if (root / p).exists()]
    found = find(root, paths)
    for path, line, message in found:
        print(f"{path}:{line}: {message}")
    if found:
        print(f"{len(found)} patch(es) of private names or of the clock; use the public "
              "plug-in points (core.dispatch, core.clock.use, register_executor, "
              "register_health_provider).")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
