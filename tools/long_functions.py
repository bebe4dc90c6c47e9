"""List functions and methods longer than a limit (default 100 lines), longest first.

Usage::

    python tools/long_functions.py [--limit 100] [paths ...]   # default path: src/tradens

Counts the lines from ``def`` to the end of the body, docstring included.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path


def long_functions(paths: list[Path], limit: int) -> list[tuple[int, str, str]]:
    """``(lines, "file:line", qualified name)`` of every function longer than ``limit``."""
    found = []
    for root in paths:
        files = sorted(root.rglob("*.py")) if root.is_dir() else [root]
        for path in files:
            tree = ast.parse(path.read_text(), filename=str(path))
            stack: list[tuple[ast.AST, str]] = [(tree, "")]
            while stack:
                node, prefix = stack.pop()
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                        name = f"{prefix}{child.name}"
                        if not isinstance(child, ast.ClassDef):
                            start = min([child.lineno] + [d.lineno for d in child.decorator_list])
                            length = (child.end_lineno or child.lineno) - start + 1
                            if length > limit:
                                found.append((length, f"{path}:{child.lineno}", name))
                        stack.append((child, name + "."))
    return sorted(found, reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, default=[Path("src/tradens")])
    parser.add_argument("--limit", type=int, default=100)
    args = parser.parse_args()
    for length, where, name in long_functions(args.paths, args.limit):
        print(f"{length:5d}  {where}  {name}")


if __name__ == "__main__":
    main()
