"""ALIKED (Zhao et al. 2023) through kornia's pure-PyTorch port.

Keypoints are the K strongest strict maxima of the score map, refined by soft-argmax;
descriptors come from the deformable SDDH head. Input RGB in [0, 1]; H and W multiples of 32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field
from typing_extensions import Annotated

from glueforge.schema import ExtractorSpec


class Spec(ExtractorSpec):
    channels: ClassVar[int] = 3
    colour: ClassVar[str] = "RGB"
    divisor: ClassVar[int] = 32
    family: Literal["aliked"]
    variant: Literal["aliked-t16", "aliked-n16", "aliked-n16rot", "aliked-n32"]
    nms_radius: Annotated[int, Field(ge=1, le=8)] = 2

    @property
    def descriptor_dim(self) -> int:
        return 64 if self.variant == "aliked-t16" else 128


def _kornia(spec: Spec, weights: Path, settings: Any):
    from kornia.feature import ALIKED

    from glueforge.weights import load_checkpoint, load_weights

    model = ALIKED(model_name=spec.variant, max_num_keypoints=settings.keypoints, detection_threshold=0.0,
                   nms_radius=spec.nms_radius)
    return load_weights(model, load_checkpoint(weights), weights)


def upstream(spec: Spec, weights: Path, settings: Any):
    """The unpatched kornia ALIKED module (top-k mode, ``settings.keypoints`` keypoints), for :func:`upstream_extract`."""
    return _kornia(spec, weights, settings)


def upstream_extract(model, images, spec: Spec, settings: Any) -> list[dict[str, Any]]:
    """``model`` (:func:`upstream`) on ``images`` (N, 3, H, W) on its device: per image ``keypoints`` (n, 2) px,
    ``scores`` (n,) and ``descriptors`` (n, D) tensors."""
    return [{"keypoints": f.keypoints, "scores": f.keypoint_scores, "descriptors": f.descriptors} for f in model(images)]


def reference(spec: Spec, weights: Path, settings: Any):
    """kornia ALIKED in top-k mode with ``settings.keypoints`` keypoints."""
    model = upstream(spec, weights, settings)

    def extract(images):
        return [{k: v.numpy() for k, v in f.items()} for f in upstream_extract(model, images, spec, settings)]

    return extract


def build(spec: Spec, weights: Path, settings: Any):
    """Patched ALIKED: ``images (B, 3, H, W) -> keypoints (B, K, 2), scores (B, K), descriptors (B, K, D)``."""
    from glueforge.patches import (aliked_batched_sddh, aliked_deform_grid, aliked_fixed_topk_dkd, aliked_tensor_forward,
                         aliked_upsample_grid, apply_patches)

    return apply_patches(_kornia(spec, weights, settings), (aliked_upsample_grid, aliked_deform_grid, aliked_fixed_topk_dkd, aliked_batched_sddh,
                                                            aliked_tensor_forward), settings)
