"""A `python:<module>:<factory>` registry entry's module, found without torch or importing it (parse time needs
its file: a rule input, and part of the key of the layer survey's cache)."""

from __future__ import annotations

import contextlib
import importlib.machinery
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from unitscope.models.errors import ModelError

__all__ = ["on_path", "python_folders", "python_module_file", "python_parts"]


@contextlib.contextmanager
def on_path(folders: list[Path]) -> Iterator[None]:
    """`folders` first on sys.path while the user's module is imported."""
    added = [str(folder) for folder in folders]
    sys.path[:0] = added
    try:
        yield
    finally:
        for entry in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(entry)


def python_parts(name: str, arch: str) -> tuple[str, str]:
    parts = arch.split(":")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise ModelError(f"model {name}: models.{name}.arch {arch!r}: expected python:<module>:<factory>")
    return parts[1], parts[2]


def python_folders(spec: Mapping) -> list[Path]:
    return [Path(folder).resolve() for folder in spec.get("python_path") or []]


def python_module_file(name: str, spec: Mapping) -> Path | None:
    """The file of a `python:` entry's module, found on its `python_path` then sys.path without importing it (its
    bytes key the layer cache); a module already imported in this process does not mask the file on disk."""
    module_name, _ = python_parts(name, spec["arch"])
    search = [str(folder) for folder in python_folders(spec)] + sys.path
    found = None
    for part in module_name.split("."):
        found = importlib.machinery.PathFinder.find_spec(part, search)
        if found is None:
            return None
        search = list(found.submodule_search_locations or [])
    return Path(found.origin) if found.origin else None
