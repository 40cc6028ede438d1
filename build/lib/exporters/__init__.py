"""Exporters: one module per model family, plus the graph wrappers that combine them.

A family module exposes:

- ``PATCHES``: the names of the export patches (``patches/``) it applies, in order;
- ``reference(weights, spec)``: the unpatched upstream (kornia) model with the real weights,
  the numerical reference of every parity test;
- ``build(weights, spec)``: the same model with its patches applied, ready to trace.

``weights`` maps a weight role (``"extractor"``, ``"matcher"``) to a verified local file.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from types import ModuleType
from typing import Mapping

import torch
from torch import nn

FAMILIES = ("aliked", "disk", "lightglue")


class WeightsError(RuntimeError):
    """A checkpoint does not fit the model it was declared for."""


def family(name: str) -> ModuleType:
    if name not in FAMILIES:
        raise KeyError(f"unknown model family {name!r}; known families: {', '.join(FAMILIES)}")
    return importlib.import_module(f"exporters.{name}")


def load_checkpoint(path: Path) -> Mapping[str, torch.Tensor]:
    """Load a checkpoint as tensors only (``weights_only=True``): never an arbitrary pickle."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path, unused: str = r"$^") -> nn.Module:
    """Load ``state`` into ``model``; every learned parameter must be present and no key left over.

    Buffers that upstream derives at construction (grids, thresholds) may be absent; keys
    matching the regular expression ``unused`` are known leftovers of older checkpoints.
    """
    state = {k: v for k, v in state.items() if not re.match(unused, k)}
    result = model.load_state_dict(state, strict=False)
    parameters = dict(model.named_parameters())
    missing = [k for k in result.missing_keys if k in parameters or k.endswith(("running_mean", "running_var"))]
    if missing or result.unexpected_keys:
        raise WeightsError(
            f"{path}: checkpoint does not fit {type(model).__name__}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {result.unexpected_keys[:5]}{'...' if len(result.unexpected_keys) > 5 else ''}"
        )
    return model.eval()
