"""Task metrics between a candidate and a reference set of local features.

All functions take numpy arrays of one image or one pair:
keypoints (N, 2) pixels, descriptors (N, D), matches (S, 2) index pairs.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def mutual_nearest(reference: np.ndarray, candidate: np.ndarray, radius: float = 1.0) -> np.ndarray:
    """For each reference keypoint, the index of its mutual nearest candidate within ``radius`` px, else -1."""
    if len(reference) == 0 or len(candidate) == 0:
        return np.full(len(reference), -1)
    dist, nearest = cKDTree(candidate).query(reference)
    _, back = cKDTree(reference).query(candidate)
    mutual = (back[nearest] == np.arange(len(reference))) & (dist <= radius)
    return np.where(mutual, nearest, -1)


def keypoint_mnn_rate(correspondence: np.ndarray) -> float:
    """Share of reference keypoints with a mutual nearest candidate (output of :func:`mutual_nearest`)."""
    return float((correspondence >= 0).mean()) if len(correspondence) else 1.0


def descriptor_cosine(reference: np.ndarray, candidate: np.ndarray, correspondence: np.ndarray) -> np.ndarray:
    """Cosine similarity of the descriptors of corresponding keypoints, (n_corresponding,)."""
    found = correspondence >= 0
    a, b = reference[found], candidate[correspondence[found]]
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def match_recall(reference: np.ndarray, candidate: np.ndarray, corr0: np.ndarray, corr1: np.ndarray) -> float:
    """Share of reference matches (i, j) that the candidate reproduces as (corr0[i], corr1[j])."""
    if len(reference) == 0:
        return 1.0
    found = {(int(i), int(j)) for i, j in candidate}
    hits = sum((int(corr0[i]), int(corr1[j])) in found for i, j in reference if corr0[i] >= 0 and corr1[j] >= 0)
    return hits / len(reference)


def matches_of_pair(outputs: dict[str, np.ndarray], pair: int) -> np.ndarray:
    """The matches (S, 2) of one pair from a graph's outputs, in either form the graphs have.

    ``matches`` (M, 3) rows (pair, index in image 0, index in image 1), or the dense
    ``matches0`` (B, K): the index in image 1 of each keypoint of image 0, -1 for none.
    """
    if "matches0" in outputs:
        row = outputs["matches0"][pair]
        index0 = np.nonzero(row > -1)[0]
        return np.stack([index0, row[index0]], axis=1).astype(np.int64)
    matches = outputs["matches"]
    return matches[matches[:, 0] == pair][:, 1:]


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
