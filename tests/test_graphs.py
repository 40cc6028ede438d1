"""The graph contract beyond keypoints and descriptors: per-keypoint features (SIFT's scales and
orientations for LightGlue) flow from the extractor's extra outputs to the matcher's extra inputs."""

from __future__ import annotations

from types import SimpleNamespace

import onnx
import torch
from torch import nn

from glueforge.graphs import EndToEndGraph, MatcherGraph, feature_index, graph_io
from glueforge.schema import missing_keypoint_inputs

K, D = 8, 4


class _Extractor(SimpleNamespace):
    def extractor_outputs(self, k):
        return [("keypoints", "float32", ("N", k, 2)), ("scores", "float32", ("N", k)),
                ("descriptors", "float32", ("N", k, D)), *((f, "float32", ("N", k)) for f in self.keypoint_features)]


EXTRACTOR = _Extractor(keypoint_features=("scales", "oris"))
MATCHER = SimpleNamespace(keypoint_inputs=("oris", "scales"), exit_rule=None, layers=None)  # another order than the extractor's; fixed depth
SPEC = SimpleNamespace(image_size=[32, 48], keypoints=K, match_output="dense", extractor=EXTRACTOR, matcher=MATCHER)


class ToyExtractor(nn.Module):
    def forward(self, images):
        n = images.shape[0]
        base = images.mean(dim=(1, 2, 3)).view(n, 1) + torch.arange(K, dtype=torch.float32)
        keypoints = torch.stack([base, base], dim=-1)
        return keypoints, base, base.unsqueeze(-1).expand(n, K, D), base * 10, base * 100  # scales, oris


class ToyMatcher(nn.Module):
    """Matches keypoint i to i when its orientation pair and scale pair are what the extractor gave."""

    def forward(self, k0, k1, d0, d1, size0, size1, o0, o1, s0, s1):
        def close(a, b):
            return (a - b).abs() < 1e-3

        ok = close(o0, k0[..., 0] * 100) & close(o1, k1[..., 0] * 100) & close(s0, k0[..., 0] * 10) & close(s1, k1[..., 0] * 10)
        ok = ok & close(d0[..., 0], k0[..., 0]) & close(d1[..., 0], k1[..., 0])
        ok = ok & (size0[:, :1] > 0) & (size1[:, :1] > 0)  # (width, height) of each image
        matches0 = torch.where(ok, torch.arange(K).expand_as(ok), torch.full_like(ok, -1, dtype=torch.int64))
        return matches0, ok.float()


def test_features_reach_the_matcher_in_its_order():
    assert feature_index(EXTRACTOR, MATCHER) == (1, 0)
    images = torch.rand(4, 3, 32, 48)
    keypoints, matches0, mscores0 = EndToEndGraph(ToyExtractor(), ToyMatcher(), dense=True, feature_index=(1, 0))(images)
    assert (matches0 == torch.arange(K)).all() and (mscores0 == 1).all()
    wrong = EndToEndGraph(ToyExtractor(), ToyMatcher(), dense=True, feature_index=(0, 1))(images)[1]  # swapped: no match
    assert (wrong == -1).all()


def test_graph_io_names_the_features_and_the_export_takes_them(tmp_path):
    _, extractor_outputs = graph_io("extractor", SPEC, 3, D)
    assert [t.name for t in extractor_outputs] == ["keypoints", "scores", "descriptors", "scales", "oris"]
    matcher_inputs, _ = graph_io("matcher", SPEC, 3, D)
    assert [(t.name, t.shape) for t in matcher_inputs][2:] == [("image_sizes", ("2B", 2)), ("oris", ("2B", K)),
                                                                ("scales", ("2B", K))]
    _, _, descriptors, scales, oris = ToyExtractor()(torch.rand(2, 3, 32, 48))
    keypoints = ToyExtractor()(torch.rand(2, 3, 32, 48))[0]
    path = tmp_path / "matcher.onnx"
    sizes = torch.tensor([[48.0, 32.0]]).expand(2, 2)
    torch.onnx.export(MatcherGraph(ToyMatcher(), dense=True), (keypoints, descriptors, sizes, oris, scales), str(path),
                      dynamo=False, input_names=[t.name for t in matcher_inputs], output_names=["matches0", "mscores0"])
    assert [i.name for i in onnx.load(str(path)).graph.input] == ["keypoints", "descriptors", "image_sizes", "oris", "scales"]


def test_a_matcher_needing_features_the_extractor_lacks_is_named():
    assert missing_keypoint_inputs(SimpleNamespace(keypoint_features=("scales",)), MATCHER) == ["oris"]
    assert missing_keypoint_inputs(EXTRACTOR, SimpleNamespace(keypoint_inputs=())) == []


def test_golden_of_end2end_gives_the_extractors_and_matchers_exactly():
    """The reference stage records every graph's golden outputs from one end2end pass (``Models.golden``): the same
    inputs and outputs as running each graph's module on its own example inputs."""
    from glueforge.graphs import Models

    models = Models.__new__(Models)  # the toy modules, without a family's weights
    models.spec = SimpleNamespace(**vars(SPEC), graphs=["end2end", "extractor", "matcher"])
    models.spec.extractor = _Extractor(keypoint_features=("scales", "oris"), host=False)
    models.extractor, models.matcher = ToyExtractor(), ToyMatcher()
    images = torch.rand(4, 1, 32, 48)
    golden = models.golden(models.spec.graphs, images)
    assert list(golden) == models.spec.graphs
    for name in models.spec.graphs:
        example = models.example_inputs(name, images)
        outputs = models.graph(name)(*example)
        inputs_, outputs_ = golden[name]
        assert len(inputs_) == len(example) and all(torch.equal(a, b) for a, b in zip(example, inputs_)), name
        assert len(outputs_) == len(outputs) and all(torch.equal(a, b) for a, b in zip(outputs, outputs_)), name
    assert models.golden(["matcher"], images)["matcher"][1][0].shape == (2, K)  # without end2end: the graph itself
