"""XFeat (Potje et al. 2024), sparse keypoints, through kornia's port; matched by LighterGlue.

Keypoints are the K best strict 5 x 5 maxima of the keypoint heatmap, ranked by the heatmap
times the reliability map (kornia's ``detectAndCompute``); descriptors are 64-D, sampled
bicubically from the dense map and L2-normalised. The network averages the input channels,
so it takes RGB as kornia's reference does. H and W must be multiples of 32 (the backbone's
stride, and the size kornia resizes to).

Difference from kornia's XFeat: kornia keeps the maxima whose heatmap value exceeds
``detection_threshold`` (0.05), at most ``top_k`` (4096), so the count varies per image; the
exported graph always returns exactly K (models.yaml; at most 3840 on TensorRT targets): the
K best maxima, with no threshold, filled with the best non-maxima (score 0) when an image has
fewer. The reference is kornia configured the same way: ``XFeat(top_k=K,
detection_threshold=0)``. XFeat's dual-scale dense mode (XFeat*) is not built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from glueforge.schema import ExtractorSpec


class Spec(ExtractorSpec):
    channels: ClassVar[int] = 3
    colour: ClassVar[str] = "RGB"
    divisor: ClassVar[int] = 32
    family: Literal["xfeat"]

    @property
    def descriptor_dim(self) -> int:
        return 64


def _kornia(weights: Path, settings: Any):
    from kornia.feature import XFeat

    from glueforge.weights import load_checkpoint, load_weights

    model = XFeat(top_k=settings.keypoints, detection_threshold=0.0)
    load_weights(model.net, load_checkpoint(weights), weights)
    return model.eval()


def upstream(spec: Spec, weights: Path, settings: Any):
    """The unpatched kornia XFeat module (``top_k=K``, no detection threshold), for :func:`upstream_extract`."""
    return _kornia(weights, settings)


def upstream_extract(model, images, spec: Spec, settings: Any) -> list[dict[str, Any]]:
    """``model.detectAndCompute`` (:func:`upstream`) on ``images`` (N, 3, H, W) on its device: per image
    ``keypoints``, ``scores``, ``descriptors``."""
    return [{k: f[k] for k in ("keypoints", "scores", "descriptors")} for f in model.detectAndCompute(images)]


def reference(spec: Spec, weights: Path, settings: Any):
    """kornia ``XFeat(top_k=K, detection_threshold=0).detectAndCompute``."""
    model = upstream(spec, weights, settings)

    def extract(images):
        return [{k: v.numpy() for k, v in f.items()} for f in upstream_extract(model, images, spec, settings)]

    return extract


def build(spec: Spec, weights: Path, settings: Any):
    """Patched XFeat: ``images (B, 3, H, W) -> keypoints (B, K, 2), scores (B, K), descriptors (B, K, 64)``."""
    from glueforge.patches import apply_patches, xfeat_space_to_depth, xfeat_tensor_forward

    return apply_patches(_kornia(weights, settings), (xfeat_space_to_depth, xfeat_tensor_forward), settings)
