"""SIFT (Lowe 2004) with RootSIFT descriptors, on the host through OpenCV; matched by LightGlue "sift".

SIFT runs on the host, not in a graph (``Spec.host``): :func:`extract` is what the runtime API
and the validation call, and a ``sift_lightglue`` model exports the LightGlue matcher graph only.
It needs OpenCV (``opencv-python-headless``) and numpy, never torch.

Upstream: ``lightglue/sift.py`` of cvg/LightGlue (commit 14a84dd; ``SIFT`` with
``backend="opencv"``), the extractor of the ``sift_lightglue`` checkpoint. Per image it
1. makes the uint8 image as ``(image * 255.0).astype(np.uint8)`` (truncation, not rounding; the
   [0, 1] images of ``glueforge.validation.images`` are ``pixel / 255`` in float32 and come back exactly);
2. runs ``cv2.SIFT_create(contrastThreshold=detection_threshold, nfeatures=max_num_keypoints,
   edgeThreshold=edge_threshold, nOctaveLayers=num_octaves).detectAndCompute(image, None)``
   (upstream passes its ``num_octaves`` as OpenCV's ``nOctaveLayers``; this spec keeps its name);
   keypoints are ``kp.pt`` (x, y) px, scores ``kp.response``, scales ``kp.size`` (OpenCV's
   diameter of the keypoint's neighbourhood, px, unscaled) and orientations
   ``np.deg2rad(kp.angle)``: OpenCV's angle is in [0, 360) degrees, so ``oris`` are in [0, 2 pi);
3. ``filter_dog_point`` unless ``nms_radius`` is None: at each pixel ``round(pt - 0.5)`` keeps the
   detections of the highest score, then of them the lowest ``|ori|`` (OpenCV gives one
   detection per dominant orientation at the same point); with ``nms_radius > 0`` it keeps only
   the maxima of the score in a (2r + 1)^2 window;
4. keeps the ``max_num_keypoints`` best by score when more remain (``torch.topk``);
5. ``sift_to_rootsift``: L1-normalise, clip at 1e-6, square root, L2-normalise (``rootsift``).

OpenCV applies ``nfeatures`` before step 3 drops the duplicate orientations, so an image rich in
detections yields fewer than K keypoints (806 of K = 1024 and 384 of K = 512 on sacre_coeur1 at 480 x 640); the other
slots are padding. There is no border filtering besides OpenCV's own (SIFT_IMG_BORDER = 5 px).

Differences from upstream, none in the set of keypoints or in any value:
- keypoints are ordered by descending score, equal scores by x, y and orientation; upstream
  keeps OpenCV's order when no top-k is needed. :func:`reference` is ordered the same way, so
  slot i of both is the same keypoint. Where top-k cuts through equal scores (in practice one
  point's orientations, with ``nms_radius=None``), the one kept is the first in this order;
  ``torch.topk``'s choice among them is arbitrary.
- :func:`extract` is numpy (the separable maximum filter replaces ``max_pool2d`` exactly; RootSIFT
  agrees with upstream's torch code to float32 rounding); :func:`reference` keeps upstream's
  torch code for steps 3 to 5.
- an image without detections gives empty arrays (upstream fails on OpenCV's ``None``).
- upstream's ``preprocess_conf`` (resize to 1024 px) is not applied here: the caller resizes to
  the model's image size as the manifest says.

SIFT has no constraint on H and W (``divisor = 1``): padding an image up to a multiple would
add an artificial edge on which DoG detects keypoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Optional

import numpy as np
from pydantic import Field, model_validator
from typing_extensions import Annotated

from glueforge import GlueforgeError
from glueforge.schema import PADDING, ExtractorSpec

DESCRIPTOR_DIM = 128
ROOTSIFT_EPS = 1e-6  # upstream's sift_to_rootsift(eps=1e-6)


class SiftError(GlueforgeError):
    """A SIFT call that cannot run: wrong input, or a graph asked of a host extractor."""


class Spec(ExtractorSpec):
    """cvg/LightGlue ``SIFT.default_conf`` for the opencv backend (``max_num_keypoints`` is the export's K)."""

    channels: ClassVar[int] = 1
    colour: ClassVar[str] = "L"
    divisor: ClassVar[int] = 1  # SIFT takes any size (see the module docstring)
    keypoint_features: ClassVar[tuple[str, ...]] = ("scales", "oris")
    host: ClassVar[bool] = True
    host_extractor: ClassVar[str] = ("OpenCV SIFT with RootSIFT descriptors on the grey uint8 image, as cvg/LightGlue's "
                                     "sift.py (opencv backend): exporters/sift.py extract (numpy and OpenCV, no torch)")
    family: Literal["sift"]
    rootsift: bool = True
    nms_radius: Optional[Annotated[int, Field(ge=0, le=16)]] = 0  # None: no filter_dog_point at all
    detection_threshold: Annotated[float, Field(ge=0.0)] = 0.0066667  # OpenCV contrastThreshold (COLMAP's value)
    edge_threshold: Annotated[float, Field(gt=0.0)] = 10.0  # OpenCV edgeThreshold
    num_octaves: Annotated[int, Field(ge=1, le=16)] = 4  # passed as OpenCV nOctaveLayers, as upstream does

    @model_validator(mode="after")
    def _no_weights(self) -> "Spec":
        if self.weights is not None:
            raise ValueError(f"weights {self.weights!r}: SIFT has no learned weights; leave weights out")
        return self

    @property
    def descriptor_dim(self) -> int:
        return DESCRIPTOR_DIM


# -- upstream's steps, shared by extract and reference ------------------------------------------
def _grey_images(images: Any) -> np.ndarray:
    """(N, 1, H, W) float32 in [0, 1] (numpy or torch) -> (N, H, W) float32."""
    array = np.asarray(images.detach().cpu().numpy() if hasattr(images, "detach") else images)
    if array.ndim != 4 or array.shape[1] != 1:
        raise SiftError(f"SIFT takes grey images (N, 1, H, W), got shape {tuple(array.shape)}")
    if not np.issubdtype(array.dtype, np.floating):
        raise SiftError(f"SIFT takes float images in [0, 1], got dtype {array.dtype}")
    array = array.astype(np.float32, copy=False)
    if array.size and (array.min() < 0.0 or array.max() > 1.0):
        raise SiftError(f"SIFT takes images in [0, 1], got values in [{array.min()}, {array.max()}]")
    return array[:, 0]


def _opencv_sift(spec: Spec, image: np.ndarray, keypoints: int) -> dict[str, np.ndarray]:
    """Upstream ``run_opencv_sift`` on one (H, W) float32 image: the detections in OpenCV's order."""
    import cv2

    sift = cv2.SIFT_create(contrastThreshold=spec.detection_threshold, nfeatures=keypoints,
                           edgeThreshold=spec.edge_threshold, nOctaveLayers=spec.num_octaves)
    detections, descriptors = sift.detectAndCompute((image * 255.0).astype(np.uint8), None)
    return {
        "keypoints": np.array([k.pt for k in detections], dtype=np.float32).reshape(-1, 2),
        "scores": np.array([k.response for k in detections], dtype=np.float32),
        "descriptors": (np.zeros((0, DESCRIPTOR_DIM), np.float32) if descriptors is None
                        else np.asarray(descriptors, dtype=np.float32)),
        "scales": np.array([k.size for k in detections], dtype=np.float32),
        "oris": np.deg2rad(np.array([k.angle for k in detections], dtype=np.float32)),
    }


def _max_filter(buffer: np.ndarray, radius: int) -> np.ndarray:
    """``max_pool2d(kernel 2r + 1, stride 1, padding r)`` of (H, W): the maximum is separable, the
    padding is -inf."""
    out = buffer
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], constant_values=-np.inf)
        n = out.shape[axis]
        out = np.max([np.take(padded, np.arange(i, i + n), axis=axis) for i in range(2 * radius + 1)], axis=0)
    return out


def _filter_dog_point(points: np.ndarray, scores: np.ndarray, angles: np.ndarray, shape: tuple[int, int],
                      nms_radius: int, max_filter: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
    """Upstream ``filter_dog_point`` with the opencv backend's scores: indices of the detections kept."""
    ij = np.round(points - 0.5).astype(int).T[::-1]
    buffer = np.zeros(shape)
    np.maximum.at(buffer, tuple(ij), scores)  # duplicates at one pixel: the highest score
    keep = np.where(buffer[tuple(ij)] == scores)[0]
    ij = ij[:, keep]
    buffer[:] = np.inf
    o_abs = np.abs(angles[keep])
    np.minimum.at(buffer, tuple(ij), o_abs)  # then the lowest |orientation|
    mask = buffer[tuple(ij)] == o_abs
    ij, keep = ij[:, mask], keep[mask]
    if nms_radius > 0:
        buffer[:] = 0
        buffer[tuple(ij)] = scores[keep]
        keep = keep[(buffer == max_filter(buffer, nms_radius))[tuple(ij)]]
    return keep


def _rootsift(x: np.ndarray, eps: float = ROOTSIFT_EPS) -> np.ndarray:
    """Upstream ``sift_to_rootsift`` in numpy: (n, 128) -> (n, 128)."""
    x = x / np.maximum(np.abs(x).sum(-1, keepdims=True), eps)
    x = np.sqrt(np.maximum(x, eps))
    return x / np.maximum(np.sqrt((x * x).sum(-1, keepdims=True)), eps)


def _by_score(features: dict[str, np.ndarray], count: Optional[int] = None) -> dict[str, np.ndarray]:
    """The ``count`` best by descending score; equal scores (one point's orientations, kept with
    ``nms_radius=None``) by x, y, then orientation, so that the order depends on no sort's stability."""
    xy = features["keypoints"]
    order = np.lexsort((features["oris"], xy[:, 1], xy[:, 0], -features["scores"]))[:count]
    return {name: np.ascontiguousarray(value[order]) for name, value in features.items()}


def _detect(spec: Spec, image: np.ndarray, keypoints: int) -> dict[str, np.ndarray]:
    """One (H, W) image -> its unpadded features, at most ``keypoints``, by descending score (numpy)."""
    features = _opencv_sift(spec, image, keypoints)
    if spec.nms_radius is not None and len(features["scores"]):
        keep = _filter_dog_point(features["keypoints"], features["scores"], features["oris"], image.shape,
                                 spec.nms_radius, _max_filter)
        features = {name: value[keep] for name, value in features.items()}
    features = _by_score(features, keypoints)  # top-k and order in one stable sort
    if spec.rootsift:
        features["descriptors"] = _rootsift(features["descriptors"])
    return features


# -- the family's interface ---------------------------------------------------------------------
def extract(spec: Spec, images: np.ndarray, keypoints: int) -> dict[str, np.ndarray]:
    """Host SIFT, padded to ``keypoints`` (K) per image.

    ``images`` (N, 1, H, W) float32 in [0, 1] -> ``keypoints`` (N, K, 2) float32 px (x, y), ``scores``
    (N, K) (OpenCV response), ``descriptors`` (N, K, 128) (RootSIFT, unit L2), ``scales`` (N, K)
    (px, OpenCV ``kp.size``) and ``oris`` (N, K) (radians, [0, 2 pi)). Real keypoints come first,
    by descending score; the remaining slots are padding: keypoint (-1, -1), score, descriptor,
    scale and orientation 0. Deterministic.
    """
    if keypoints < 1:
        raise SiftError(f"keypoints must be at least 1, got {keypoints}")
    grey = _grey_images(images)
    n = len(grey)
    out = {"keypoints": np.full((n, keypoints, 2), PADDING, np.float32),
           "scores": np.zeros((n, keypoints), np.float32),
           "descriptors": np.zeros((n, keypoints, DESCRIPTOR_DIM), np.float32),
           **{name: np.zeros((n, keypoints), np.float32) for name in spec.keypoint_features}}
    for i, image in enumerate(grey):
        for name, value in _detect(spec, image, keypoints).items():
            out[name][i, :len(value)] = value
    return out


def reference(spec: Spec, weights: Optional[Path], settings: Any):
    """cvg/LightGlue ``SIFT(backend="opencv", max_num_keypoints=settings.keypoints)`` per image:
    ``images (N, 1, H, W) -> [{"keypoints", "scores", "descriptors", "scales", "oris"}]`` (numpy,
    unpadded), with upstream's torch code for top-k, NMS and RootSIFT, ordered by descending score.
    ``weights`` is None: SIFT has no learned weights."""
    import torch
    import torch.nn.functional as F

    k = settings.keypoints

    def max_pool(buffer: np.ndarray, radius: int) -> np.ndarray:
        return F.max_pool2d(torch.from_numpy(buffer).unsqueeze(0), kernel_size=radius * 2 + 1, stride=1,
                            padding=radius).squeeze(0).numpy()

    def sift_to_rootsift(x: torch.Tensor, eps: float = ROOTSIFT_EPS) -> torch.Tensor:
        x = F.normalize(x, p=1, dim=-1, eps=eps)
        x.clip_(min=eps).sqrt_()
        return F.normalize(x, p=2, dim=-1, eps=eps)

    def one(image: np.ndarray) -> dict[str, np.ndarray]:
        pred = _opencv_sift(spec, image, k)
        if spec.nms_radius is not None:
            keep = _filter_dog_point(pred["keypoints"], pred["scores"], pred["oris"], image.shape, spec.nms_radius,
                                     max_pool)
            pred = {name: value[keep] for name, value in pred.items()}
        tensors = {name: torch.from_numpy(value) for name, value in pred.items()}
        if len(tensors["scores"]) > k:
            indices = torch.topk(tensors["scores"], k).indices
            tensors = {name: value[indices] for name, value in tensors.items()}
        if spec.rootsift:
            tensors["descriptors"] = sift_to_rootsift(tensors["descriptors"])
        return _by_score({name: value.numpy() for name, value in tensors.items()})

    def extract_reference(images: Any) -> list[dict[str, np.ndarray]]:
        return [one(image) for image in _grey_images(images)]

    return extract_reference


def build(spec: Spec, weights: Optional[Path], settings: Any):
    """SIFT has no graph: it runs on the host (``extract``); a sift model's only graph is its matcher's."""
    raise SiftError("the sift extractor runs on the host (exporters/sift.py extract) and has no graph to build; "
                    "a model with a sift extractor exports its matcher graph only")
