"""Which source files a stage's code depends on, found by reading imports (no import happens).

Rules list these files as inputs so that editing a module re-runs exactly the stages that import
it, without a hand-kept list that drifts. Parsing with `ast` keeps dry runs free of torch.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = "unitscope"
PACKAGE_DIR = Path(__file__).resolve().parent


def _module_file(module: str, package_dir: Path) -> Path | None:
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = package_dir.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] == PACKAGE}


@cache
def module_closure(module: str, package_dir: Path = PACKAGE_DIR) -> tuple[str, ...]:
    """Sorted paths of `module` and every package module it imports, transitively."""
    start = _module_file(module, package_dir)
    if start is None:
        raise ValueError(f"no module {module!r} under {package_dir}")
    seen: set[Path] = set()
    stack = [start]
    while stack:
        path = stack.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imported_modules(path):
            dependency = _module_file(name, package_dir)
            if dependency is not None and dependency not in seen:
                stack.append(dependency)
    return tuple(sorted(str(path) for path in seen))
