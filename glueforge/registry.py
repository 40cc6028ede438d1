"""Plug-in discovery: every module of ``exporters/`` is a model family, every module of
``runtimes/`` a runtime (modules whose name starts with ``_`` are their helpers).

Adding a family or a runtime is adding its module; nothing here or elsewhere in the core
lists them. Family and runtime modules import torch, onnx or a runtime package only inside
their functions, so discovering them costs nothing and works on a machine without torch (a
Jetson runner) or with only the pull-only install.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from types import ModuleType

from glueforge import GlueforgeError

FAMILY_PACKAGE = "glueforge.exporters"
RUNTIME_PACKAGE = "glueforge.runtimes"


class UnknownPlugin(GlueforgeError):
    """A family or runtime that no module provides."""


def _discover(package: str) -> dict[str, ModuleType]:
    root = importlib.import_module(package)
    names = sorted(m.name for m in pkgutil.iter_modules(root.__path__) if not m.name.startswith("_"))
    return {name: importlib.import_module(f"{package}.{name}") for name in names}


@functools.cache
def families() -> dict[str, ModuleType]:
    """Family name -> its module (``Spec``, ``build``, ``reference``)."""
    return _discover(FAMILY_PACKAGE)


@functools.cache
def runtimes() -> dict[str, ModuleType]:
    """Runtime name -> its module (``Target``, ``prepare``, ``build``, ``runner``, ``versions``, ``check_compatibility``)."""
    return _discover(RUNTIME_PACKAGE)


def family(name: str) -> ModuleType:
    known = families()
    if name not in known:
        raise UnknownPlugin(f"unknown model family {name!r}; known families: {', '.join(known)}")
    return known[name]


def runtime(name: str) -> ModuleType:
    known = runtimes()
    if name not in known:
        raise UnknownPlugin(f"unknown runtime {name!r}; known runtimes: {', '.join(known)}")
    return known[name]
