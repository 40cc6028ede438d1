"""Task metrics between a candidate and a reference set of local features.

All functions take numpy arrays of one image or one pair:
keypoints (N, 2) pixels, descriptors (N, D), matches (S, 2) index pairs.
"""

from __future__ import annotations

import numpy as np

from glueforge.agreement import descriptor_cosine, keypoint_mnn_rate, match_recall, mutual_nearest
from glueforge.api import pair_matches

__all__ = ["descriptor_cosine", "keypoint_mnn_rate", "match_recall", "matches_of_pair", "mutual_nearest", "pair_metrics"]


def matches_of_pair(outputs: dict[str, np.ndarray], pair: int) -> np.ndarray:
    """The matches (S, 2) of one pair from a graph's outputs, in either form the graphs have
    (``glueforge.api.pair_matches``)."""
    return pair_matches(outputs, pair)[0]


def pair_metrics(
    ref: tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray],
    cand: tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray],
    radius: float = 1.0,
) -> dict[str, float]:
    """Metrics of one pair. ``ref``/``cand``: (features of image 0, features of image 1, matches (S, 2)).

    Features hold ``keypoints`` and, optionally, ``descriptors``.
    """
    corr = [mutual_nearest(r["keypoints"], c["keypoints"], radius) for r, c in zip(ref[:2], cand[:2])]
    out = {
        "keypoint_mnn": min(keypoint_mnn_rate(c) for c in corr),
        "match_recall": match_recall(ref[2], cand[2], corr[0], corr[1]),
        "reference_matches": float(len(ref[2])),
        "matches": float(len(cand[2])),
    }
    if all("descriptors" in f for f in (*ref[:2], *cand[:2])):
        cos = np.concatenate([descriptor_cosine(r["descriptors"], c["descriptors"], k) for r, c, k in zip(ref[:2], cand[:2], corr)])
        out["descriptor_cosine_min"] = float(cos.min()) if len(cos) else 1.0
        out["descriptor_cosine_mean"] = float(cos.mean()) if len(cos) else 1.0
    return out
