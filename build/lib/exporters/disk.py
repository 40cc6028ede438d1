"""DISK (Tyszkiewicz et al. 2020) through kornia's port, ``depth`` weights.

Keypoints are the K strongest strict maxima of the U-Net heatmap (5x5 window); descriptors
are the dense descriptors at those pixels, L2-normalised. Input RGB in [0, 1].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from kornia.feature import DISK

from exporters import WeightsError, load_checkpoint, load_weights
from patches import apply_patches

PATCHES = ("disk_fixed_topk",)
CHANNELS = 3


def reference(weights: Mapping[str, Path], spec: Any) -> DISK:
    """kornia DISK with the checkpoint's ``extractor`` state."""
    path = weights["extractor"]
    checkpoint = load_checkpoint(path)
    if "extractor" not in checkpoint:
        raise WeightsError(f"{path}: a DISK checkpoint holds an 'extractor' state dict; found keys {list(checkpoint)[:5]}")
    return load_weights(DISK(desc_dim=128), checkpoint["extractor"], path)


def build(weights: Mapping[str, Path], spec: Any) -> DISK:
    """Patched DISK: ``images (B, 3, H, W) -> keypoints (B, K, 2), scores (B, K), descriptors (B, K, D)``."""
    return apply_patches(reference(weights, spec), PATCHES, spec)


def reference_kwargs(spec: Any) -> dict[str, Any]:
    """Arguments of kornia's ``DISK.forward`` equivalent to the exported detection."""
    return {"n": spec.keypoints, "window_size": spec.extractor.nms_window, "score_threshold": float("-inf"),
            "pad_if_not_divisible": True}
