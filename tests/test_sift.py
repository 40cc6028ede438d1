"""Host SIFT (exporters/sift.py): the padded numpy extractor against its upstream reference.

``reference`` keeps cvg/LightGlue's torch code (``torch.topk``, ``max_pool2d``,
``sift_to_rootsift``); ``extract`` is the numpy port that the runtime API runs without torch.
Both run the same OpenCV SIFT, so the real slots must agree exactly (descriptors to float32
rounding) and the padded slots must follow the padding contract of ``glueforge.schema``.
"""

from __future__ import annotations

import logging
import types

import numpy as np
import pytest

from glueforge.exporters import sift
from glueforge import GlueforgeError
from glueforge.schema import PADDING
from glueforge.validation.images import load

from tests.project import SHARED_DATA

log = logging.getLogger(__name__)
SIZE = (480, 640)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    path = SHARED_DATA / "pairs" / "sacre_coeur1.jpg"
    if not path.is_file():
        pytest.fail(f"{path} is missing: the test photographs live in {SHARED_DATA} (set GLUEFORGE_SHARED_DATA)")
    return load(path, SIZE, "L")[None]  # (1, 1, 480, 640)


def _spec(**conf) -> sift.Spec:
    return sift.Spec.model_validate({"family": "sift", **conf})


def _real(out: dict[str, np.ndarray], i: int) -> int:
    """The number of real slots of image i, after checking that they come first."""
    real = out["keypoints"][i, :, 0] >= 0
    n = int(real.sum())
    assert real[:n].all(), "padded slots must follow the real ones"
    return n


def _assert_padding(out: dict[str, np.ndarray], i: int, n: int) -> None:
    assert (out["keypoints"][i, n:] == PADDING).all()
    for name in ("scores", "descriptors", "scales", "oris"):
        assert (out[name][i, n:] == 0).all(), f"padded {name} of image {i} must be 0"


def _assert_same(out: dict[str, np.ndarray], i: int, n: int, ref: dict[str, np.ndarray], k: int | None = None) -> None:
    """Real slots of image i equal the reference's. Where top-k (K = ``k``) cuts through equal scores
    (one point's orientations, ``nms_radius=None``), torch.topk's choice among them is arbitrary: the
    slots of that score hold the same point, scale and score, but the orientation and descriptor may differ."""
    assert len(ref["keypoints"]) == n
    exact = np.ones(n, bool)
    if k is not None and n == k:
        exact = ref["scores"] != ref["scores"][-1]
        assert (~exact).sum() < 8, "the tie at the cut is one point's orientations"
    for name in ("keypoints", "scores", "scales"):
        np.testing.assert_array_equal(out[name][i, :n], ref[name], err_msg=name)
    np.testing.assert_array_equal(out["oris"][i, :n][exact], ref["oris"][exact], err_msg="oris")
    np.testing.assert_allclose(out["descriptors"][i, :n][exact], ref["descriptors"][exact], rtol=0, atol=1e-6)


def test_spec_is_upstream_default_host_extractor():
    spec = _spec()
    assert spec.host and spec.weights is None
    assert (spec.channels, spec.colour, spec.descriptor_dim, spec.keypoint_features) == (1, "L", 128, ("scales", "oris"))
    # cvg/LightGlue SIFT.default_conf
    assert (spec.rootsift, spec.nms_radius, spec.detection_threshold, spec.edge_threshold, spec.num_octaves) == \
        (True, 0, 0.0066667, 10.0, 4)
    assert [name for name, _, _ in spec.extractor_outputs(16)] == ["keypoints", "scores", "descriptors", "scales", "oris"]
    with pytest.raises(ValueError, match="no learned weights"):
        _spec(weights="sift_lightglue")


def test_photograph_gives_sorted_rootsift_keypoints(image):
    k = 1024
    out = sift.extract(_spec(), image, k)
    assert {name: v.shape for name, v in out.items()} == {
        "keypoints": (1, k, 2), "scores": (1, k), "descriptors": (1, k, 128), "scales": (1, k), "oris": (1, k)}
    assert all(v.dtype == np.float32 for v in out.values())
    n = _real(out, 0)
    log.info("sacre_coeur1 480x640, K=%d: %d real keypoints", k, n)
    # OpenCV keeps K detections before the duplicate orientations are dropped: fewer than K, but most
    assert k // 2 < n < k
    _assert_padding(out, 0, n)
    xy, scores = out["keypoints"][0, :n], out["scores"][0, :n]
    assert (xy[:, 0] < SIZE[1]).all() and (xy[:, 1] >= 0).all() and (xy[:, 1] < SIZE[0]).all()
    assert (scores > 0).all() and (np.diff(scores) <= 0).all(), "real keypoints must be by descending response"
    desc = out["descriptors"][0, :n]
    assert (desc >= 0).all()
    np.testing.assert_allclose(np.linalg.norm(desc, axis=-1), 1.0, atol=1e-5)
    assert (out["scales"][0, :n] > 0).all()
    oris = out["oris"][0, :n]
    assert (oris >= 0).all() and (oris < 2 * np.pi).all(), "OpenCV angles in [0, 360) degrees -> [0, 2 pi) radians"
    assert oris.max() > np.pi, "orientations span the whole circle, not [-pi, pi]"
    # no two real keypoints on one pixel (filter_dog_point)
    assert len(np.unique(np.round(xy - 0.5).astype(int), axis=0)) == n


def test_descriptors_are_rootsift_of_opencv_sift(image):
    root = sift.extract(_spec(), image, 256)
    raw = sift.extract(_spec(rootsift=False), image, 256)
    n = _real(root, 0)
    np.testing.assert_array_equal(root["keypoints"], raw["keypoints"])
    d = raw["descriptors"][0, :n]
    assert (d == np.round(d)).all() and d.max() > 1, "OpenCV SIFT descriptors are integer-valued"
    expected = np.sqrt(np.maximum(d / d.sum(-1, keepdims=True), 1e-6))
    expected /= np.linalg.norm(expected, axis=-1, keepdims=True)
    np.testing.assert_allclose(root["descriptors"][0, :n], expected, rtol=0, atol=1e-6)


def test_padding_and_reference_on_small_crops(image):
    """A textured 64 x 64 crop (a few keypoints) and a flat one (none), K = 16."""
    k = 16
    crops = np.concatenate([image[:, :, 0:64, 224:288], np.full((1, 1, 64, 64), 0.5, np.float32)])
    spec = _spec()
    out = sift.extract(spec, crops, k)
    refs = sift.reference(spec, None, types.SimpleNamespace(keypoints=k))(crops)
    counts = [_real(out, i) for i in range(2)]
    log.info("64x64 crops, K=%d: %s real keypoints", k, counts)
    assert 0 < counts[0] < k and counts[1] == 0
    for i, n in enumerate(counts):
        _assert_padding(out, i, n)
        _assert_same(out, i, n, refs[i])
    assert refs[1]["descriptors"].shape == (0, 128)


@pytest.mark.parametrize("conf", [{}, {"nms_radius": 2}, {"nms_radius": None}], ids=["default", "nms2", "no-filter"])
def test_extract_equals_reference(image, conf):
    """K = 8192 exceeds the detections of 480 x 640 (the rest is padding); K = 512 is OpenCV's nfeatures."""
    spec = _spec(**conf)
    for k in (8192, 512):
        out = sift.extract(spec, image, k)
        ref = sift.reference(spec, None, types.SimpleNamespace(keypoints=k))(image)[0]
        n = _real(out, 0)
        log.info("%s K=%d: %d real keypoints", conf, k, n)
        assert 0 < n <= k and (k == 512 or n < k)
        _assert_padding(out, 0, n)
        _assert_same(out, 0, n, ref, k)


def test_top_k_after_filter_equals_torch_topk(image, monkeypatch):
    """Upstream's top-k by score after filter_dog_point, which OpenCV's nfeatures makes rare: run OpenCV
    without nfeatures so that more than K remain, in extract and in reference alike."""
    opencv_sift = sift._opencv_sift
    monkeypatch.setattr(sift, "_opencv_sift", lambda spec, im, keypoints: opencv_sift(spec, im, 0))
    k = 512
    spec = _spec()
    out = sift.extract(spec, image, k)
    ref = sift.reference(spec, None, types.SimpleNamespace(keypoints=k))(image)[0]
    assert _real(out, 0) == k
    _assert_same(out, 0, k, ref, k)
    everything = sift.extract(spec, image, 8192)
    n = _real(everything, 0)
    assert n > k
    np.testing.assert_array_equal(out["scores"][0], everything["scores"][0, :k])  # the K best of all


def test_deterministic(image):
    import cv2

    spec = _spec()
    first = sift.extract(spec, image, 1024)
    threads = cv2.getNumThreads()
    try:
        cv2.setNumThreads(1)
        single = sift.extract(spec, image, 1024)
    finally:
        cv2.setNumThreads(threads)
    again = sift.extract(spec, image, 1024)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name], err_msg=name)
        np.testing.assert_array_equal(first[name], single[name], err_msg=f"{name}, one thread")


def test_rejects_wrong_input_and_graph():
    spec = _spec()
    with pytest.raises(sift.SiftError, match=r"grey images \(N, 1, H, W\)"):
        sift.extract(spec, np.zeros((1, 3, 32, 32), np.float32), 16)
    with pytest.raises(sift.SiftError, match=r"\[0, 1\]"):
        sift.extract(spec, np.full((1, 1, 32, 32), 255.0, np.float32), 16)
    with pytest.raises(GlueforgeError, match="runs on the host"):
        sift.build(spec, None, types.SimpleNamespace(keypoints=16))
