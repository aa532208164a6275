#!/usr/bin/env python3
"""Fail on a first-party Python module over the size a reader can hold in mind.

A module past ``LIMIT`` lines is doing several jobs: split it by topic into a package
(docs/architecture.md). Migrations (generated), benchmarks and the virtualenv are not
counted. Usage: ``check_module_size.py [DIR]`` (the repository by default); prints each
module over the limit with its length and exits 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

LIMIT = 600
SKIP_DIRS = {".venv", "var", "migrations", "bench", "node_modules", ".git", "build"}


def oversized(root: Path, limit: int = LIMIT) -> list[tuple[Path, int]]:
    found = []
    for path in sorted(root.rglob("*.py")):
        if SKIP_DIRS.intersection(path.relative_to(root).parts):
            continue
        lines = path.read_text(encoding="utf-8", errors="replace").count("\n")
        if lines > limit:
            found.append((path.relative_to(root), lines))
    return found


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    found = oversized(root)
    for path, lines in found:
        print(f"{path}: {lines} lines (limit {LIMIT}); split it by topic into a package")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
