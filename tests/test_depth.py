"""Adaptive depth (``glueforge.depth``): the step graphs' modules, chained by the exit rule, against kornia.

- The rule's thresholds are kornia's ``confidence_threshold``; padded slots do not count; a batch stops only when
  every pair may; the last layer never stops.
- On real ALIKED features of two photographs (a KITTI frame pair, which LightGlue leaves early, and a wide-baseline
  pair, which it leaves late) and the real ``aliked_lightglue`` weights: ``glueforge.depth.run`` over the step graphs'
  modules (``glueforge.graphs.LayerGraph`` and ``ExitGraph``) stops at the layer kornia's LightGlue with
  ``depth_confidence`` stops at, and returns its matches, with the padded slots in between.
- Without stopping, the steps give the fixed-depth ``matcher`` graph's outputs.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from glueforge import depth
from glueforge.api import load_image
from glueforge.config import Config
from glueforge.fetch import fetch
from glueforge.graphs import ExitGraph, LayerGraph, Models

from tests.project import REPO, SHARED_DATA

K = 1024


def test_rule_is_kornias_check_if_stop():
    from kornia.feature import LightGlue

    rule = depth.ExitRule.lightglue(0.95, 9)
    kornia = LightGlue(features=None, n_layers=9, input_dim=128, descriptor_dim=256, num_heads=4, depth_confidence=0.95)
    assert rule.thresholds == pytest.approx([kornia.confidence_threshold(i) for i in range(8)], abs=1e-12)
    real = np.array([[True] * 8 + [False] * 2, [True] * 10])  # one pair: 18 real points, 2 padded
    confidences = np.ones((2, 10), np.float32)
    assert rule.stops(confidences, real, 0)
    confidences[0, 0] = 0.5  # 1 of 18 unconfident: 17/18 = 0.944 < 0.95
    assert not rule.stops(confidences, real, 0)
    confidences[0, 0], confidences[0, 8:] = 1.0, 0.0  # unconfident padding counts for nothing
    assert rule.stops(confidences, real, 0)
    assert not rule.stops(np.ones((2, 10), np.float32), real, 8)  # the last layer has no confidence head
    two_pairs = np.concatenate([confidences, np.zeros((2, 10), np.float32)])
    assert not rule.stops(two_pairs, np.concatenate([real, real]), 0)  # a batch stops only when every pair may
    assert depth.ExitRule.from_dict(rule.as_dict()) == rule


def test_step_names():
    assert depth.step_graphs(2) == ["matcher_layer0", "matcher_layer1", "matcher_exit0", "matcher_exit1"]
    assert depth.parse_step("matcher_exit12") == ("exit", 12)
    assert depth.parse_step("matcher") is None and depth.parse_step("matcher_layer") is None


@pytest.fixture(scope="module")
def aliked(download_cache):
    """The patched aliked_lightglue models with depth_confidence 0.95, their kornia matcher, and ALIKED's reference
    features of a KITTI frame pair and a wide-baseline pair (at most K keypoints each; fewer are padded)."""
    config = Config.load(REPO / "models.yaml")
    settings = config.export_settings("aliked_lightglue", "cpu")
    matcher = settings.matcher.model_copy(update={"depth_confidence": 0.95})
    settings = dataclasses.replace(settings, matcher=matcher, keypoints=K)
    weights = {role: fetch(getattr(settings, role).weights, config.project.weights[getattr(settings, role).weights],
                           download_cache, REPO) for role in ("extractor", "matcher")}
    models = Models(settings, weights)
    from glueforge.exporters.lightglue import _kornia

    kornia = _kornia(matcher, weights["matcher"])
    kornia.conf.depth_confidence = 0.95
    pairs = {}
    for name, (a, b) in {"kitti": ("sequences/kitti/000100.png", "sequences/kitti/000101.png"),
                         "wide": ("pairs/st_pauls_1.jpg", "pairs/st_pauls_2.jpg")}.items():
        features = []
        for path in (a, b):
            image = load_image(SHARED_DATA / path)
            image = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
            h, w = image.shape[0] // 32 * 32 // 2, image.shape[1] // 32 * 32 // 2  # half size: test time
            from PIL import Image

            small = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR), np.float32) / 255
            f = models.reference_features(torch.from_numpy(small.transpose(2, 0, 1)[None].copy()))[0]
            features.append({**f, "image_size": np.array([w, h], np.float32)})
        pairs[name] = features
    return models, kornia, pairs


def _feed(features) -> dict[str, np.ndarray]:
    """The matcher graph's inputs for one pair, padded to K."""
    dim = features[0]["descriptors"].shape[1]
    feed = {"keypoints": np.full((2, K, 2), -1, np.float32), "descriptors": np.zeros((2, K, dim), np.float32),
            "image_sizes": np.stack([f["image_size"] for f in features])}
    for i, f in enumerate(features):
        feed["keypoints"][i, :len(f["keypoints"])] = f["keypoints"]
        feed["descriptors"][i, :len(f["keypoints"])] = f["descriptors"]
    return feed


def _infer(models):
    def infer(graph: str, feed):
        kind, index = depth.parse_step(graph)
        order = ("keypoints", "descriptors" if kind == "layer" and index == 0 else "states", "image_sizes")[:3 if kind == "layer" else 2]
        module = LayerGraph(models.matcher, index) if kind == "layer" else ExitGraph(models.matcher, index, dense=True)
        names = ("next_states", "confidences") if kind == "layer" else ("matches0", "mscores0")
        with torch.no_grad():
            out = module(*(torch.from_numpy(np.asarray(feed[n])) for n in order))
        return {n: o.numpy() for n, o in zip(names, out)}
    return infer


@pytest.mark.parametrize("pair", ["kitti", "wide"])
def test_steps_equal_kornia_adaptive_depth(aliked, pair):
    models, kornia, pairs = aliked
    features = pairs[pair]
    rule = models.spec.matcher.exit_rule
    outcome = depth.run(rule, _infer(models), _feed(features))
    data = {f"image{i}": {"keypoints": torch.from_numpy(f["keypoints"])[None], "descriptors": torch.from_numpy(f["descriptors"])[None],
                          "image_size": torch.from_numpy(f["image_size"])[None]} for i, f in enumerate(features)}
    with torch.inference_mode():
        expected = kornia(data)
    assert outcome.layers == int(expected["stop"])
    if pair == "kitti":
        assert outcome.layers < rule.layers  # consecutive frames leave early (here: 5 of 9 layers)
    row = outcome.outputs["matches0"][0]
    ours = {(i, int(j)) for i, j in enumerate(row) if j >= 0}
    theirs = {tuple(m) for m in expected["matches"][0].tolist()}
    assert len(theirs) > 50
    assert len(ours ^ theirs) <= 0.01 * len(theirs), f"{len(ours ^ theirs)} of {len(theirs)} matches differ"
    assert all(i < len(features[0]["keypoints"]) and j < len(features[1]["keypoints"]) for i, j in ours)  # no padding


def test_steps_without_exit_equal_the_fixed_matcher(aliked):
    models, _, pairs = aliked
    feed = _feed(pairs["wide"])
    never = depth.ExitRule(1.0 - 1e-9, models.spec.matcher.exit_rule.thresholds)  # no share of points exceeds it
    outcome = depth.run(never, _infer(models), feed)
    assert outcome.layers == 9
    with torch.no_grad():
        fixed = models.graph("matcher").matcher(*(torch.from_numpy(feed[n][i::2]) for n in ("keypoints",) for i in (0, 1)),
                                                *(torch.from_numpy(feed["descriptors"][i::2]) for i in (0, 1)),
                                                *(torch.from_numpy(feed["image_sizes"][i::2]) for i in (0, 1)))
    np.testing.assert_array_equal(outcome.outputs["matches0"], fixed[0].numpy())
    np.testing.assert_allclose(outcome.outputs["mscores0"], fixed[1].numpy(), atol=1e-5)


# -- the built bundle (clone D: tests/conftest.py adaptive_chain) -------------------------------------------------------
def _bundle_dir(project):
    from tests.project import ADAPTIVE_MODEL, ADAPTIVE_OVERLAY

    return project / "artifacts" / "store" / ADAPTIVE_MODEL / Config.load(REPO / "models.yaml", [ADAPTIVE_OVERLAY]).model(ADAPTIVE_MODEL).version / "cpu"


@pytest.mark.slow
def test_adaptive_bundle_runs_layer_by_layer(adaptive_built):
    """The adaptive-depth cpu bundle: its manifest states the exit rule, the runtime API stops early on consecutive
    frames and runs every layer at fixed depth, the validation records the layers used, the report shows the policy."""
    import json

    import glueforge
    from glueforge.api import BundleError

    directory = _bundle_dir(adaptive_built)
    manifest = json.loads((directory / "manifest.json").read_text())
    rule = manifest["matcher"]["depth"]
    assert rule["policy"] == "adaptive" and rule["depth_confidence"] == 0.95 and rule["layers"] == 6
    assert rule["thresholds"] == pytest.approx(depth.ExitRule.lightglue(0.95, 6).thresholds)
    assert set(depth.step_graphs(6)) <= set(manifest["graphs"]) and {"end2end", "matcher"} <= set(manifest["graphs"])
    frames = [load_image(SHARED_DATA / "sequences" / "kitti" / name) for name in ("000100.png", "000101.png")]
    with glueforge.open(directory) as bundle:
        f0, f1 = bundle.extract(frames)
        adaptive, fixed = bundle.match(f0, f1), bundle.match(f0, f1, depth="fixed")
        assert fixed.layers == 6 and adaptive.layers < 6, (fixed.layers, adaptive.layers)
        expected = {tuple(m) for m in fixed.matches.tolist()}
        assert len(expected) > 100
        assert len(expected & {tuple(m) for m in adaptive.matches.tolist()}) >= 0.9 * len(expected)
        assert bundle.match_pair(*frames).layers == adaptive.layers  # the bundle's policy, not the fixed end2end graph
        assert bundle.match_pair(*frames, depth="fixed").layers is None  # the end2end graph
        with pytest.raises(BundleError, match="depth='deep'"):
            bundle.match(f0, f1, depth="deep")
    validation = json.loads((directory / "validation.json").read_text())
    assert validation["homography"]["depth"] == "adaptive" and validation["homography"]["passed"]
    pairs = validation["adaptive_depth"]["pairs"]
    assert pairs and all(1 <= p["layers"] <= 6 and 0 <= p["reproduced"] <= 1 for p in pairs)
    for step in depth.step_graphs(6):
        assert validation["graphs"][step]["passed"], step
    exits = [validation["graphs"][depth.exit_graph(i)]["metrics"]["match_agreement"] for i in range(6)]
    assert min(exits) >= 0.95, exits
    report = (directory / "report.html").read_text()
    assert "adaptive, up to 6 layers (depth_confidence 0.95)" in report and "<h2>Adaptive depth</h2>" in report


@pytest.mark.slow
def test_step_graphs_pass_the_parser_proxy(adaptive_built):
    """orin_nano's fuse step (the chain's) ran the TensorRT parser proxy on every step graph."""
    import json

    checks = [json.loads(p.read_text())["meta"]["check"] for p in (adaptive_built / "artifacts" / "cas" / "fuse").glob("*/result.json")
              if "matcher_layer0" in json.loads(p.read_text())["meta"].get("check", {}).get("graphs", {})]
    assert checks, "no fuse step checked the step graphs"
    graphs = checks[0]["graphs"]
    assert set(depth.step_graphs(6)) <= set(graphs)
    assert all(graphs[g]["parsed"] and graphs[g]["built"] for g in depth.step_graphs(6)), graphs
