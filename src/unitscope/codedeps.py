"""Which source files a stage's code depends on, found by reading imports (no import happens).

Rules list these files as inputs so that editing a module re-runs exactly the stages that import
it, without a hand-kept list that drifts. Parsing with `ast` keeps dry runs free of torch.

A study's `stages.py` holds the entry points of all its rules, so depending on the whole file would
make every rule of the study depend on every algorithm module. `entry_closure("pkg.stages:run_x")`
follows only what `run_x` uses: the package modules whose names it (or a helper of the same file it
calls) refers to, then those modules' whole closures.
"""

from __future__ import annotations

import ast
import re
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


def _is_type_checking(node: ast.AST) -> bool:
    """`if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`): imports there are for annotations, not for running."""
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        isinstance(test, ast.Name)
        and test.id == "TYPE_CHECKING"
        or isinstance(test, ast.Attribute)
        and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST):
    """ast.walk without the bodies of `if TYPE_CHECKING:` blocks."""
    yield node
    for child in ast.iter_child_nodes(node):
        if not _is_type_checking(child):
            yield from _walk(child)


def _tree(path: Path) -> ast.Module:
    """The parsed module at `path`, parsed once per version of the file (a dry run reads each file once, not once
    per rule whose closure holds it)."""
    stat = path.stat()
    return _parsed(path, stat.st_mtime_ns, stat.st_size)


@cache
def _parsed(path: Path, _mtime_ns: int, _size: int) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


@cache
def _imported_modules_of(path: Path, _mtime_ns: int, _size: int) -> frozenset[str]:
    found: set[str] = set()
    for node in _walk(_parsed(path, _mtime_ns, _size)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return frozenset(name for name in found if name.split(".")[0] == PACKAGE)


def _imported_modules(path: Path) -> set[str]:
    stat = path.stat()
    return set(_imported_modules_of(path, stat.st_mtime_ns, stat.st_size))


SHARED_TEMPLATES = PACKAGE_DIR / "report" / "templates"
TEMPLATE_NAME = re.compile(r"^[\w.-]+\.j2$")
TEMPLATE_REFERENCE = re.compile(r"""{%-?\s*(?:include|import|from|extends)\s+["']([\w.-]+\.j2)["']""")


def _template_names(tree: ast.AST) -> set[str]:
    """Template file names written as string literals in `tree` (e.g. "faces.html.j2")."""
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and TEMPLATE_NAME.match(node.value)
    }


@cache
def _file_template_names(path: Path, _mtime_ns: int, _size: int) -> frozenset[str]:
    return frozenset(_template_names(_parsed(path, _mtime_ns, _size)))


def _templates_named(names: set[str], folder: Path) -> set[Path]:
    """Those templates, found in `folder` or the shared folder, and the templates they include or import."""
    found: set[Path] = set()
    stack = list(names)
    while stack:
        name = stack.pop()
        for candidate in (folder / name, SHARED_TEMPLATES / name):
            if candidate.is_file():
                if candidate not in found:
                    found.add(candidate)
                    stack += TEMPLATE_REFERENCE.findall(candidate.read_text())
                break
    return found


def _templates(files: set[Path]) -> set[Path]:
    """The Jinja templates the modules in `files` name (in their own `templates/` folder or the shared one), and
    those they include or import: editing a template re-runs exactly the stages that render it."""
    found: set[Path] = set()
    for path in files:
        stat = path.stat()
        found |= _templates_named(_file_template_names(path, stat.st_mtime_ns, stat.st_size), path.parent / "templates")
    return found


@cache
def module_closure(module: str, package_dir: Path = PACKAGE_DIR) -> tuple[str, ...]:
    """Sorted paths of `module` and every package module it imports, transitively (plus the templates
    those modules render)."""
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
    return tuple(sorted(str(path) for path in seen | _templates(seen)))


def _top_level(tree: ast.Module) -> tuple[dict[str, ast.AST], dict[str, str]]:
    """A module's own functions and classes by name, and each package name it imports -> its module."""
    definitions, imported = {}, {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            definitions[node.name] = node
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                imported[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                imported[alias.asname or alias.name.split(".")[0]] = alias.name
    return definitions, {name: module for name, module in imported.items() if module.split(".")[0] == PACKAGE}


def _used_names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


@cache
def entry_closure(entry: str, package_dir: Path = PACKAGE_DIR) -> tuple[str, ...]:
    """Sorted paths of what the function `entry` ("unitscope.pkg.mod:function") needs: its own file, the
    package modules imported inside it or named by it (or by the same file's functions it calls), and
    their closures. A module-level import the function does not use is not a dependency."""
    module, _, function = entry.partition(":")
    path = _module_file(module, package_dir)
    if path is None:
        raise ValueError(f"no module {module!r} under {package_dir}")
    definitions, imported = _top_level(_tree(path))
    if function not in definitions:
        raise ValueError(f"{module} has no function {function!r}")
    needed: set[str] = set()
    seen, stack = set(), [function]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        node = definitions[name]
        needed |= _imported_modules_in(node)
        for used in _used_names(node):
            if used in definitions:
                stack.append(used)
            elif used in imported:
                needed.add(imported[used])
    files = {str(path)}
    files |= {str(template) for template in _templates_of(definitions, seen, path)}
    for name in needed:
        for candidate in (name, name.rsplit(".", 1)[0]):
            if _module_file(candidate, package_dir) is not None:
                files.update(module_closure(candidate, package_dir))
                break
    return tuple(sorted(files))


def _templates_of(definitions: dict[str, ast.AST], names: set[str], path: Path) -> set[Path]:
    """The templates that the functions `names` of the module at `path` render (see `_templates`)."""
    used = set().union(*(_template_names(definitions[name]) for name in names))
    return _templates_named(used, path.parent / "templates")


def _imported_modules_in(node: ast.AST) -> set[str]:
    """Package modules imported inside a function (lazy imports)."""
    found = set()
    for inner in _walk(node):
        if isinstance(inner, ast.ImportFrom) and inner.module and inner.level == 0:
            found.update(f"{inner.module}.{alias.name}" for alias in inner.names)
        elif isinstance(inner, ast.Import):
            found.update(alias.name for alias in inner.names)
    return {name for name in found if name.split(".")[0] == PACKAGE}
