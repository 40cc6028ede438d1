"""Validation and parity images, prepared exactly as the manifest tells callers to.

Preprocessing (recorded in every manifest): decode, convert to the extractor family's colour
(RGB, or grey "L"), resize to the graph's W x H with bilinear filtering, float32 in [0, 1],
channels first. Pairs are interleaved: image 0 of pair b at 2b, image 1 at 2b + 1.

The default validation pair is scikit-image's stereo motorcycle (Middlebury), which ships
with the package, so a fresh machine validates without ../shared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np


def preprocessing(colour: str, channels: int) -> dict[str, str]:
    """What a caller does to an image before the graph, for the manifest."""
    described = {"RGB": "RGB (grey repeated to 3 channels)", "L": "grey (luminance, 1 channel)"}[colour]
    return {
        "colour": described,
        "channels": str(channels),
        "resize": "bilinear to the graph's width x height",
        "dtype": "float32",
        "scale": "pixel / 255, range [0, 1]",
        "normalisation": "none",
        "layout": "NCHW, pairs interleaved (2b, 2b + 1)",
    }


def prepare(image: Any, size_hw: tuple[int, int] | list[int], colour: str = "RGB") -> np.ndarray:
    """One image (PIL or numpy) -> float32 (C, H, W) in [0, 1], C = 3 for RGB and 1 for grey."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    h, w = size_hw
    resized = np.asarray(image.convert(colour).resize((int(w), int(h)), Image.BILINEAR), dtype=np.float32) / 255.0
    chw = resized[None] if resized.ndim == 2 else resized.transpose(2, 0, 1)
    return np.ascontiguousarray(chw)


def load(path: Path, size_hw: tuple[int, int] | list[int], colour: str = "RGB") -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return prepare(image, size_hw, colour)


def default_pairs(size_hw: tuple[int, int] | list[int], colour: str = "RGB") -> np.ndarray:
    """The embedded validation pairs, interleaved: (2P, C, H, W)."""
    from skimage.data import stereo_motorcycle

    left, right, _ = stereo_motorcycle()
    return np.stack([prepare(left, size_hw, colour), prepare(right, size_hw, colour)])


def shared_pairs(data_dir: Path) -> Iterator[tuple[str, Path, Path]]:
    """The wide-baseline pairs and consecutive sequence frames of ../shared/data."""
    data_dir = Path(data_dir)
    pairs = data_dir / "pairs"
    for a, b in (("sacre_coeur1.jpg", "sacre_coeur2.jpg"), ("DSC_0410.JPG", "DSC_0411.JPG"),
                 ("st_pauls_1.jpg", "st_pauls_2.jpg"), ("san_marco_1.jpg", "san_marco_2.jpg")):
        yield f"pairs/{a}", pairs / a, pairs / b
    for sequence in ("tum", "kitti"):
        frames = sorted((data_dir / "sequences" / sequence).glob("*.png"))
        for a, b in zip(frames, frames[1:]):
            yield f"{sequence}/{a.name}", a, b
