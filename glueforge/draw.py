"""Pictures of keypoints and matches, with Pillow only (the runtime install has no matplotlib).

``matches_picture`` puts the two images side by side (the shorter padded at the bottom) over a
legend bar (model, target, size, counts, time, and the colour scale), and draws each match as a
semi-transparent line coloured by its score: red at 0, yellow at 0.5, green at 1; where inliers
are known, the outliers are thin grey lines.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


MAX_WIDTH = 2400  # pixels: a wider side-by-side picture is scaled down before it is drawn


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


def keypoints_picture(image: np.ndarray, keypoints: np.ndarray, lines: list[str] | str = ""):
    """One image with its keypoints as small circles, over a legend bar (``lines``)."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(_rgb(image))
    draw = ImageDraw.Draw(picture)
    for x, y in np.asarray(keypoints, dtype=np.float64):
        draw.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], outline=(0, 255, 0))
    bar = legend(picture.width, [lines] if isinstance(lines, str) else list(lines), scale=False)
    framed = Image.new("RGB", (picture.width, picture.height + bar.height))
    framed.paste(picture, (0, 0))
    framed.paste(bar, (0, picture.height))
    return framed


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # FreeType: scalable
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def legend(width: int, lines: list[str], scale: bool = True):
    """A dark bar ``width`` wide: the text ``lines`` on the left and, with ``scale``, the score colour scale on the
    right (red 0, yellow 0.5, green 1)."""
    from PIL import Image, ImageDraw

    size = max(12, min(28, width // 60))
    font = _font(size)
    height = (size + 6) * len(lines) + 10
    bar = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(bar)
    for i, line in enumerate(lines):
        draw.text((8, 6 + i * (size + 6)), line, fill=(240, 240, 240), font=font)
    if scale:
        span = min(260, width // 3)
        x0, y0 = width - span - 16 - int(draw.textlength("1", font=font)), height // 2 - size // 2
        for k in range(span):
            draw.line([x0 + k, y0, x0 + k, y0 + size], fill=score_colour(k / (span - 1)))
        label = "score"
        draw.text((x0 - 8 - draw.textlength(label + " 0", font=font), y0 - 2), label + " 0", fill=(240, 240, 240), font=font)
        draw.text((x0 + span + 4, y0 - 2), "1", fill=(240, 240, 240), font=font)
    return bar


def matches_picture(image0: np.ndarray, image1: np.ndarray, keypoints0: np.ndarray, keypoints1: np.ndarray,
                    matches: np.ndarray, scores: np.ndarray, lines: list[str] | str = "",
                    inliers: np.ndarray | None = None):
    """Side by side over a legend bar (``lines``): keypoints as dots, matches as semi-transparent lines coloured by
    score; where ``inliers`` (a mask of the matches) is given, the outliers are thin grey lines under them. A
    picture wider than ``MAX_WIDTH`` is scaled down to it."""
    from PIL import Image, ImageDraw

    a, b = _rgb(image0), _rgb(image1)
    height = max(a.shape[0], b.shape[0])
    canvas = np.zeros((height, a.shape[1] + b.shape[1], 3), np.uint8)
    canvas[:a.shape[0], :a.shape[1]] = a
    canvas[:b.shape[0], a.shape[1]:] = b
    picture = Image.fromarray(canvas).convert("RGBA")
    f = min(1.0, MAX_WIDTH / picture.width)  # a 12 MP pair is drawn at a width a screen shows
    if f < 1.0:
        picture = picture.resize((round(picture.width * f), round(picture.height * f)), Image.BILINEAR)
    overlay = Image.new("RGBA", picture.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    width = 2 if picture.width > 1600 else 1
    keypoints0 = np.asarray(keypoints0, dtype=np.float64) * f
    keypoints1 = (np.asarray(keypoints1, dtype=np.float64) + np.array([a.shape[1], 0.0])) * f
    for x, y in keypoints0:
        draw.point((x, y), fill=(0, 160, 255, 255))
    for x, y in keypoints1:
        draw.point((x, y), fill=(0, 160, 255, 255))
    good = np.ones(len(matches), bool) if inliers is None else np.asarray(inliers, bool)
    for k in np.nonzero(~good)[0]:
        i, j = matches[k]
        p, q = keypoints0[i], keypoints1[j]
        draw.line([float(p[0]), float(p[1]), float(q[0]), float(q[1])], fill=(160, 160, 160, 90), width=1)
    for k in sorted(np.nonzero(good)[0], key=lambda k: scores[k]):  # the most confident drawn last, on top
        i, j = matches[k]
        p, q = keypoints0[i], keypoints1[j]
        draw.line([float(p[0]), float(p[1]), float(q[0]), float(q[1])], fill=(*score_colour(scores[k]), 170), width=width)
    picture = Image.alpha_composite(picture, overlay).convert("RGB")
    bar = legend(picture.width, [lines] if isinstance(lines, str) else list(lines))
    framed = Image.new("RGB", (picture.width, picture.height + bar.height))
    framed.paste(picture, (0, 0))
    framed.paste(bar, (0, picture.height))
    return framed


def save(picture, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path
