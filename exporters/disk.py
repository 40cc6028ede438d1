"""DISK (Tyszkiewicz et al. 2020) through kornia's port, ``depth`` weights.

Keypoints are the K strongest strict maxima of the U-Net heatmap (``nms_window`` square);
descriptors are the dense descriptors at those pixels, L2-normalised. An image with fewer than
K maxima (small or featureless) fills the other slots with padding (keypoint (-1, -1), score 0,
zero descriptor), where kornia returns the maxima only. Input RGB in [0, 1]; H and W multiples
of 16 (the U-Net's depth).
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
    divisor: ClassVar[int] = 16
    family: Literal["disk"]
    nms_window: Annotated[int, Field(ge=3, le=15)] = 5

    @property
    def descriptor_dim(self) -> int:
        return 128


def _kornia(weights: Path):
    from kornia.feature import DISK

    from glueforge.weights import WeightsError, load_checkpoint, load_weights

    checkpoint = load_checkpoint(weights)
    if "extractor" not in checkpoint:
        raise WeightsError(f"{weights}: a DISK checkpoint holds an 'extractor' state dict; found keys {list(checkpoint)[:5]}")
    return load_weights(DISK(desc_dim=128), checkpoint["extractor"], weights)


def upstream(spec: Spec, weights: Path, settings: Any):
    """The unpatched kornia DISK module, for :func:`upstream_extract`."""
    return _kornia(weights)


def upstream_extract(model, images, spec: Spec, settings: Any) -> list[dict[str, Any]]:
    """``model`` (:func:`upstream`) on ``images`` (N, 3, H, W) on its device, with the same detection as ours:
    ``settings.keypoints`` strongest maxima, no score threshold; per image ``keypoints``, ``scores``, ``descriptors``."""
    features = model(images, n=settings.keypoints, window_size=spec.nms_window, score_threshold=float("-inf"),
                     pad_if_not_divisible=True)
    return [{"keypoints": f.keypoints, "scores": f.detection_scores, "descriptors": f.descriptors} for f in features]


def reference(spec: Spec, weights: Path, settings: Any):
    """kornia DISK with the same detection: ``settings.keypoints`` strongest maxima, no score threshold
    (an image with fewer maxima gives all of them, unpadded)."""
    model = upstream(spec, weights, settings)

    def extract(images):
        return [{k: v.numpy() for k, v in f.items()} for f in upstream_extract(model, images, spec, settings)]

    return extract


def build(spec: Spec, weights: Path, settings: Any):
    """Patched DISK: ``images (B, 3, H, W) -> keypoints (B, K, 2), scores (B, K), descriptors (B, K, D)``."""
    from glueforge.patches import apply_patches, disk_fixed_topk

    return apply_patches(_kornia(weights), (disk_fixed_topk,), settings)
