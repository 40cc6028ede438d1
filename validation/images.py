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


def prepare(image: Any, size_hw: tuple[int, int] | list[int], colour: str = "RGB") -> np.ndarray:
    """One image (PIL or numpy) -> float32 (C, H, W) in [0, 1], C = 3 for RGB and 1 for grey."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    h, w = size_hw
    resized = np.asarray(image.convert(colour).resize((int(w), int(h)), Image.BILINEAR), dtype=np.float32) / 255.0
    chw = resized[None] if resized.ndim == 2 else resized.transpose(2, 0, 1)
    return np.ascontiguousarray(chw)


def pad_to_multiple(image: np.ndarray, divisor: int) -> np.ndarray:
    """Zero-pad a (C, H, W) image on the right and bottom to multiples of ``divisor`` (the manifest's
    ``pad``): keypoints keep the original image's pixel coordinates."""
    c, h, w = image.shape
    out = np.zeros((c, -(-h // divisor) * divisor, -(-w // divisor) * divisor), dtype=image.dtype)
    out[:, :h, :w] = image
    return out


def load_padded(path: Path, divisor: int, colour: str = "RGB") -> np.ndarray:
    """An image at its own size, zero-padded to multiples of ``divisor``: float32 (C, H', W') in [0, 1]."""
    from PIL import Image

    with Image.open(path) as image:
        return pad_to_multiple(prepare(image, (image.height, image.width), colour), divisor)


def load(path: Path, size_hw: tuple[int, int] | list[int], colour: str = "RGB") -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return prepare(image, size_hw, colour)


def default_images(size_hw: tuple[int, int] | list[int], colour: str = "RGB") -> list[np.ndarray]:
    """The embedded validation pair as a caller holds it: uint8 (H, W, 3) RGB or (H, W) grey, resized to
    ``size_hw`` (bilinear), in the family's colour. The bundle's sample (``sample.npz``) stores these."""
    from PIL import Image
    from skimage.data import stereo_motorcycle

    left, right, _ = stereo_motorcycle()
    h, w = size_hw
    return [np.asarray(Image.fromarray(image).convert(colour).resize((int(w), int(h)), Image.BILINEAR)) for image in (left, right)]


def default_pairs(size_hw: tuple[int, int] | list[int], colour: str = "RGB") -> np.ndarray:
    """The embedded validation pairs, interleaved: (2P, C, H, W), exactly ``default_images`` / 255."""
    return np.stack([prepare(image, size_hw, colour) for image in default_images(size_hw, colour)])


def shared_pairs(data_dir: Path, sequence_pairs: int | None = None) -> Iterator[tuple[str, Path, Path]]:
    """The wide-baseline pairs and consecutive sequence frames of ../shared/data (``sequence_pairs``: the first
    that many pairs of consecutive frames of each sequence; None: all)."""
    data_dir = Path(data_dir)
    pairs = data_dir / "pairs"
    for a, b in (("sacre_coeur1.jpg", "sacre_coeur2.jpg"), ("DSC_0410.JPG", "DSC_0411.JPG"),
                 ("st_pauls_1.jpg", "st_pauls_2.jpg"), ("san_marco_1.jpg", "san_marco_2.jpg")):
        yield f"pairs/{a}", pairs / a, pairs / b
    for sequence in ("tum", "kitti"):
        frames = sorted((data_dir / "sequences" / sequence).glob("*.png"))
        for a, b in list(zip(frames, frames[1:]))[:sequence_pairs]:
            yield f"{sequence}/{a.name}", a, b
