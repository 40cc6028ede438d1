"""SuperPoint (exporters/superpoint.py): the export module and the host decoder against the upstream forward.

The real checkpoints (Magic Leap's ``superpoint_v1.pth``, rpautrat's ``superpoint_v6_from_tf.pth``)
cannot be fetched here, so every test writes seeded random weights in upstream's layout to a
.pth and loads it through the family's own loader (strict). The reference is the unpatched
upstream forward (cvg/LightGlue for ``magicleap``, rpautrat/SuperPoint for ``open``) written in
the module; the photographs are ../shared/data's.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from glueforge.exporters import superpoint
from glueforge.schema import PADDING
from glueforge.weights import WeightsError
from glueforge.validation.images import load
from glueforge.validation.metrics import descriptor_cosine, keypoint_mnn_rate, mutual_nearest

from tests.project import REPO, SHARED_DATA, ort_session

log = logging.getLogger(__name__)
VARIANTS = ("magicleap", "open")
K = 1024
SIZE = (480, 640)
PHOTOS = ("pairs/sacre_coeur1.jpg", "pairs/DSC_0410.JPG")
WIDE = ("sequences/kitti/000100.png", (376, 1248))  # KITTI's 1241 x 376 at the nearest multiple of 8
SEED = 7


def _spec(variant: str, **fields) -> superpoint.Spec:
    return superpoint.Spec(family="superpoint", variant=variant, weights=f"superpoint_{variant}", **fields)


def _settings(keypoints: int = K) -> SimpleNamespace:
    return SimpleNamespace(keypoints=keypoints)


def _photo(rel: str, size: tuple[int, int]) -> np.ndarray:
    path = SHARED_DATA / rel
    if not path.is_file():
        pytest.fail(f"{path} is missing: the parity photographs live in {SHARED_DATA}")
    return load(path, size, "L")


def _upstream_layout(variant: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the upstream checkpoint, written out from upstream's layer definitions."""
    if variant == "magicleap":  # cvg/LightGlue SuperPoint.__init__
        convs = [("conv1a", 1, 64, 3), ("conv1b", 64, 64, 3), ("conv2a", 64, 64, 3), ("conv2b", 64, 64, 3),
                 ("conv3a", 64, 128, 3), ("conv3b", 128, 128, 3), ("conv4a", 128, 128, 3), ("conv4b", 128, 128, 3),
                 ("convPa", 128, 256, 3), ("convPb", 256, 65, 1), ("convDa", 128, 256, 3), ("convDb", 256, 256, 1)]
        return {k: v for name, i, o, s in convs for k, v in ((f"{name}.weight", (o, i, s, s)), (f"{name}.bias", (o,)))}
    # rpautrat superpoint_pytorch.SuperPoint: VGGBlock(conv, activation, bn) in backbone / detector / descriptor
    blocks = [("backbone.0.0", 1, 64, 3), ("backbone.0.1", 64, 64, 3), ("backbone.1.0", 64, 64, 3),
              ("backbone.1.1", 64, 64, 3), ("backbone.2.0", 64, 128, 3), ("backbone.2.1", 128, 128, 3),
              ("backbone.3.0", 128, 128, 3), ("backbone.3.1", 128, 128, 3), ("detector.0", 128, 256, 3),
              ("detector.1", 256, 65, 1), ("descriptor.0", 128, 256, 3), ("descriptor.1", 256, 256, 1)]
    layout = {}
    for name, i, o, s in blocks:
        layout.update({f"{name}.conv.weight": (o, i, s, s), f"{name}.conv.bias": (o,), f"{name}.bn.weight": (o,),
                       f"{name}.bn.bias": (o,), f"{name}.bn.running_mean": (o,), f"{name}.bn.running_var": (o,),
                       f"{name}.bn.num_batches_tracked": ()})
    return layout


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("superpoint")
    paths = {}
    for variant in VARIANTS:
        paths[variant] = directory / f"superpoint_{variant}_random.pth"
        torch.save(superpoint.random_state_dict(variant, SEED), paths[variant])
    return paths


@pytest.fixture(scope="module", params=VARIANTS)
def runs(request, weights) -> SimpleNamespace:
    """One variant on two photographs at 480 x 640: the reference, keypoints mode and dense mode.

    The network runs once per image for both modes: the export module's forward is
    ``select(*maps(images))`` in keypoints mode and ``maps(images)`` in dense mode (the ONNX test
    runs both forwards whole).
    """
    variant = request.param
    images = torch.from_numpy(np.stack([_photo(rel, SIZE) for rel in PHOTOS]))
    reference = superpoint.reference(_spec(variant), weights[variant], _settings())(images)
    model = superpoint.build(_spec(variant), weights[variant], _settings())
    with torch.no_grad():
        scores, descriptors = model.maps(images)
        keypoints = [t.numpy() for t in model.select(scores, descriptors)]
    return SimpleNamespace(variant=variant, weights=weights[variant], images=images, reference=reference, model=model,
                           keypoints=dict(zip(("keypoints", "scores", "descriptors"), keypoints)),
                           dense={"scores": scores.numpy(), "descriptors": descriptors.numpy()})


def _real(out: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    """The real (unpadded) slots of image ``i`` of padded outputs."""
    real = out["keypoints"][i, :, 0] >= 0
    return {name: out[name][i][real] for name in ("keypoints", "scores", "descriptors")}


def _canonical(features: dict[str, np.ndarray], width: int) -> dict[str, np.ndarray]:
    """``features`` by score, strongest first, exact ties in raster order (ONNX TopK's and ``decode``'s
    rule; torch's CPU topk and upstream's raster order below K order ties differently)."""
    raster = features["keypoints"][:, 1].astype(np.int64) * width + features["keypoints"][:, 0].astype(np.int64)
    order = np.lexsort((raster, -features["scores"]))
    return {name: value[order] for name, value in features.items()}


def _assert_same_keypoints(ref: dict[str, np.ndarray], cand: dict[str, np.ndarray], width: int, label: str,
                           atol: float = 1e-6) -> None:
    """The same selection from the same score map: equal scores, the same pixels (up to the order of
    exact ties, and which of a tie straddling the K-th slot is kept), descriptors within ``atol``."""
    ref, cand = _canonical(ref, width), _canonical(cand, width)
    assert np.array_equal(ref["scores"], cand["scores"]), label
    above = ref["scores"] > ref["scores"][-1] if len(ref["scores"]) else ref["scores"] > 0
    assert np.array_equal(ref["keypoints"][above], cand["keypoints"][above]), label
    np.testing.assert_allclose(cand["descriptors"][above], ref["descriptors"][above], rtol=0, atol=atol, err_msg=label)


# -- checkpoints ----------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_checkpoint_layout_is_upstreams_and_loads_strictly(weights, variant):
    state = torch.load(weights[variant], weights_only=True)
    assert {k: tuple(v.shape) for k, v in state.items()} == _upstream_layout(variant)
    model = superpoint.upstream_model(variant)
    assert model.load_state_dict(state, strict=True) is not None
    if variant == "open":
        assert {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.001}
    export = superpoint.build(_spec(variant), weights[variant], _settings())  # through load_checkpoint, strict
    for key, value in state.items():
        assert torch.equal(export.net.state_dict()[key], value), key


@pytest.mark.parametrize("change", ["renamed key", "wrong shape", "other variant"])
def test_checkpoint_that_does_not_fit_is_refused_naming_the_file(weights, tmp_path, change):
    state = superpoint.random_state_dict("magicleap", SEED)
    variant = "magicleap"
    if change == "renamed key":
        state["conv1.weight"] = state.pop("conv1a.weight")
    elif change == "wrong shape":
        state["convDb.weight"] = state["convDb.weight"][:128]
    else:
        variant = "open"
    path = tmp_path / f"bad_{change.replace(' ', '_')}.pth"
    torch.save(state, path)
    for loader in (superpoint.build, superpoint.reference):
        with pytest.raises(WeightsError, match=f"{path.name}.*SuperPoint '{variant}'"):
            loader(_spec(variant), path, _settings())


def test_threshold_defaults_follow_the_upstream_of_each_variant():
    assert _spec("magicleap").detection_threshold == 0.0005  # cvg/LightGlue default_conf
    assert _spec("open").detection_threshold == 0.005  # rpautrat/SuperPoint default_conf
    assert _spec("open", detection_threshold=0.01).detection_threshold == 0.01
    dense = _spec("open", mode="dense")
    assert dense.dense and not _spec("open").dense
    assert dense.extractor_outputs(K) == [("scores", "float32", ("N", "H", "W")),
                                          ("descriptors", "float32", ("N", 256, "H/8", "W/8"))]
    assert _spec("magicleap").extractor_outputs(K)[2] == ("descriptors", "float32", ("N", K, 256))


# -- parity ---------------------------------------------------------------------------------------

def test_keypoints_mode_matches_reference(runs):
    for i, rel in enumerate(PHOTOS):
        ref, cand = runs.reference[i], _real(runs.keypoints, i)
        # random weights still detect: more than K maxima pass the threshold, as with real weights
        assert len(ref["keypoints"]) == K and len(cand["keypoints"]) == K, rel
        corr = mutual_nearest(ref["keypoints"], cand["keypoints"], radius=1.0)
        cosine = descriptor_cosine(ref["descriptors"], cand["descriptors"], corr)
        log.info("%s %s: mnn=%.4f cos_min=%.7f", runs.variant, rel, keypoint_mnn_rate(corr), cosine.min())
        assert keypoint_mnn_rate(corr) == 1.0, rel
        assert cosine.min() >= 0.9999, rel
        _assert_same_keypoints(ref, cand, SIZE[1], f"{runs.variant} {rel}")


def test_dense_decode_equals_keypoints_mode(runs):
    n, h, w = runs.dense["scores"].shape
    assert (n, h, w) == (2, *SIZE) and runs.dense["descriptors"].shape == (2, 256, h // 8, w // 8)
    norms = np.linalg.norm(runs.dense["descriptors"], axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)  # L2-normalised as upstream
    decoded = superpoint.decode(_spec(runs.variant, mode="dense"), runs.dense, K)
    assert {k: (v.dtype, v.shape) for k, v in decoded.items()} == {k: (v.dtype, v.shape) for k, v in runs.keypoints.items()}
    for i, rel in enumerate(PHOTOS):
        _assert_same_keypoints(_real(runs.keypoints, i), _real(decoded, i), w, f"{runs.variant} {rel}", atol=1e-5)


def test_fewer_than_k_is_padded_and_the_real_ones_equal_the_reference(runs):
    # a threshold that about 300 of the strongest maxima of photo 0 pass
    threshold = float(runs.keypoints["scores"][0, 300])
    spec = _spec(runs.variant, detection_threshold=threshold)
    ref = superpoint.reference(spec, runs.weights, _settings())(runs.images[:1])[0]
    model = superpoint.build(spec, runs.weights, _settings())
    maps = (torch.from_numpy(runs.dense["scores"][:1]), torch.from_numpy(runs.dense["descriptors"][:1]))
    with torch.no_grad():
        out = dict(zip(("keypoints", "scores", "descriptors"), (t.numpy() for t in model.select(*maps))))
    decoded = superpoint.decode(_spec(runs.variant, mode="dense", detection_threshold=threshold),
                                {k: v[:1] for k, v in runs.dense.items()}, K)
    n = len(ref["keypoints"])
    assert 0 < n < K
    for label, padded in (("keypoints mode", out), ("dense decode", decoded)):
        assert np.array_equal(padded["keypoints"][0, :, 0] >= 0, np.arange(K) < n), label  # real slots first
        assert (padded["keypoints"][0, n:] == PADDING).all() and (padded["scores"][0, n:] == 0).all(), label
        assert (padded["descriptors"][0, n:] == 0).all(), label
        assert (padded["scores"][0, :n] > threshold).all() and (np.diff(padded["scores"][0, :n]) <= 0).all(), label
        _assert_same_keypoints(ref, _real(padded, 0), SIZE[1], f"{runs.variant} {label}", atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("nms_radius, remove_borders", [(2, 0), (0, 1), (4, 4)])
def test_decode_matches_the_torch_selection_up_to_the_border(variant, nms_radius, remove_borders):
    """Random maps (no network): keypoints at the image edge sample the descriptor map partly outside
    it, where grid_sample reads zeros; the NumPy bilinear must do the same."""
    rng = np.random.default_rng(nms_radius + 10 * remove_borders)
    dense = {"scores": rng.uniform(size=(2, 48, 64)).astype(np.float32),
             "descriptors": rng.normal(size=(2, 256, 6, 8)).astype(np.float32)}
    dense["descriptors"] /= np.linalg.norm(dense["descriptors"], axis=1, keepdims=True)
    spec = _spec(variant, mode="dense", nms_radius=nms_radius, remove_borders=remove_borders)
    k = 200
    select = superpoint._torch_classes().SuperPointExport(torch.nn.Identity(), variant, "keypoints", nms_radius,
                                                          remove_borders, spec.detection_threshold, k)
    with torch.no_grad():
        out = dict(zip(("keypoints", "scores", "descriptors"),
                       (t.numpy() for t in select.select(*(torch.from_numpy(v) for v in dense.values())))))
    decoded = superpoint.decode(spec, dense, k)
    edge = 0
    for i in range(2):
        _assert_same_keypoints(_real(out, i), _real(decoded, i), 64, f"{variant} r={nms_radius} b={remove_borders}",
                               atol=1e-5)
        xy = _real(decoded, i)["keypoints"]
        edge += int(((xy < 4) | (xy >= np.array([64, 48]) - 4)).any(axis=1).sum())
    assert (edge > 0) == (remove_borders < 4)  # the border case was exercised


def test_decode_is_numpy_only():
    code = (
        "import sys\n"
        "for name in ('torch', 'scipy', 'cv2', 'kornia'):\n"
        "    sys.modules[name] = None\n"
        "import numpy as np\n"
        "from exporters import superpoint\n"
        "rng = np.random.default_rng(0)\n"
        "d = rng.normal(size=(1, 256, 4, 6)).astype(np.float32)\n"
        "d /= np.linalg.norm(d, axis=1, keepdims=True)\n"
        "s = rng.uniform(size=(1, 32, 48)).astype(np.float32)\n"
        "spec = superpoint.Spec(family='superpoint', weights='w', mode='dense')\n"
        "out = superpoint.decode(spec, {'scores': s, 'descriptors': d}, 40)\n"
        "print(out['keypoints'].shape, int((out['keypoints'][0, :, 0] >= 0).sum()))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shape, real = proc.stdout.split(")")
    assert shape == "(1, 40, 2" and 0 < int(real) <= 40


# -- ONNX -----------------------------------------------------------------------------------------

def _onnx(model: torch.nn.Module, spec: superpoint.Spec) -> bytes:
    """Traced at 64 x 96 (N = 1); N, H and W dynamic."""
    outputs = spec.extractor_outputs(K)
    axes = {"images": {0: "N", 2: "H", 3: "W"},
            **{name: {i: d for i, d in enumerate(shape) if isinstance(d, str)} for name, _, shape in outputs}}
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(1, 1, 64, 96),), f, dynamo=False, opset_version=17, input_names=["images"],
                          output_names=[name for name, _, _ in outputs], dynamic_axes=axes)
    return f.getvalue()


def _assert_close_keypoints(expected: dict[str, np.ndarray], got: dict[str, np.ndarray], label: str) -> None:
    """Keypoints from score maps equal up to float rounding: MNN 1.0 within 1 px, the same pixels."""
    for i in range(len(expected["keypoints"])):
        ref, cand = _real(expected, i), _real(got, i)
        assert len(cand["keypoints"]) == len(ref["keypoints"]), label
        corr = mutual_nearest(ref["keypoints"], cand["keypoints"], radius=1.0)
        cosine = descriptor_cosine(ref["descriptors"], cand["descriptors"], corr)
        log.info("%s [%d]: mnn=%.4f cos_min=%.7f", label, i, keypoint_mnn_rate(corr), cosine.min())
        assert keypoint_mnn_rate(corr) == 1.0, label
        assert np.array_equal(ref["keypoints"], cand["keypoints"][corr]), label
        np.testing.assert_allclose(cand["scores"][corr], ref["scores"], rtol=0, atol=1e-5, err_msg=label)
        assert cosine.min() >= 0.9999, label


def test_onnx_dynamic_size_matches_torch(runs):
    import onnx

    wide = torch.from_numpy(_photo(WIDE[0], WIDE[1])[None])
    with torch.no_grad():  # torch at 376 x 1248, both modes from one pass
        scores, descriptors = runs.model.maps(wide)
        wide_keypoints = dict(zip(("keypoints", "scores", "descriptors"),
                                  (t.numpy() for t in runs.model.select(scores, descriptors))))
    wide_dense = {"scores": scores.numpy(), "descriptors": descriptors.numpy()}
    for mode in ("keypoints", "dense"):
        spec = _spec(runs.variant, mode=mode)
        graph = _onnx(superpoint.build(spec, runs.weights, _settings()), spec)
        ops = {node.op_type for node in onnx.load_from_string(graph).graph.node}
        assert "NonZero" not in ops and ("TopK" in ops) == (mode == "keypoints"), sorted(ops)
        session = ort_session(graph)
        names = [name for name, _, _ in spec.extractor_outputs(K)]
        # keypoints: both photographs (N = 2, traced with 1); dense: the first only, to save time
        first = 2 if mode == "keypoints" else 1
        for images, size, expected in ((runs.images[:first], SIZE, {k: v[:first] for k, v in getattr(runs, mode).items()}),
                                       (wide, WIDE[1], wide_keypoints if mode == "keypoints" else wide_dense)):
            got = dict(zip(names, session.run(None, {"images": images.numpy()})))
            label = f"{runs.variant} {mode} onnx {size[0]}x{size[1]}"
            assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in expected.items()}, label
            if mode == "keypoints":
                _assert_close_keypoints(expected, got, label)
                continue
            for name in names:
                np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-5, err_msg=label)
            # the runtime's path: ONNX dense maps decoded on the host = the keypoints graph in torch
            torch_keypoints = {k: v[:first] for k, v in runs.keypoints.items()} if size == SIZE else wide_keypoints
            _assert_close_keypoints(torch_keypoints, superpoint.decode(spec, got, K), f"{label} decoded")
