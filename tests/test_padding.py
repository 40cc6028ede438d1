"""Padded keypoint slots: the patched LightGlue masks them, DISK writes them.

The contract (``glueforge.schema.ExtractorSpec``): an image with fewer than K keypoints fills
the other slots with keypoint (-1, -1), score 0, a zero descriptor and 0 for every keypoint
feature; a matcher never matches such a slot, and among the real keypoints it gives the
reference's matches on the unpadded sets. Here:

- the patched LightGlue (``exporters/lightglue.build``) on padded batches, padding spread among
  the real slots, per-image image sizes, against kornia's LightGlue on the unpadded sets: with
  the real ``aliked_lightglue`` weights, and with a seeded random state dict of the ``sift``
  architecture (``add_scale_ori``: scales and orientations), since ``sift_lightglue`` cannot
  be fetched here;
- the same in float64, where the difference to kornia is 1e-13: the float32 one is rounding;
- the same through ``torch.onnx.export`` (traced at other image sizes), onnxsim and onnxruntime,
  without and with ``glueforge.attention.fuse_attention`` (the key bias becomes
  MultiHeadAttention's ``attention_bias``), and the FP16 graph of ``glueforge.fp16`` never
  matching padding; the fusion itself on one attention with static and dynamic lengths;
- DISK on a 64x64 crop at K = 1024, far more than it finds: its maxima are kornia's, the rest
  padding, and DISK + LightGlue end to end give kornia's matches.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from glueforge.exporters import disk as disk_family
from glueforge.exporters import lightglue
from glueforge.config import Config
from glueforge.fetch import fetch

from tests.project import REPO, SHARED_DATA, ort_session

log = logging.getLogger(__name__)
K = 320
# mscores in float32: rounding of K-long against n-long reductions, through every layer. Observed:
# 5e-6 (aliked), 1.1e-4 (the sift random weights, whose sharpened attention amplifies rounding; in
# float64 the same comparison differs by 1e-13: test_padded_matcher_is_exact_in_float64)
SCORE_ATOL = 5e-4
# (real keypoints of image 0, of image 1) per pair: padding in both, none in image 0, image 1 empty, both empty
COUNTS = ((300, 260), (K, 150), (120, 0), (0, 0))
SIZES = (((640, 480), (600, 500)), ((512, 384), (640, 480)), ((640, 480), (320, 240)), ((640, 480), (640, 480)))
ONNX_LAYERS = 3  # the ONNX test exports the first layers only (every layer masks alike): export time


def _weights(name: str, download_cache: Path) -> Path:
    config = Config.load(REPO / "models.yaml")
    return fetch(name, config.project.weights[name], download_cache, REPO)


def _sift_checkpoint(path: Path) -> Path:
    """A seeded random state dict of the sift architecture, in the released checkpoints' naming
    (``self_attn.<i>``). The final projection is near the identity and the matchability high, so
    that matching descriptors match; the attention weights are scaled up so that the positions,
    scales and orientations move the scores by far more than the tolerance."""
    from kornia.feature import LightGlue

    torch.manual_seed(0)
    conf = lightglue.ARCHITECTURES["sift"]
    model = LightGlue(features=None, **conf, depth_confidence=-1, width_confidence=-1, flash=False)
    state = {k: v for k, v in model.state_dict().items() if k != "confidence_thresholds"}
    for i in range(conf["n_layers"]):
        state[f"log_assignment.{i}.final_proj.weight"] = torch.eye(256) * 4 + 0.01 * torch.randn(256, 256)
        state[f"log_assignment.{i}.matchability.bias"] = torch.tensor([4.0])
        state[f"transformers.{i}.self_attn.Wqkv.weight"] = state[f"transformers.{i}.self_attn.Wqkv.weight"] * 3
    for i in range(conf["n_layers"]):
        for block in ("self_attn", "cross_attn"):
            state = {k.replace(f"transformers.{i}.{block}.", f"{block}.{i}.", 1): v for k, v in state.items()}
    torch.save(state, path)
    return path


@pytest.fixture(scope="module", params=["aliked", "sift"])
def checkpoint(request, download_cache, tmp_path_factory):
    """(name, spec, weights) of one LightGlue checkpoint: aliked_lightglue, or the random sift one."""
    if request.param == "aliked":
        spec = Config.load(REPO / "models.yaml").model("aliked_lightglue").matcher
        return request.param, spec, _weights(spec.weights, download_cache)
    spec = lightglue.Spec(family="lightglue", features="sift", weights="sift_random")
    return request.param, spec, _sift_checkpoint(tmp_path_factory.mktemp("sift") / "sift_random.pth")


def _models(spec, weights: Path):
    """The patched LightGlue and kornia's reference ``match``."""
    settings = SimpleNamespace(image_size=[480, 640], keypoints=K)
    return lightglue.build(spec, weights, settings).eval(), lightglue.reference(spec, weights, settings)


def _pairs(spec, seed: int = 0) -> list[tuple[dict, dict]]:
    """Unpadded features of the pairs of COUNTS: image 1 sees a moved subset of image 0's keypoints
    with noisy descriptors, plus keypoints of its own."""
    g = torch.Generator().manual_seed(seed)
    dim = spec.input_dim
    pairs = []
    for (n0, n1), (size0, size1) in zip(COUNTS, SIZES):
        wh0, wh1 = torch.tensor(size0, dtype=torch.float32), torch.tensor(size1, dtype=torch.float32)
        k0 = torch.rand(n0, 2, generator=g) * (wh0 - 1)
        d0 = torch.randn(n0, dim, generator=g)
        shared = min(n1, (2 * n0) // 3)
        pick = torch.randperm(n0, generator=g)[:shared]
        k1 = torch.cat([k0[pick] * 0.9 + 4 + 0.5 * torch.randn(shared, 2, generator=g),
                        torch.rand(n1 - shared, 2, generator=g) * (wh1 - 1)])
        k1 = torch.minimum(k1.clamp(min=0), wh1 - 1)
        d1 = torch.cat([d0[pick] + 0.3 * torch.randn(shared, dim, generator=g), torch.randn(n1 - shared, dim, generator=g)])
        if spec.keypoint_inputs:  # SIFT: non-negative descriptors, scales in px, orientations in radians
            d0, d1 = d0.abs(), d1.abs()
        f0 = {"keypoints": k0, "descriptors": torch.nn.functional.normalize(d0, dim=1), "image_size": wh0}
        f1 = {"keypoints": k1, "descriptors": torch.nn.functional.normalize(d1, dim=1), "image_size": wh1}
        if spec.keypoint_inputs:
            f0["scales"] = 1 + 5 * torch.rand(n0, generator=g)
            f0["oris"] = (2 * torch.rand(n0, generator=g) - 1) * math.pi
            f1["scales"] = torch.cat([f0["scales"][pick] * 0.9, 1 + 5 * torch.rand(n1 - shared, generator=g)])
            f1["oris"] = torch.cat([f0["oris"][pick] + 0.1, (2 * torch.rand(n1 - shared, generator=g) - 1) * math.pi])
        pairs.append(tuple({k: v.numpy() for k, v in f.items()} for f in (f0, f1)))
    return pairs


def _padded(pairs, spec, seed: int = 1):
    """Interleaved padded batch (keypoints (2B, K, 2), descriptors (2B, K, D), image_sizes (2B, 2), then one
    (2B, K) tensor per keypoint input) and each image's slots of its real keypoints (random, so padding
    sits between real slots)."""
    g = torch.Generator().manual_seed(seed)
    images = [f for pair in pairs for f in pair]
    keypoints = torch.full((len(images), K, 2), -1.0)
    descriptors = torch.zeros(len(images), K, spec.input_dim)
    features = {name: torch.zeros(len(images), K) for name in spec.keypoint_inputs}
    slots = []
    for i, f in enumerate(images):
        s = torch.randperm(K, generator=g)[: len(f["keypoints"])]
        keypoints[i, s] = torch.from_numpy(f["keypoints"])
        descriptors[i, s] = torch.from_numpy(f["descriptors"])
        for name in spec.keypoint_inputs:
            features[name][i, s] = torch.from_numpy(f[name])
        slots.append(s.numpy())
    sizes = torch.from_numpy(np.stack([f["image_size"] for f in images]))
    return (keypoints, descriptors, sizes, *features.values()), slots


def _run_module(module, inputs) -> tuple[np.ndarray, np.ndarray]:
    keypoints, descriptors, sizes, *features = inputs
    halves = [half for f in features for half in (f[0::2], f[1::2])]
    with torch.no_grad():
        matches0, mscores0 = module(keypoints[0::2], keypoints[1::2], descriptors[0::2], descriptors[1::2],
                                    sizes[0::2], sizes[1::2], *halves)
    return matches0.numpy(), mscores0.numpy()


def _matches_of_pair(matches0: np.ndarray, mscores0: np.ndarray, slots0: np.ndarray, slots1: np.ndarray) -> dict:
    """One pair's dense outputs (K,) -> {(kornia index 0, kornia index 1): mscore}, after checking that
    padding is respected; ``slots0[i]`` is the slot of the unpadded set's keypoint i of image 0
    (likewise image 1)."""
    assert np.isfinite(mscores0).all()
    k = len(matches0)
    padded0 = np.ones(k, dtype=bool)
    padded0[slots0] = False
    padded1 = np.ones(k, dtype=bool)
    padded1[slots1] = False
    assert (matches0[padded0] == -1).all(), "a padded slot of image 0 is matched"
    assert (mscores0[padded0] == 0).all(), "a padded slot of image 0 has a non-zero score"
    matched = matches0 >= 0
    assert not padded1[matches0[matched]].any(), "a keypoint is matched to a padded slot of image 1"
    index1 = np.full(k, -1)
    index1[slots1] = np.arange(len(slots1))
    return {(i, int(index1[matches0[s]])): float(mscores0[s]) for i, s in enumerate(slots0) if matches0[s] >= 0}


def _check_pair(matches0: np.ndarray, mscores0: np.ndarray, slots0: np.ndarray, slots1: np.ndarray,
                reference: dict) -> tuple[int, float]:
    """One pair against kornia on the unpadded sets: padding respected, kornia's matches exactly,
    its scores to SCORE_ATOL -> (matches, max |mscore difference|)."""
    got = _matches_of_pair(matches0, mscores0, slots0, slots1)
    expected = {tuple(m): float(s) for m, s in zip(reference["matches"].tolist(), reference["mscores"])}
    assert set(got) == set(expected), (f"{len(set(got) - set(expected))} matches kornia lacks, "
                                       f"{len(set(expected) - set(got))} kornia has and the patched matcher lacks")
    diff = max((abs(got[m] - expected[m]) for m in got), default=0.0)
    assert diff <= SCORE_ATOL
    return len(got), diff


def _check(outputs: tuple[np.ndarray, np.ndarray], slots, pairs, references: list[dict]) -> None:
    """Every pair against kornia's outputs ``references`` (``_check_pair``)."""
    matches0, mscores0 = outputs
    rows = [_check_pair(matches0[p], mscores0[p], slots[2 * p], slots[2 * p + 1], ref) for p, ref in enumerate(references)]
    log.info("(matches, max mscore diff) per pair: %s", rows)
    assert rows[0][0] >= 30 and rows[1][0] >= 30, f"too few matches for a meaningful comparison: {rows}"
    assert rows[2][0] == 0 and rows[3][0] == 0  # image 1 has no keypoint


def test_padded_matcher_equals_kornia_on_unpadded_sets(checkpoint):
    name, spec, weights = checkpoint
    module, reference = _models(spec, weights)
    pairs = _pairs(spec)
    inputs, slots = _padded(pairs, spec)
    references = [reference(f0, f1) for f0, f1 in pairs]
    _check(_run_module(module, inputs), slots, pairs, references)
    if spec.keypoint_inputs:
        # the comparison sees the scales and orientations: without either, kornia scores otherwise
        f0, f1 = pairs[0]
        original = {tuple(m): s for m, s in zip(references[0]["matches"].tolist(), references[0]["mscores"])}
        for feature in spec.keypoint_inputs:
            zeroed = reference(f0, {**f1, feature: np.zeros_like(f1[feature])})
            moved = {tuple(m): s for m, s in zip(zeroed["matches"].tolist(), zeroed["mscores"])}
            common = [abs(moved[m] - s) for m, s in original.items() if m in moved]
            assert set(moved) != set(original) or max(common) > 100 * SCORE_ATOL, feature


def test_padded_matcher_is_exact_in_float64(tmp_path):
    """The float32 differences are rounding: in float64 the padded matcher gives kornia's scores to 1e-9
    (the sift random weights, whose float32 difference is the largest)."""
    spec = lightglue.Spec(family="lightglue", features="sift", weights="sift_random")
    weights = _sift_checkpoint(tmp_path / "sift_random.pth")
    module, _ = _models(spec, weights)
    kornia = lightglue._kornia(spec, weights).double()
    pairs = _pairs(spec)[:1]
    inputs, slots = _padded(pairs, spec)
    matches0, mscores0 = _run_module(module.double(), tuple(t.double() for t in inputs))
    data = {f"image{i}": {k: torch.from_numpy(v)[None].double() for k, v in f.items()} for i, f in enumerate(pairs[0])}
    with torch.inference_mode():
        out = kornia(data)
    count, diff = _check_pair(matches0[0], mscores0[0], slots[0], slots[1],
                              {"matches": out["matches"][0].numpy(), "mscores": out["scores"][0].numpy()})
    log.info("sift float64: %d matches, max mscore diff %.1e", count, diff)
    assert count >= 30 and diff < 1e-9


def _export(module, spec, inputs, path: Path) -> Path:
    import onnx

    from glueforge.graphs import MatcherGraph, graph_io
    from glueforge.stages.simplify import simplify

    settings = SimpleNamespace(keypoints=K, match_output="dense", matcher=spec)
    ins, outs = graph_io("matcher", settings, 3, spec.input_dim)
    dynamic = {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)} for t in ins + outs}
    raw = path.with_suffix(".raw.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about Python scalars
        torch.onnx.export(MatcherGraph(module, dense=True).eval(), inputs, str(raw), dynamo=False, opset_version=17,
                          input_names=[t.name for t in ins], output_names=[t.name for t in outs], dynamic_axes=dynamic,
                          do_constant_folding=True)
    simplify(raw, path)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not ops & {"NonZero", "ScatterND", "IsNaN", "IsInf"}, ops
    return path


def test_padding_survives_onnx_export_and_attention_fusion(checkpoint, tmp_path):
    """The exported matcher (traced at other image sizes), without and with the attention fusion, gives
    kornia's matches; its FP16 conversion never matches padding."""
    import onnx

    from glueforge.attention import fuse_attention
    from glueforge.fp16 import to_fp16

    name, spec, weights = checkpoint
    spec = type(spec)(**{**spec.model_dump(), "n_layers": ONNX_LAYERS})
    module, reference = _models(spec, weights)
    pairs = _pairs(spec)
    inputs, slots = _padded(pairs, spec)
    # traced on other data and other image sizes than it is run on
    trace_inputs, _ = _padded(_pairs(spec, seed=5), spec, seed=6)
    trace_inputs[2][:] = torch.tensor([640.0, 480.0])
    plain = _export(module, spec, trace_inputs, tmp_path / f"{name}.onnx")
    fused, count = fuse_attention(onnx.load(str(plain)))
    assert count == 4 * spec.layers  # self-attention of each image and both cross directions, every layer
    mha = [n for n in fused.graph.node if n.op_type == "MultiHeadAttention"]
    assert len(mha) == count and all(len(n.input) == 6 and n.input[5] for n in mha), "a fused attention lost its bias"
    onnx.save(fused, str(tmp_path / f"{name}.fused.onnx"))

    feeds = dict(zip(["keypoints", "descriptors", "image_sizes", *spec.keypoint_inputs], (t.numpy() for t in inputs)))
    references = [reference(f0, f1) for f0, f1 in pairs]
    results = {}
    for variant in ("onnx", "fused.onnx"):
        session = ort_session(str(tmp_path / f"{name}.{variant}"))
        results[variant] = session.run(None, feeds)
        log.info("%s, onnxruntime on %s.%s:", name, name, variant)
        _check(tuple(results[variant]), slots, pairs, references)
    assert np.array_equal(results["onnx"][0], results["fused.onnx"][0])

    # FP16 (glueforge.fp16: float16 with the FP32 islands of the TensorRT targets): the -1e4 bias holds,
    # padding is never matched, nothing is NaN; matches near the threshold may move with FP16 rounding
    onnx.save(to_fp16(onnx.load(str(plain))), str(tmp_path / f"{name}.fp16.onnx"))
    matches0, mscores0 = ort_session(str(tmp_path / f"{name}.fp16.onnx")).run(None, feeds)
    for p, ref in enumerate(references):
        got = _matches_of_pair(matches0[p], mscores0[p], slots[2 * p], slots[2 * p + 1])
        expected = set(map(tuple, ref["matches"].tolist()))
        assert len(set(got) & expected) >= 0.95 * len(expected) and len(set(got) - expected) <= 0.05 * len(expected) + 1


class _MaskedAttention(torch.nn.Module):
    """The patched self/cross attention core, as exported: Q, K, V (B, heads, S or T, d), key bias (B, 1, 1, T)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        from glueforge.patches.lightglue_static_heads import attention

        b, heads, _, d = q.shape  # the sizes from the inputs: the fusion wants the context used by one Transpose only
        return attention(q, k, v, bias).transpose(1, 2).reshape(b, -1, heads * d)


@pytest.mark.parametrize("static", [True, False], ids=["static-lengths", "dynamic-lengths"])
def test_attention_fusion_passes_the_key_bias_as_attention_bias(tmp_path, static):
    """fuse_attention on MatMul-Mul-Add-Softmax-MatMul: one MultiHeadAttention with attention_bias (expanded
    to (B, 1, S, T): the contrib op takes no broadcast over S), equal to the unfused graph, also with a
    batch whose keys are all padded."""
    import onnx

    from glueforge.attention import fuse_attention
    from glueforge.stages.simplify import simplify
    from glueforge.patches.lightglue_fixed_depth import PADDING_BIAS

    b, heads, s, t, d = 2, 4, 7, 11, 16
    q, k, v = torch.randn(b, heads, s, d), torch.randn(b, heads, t, d), torch.randn(b, heads, t, d)
    real = torch.rand(b, t) > 0.4
    real[1] = False
    bias = torch.where(real, 0.0, PADDING_BIAS)[:, None, None, :]
    dynamic = {} if static else {"q": {0: "B", 2: "S"}, "k": {0: "B", 2: "T"}, "v": {0: "B", 2: "T"}, "bias": {0: "B", 3: "T"}}
    raw = tmp_path / "attention.raw.onnx"
    torch.onnx.export(_MaskedAttention(), (q, k, v, bias), str(raw), dynamo=False, opset_version=17,
                      input_names=["q", "k", "v", "bias"], output_names=["out"], dynamic_axes=dynamic)
    simplify(raw, tmp_path / "attention.onnx")
    fused, count = fuse_attention(onnx.load(str(tmp_path / "attention.onnx")))
    assert count == 1
    onnx.checker.check_model(fused)
    mha = next(n for n in fused.graph.node if n.op_type == "MultiHeadAttention")
    assert mha.input[5] and not {"Softmax", "Add"} & {n.op_type for n in fused.graph.node}
    onnx.save(fused, str(tmp_path / "attention.fused.onnx"))
    if not static:  # run at other lengths than traced
        s, t = 5, 13
        q, k, v = torch.randn(b, heads, s, d), torch.randn(b, heads, t, d), torch.randn(b, heads, t, d)
        bias = torch.where(torch.rand(b, t) > 0.4, 0.0, PADDING_BIAS)[:, None, None, :]
    feeds = {"q": q.numpy(), "k": k.numpy(), "v": v.numpy(), "bias": bias.numpy()}
    plain_out, fused_out = (ort_session(str(tmp_path / f"attention.{x}"))
                            .run(None, feeds)[0] for x in ("onnx", "fused.onnx"))
    assert np.isfinite(fused_out).all()
    np.testing.assert_allclose(fused_out, plain_out, rtol=1e-5, atol=1e-5)


# -- DISK ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def disk_models(download_cache):
    model = Config.load(REPO / "models.yaml").model("disk_lightglue")
    extractor_weights = _weights(model.extractor.weights, download_cache)
    matcher_weights = _weights(model.matcher.weights, download_cache)
    settings = SimpleNamespace(image_size=[64, 64], keypoints=1024, extractor=model.extractor)
    return (disk_family.build(model.extractor, extractor_weights, settings).eval(),
            disk_family.reference(model.extractor, extractor_weights, settings),
            lightglue.build(model.matcher, matcher_weights, settings).eval(),
            lightglue.reference(model.matcher, matcher_weights, settings))


def _crops() -> list[torch.Tensor]:
    from glueforge.validation.images import load

    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: the parity photographs live there")
    image = torch.from_numpy(load(SHARED_DATA / "pairs" / "sacre_coeur1.jpg", (480, 640), "RGB"))
    # two overlapping crops of different sizes: 64x64 and 64x80 (multiples of 16)
    return [image[None, :, 200:264, 300:364].contiguous(), image[None, :, 204:268, 294:374].contiguous()]


def test_disk_pads_when_it_finds_fewer_than_k(disk_models):
    patched, reference, _, _ = disk_models
    for crop in _crops():
        with torch.inference_mode():
            keypoints, scores, descriptors = (t[0].numpy() for t in patched(crop))
            ref = reference(crop)[0]
        real = keypoints[:, 0] >= 0
        n = int(real.sum())
        assert 0 < n == len(ref["keypoints"]) < 1024
        assert (keypoints[~real] == -1).all() and (scores[~real] == 0).all() and (descriptors[~real] == 0).all()
        # kornia's keypoints are in raster order, the patched ones strongest first
        order = np.lexsort((keypoints[real, 0], keypoints[real, 1]))
        np.testing.assert_array_equal(keypoints[real][order], ref["keypoints"].astype(np.float32))
        np.testing.assert_allclose(scores[real][order], ref["scores"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(descriptors[real][order], ref["descriptors"], rtol=0, atol=1e-6)


def test_patched_disk_and_lightglue_match_as_kornia_on_few_keypoints(disk_models):
    patched, reference, matcher, matcher_reference = disk_models
    crops = _crops()
    with torch.inference_mode():
        padded = [patched(crop) for crop in crops]
        ref = [reference(crop)[0] for crop in crops]
    sizes = [torch.tensor([[c.shape[3], c.shape[2]]], dtype=torch.float32) for c in crops]
    with torch.no_grad():
        matches0, mscores0 = matcher(padded[0][0], padded[1][0], padded[0][2], padded[1][2], sizes[0], sizes[1])
    # the slot of each kornia keypoint, by pixel position (DISK keypoints are integer pixels)
    slots = []
    for (keypoints, _, _), r in zip(padded, ref):
        slot = {tuple(p): i for i, p in enumerate(keypoints[0].numpy().astype(np.int64).tolist()) if p[0] >= 0}
        assert len(slot) == len(r["keypoints"])
        slots.append(np.array([slot[tuple(p)] for p in r["keypoints"].astype(np.int64).tolist()]))
    expected = matcher_reference({**ref[0], "image_size": sizes[0][0].numpy()}, {**ref[1], "image_size": sizes[1][0].numpy()})
    count, diff = _check_pair(matches0[0].numpy(), mscores0[0].numpy(), slots[0], slots[1], expected)
    log.info("DISK 64x64 + LightGlue: %d matches as kornia's, max mscore diff %.2e", count, diff)
    assert count >= 10


# -- ALIKED and XFeat ---------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["aliked_lightglue", "xfeat_lighterglue"])
def test_aliked_and_xfeat_pad_when_they_find_fewer_than_k(model, download_cache):
    """A 64x64 crop at K = 1024: the patched extractor's real slots are kornia's keypoints (the same
    positions, scores and descriptors) and every other slot is padding."""
    import dataclasses

    from glueforge.graphs import Models

    config = Config.load(REPO / "models.yaml")
    m = config.model(model)
    settings = dataclasses.replace(config.export_settings(model, "cpu"), image_size=[64, 64], keypoints=1024)
    models = Models(settings, {role: _weights(getattr(m, role).weights, download_cache) for role in ("extractor", "matcher")})
    for crop in _crops():
        crop = crop[..., :64, :64].contiguous()
        with torch.inference_mode():
            keypoints, scores, descriptors = (t[0].numpy() for t in models.extractor(crop))
            ref = models.reference_features(crop)[0]
        real = keypoints[:, 0] >= 0
        n = int(real.sum())
        assert 0 < n == len(ref["keypoints"]) < 1024, (n, len(ref["keypoints"]))
        assert (keypoints[~real] == -1).all() and (scores[~real] == 0).all() and (descriptors[~real] == 0).all()
        assert (scores[real] > 0).all()
        # each kornia keypoint is a real slot at the same position (sub-pixel for ALIKED)
        distance = np.linalg.norm(ref["keypoints"][:, None, :] - keypoints[real][None, :, :], axis=-1)
        slot = distance.argmin(axis=1)
        assert distance.min(axis=1).max() < 1e-3 and len(set(slot.tolist())) == n
        np.testing.assert_allclose(scores[real][slot], ref["scores"], rtol=0, atol=1e-5)
        cosine = (descriptors[real][slot] * ref["descriptors"]).sum(-1) / np.linalg.norm(ref["descriptors"], axis=-1)
        assert cosine.min() > 0.9999
        log.info("%s 64x64 at K=1024: %d real keypoints as kornia's, the rest padding", model, n)


# -- SIFT + LightGlue on a real pair of crops ---------------------------------------------------
def test_sift_lightglue_on_small_crops_matches_as_kornia(tmp_path):
    """Two overlapping 160x200 crops of a photograph at K = 1024: host SIFT finds far fewer, pads the
    rest, and the patched LightGlue (the sift checkpoint's architecture, seeded weights) gives exactly
    kornia's ``LightGlue("sift")`` matches on the unpadded sets, none touching a padded slot."""
    from glueforge.exporters import sift
    from glueforge.validation.images import load

    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: the parity photographs live there")
    k = 1024
    image = load(SHARED_DATA / "pairs" / "sacre_coeur1.jpg", (480, 640), "L")
    crops = [image[None, :, 150:310, 220:420], image[None, :, 162:322, 206:406]]  # shifted by (-14, 12) px
    spec = sift.Spec(family="sift")
    settings = SimpleNamespace(image_size=[160, 200], keypoints=k)
    padded = [sift.extract(spec, np.ascontiguousarray(c), k) for c in crops]
    ref = [sift.reference(spec, None, settings)(np.ascontiguousarray(c))[0] for c in crops]
    counts = [len(r["keypoints"]) for r in ref]
    assert all(20 < n < k for n in counts), counts
    # extract puts the real keypoints first, in the reference's order: slot i is reference keypoint i
    slots = [np.arange(n) for n in counts]
    for out, n in zip(padded, counts):
        assert (out["keypoints"][0, n:] == -1).all() and (out["descriptors"][0, n:] == 0).all()

    matcher_spec = lightglue.Spec(family="lightglue", features="sift", weights="sift_random")
    module, reference = _models(matcher_spec, _sift_checkpoint(tmp_path / "sift_random.pth"))
    size = torch.tensor([[200.0, 160.0]])
    features = [torch.from_numpy(np.ascontiguousarray(out[name])) for name in matcher_spec.keypoint_inputs for out in padded]
    with torch.no_grad():
        matches0, mscores0 = module(*(torch.from_numpy(padded[i]["keypoints"]) for i in (0, 1)),
                                    *(torch.from_numpy(padded[i]["descriptors"]) for i in (0, 1)), size, size, *features)
    expected = reference({**ref[0], "image_size": size[0].numpy()}, {**ref[1], "image_size": size[0].numpy()})
    count, diff = _check_pair(matches0[0].numpy(), mscores0[0].numpy(), slots[0], slots[1], expected)
    log.info("SIFT crops (%d, %d keypoints of K=%d) + LightGlue: %d matches as kornia's, max mscore diff %.2e",
             *counts, k, count, diff)
    assert count >= 10
