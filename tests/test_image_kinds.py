"""Images of every common kind load as what they show (glueforge.api.load_image): 16-bit grey without saturation,
grey with alpha, palette, CMYK, EXIF-rotated; anything else is refused naming its mode. One photograph of
../shared/data in each kind, against its 8-bit version."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from glueforge.api import BundleError, load_image
from tests.project import SHARED_DATA

PHOTO = SHARED_DATA / "pairs" / "sacre_coeur1.jpg"


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    if not PHOTO.is_file():
        pytest.fail(f"{PHOTO} is missing: the photographs live in ../shared/data")
    with Image.open(PHOTO) as image:
        return image.convert("RGB")


def test_16_bit_grey_keeps_its_values(photo, tmp_path):
    grey = np.asarray(photo.convert("L"))
    deep = grey.astype(np.uint16) * 257 + 128  # the full 16-bit range, with low bits set
    Image.fromarray(deep.astype(np.uint16)).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as image:
        assert image.mode.startswith("I")  # what Pillow makes of a 16-bit PNG
    loaded = load_image(tmp_path / "deep.png")
    assert loaded.dtype == np.float32 and loaded.shape == grey.shape
    assert np.abs(loaded - grey / 255.0).max() < 0.003  # not all white, not saturated
    assert 0.2 < loaded.mean() < 0.8


@pytest.mark.parametrize("mode", ["LA", "P", "CMYK", "RGBA", "1"])
def test_other_kinds_convert(photo, tmp_path, mode):
    image = photo.convert("L").convert("LA") if mode == "LA" else photo.convert(mode)
    path = tmp_path / f"image.{'jpg' if mode == 'CMYK' else 'png'}"
    image.save(path)
    loaded = load_image(path)
    expected = np.asarray(image.convert("L" if mode in ("LA", "1") else "RGB")).astype(float)
    assert loaded.dtype == np.uint8 and loaded.shape == expected.shape
    tolerance = 12 if mode in ("CMYK", "P") else 0  # JPEG's and the palette's own loss
    assert np.abs(loaded.astype(float) - expected).mean() <= tolerance


def test_exif_orientation_turns_the_image_upright(photo, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    photo.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    loaded = load_image(tmp_path / "rotated.jpg")
    assert loaded.shape == (photo.width, photo.height, 3)
    upright = np.asarray(photo.transpose(Image.Transpose.ROTATE_270)).astype(float)
    assert np.abs(loaded.astype(float) - upright).mean() < 3


def test_kinds_that_cannot_be_read_are_refused(tmp_path):
    Image.fromarray(np.full((4, 4), 3.5, np.float32)).save(tmp_path / "float.tiff")
    with pytest.raises(BundleError, match="float.tiff: a floating-point image must hold values in \\[0, 1\\]"):
        load_image(tmp_path / "float.tiff")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(BundleError, match="not an image Pillow can read"):
        load_image(tmp_path / "text.png")
    with pytest.raises(BundleError, match="a directory, not an image file"):
        load_image(tmp_path)
