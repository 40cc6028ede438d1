"""The runtime API (``glueforge.open``) and ``glueforge infer``, as a downstream application uses them.

- In a clean virtual environment with only ``pip install glueforge onnxruntime`` (then, in
  another, ``glueforge openvino``), and no torch: pull a bundle from S3 (SeaweedFS), run
  ``glueforge infer`` on a pair of ../shared/data, get the matches its validation recorded from
  the Python API, and pass ``--self-test``;
- in this environment, on every built cpu and openvino bundle: the sample reproduced exactly,
  images of any size and colour (KITTI's 1241x376 frames), and errors a caller can act on;
- preprocessing and the mapping of keypoints back, checked on their own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest

import glueforge
from glueforge.api import BundleError, Features, fit, pair_matches, preprocess, to_colour
from glueforge.selftest import self_test
from glueforge.store import S3Store
from tests.project import MATCHED, MODELS, SHARED_DATA, VERSIONS, clone_project

RUNTIME_PACKAGES = {"cpu": "onnxruntime==1.31.1", "openvino": "openvino==2026.4.1"}
PROBE = """
import json, sys
import numpy as np
import glueforge
bundle = glueforge.open(sys.argv[1])
sample = np.load(sys.argv[1] + "/sample.npz")
pair = bundle.match_pair(sample["image0"], sample["image1"])
print(json.dumps({"equal": bool(np.array_equal(pair.matches, sample["matches"])), "matches": len(pair.matches),
                  "recorded": len(sample["matches"]), "torch": "torch" in sys.modules}))
"""


def bundle_dir(project: Path, model: str, target: str) -> Path:
    return project / "artifacts/store" / model / VERSIONS[model] / target


def photographs() -> tuple[Path, Path]:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: the photographs live there (set GLUEFORGE_SHARED_DATA)")
    return SHARED_DATA / "pairs/st_pauls_1.jpg", SHARED_DATA / "pairs/st_pauls_2.jpg"


@pytest.mark.parametrize("target", ["cpu", "openvino"])
def test_clean_environment_pulls_infers_and_self_tests(built_for, s3_server, tmp_path, target):
    model = "aliked_lightglue"
    store = S3Store(s3_server.url(f"t/api-{target}"), s3_server.endpoint)
    store.publish(bundle_dir(built_for, model, target), ["stable"])

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python, bin_dir = env_dir / "bin/python", env_dir / "bin"
    source = clone_project(tmp_path / "source")
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", str(source), RUNTIME_PACKAGES[target]],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    for absent in ("torch", "kornia", "onnx", "polygraphy", "tensorrt", "matplotlib"):
        assert subprocess.run([str(python), "-c", f"import {absent}"], capture_output=True).returncode != 0, absent
    env = {**os.environ, "PYTHONPATH": ""}

    pulled = subprocess.run([str(bin_dir / "glueforge"), "pull", model, "--target", target, "--channel", "stable",
                             "--store", s3_server.url(f"t/api-{target}"), "--endpoint-url", s3_server.endpoint,
                             "--dest", str(tmp_path / "bundles"), "--check-compatibility"],
                            capture_output=True, text=True, env=env)
    assert pulled.returncode == 0, pulled.stderr[-3000:]
    bundle = Path(pulled.stdout.strip().splitlines()[-1])

    image0, image1 = photographs()
    picture = tmp_path / "matches.png"
    inferred = subprocess.run([str(bin_dir / "glueforge"), "infer", str(bundle), str(image0), str(image1), "--out",
                               str(picture)], capture_output=True, text=True, env=env)
    assert inferred.returncode == 0, inferred.stderr[-3000:]
    counts = inferred.stdout.splitlines()[0]
    matches = int(counts.split(" matches")[0].rsplit(" ", 1)[1])
    assert matches >= 50 and " ms " in counts, counts  # a wide-baseline pair of one cathedral
    from PIL import Image

    with Image.open(picture) as shown:  # side by side: both images' widths, the taller one's height
        with Image.open(image0) as a, Image.open(image1) as b:
            assert shown.width == a.width + b.width and shown.height > max(a.height, b.height)  # a legend bar below

    probe = subprocess.run([str(python), "-c", PROBE, str(bundle)], capture_output=True, text=True, env=env)
    assert probe.returncode == 0, probe.stderr[-3000:]
    result = json.loads(probe.stdout)
    assert result["equal"] and result["matches"] == result["recorded"] > 0 and not result["torch"], result

    tested = subprocess.run([str(bin_dir / "glueforge"), "infer", str(bundle), "--self-test"], capture_output=True,
                            text=True, env=env)
    assert tested.returncode == 0 and tested.stdout.rstrip().endswith("passed"), tested.stdout + tested.stderr[-2000:]


@pytest.mark.parametrize("target", ["cpu", "openvino"])
def test_every_bundle_reproduces_its_sample(built_for, target):
    for model in MODELS:
        with glueforge.open(bundle_dir(built_for, model, target)) as bundle:
            sample = np.load(bundle.directory / "sample.npz")
            result = self_test(bundle)
            assert result.passed, result.table()
            assert all(value == 1.0 for _, value, _ in result.checks), result.table()  # same machine, same engine
            if model in MATCHED:
                pair = bundle.match_pair(sample["image0"], sample["image1"])
                assert np.array_equal(pair.matches, sample["matches"]) and len(pair.matches) > 100, model
                # extract + match on the same images: the matcher graph, fed by the extractor graph
                f0, f1 = bundle.extract([sample["image0"], sample["image1"]])
                assert np.array_equal(f0.keypoints, sample["keypoints0"]) and f0.descriptors.shape[1] in (64, 128)
                found = bundle.match(f0, f1)
                assert len(found) > 0.95 * len(sample["matches"])
            else:
                features = bundle.extract(sample["image0"])
                assert np.array_equal(features[0].keypoints, sample["keypoints0"])


def test_images_of_any_size_and_colour(built):
    """KITTI's 1241x376 grey frames into a 16-divisor RGB model: padded to 1248x384, keypoints on the image."""
    from glueforge.api import load_image

    frames = sorted((SHARED_DATA / "sequences/kitti").glob("*.png"))
    assert len(frames) >= 2, SHARED_DATA
    with glueforge.open(bundle_dir(built, "aliked_lightglue", "cpu")) as bundle:
        image = load_image(frames[0])
        assert image.shape == (376, 1241) and image.dtype == np.uint8
        grey, rgb = bundle.extract([image, np.repeat(image[..., None], 3, axis=2)])
        assert np.array_equal(grey.keypoints, rgb.keypoints)  # grey is repeated to RGB, as the manifest says
        assert grey.image_size == (1241, 376) and len(grey) > 500
        x, y = grey.keypoints[:, 0], grey.keypoints[:, 1]
        assert x.min() >= 0 and y.min() >= 0 and x.max() < 1241 and y.max() < 376
        floats = bundle.extract(image.astype(np.float32) / 255.0)[0]
        assert np.array_equal(floats.keypoints, grey.keypoints)
        pair = bundle.match_pair(load_image(frames[0]), load_image(frames[1]))
        assert len(pair.matches) > 300  # consecutive frames
        import cv2

        # the matches, in the caller's pixels, agree with one epipolar geometry (a car driving forward)
        _, inliers = cv2.findFundamentalMat(*pair.points(), cv2.USAC_MAGSAC, 1.0, 0.9999)
        assert inliers.mean() > 0.8, inliers.mean()


def test_callers_errors_name_the_problem(built, tmp_path):
    with pytest.raises(BundleError, match="no manifest.json"):
        glueforge.open(tmp_path)
    with glueforge.open(bundle_dir(built, "aliked_t16", "cpu")) as bundle:
        with pytest.raises(BundleError, match=r"image 0: expected \(H, W\) grey or \(H, W, 3\) RGB, got shape \(4, 5, 6, 7\)"):
            bundle.extract([np.zeros((4, 5, 6, 7), np.uint8)])
        with pytest.raises(BundleError, match=r"image 0: float images must be finite and in \[0, 1\]"):
            bundle.extract(np.full((64, 64), 2.0, np.float32))
        with pytest.raises(BundleError, match="expected uint8 in \\[0, 255\\] or float in \\[0, 1\\], got dtype int32"):
            bundle.extract(np.zeros((64, 64), np.int32))
        with pytest.raises(BundleError, match="an extractor-only model has no matcher"):
            bundle.match_pair(np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.uint8))
    with glueforge.open(bundle_dir(built, "aliked_lightglue", "cpu")) as bundle:
        too_many = Features(np.zeros((1025, 2), np.float32), None, np.zeros((1025, 128), np.float32), (640, 480))
        with pytest.raises(BundleError, match="features0 has 1025 keypoints; this bundle's matcher takes at most K=1024"):
            bundle.match(too_many, too_many)


def test_fit_pads_to_the_divisor_and_resizes_only_past_the_profile():
    kitti = fit((376, 1241), 16)
    assert (kitti.content, kitti.graph, kitti.resized) == ((376, 1241), (384, 1248), False)
    large = fit((1000, 2000), 32, smallest=[256, 320], largest=[768, 1280])
    assert large.resized and large.content == (640, 1280) and large.graph == (640, 1280)
    small = fit((100, 120), 8, smallest=[240, 320], largest=[768, 1280])
    assert (small.content, small.graph) == ((100, 120), (240, 320))
    keypoints = np.array([[0.0, 0.0], [1279.0, 639.0], [1280.5, 10.0], [-1.0, -1.0]], np.float32)
    assert large.inside(keypoints).tolist() == [True, True, False, False]
    back = large.to_caller(keypoints[:2])
    np.testing.assert_allclose(back, [[0.28125, 0.28125], [1998.71875, 998.71875]], atol=1e-3)  # (x + 0.5) * s - 0.5


def test_preprocess_is_what_validation_feeds():
    from glueforge.validation.images import default_images, default_pairs

    for colour in ("RGB", "L"):
        images = default_images((480, 640), colour)
        expected = default_pairs((480, 640), colour)
        for i, image in enumerate(images):
            np.testing.assert_array_equal(preprocess(image, colour, fit(image.shape[:2], 16)), expected[i])
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    from PIL import Image

    np.testing.assert_array_equal(to_colour(rgb, "L"), np.asarray(Image.fromarray(rgb).convert("L")))


def test_pair_matches_reads_both_output_forms():
    listed = {"matches": np.array([[0, 1, 2], [1, 0, 0], [0, 3, 4]]), "mscores": np.array([0.9, 0.8, 0.7], np.float32)}
    m, s = pair_matches(listed, 0)
    assert m.tolist() == [[1, 2], [3, 4]] and s.tolist() == pytest.approx([0.9, 0.7])
    dense = {"matches0": np.array([[-1, 2, -1, 4]]), "mscores0": np.array([[0, 0.9, 0, 0.7]], np.float32)}
    m, s = pair_matches(dense, 0)
    assert m.tolist() == [[1, 2], [3, 4]] and s.tolist() == pytest.approx([0.9, 0.7])


# -- input size under control, and matches a user can trust -------------------------------------------------

def _twelve_megapixels(source: Path, dest: Path) -> Path:
    """A 12 MP photograph (4000 px wide), upscaled from one of ../shared/data's, written under ``dest``."""
    from PIL import Image

    with Image.open(source) as image:
        image.convert("RGB").resize((4000, round(4000 * image.height / image.width)), Image.BICUBIC).save(dest, quality=92)
    return dest


def test_max_size_resizes_and_maps_keypoints_back_to_the_original_pixels(built, tmp_path):
    from PIL import Image

    from glueforge.api import load_image

    image = load_image(_twelve_megapixels(photographs()[0], tmp_path / "big.jpg"))
    h, w = image.shape[:2]
    assert h * w >= 11_000_000
    bundle_path = bundle_dir(built, "aliked_lightglue", "cpu")
    with glueforge.open(bundle_path, max_size=640) as bundle:
        placement = bundle.fit((h, w))
        features = bundle.extract([image])[0]
    ch, cw = placement.content
    assert placement.resized and max(ch, cw) == 640 and abs(cw / ch - w / h) < 0.01
    # by hand: the same bilinear resize, the full-size path, keypoints scaled back (pixel-centre convention)
    small = np.asarray(Image.fromarray(image).resize((cw, ch), Image.BILINEAR))
    with glueforge.open(bundle_path) as bundle:
        manual = bundle.extract([small])[0]
    expected = (manual.keypoints + 0.5) * np.array([w / cw, h / ch], np.float32) - 0.5
    assert len(features) == len(manual) > 500
    np.testing.assert_allclose(features.keypoints, expected, atol=1e-3)
    np.testing.assert_array_equal(features.descriptors, manual.descriptors)
    assert features.image_size == (w, h)
    with pytest.raises(BundleError, match="max_size=0"):
        glueforge.open(bundle_path, max_size=0)


def test_infer_counts_inliers_and_filters_by_score(built, tmp_path):
    bundle = bundle_dir(built, "aliked_lightglue", "cpu")
    images = [str(_twelve_megapixels(p, tmp_path / f"big{i}.jpg")) for i, p in enumerate(photographs())]

    def infer(*extra: str) -> list[str]:
        proc = subprocess.run([sys.executable, "-m", "glueforge.cli", "infer", str(bundle), *images, "--max-size", "640",
                               *extra], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout.splitlines()

    def count(line: str, what: str) -> int:
        return int(line.split(f" {what}")[0].rsplit(" ", 1)[1])

    plain = infer("--out", str(tmp_path / "matches.png"))
    matches, inliers = count(plain[0], "matches"), count(plain[0], "inliers")
    assert 50 <= inliers <= matches, plain  # one cathedral from two places: most matches fit one epipolar geometry
    assert "fundamental matrix, OpenCV USAC_MAGSAC" in plain[0]
    assert plain[1].startswith("input: 4000x") and ", run at 640x" in plain[1] and "(--max-size)" in plain[1]
    confident = infer("--min-score", "0.9", "--geometry", "homography")
    assert count(confident[0], "matches") < matches and "(score >= 0.9)" in confident[0] and "homography" in confident[0]
    unfitted = infer("--geometry", "none")
    assert "inliers" not in unfitted[0] and unfitted[-1] == "inliers: not counted"
    from PIL import Image

    with Image.open(tmp_path / "matches.png") as picture:  # side by side at most 2400 px wide, over a legend bar
        assert picture.width == 2400 and picture.height > 2400 * 2600 / 8000
