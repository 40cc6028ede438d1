"""Inliers of matches: a robust two-view fit with OpenCV's USAC (MAGSAC++), the check a user makes before trusting
a match count. Two images of different places still give matches (LightGlue matches what looks alike); few of
them agree with one epipolar geometry or one homography.

- ``fundamental``: any two views of a static scene (the default); at least 8 matches.
- ``homography``: a plane, or a camera that only rotates (aerial images of flat ground); at least 4.
"""

from __future__ import annotations

import enum

import numpy as np

from glueforge import GlueforgeError

PIXELS = 1.0  # the inlier threshold: Sampson (fundamental) or reprojection (homography) error in pixels
CONFIDENCE = 0.9999
ITERATIONS = 10_000


class Geometry(str, enum.Enum):
    FUNDAMENTAL = "fundamental"
    HOMOGRAPHY = "homography"

    @property
    def minimum(self) -> int:
        return 8 if self is Geometry.FUNDAMENTAL else 4


def describe(geometry: Geometry) -> str:
    return f"{geometry.value} matrix, OpenCV USAC_MAGSAC, {PIXELS:g} px, confidence {CONFIDENCE}"


def inliers(points0: np.ndarray, points1: np.ndarray, geometry: Geometry) -> np.ndarray:
    """A boolean (S,) mask of the matched points (S, 2) that agree with the fitted ``geometry``; all False where
    there are too few matches or no consensus. Raises :class:`GlueforgeError` without OpenCV."""
    try:
        import cv2
    except ImportError:
        raise GlueforgeError("inliers need OpenCV: pip install 'glueforge[opencv]' (or give --geometry none)") from None
    count = len(points0)
    if count < geometry.minimum:
        return np.zeros(count, bool)
    a, b = np.asarray(points0, np.float64), np.asarray(points1, np.float64)
    if geometry is Geometry.FUNDAMENTAL:
        _, mask = cv2.findFundamentalMat(a, b, cv2.USAC_MAGSAC, PIXELS, CONFIDENCE, ITERATIONS)
    else:
        _, mask = cv2.findHomography(a, b, cv2.USAC_MAGSAC, PIXELS, maxIters=ITERATIONS, confidence=CONFIDENCE)
    return np.zeros(count, bool) if mask is None else mask.ravel().astype(bool)
