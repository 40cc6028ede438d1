"""Named export patches.

Each module here replaces one piece of an upstream (kornia) model that fails ONNX export or
a deployment target. Every module has the same shape:

- its docstring says what upstream does, why that fails export or the target, what replaces
  it, and which test proves parity;
- ``TARGET`` is the upstream class it replaces;
- ``apply(model, settings)`` swaps the class of every ``TARGET`` instance inside ``model`` for
  the patched subclass (parameters are shared, nothing is copied) and returns the count.

:func:`apply_patches` applies a list of them by name and refuses a patch that matched nothing,
so an upstream refactor fails loudly instead of exporting the unpatched code.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Iterable, Union

from glueforge import GlueforgeError

if TYPE_CHECKING:
    from torch import nn

PATCH_DIR = Path(__file__).resolve().parent


class PatchError(GlueforgeError):
    """A patch is unknown or matched nothing in the model it was applied to."""


def swap_class(model: nn.Module, target: type, patched: type, **attrs: Any) -> int:
    """Re-class every exact ``target`` instance in ``model`` as ``patched``; set ``attrs`` on it."""
    count = 0
    for module in model.modules():
        if type(module) is target:
            module.__class__ = patched
            for name, value in attrs.items():
                setattr(module, name, value)
            count += 1
    return count


def patch_module(name: str):
    """Import ``patches.<name>``; raise :class:`PatchError` listing the known patches."""
    if not (PATCH_DIR / f"{name}.py").is_file():
        known = sorted(p.stem for p in PATCH_DIR.glob("[!_]*.py"))
        raise PatchError(f"unknown patch {name!r}; known patches: {', '.join(known)}")
    return importlib.import_module(f"{__name__}.{name}")


def apply_patches(model: nn.Module, patches: Iterable[Union[ModuleType, str]], settings: Any) -> nn.Module:
    """Apply patches (modules, or their names) in order; every one must replace at least one module.

    Family modules import their patch modules and pass them here, so the import graph, and with
    it each stage's code identity, shows which patches a model uses.
    """
    for patch in patches:
        module = patch_module(patch) if isinstance(patch, str) else patch
        count = module.apply(model, settings)
        if count == 0:
            raise PatchError(f"patch {module.__name__.rpartition('.')[2]!r} matched no module in {type(model).__name__}")
    return model
