"""Loading checkpoints into PyTorch modules, for the family modules' ``build`` and ``reference``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from glueforge import GlueforgeError


class WeightsError(GlueforgeError):
    """A checkpoint does not fit the model it was declared for."""


def load_checkpoint(path: Path) -> Mapping[str, torch.Tensor]:
    """Load a checkpoint as tensors only (``weights_only=True``): never an arbitrary pickle."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several kinds for a file that is not a checkpoint
        raise WeightsError(f"{path}: not a loadable tensor checkpoint: {e}") from None


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
