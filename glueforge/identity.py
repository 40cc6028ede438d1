"""Code identity: the digests of the project's modules a stage runs, found from the import graph.

A stage names its root modules (itself, and the family or runtime modules it calls for one
job); its code is their import closure within the project's packages, with every ancestor
package (whose ``__init__`` runs on import), imports inside functions included. The import
graph is grimp's, the library import-linter is built on. Nothing is listed by hand, so
editing a module a stage uses reruns it, and editing one it does not use reruns nothing.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Iterable

from glueforge.files import sha256_file

PACKAGES = ("glueforge",)  # the project's own code: exporters, patches, runtimes and validation are its subpackages


@functools.cache
def _graph():
    import grimp

    return grimp.build_graph(*PACKAGES, cache_dir=None, exclude_type_checking_imports=True)


def closure(roots: Iterable[str]) -> set[str]:
    """The root modules, every project module they import directly or indirectly, and their packages."""
    graph = _graph()
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(graph.find_modules_directly_imported_by(module))
        parent = module.rpartition(".")[0]
        if parent:
            todo.append(parent)
    return seen


@functools.cache
def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)  # a top-level package: found without importing it
    return Path(next(iter(spec.submodule_search_locations)))


def source_path(module: str) -> tuple[str, Path]:
    """``(path relative to the project, file)`` of a project module, without importing it."""
    top, *rest = module.split(".")
    base = _package_dir(top).joinpath(*rest)
    if base.is_dir():
        return "/".join([top, *rest, "__init__.py"]), base / "__init__.py"
    return "/".join([top, *rest]) + ".py", base.with_suffix(".py")


def code_digests(roots: Iterable[str]) -> dict[str, str]:
    """sha256 of every source file in the closure of ``roots``, by project-relative path."""
    files = dict(source_path(m) for m in closure(roots))
    return {rel: sha256_file(path) for rel, path in sorted(files.items())}
