"""Pictures of keypoints and matches, with Pillow only (the runtime install has no matplotlib).

``matches_picture`` puts the two images side by side (the shorter padded at the bottom) and
draws each match as a line coloured by its score: red at 0, yellow at 0.5, green at 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def score_colour(score: float) -> tuple[int, int, int]:
    """Red (0) through yellow (0.5) to green (1)."""
    s = float(np.clip(score, 0.0, 1.0))
    return (255, int(round(510 * s)), 0) if s < 0.5 else (int(round(510 * (1 - s))), 255, 0)


def _rgb(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255 + 0.5).astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return np.ascontiguousarray(array[..., :3])


def keypoints_picture(image: np.ndarray, keypoints: np.ndarray, title: str = ""):
    """One image with its keypoints as small circles."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(_rgb(image))
    draw = ImageDraw.Draw(picture)
    for x, y in np.asarray(keypoints, dtype=np.float64):
        draw.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], outline=(0, 255, 0))
    if title:
        draw.text((6, 6), title, fill=(255, 255, 0))
    return picture


def matches_picture(image0: np.ndarray, image1: np.ndarray, keypoints0: np.ndarray, keypoints1: np.ndarray,
                    matches: np.ndarray, scores: np.ndarray, title: str = ""):
    """Side by side, keypoints as dots, matches as lines coloured by score (a PIL image)."""
    from PIL import Image, ImageDraw

    a, b = _rgb(image0), _rgb(image1)
    height = max(a.shape[0], b.shape[0])
    canvas = np.zeros((height, a.shape[1] + b.shape[1], 3), np.uint8)
    canvas[:a.shape[0], :a.shape[1]] = a
    canvas[:b.shape[0], a.shape[1]:] = b
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    shift = np.array([a.shape[1], 0.0])
    for x, y in np.asarray(keypoints0, dtype=np.float64):
        draw.point((x, y), fill=(0, 160, 255))
    for x, y in np.asarray(keypoints1, dtype=np.float64) + shift:
        draw.point((x, y), fill=(0, 160, 255))
    order = np.argsort(scores)  # the most confident drawn last, on top
    for k in order:
        i, j = matches[k]
        p, q = keypoints0[i], keypoints1[j] + shift
        draw.line([float(p[0]), float(p[1]), float(q[0]), float(q[1])], fill=score_colour(scores[k]), width=1)
    if title:
        draw.text((6, 6), title, fill=(255, 255, 0))
    return picture


def save(picture, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path
