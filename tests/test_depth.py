"""Adaptive depth (``glueforge.depth``): the step graphs' modules, chained by the exit rule, against kornia.

- The rule's thresholds are kornia's ``confidence_threshold``; padded slots do not count; a batch stops only when
  every pair may; the last layer never stops.
- On real ALIKED features of two photographs (a KITTI frame pair, which LightGlue leaves early, and a wide-baseline
  pair, which it leaves late) and the real ``aliked_lightglue`` weights: ``glueforge.api.run_layers`` over the step graphs'
  modules (``glueforge.graphs.LayerGraph`` and ``ExitGraph``) stops at the layer kornia's LightGlue with
  ``depth_confidence`` stops at, and returns its matches, with the padded slots in between.
- Without stopping, the steps give the fixed-depth ``matcher`` graph's outputs.

The built bundle: tests/test_depth_bundle.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from glueforge import depth
from glueforge.api import load_image, run_layers
from glueforge.exporters import lightglue
from glueforge.config import Config
from glueforge.fetch import fetch
from glueforge.graphs import ExitGraph, LayerGraph, Models

from tests.project import REPO, SHARED_DATA

K = 1024


def test_rule_is_kornias_check_if_stop():
    from kornia.feature import LightGlue

    rule = depth.ExitRule(0.95, lightglue.confidence_thresholds(9))
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
    outcome = run_layers(rule, _infer(models), _feed(features))
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
    outcome = run_layers(never, _infer(models), feed)
    assert outcome.layers == 9
    with torch.no_grad():
        fixed = models.graph("matcher").matcher(*(torch.from_numpy(feed[n][i::2]) for n in ("keypoints",) for i in (0, 1)),
                                                *(torch.from_numpy(feed["descriptors"][i::2]) for i in (0, 1)),
                                                *(torch.from_numpy(feed["image_sizes"][i::2]) for i in (0, 1)))
    np.testing.assert_array_equal(outcome.outputs["matches0"], fixed[0].numpy())
    np.testing.assert_allclose(outcome.outputs["mscores0"], fixed[1].numpy(), atol=1e-5)
