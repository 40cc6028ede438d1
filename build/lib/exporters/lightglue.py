"""LightGlue (Lindenberger et al. 2023) through kornia's port, at fixed depth.

Early stopping and point pruning are off (``depth_confidence = width_confidence = -1``):
all ``n_layers`` layers run, which is what makes a static graph possible.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from kornia.feature import LightGlue

from exporters import load_checkpoint, load_weights
from patches import apply_patches

PATCHES = ("lightglue_posenc_expand", "lightglue_static_heads", "lightglue_concat_assignment", "lightglue_fixed_depth")


def reference(weights: Mapping[str, Path], spec: Any) -> LightGlue:
    """kornia LightGlue for ``spec.matcher.features`` with the checkpoint, fixed depth."""
    conf = {k: v for k, v in LightGlue.features[spec.matcher.features].items() if k != "weights"}
    model = LightGlue(
        features=None,
        **conf,
        n_layers=spec.matcher.n_layers,
        depth_confidence=-1,
        width_confidence=-1,
        filter_threshold=spec.matcher.filter_threshold,
        flash=False,
    )
    path = weights["matcher"]
    state = dict(load_checkpoint(path))
    for i in range(spec.matcher.n_layers):  # the released checkpoints predate upstream's module renaming
        for old, new in ((f"self_attn.{i}.", f"transformers.{i}.self_attn."), (f"cross_attn.{i}.", f"transformers.{i}.cross_attn.")):
            state = {k.replace(old, new, 1) if k.startswith(old) else k: v for k, v in state.items()}
    # disk_lightglue carries the unused 'log_assignment.<i>.r' tensors of an earlier upstream release
    return load_weights(model, state, path, unused=r"log_assignment\.\d+\.r$")


def build(weights: Mapping[str, Path], spec: Any) -> LightGlue:
    """Patched LightGlue: ``kpts0, kpts1 (B, K, 2) px, desc0, desc1 (B, K, D) -> matches0 (B, K), mscores0 (B, K)``."""
    return apply_patches(reference(weights, spec), PATCHES, spec)
