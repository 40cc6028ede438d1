"""Homography accuracy on synthetic warps of real photographs, HPatches-style (as glue-factory evaluates LightGlue).

Each photograph is warped by a random homography with fixed seeds and photometric noise; the
model matches the original with the warp; OpenCV's USAC (MAGSAC++, 3 px, 10 000 iterations,
confidence 0.9999, seeded) estimates the homography from the matches, the same estimator for
every bundle and for the reference. Metrics over the warps:

- AUC of the mean corner error at 1, 3 and 5 px (glue-factory's ``AUC``: the area under the
  recall-error curve up to the threshold, normalised; a failed estimate counts as an infinite
  error);
- match precision: the share of matches whose reprojection error under the true homography is
  below 3 px (mean over warps);
- match count (mean over warps).

Warps (``sample_homography``): about the image centre, a rotation of up to 25 degrees, a scale
in [0.8, 1.2], a translation of up to 10 % of the size, then each corner displaced by up to
10 % of the size (perspective). Photometric noise: brightness +-20, contrast in [0.8, 1.2],
Gaussian noise of sigma 4 (of 255). All from ``numpy.random.default_rng(seed)``.

Numpy and OpenCV only (``opencv-python-headless``): ``glueforge evaluate`` runs where the bundle
runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

THRESHOLDS = (1.0, 3.0, 5.0)
PRECISION_PX = 3.0
RANSAC_PX = 3.0
RANGES = {"rotation_deg": 25.0, "scale": (0.8, 1.2), "translation": 0.1, "perspective": 0.1,
          "brightness": 20.0, "contrast": (0.8, 1.2), "noise_sigma": 4.0}


@dataclass(frozen=True)
class Warp:
    """One evaluation pair: a photograph, its warp by ``homography`` (3, 3) (image0 pixels -> image1), both uint8."""

    image0: np.ndarray
    image1: np.ndarray
    homography: np.ndarray


def sample_homography(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random homography of a (height, width) image, within ``RANGES``."""
    import cv2

    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float64)
    centre = np.array([width, height]) / 2.0
    angle = np.deg2rad(rng.uniform(-RANGES["rotation_deg"], RANGES["rotation_deg"]))
    scale = rng.uniform(*RANGES["scale"])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) * scale
    shift = rng.uniform(-1, 1, 2) * RANGES["translation"] * np.array([width, height])
    moved = (corners - centre) @ rotation.T + centre + shift
    moved += rng.uniform(-1, 1, (4, 2)) * RANGES["perspective"] * np.array([width, height])
    return cv2.getPerspectiveTransform(corners.astype(np.float32), moved.astype(np.float32))


def photometric(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    values = image.astype(np.float32) * rng.uniform(*RANGES["contrast"]) + rng.uniform(-1, 1) * RANGES["brightness"]
    values += rng.normal(0.0, RANGES["noise_sigma"], image.shape)
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


def shrunk(image: np.ndarray, longest: int) -> np.ndarray:
    """``image`` resized (bilinear) so that its longest side is at most ``longest``: the warps, and so AUC's pixels, are
    at the size the bundles run at."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = longest / max(h, w)
    if scale >= 1:
        return image
    return np.asarray(Image.fromarray(image).resize((round(w * scale), round(h * scale)), Image.BILINEAR))


def make_warps(images: Sequence[np.ndarray], per_image: int = 1, seed: int = 0) -> list[Warp]:
    """``per_image`` warps of each uint8 image (grey or RGB), seeded: the same inputs give the same warps."""
    import cv2

    rng = np.random.default_rng(seed)
    warps = []
    for image in images:
        h, w = image.shape[:2]
        for _ in range(per_image):
            homography = sample_homography(rng, h, w)
            warped = cv2.warpPerspective(image, homography, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
            warps.append(Warp(image, photometric(rng, warped), homography))
    return warps


def estimate(points0: np.ndarray, points1: np.ndarray) -> np.ndarray | None:
    """USAC (MAGSAC++) homography of matched points (S, 2), or None with fewer than 4 or no consensus."""
    import cv2

    if len(points0) < 4:
        return None
    cv2.setRNGSeed(0)
    homography, _ = cv2.findHomography(points0.astype(np.float64), points1.astype(np.float64), cv2.USAC_MAGSAC,
                                       RANSAC_PX, maxIters=10000, confidence=0.9999)
    return homography


def project(homography: np.ndarray, points: np.ndarray) -> np.ndarray:
    p = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ homography.T
    return p[:, :2] / p[:, 2:]


def corner_error(truth: np.ndarray, estimated: np.ndarray | None, height: int, width: int) -> float:
    """Mean distance (px) of the image corners mapped by the estimate and by the truth; inf if none."""
    if estimated is None or not np.isfinite(estimated).all():
        return float("inf")
    corners = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], np.float64)
    return float(np.linalg.norm(project(truth, corners) - project(estimated, corners), axis=1).mean())


def auc(errors: Sequence[float], thresholds: Sequence[float] = THRESHOLDS) -> list[float]:
    """Area under the recall-error curve up to each threshold, normalised (glue-factory's ``AUC``)."""
    errors = np.sort(np.asarray(errors, np.float64))
    recall = (np.arange(len(errors)) + 1) / len(errors)
    errors, recall = np.concatenate([[0.0], errors]), np.concatenate([[0.0], recall])
    out = []
    for t in thresholds:
        last = np.searchsorted(errors, t)
        r = np.concatenate([recall[:last], [recall[last - 1]]])
        e = np.concatenate([errors[:last], [t]])
        out.append(float(np.trapezoid(r, x=e) / t) if hasattr(np, "trapezoid") else float(np.trapz(r, x=e) / t))
    return out


def evaluate(points: Sequence[tuple[np.ndarray, np.ndarray]], warps: Sequence[Warp]) -> dict:
    """Metrics of the matched keypoints ``points`` (one (points0, points1) pair of (S, 2) arrays per warp)."""
    errors, precision, counts = [], [], []
    for (points0, points1), warp in zip(points, warps, strict=True):
        h, w = warp.image0.shape[:2]
        errors.append(corner_error(warp.homography, estimate(points0, points1), h, w))
        if len(points0):
            reprojection = np.linalg.norm(project(warp.homography, points0) - points1, axis=1)
            precision.append(float((reprojection < PRECISION_PX).mean()))
        else:
            precision.append(0.0)
        counts.append(len(points0))
    aucs = auc(errors)
    return {"auc@1px": aucs[0], "auc@3px": aucs[1], "auc@5px": aucs[2], "precision@3px": float(np.mean(precision)),
            "matches": float(np.mean(counts)), "warps": len(warps),
            "corner_errors": [None if not np.isfinite(e) else round(e, 3) for e in errors]}


def matched_points(match: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
                   warps: Sequence[Warp]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``match`` on each warp's two images, with progress (glueforge.progress)."""
    from glueforge.progress import progress

    points = []
    with progress("homography: match the warps", total=len(warps), unit="warp") as bar:
        for w in warps:
            points.append(match(w.image0, w.image1))
            bar.update(1)
    return points


ESTIMATOR = (f"OpenCV findHomography USAC_MAGSAC (MAGSAC++), {RANSAC_PX:g} px, 10000 iterations, confidence 0.9999, "
             "RNG seed 0")


def mutual_nearest_descriptors(descriptors0: np.ndarray, descriptors1: np.ndarray) -> np.ndarray:
    """Matches (S, 2) of mutual nearest neighbours by cosine: how an extractor without a matcher is evaluated."""
    if len(descriptors0) == 0 or len(descriptors1) == 0:
        return np.zeros((0, 2), np.int64)
    a = descriptors0 / np.maximum(np.linalg.norm(descriptors0, axis=1, keepdims=True), 1e-12)
    b = descriptors1 / np.maximum(np.linalg.norm(descriptors1, axis=1, keepdims=True), 1e-12)
    sim = a @ b.T
    nn01, nn10 = sim.argmax(1), sim.argmax(0)
    i = np.nonzero(nn10[nn01] == np.arange(len(a)))[0]
    return np.stack([i, nn01[i]], axis=1).astype(np.int64)


def bundle_matcher(bundle) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``match`` for :func:`evaluate` through the runtime API: ``match_pair``, or for an extractor-only model the
    mutual nearest neighbours of its descriptors."""
    def match(image0: np.ndarray, image1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if bundle.has_matcher:
            return bundle.match_pair(image0, image1).points()
        f0, f1 = bundle.extract([image0, image1])
        m = mutual_nearest_descriptors(f0.descriptors, f1.descriptors)
        return f0.keypoints[m[:, 0]], f1.keypoints[m[:, 1]]

    return match


def default_images(size_hw: Sequence[int], colour: str) -> list[np.ndarray]:
    """scikit-image's photographs (astronaut, coffee, chelsea, rocket, the motorcycle), uint8 at ``size_hw``
    in the family's colour: the build's evaluation images."""
    from PIL import Image
    from skimage import data

    photographs = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.stereo_motorcycle()[0]]
    h, w = size_hw
    return [np.asarray(Image.fromarray(p).convert(colour).resize((int(w), int(h)), Image.BILINEAR)) for p in photographs]
