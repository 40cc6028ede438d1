"""Agreement between two sets of local features of one image or pair, in numpy alone.

Shared by validation (an engine against the reference) and ``glueforge infer --self-test`` (a
bundle against the outputs its sample recorded), which runs in the runtime install without scipy.
Keypoints (N, 2) pixels, descriptors (N, D), matches (S, 2) index pairs.
"""

from __future__ import annotations

import numpy as np


def mutual_nearest(reference: np.ndarray, candidate: np.ndarray, radius: float = 1.0) -> np.ndarray:
    """For each reference keypoint, the index of its mutual nearest candidate within ``radius`` px, else -1."""
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if len(reference) == 0 or len(candidate) == 0:
        return np.full(len(reference), -1)
    nearest = np.empty(len(reference), np.int64)
    dist = np.empty(len(reference))
    back = np.empty(len(candidate), np.int64)
    back_dist = np.full(len(candidate), np.inf)
    for start in range(0, len(reference), 1024):  # (1024, M) blocks keep memory small for large K
        block = ((reference[start:start + 1024, None, :] - candidate[None, :, :]) ** 2).sum(-1)
        nearest[start:start + 1024] = block.argmin(1)
        dist[start:start + 1024] = np.sqrt(block.min(1))
        closer = block.min(0) < back_dist
        back[closer] = block.argmin(0)[closer] + start
        back_dist[closer] = block.min(0)[closer]
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
