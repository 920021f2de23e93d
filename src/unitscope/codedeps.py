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
import atexit
import hashlib
import json
import os
import re
from functools import cache
from pathlib import Path

PACKAGE = "unitscope"
PACKAGE_DIR = Path(__file__).resolve().parent


@cache  # like the closures: one answer per process (a dry run), files do not come and go during one
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


def _statements(node: ast.AST):
    """Every statement under `node` (itself included), without the bodies of `if TYPE_CHECKING:` blocks.

    Imports are statements, so expressions (most of a module's nodes) are never visited."""
    stack = [node]
    while stack:
        statement = stack.pop()
        yield statement
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            children = getattr(statement, field, None)
            if isinstance(children, list):
                stack.extend(child for child in reversed(children) if not _is_type_checking(child))


def _template_names(tree: ast.AST) -> set[str]:
    """Template file names written as string literals in `tree` (e.g. "faces.html.j2")."""
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and TEMPLATE_NAME.match(node.value)
    }


def _package_imports(nodes) -> list[str]:
    """The package modules (and `module.name` candidates) the import statements among `nodes` name."""
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return sorted(name for name in found if name.split(".")[0] == PACKAGE)


def _top_level_imports(tree: ast.Module) -> dict[str, str]:
    """Each name a module imports at its top level from the package -> the module it names."""
    imported = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                imported[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                imported[alias.asname or alias.name.split(".")[0]] = alias.name
    return {name: module for name, module in imported.items() if module.split(".")[0] == PACKAGE}


def _definition_facts(node: ast.AST, source: str) -> dict:
    """What one top-level function or class uses: names, package imports inside it, template names."""
    return {
        "uses": sorted({n.id for n in ast.walk(node) if isinstance(n, ast.Name)}),
        "imports": _imports_inside(node),
        "templates": sorted(_template_names(node)) if ".j2" in source else [],
    }


def _imports_inside(node: ast.AST) -> list[str]:
    """Package names imported inside a function (lazy imports): `module.name` for `from module import name`."""
    found = set()
    for inner in _statements(node):
        if isinstance(inner, ast.ImportFrom) and inner.module and inner.level == 0:
            found.update(f"{inner.module}.{alias.name}" for alias in inner.names)
        elif isinstance(inner, ast.Import):
            found.update(alias.name for alias in inner.names)
    return sorted(name for name in found if name.split(".")[0] == PACKAGE)


def module_facts(source: str, filename: str = "<module>") -> dict:
    """Everything the closures need from one module's source, as plain JSON-able data: the package modules it
    imports (outside `if TYPE_CHECKING:`), the template names it writes, its top-level package imports, and
    per top-level function or class what it uses. Parsing is the slow part of a dry run, so this is cached."""
    tree = ast.parse(source, filename=filename)
    definitions = {
        node.name: _definition_facts(node, source)
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }
    return {
        "imports": _package_imports(_statements(tree)),
        "templates": sorted(_template_names(tree)) if ".j2" in source else [],  # most modules name no template
        "imported": _top_level_imports(tree),
        "definitions": definitions,
    }


class FactsCache:
    """Module facts by file content (a SHA-256 of the bytes), in memory and optionally in a JSON file that later
    dry runs and cluster jobs read instead of parsing every module again.

    The file is only a cache: anything in it that is not well-formed is ignored (and recomputed), and it is
    written whole, to a temporary name then renamed."""

    def __init__(self) -> None:
        self.entries: dict[str, dict] = {}
        self.keys: dict[tuple, str] = {}
        self.path: Path | None = None
        self.changed = False

    def use_file(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            stored = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        if isinstance(stored, dict) and stored.get("version") == CACHE_VERSION:
            entries = stored.get("entries")
            if isinstance(entries, dict):
                self.entries.update({k: v for k, v in entries.items() if _well_formed(v)})

    def facts(self, path: Path) -> dict:
        stat = path.stat()
        version = (path, stat.st_mtime_ns, stat.st_size)  # one read per version of a file in this process
        if version not in self.keys:
            data = path.read_bytes()
            self.keys[version] = key = hashlib.sha256(data).hexdigest()
            if key not in self.entries:
                self.entries[key] = module_facts(data.decode(), str(path))
                self.changed = True
        return self.entries[self.keys[version]]

    def save(self) -> None:
        if self.path is None or not self.changed:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
            temporary.write_text(json.dumps({"version": CACHE_VERSION, "entries": self.entries}))
            os.replace(temporary, self.path)
            self.changed = False
        except OSError:
            pass  # a read-only working directory: the next dry run parses again


CACHE_VERSION = 1
FACTS = FactsCache()


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _well_formed(facts) -> bool:
    """Whether a cached entry has exactly the shape `module_facts` returns (a cache file is not trusted)."""
    if not isinstance(facts, dict) or set(facts) != {"imports", "templates", "imported", "definitions"}:
        return False
    imported, definitions = facts["imported"], facts["definitions"]
    return (
        _strings(facts["imports"])
        and _strings(facts["templates"])
        and isinstance(imported, dict)
        and all(isinstance(value, str) for value in imported.values())
        and isinstance(definitions, dict)
        and all(
            isinstance(d, dict) and set(d) == {"uses", "imports", "templates"} and all(map(_strings, d.values()))
            for d in definitions.values()
        )
    )


def use_cache_file(path: str | os.PathLike) -> None:
    """Read module facts from `path` (if it holds any) and write them back there when the process exits."""
    FACTS.use_file(path)
    atexit.register(FACTS.save)


SHARED_TEMPLATES = PACKAGE_DIR / "report" / "templates"
TEMPLATE_NAME = re.compile(r"^[\w.-]+\.j2$")
TEMPLATE_REFERENCE = re.compile(r"""{%-?\s*(?:include|import|from|extends)\s+["']([\w.-]+\.j2)["']""")


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
        found |= _templates_named(set(FACTS.facts(path)["templates"]), path.parent / "templates")
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
        for name in FACTS.facts(path)["imports"]:
            dependency = _module_file(name, package_dir)
            if dependency is not None and dependency not in seen:
                stack.append(dependency)
    return tuple(sorted(str(path) for path in seen | _templates(seen)))


@cache
def entry_closure(entry: str, package_dir: Path = PACKAGE_DIR) -> tuple[str, ...]:
    """Sorted paths of what the function `entry` ("unitscope.pkg.mod:function") needs: its own file, the
    package modules imported inside it or named by it (or by the same file's functions it calls), and
    their closures. A module-level import the function does not use is not a dependency."""
    module, _, function = entry.partition(":")
    path = _module_file(module, package_dir)
    if path is None:
        raise ValueError(f"no module {module!r} under {package_dir}")
    facts = FACTS.facts(path)
    definitions, imported = facts["definitions"], facts["imported"]
    if function not in definitions:
        raise ValueError(f"{module} has no function {function!r}")
    needed: set[str] = set()
    seen, stack = set(), [function]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        needed.update(definitions[name]["imports"])
        for used in definitions[name]["uses"]:
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


def _templates_of(definitions: dict[str, dict], names: set[str], path: Path) -> set[Path]:
    """The templates that the functions `names` of the module at `path` render (see `_templates`)."""
    used = set().union(*(definitions[name]["templates"] for name in names))
    return _templates_named(used, path.parent / "templates")
