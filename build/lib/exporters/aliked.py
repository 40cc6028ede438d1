"""ALIKED (Zhao et al. 2023) through kornia's pure-PyTorch port.

Keypoints are the K strongest strict maxima of the score map, refined by soft-argmax;
descriptors come from the deformable SDDH head. Input RGB in [0, 1], any size (upstream pads
to a multiple of 32 internally).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from kornia.feature import ALIKED

from exporters import load_checkpoint, load_weights
from patches import apply_patches

PATCHES = ("aliked_fixed_topk_dkd", "aliked_batched_sddh", "aliked_tensor_forward")
CHANNELS = 3


def reference(weights: Mapping[str, Path], spec: Any) -> ALIKED:
    """kornia ALIKED in top-k mode with ``spec.keypoints`` keypoints."""
    model = ALIKED(
        model_name=spec.extractor.variant,
        max_num_keypoints=spec.keypoints,
        detection_threshold=0.0,
        nms_radius=spec.extractor.nms_radius,
    )
    path = weights["extractor"]
    return load_weights(model, load_checkpoint(path), path)


def build(weights: Mapping[str, Path], spec: Any) -> ALIKED:
    """Patched ALIKED: ``images (B, 3, H, W) -> keypoints (B, K, 2), scores (B, K), descriptors (B, K, D)``."""
    return apply_patches(reference(weights, spec), PATCHES, spec)
