"""Each LightGlue/keypoint patch against the upstream code it replaces, on random inputs.

The real-weight, real-image parity of every patch is in test_build.py::test_parity_*; these
tests pin the exactness of the pieces and the patch mechanism itself.
"""

from __future__ import annotations

import re

from types import SimpleNamespace

import pytest
import torch
from kornia.feature.lightglue import CrossBlock, LearnableFourierPositionalEncoding, SelfBlock, sigmoid_log_double_softmax
from kornia.geometry.subpix import nms2d

from glueforge import patches
from glueforge.patches import PatchError, apply_patches
from glueforge.patches._keypoints import local_maxima, top_k_maxima, top_k_valid_maxima
from glueforge.patches.lightglue_concat_assignment import concat_log_double_softmax
from glueforge.patches.lightglue_fixed_depth import PADDING_BIAS, normalize_keypoints, padding_bias


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_concat_assignment_matches_upstream():
    sim, z0, z1 = torch.randn(2, 50, 60), torch.randn(2, 50, 1), torch.randn(2, 60, 1)
    assert torch.equal(concat_log_double_softmax(sim, z0, z1), sigmoid_log_double_softmax(sim, z0, z1))


def test_masked_assignment_matches_upstream_on_real_points():
    """Padding biases: the real block is upstream's assignment of the real points alone; every entry
    with a padded row or column is <= PADDING_BIAS, so filter_matches never takes it."""
    m, n = 50, 60
    sim, z0, z1 = torch.randn(2, m, n) * 5, torch.randn(2, m, 1), torch.randn(2, n, 1)
    real0, real1 = torch.rand(2, m) > 0.3, torch.rand(2, n) > 0.4
    real1[1] = False  # an image without keypoints
    bias0 = torch.where(real0, 0.0, PADDING_BIAS)
    bias1 = torch.where(real1, 0.0, PADDING_BIAS)
    masked = concat_log_double_softmax(sim, z0, z1, bias0, bias1)
    for b in range(2):
        i, j = real0[b].nonzero()[:, 0], real1[b].nonzero()[:, 0]
        upstream = sigmoid_log_double_softmax(sim[b:b + 1, i][:, :, j], z0[b:b + 1, i], z1[b:b + 1, j])[0]
        torch.testing.assert_close(masked[b, i][:, j], upstream[:-1, :-1], rtol=0, atol=1e-5)
        torch.testing.assert_close(masked[b, i, -1], upstream[:-1, -1], rtol=0, atol=0)  # dustbins
        torch.testing.assert_close(masked[b, -1, j], upstream[-1, :-1], rtol=0, atol=0)
        padded = ~(real0[b, :, None] & real1[b, None, :])
        assert (masked[b, :-1, :-1][padded] <= PADDING_BIAS).all()
        assert masked[b, :-1, :-1][padded].exp().eq(0).all()


def test_padding_bias_and_per_image_normalisation():
    kpts = torch.tensor([[[10.0, 20.0], [-1.0, -1.0], [0.0, 5.0]], [[-1.0, -1.0], [3.0, 4.0], [100.0, 50.0]]])
    assert padding_bias(kpts).tolist() == [[0.0, PADDING_BIAS, 0.0], [PADDING_BIAS, 0.0, 0.0]]
    from kornia.feature.lightglue import normalize_keypoints as upstream

    size = torch.tensor([[640.0, 480.0], [320.0, 400.0]])
    torch.testing.assert_close(normalize_keypoints(kpts, size), upstream(kpts, size), rtol=0, atol=0)


def test_posenc_expand_matches_upstream():
    upstream = LearnableFourierPositionalEncoding(2, 64, 64).eval()
    patched = LearnableFourierPositionalEncoding(2, 64, 64).eval()
    patched.load_state_dict(upstream.state_dict())
    apply_patches(patched, ["lightglue_posenc_expand"], None)
    x = torch.rand(2, 100, 2) * 2 - 1
    assert torch.equal(patched(x), upstream(x))


def test_static_heads_match_upstream():
    encoding = LearnableFourierPositionalEncoding(2, 64, 64).eval()
    for cls, args in ((SelfBlock, 2), (CrossBlock, 2)):
        upstream = cls(256, 4).eval()
        patched = cls(256, 4).eval()
        patched.load_state_dict(upstream.state_dict())
        apply_patches(patched, ["lightglue_static_heads"], None)
        x0, x1 = torch.randn(2, 70, 256), torch.randn(2, 90, 256)
        with torch.no_grad():
            if cls is SelfBlock:
                enc = encoding(torch.rand(2, 70, 2))
                torch.testing.assert_close(patched(x0, enc), upstream(x0, enc), rtol=1e-5, atol=1e-5)
            else:
                for a, b in zip(patched(x0, x1), upstream(x0, x1)):
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_static_heads_key_bias_matches_upstream_mask():
    """The patched blocks' additive key bias against upstream's boolean mask (kornia's padded path):
    the real queries get upstream's result; the padded ones are finite."""
    encoding = LearnableFourierPositionalEncoding(2, 64, 64).eval()
    real0, real1 = torch.rand(2, 70) > 0.3, torch.rand(2, 90) > 0.5
    real1[1] = False  # an image without keypoints: its queries must not give NaN
    mask0, mask1 = real0[:, :, None], real1[:, :, None]  # upstream's (B, N, 1) masks
    bias0 = torch.where(real0, 0.0, PADDING_BIAS)[:, None, None, :]
    bias1 = torch.where(real1, 0.0, PADDING_BIAS)[:, None, None, :]
    x0, x1 = torch.randn(2, 70, 256), torch.randn(2, 90, 256)
    for cls in (SelfBlock, CrossBlock):
        upstream = cls(256, 4).eval()
        patched = cls(256, 4).eval()
        patched.load_state_dict(upstream.state_dict())
        apply_patches(patched, ["lightglue_static_heads"], None)
        with torch.no_grad():
            if cls is SelfBlock:
                enc = encoding(torch.rand(2, 70, 2))
                got = [patched(x0, enc, bias=bias0)]
                want = [upstream(x0, enc, (mask0 & mask0.transpose(1, 2))[:, None])]
                real = [real0]
            else:
                got = patched(x0, x1, bias0=bias0, bias1=bias1)
                want = upstream(x0, x1, (mask0 & mask1.transpose(1, 2))[:, None])
                real = [real0, real1]
        # a real query whose keys are all padded (image 0 of pair 1 in the cross block) reads a uniform
        # mix of padded values where upstream's nan_to_num gives 0; that image has nothing to match
        # (kornia's LightGlue returns no match for an image without keypoints, and so does the patch)
        keyed = [real0.any(1), real1.any(1)] if cls is SelfBlock else [real1.any(1), real0.any(1)]
        for g, w, r, k in zip(got, want, real, keyed):
            assert torch.isfinite(g).all()
            r = r & k[:, None]
            torch.testing.assert_close(g[r], w[r], rtol=1e-5, atol=1e-5)


def test_local_maxima_match_kornia_nms2d():
    scores = torch.rand(3, 1, 40, 50)
    for radius in (1, 2, 3):
        k = 2 * radius + 1
        assert torch.equal(local_maxima(scores, radius), nms2d(scores, (k, k), mask_only=True))


def test_top_k_maxima_are_the_strongest_maxima_first():
    scores = torch.rand(2, 1, 30, 40)
    xy, flat = top_k_maxima(scores, 2, 20)
    mask = nms2d(scores, (5, 5), mask_only=True).reshape(2, -1)
    for b in range(2):
        expected = torch.topk(scores.reshape(2, -1)[b].masked_fill(~mask[b], -1), 20).indices
        assert torch.equal(flat[b], expected)
        assert torch.equal(xy[b, :, 0] + 40 * xy[b, :, 1], flat[b])


def test_top_k_fills_with_non_maxima_when_short():
    scores = torch.zeros(1, 1, 20, 20)
    scores[0, 0, 10, 10] = 1.0
    scores[0, 0, 3, 4] = 0.5
    _, flat = top_k_maxima(scores, 2, 5)
    assert flat[0, :2].tolist() == [10 * 20 + 10, 3 * 20 + 4]


def test_top_k_valid_maxima_marks_the_slots_past_the_last_maximum():
    ys, xs = torch.meshgrid(torch.arange(20.0), torch.arange(20.0), indexing="ij")
    cone = lambda y, x: -((ys - y) ** 2 + (xs - x) ** 2).sqrt()  # noqa: E731 - one strict maximum, no plateau
    scores = torch.stack([torch.maximum(cone(10, 10), cone(4, 15) - 0.5), torch.rand(20, 20)])[:, None]
    xy, flat, valid = top_k_valid_maxima(scores, 2, 8)
    maxima = local_maxima(scores, 2).reshape(2, -1)
    assert valid[0].tolist() == [True, True] + [False] * 6
    assert flat[0, :2].tolist() == [10 * 20 + 10, 4 * 20 + 15]
    assert torch.equal(xy[0, :2], torch.tensor([[10, 10], [15, 4]]))
    for b in range(2):
        assert torch.equal(valid[b], maxima[b, flat[b]])
        n = int(maxima[b].sum())
        assert valid[b, : min(n, 8)].all() and not valid[b, min(n, 8):].any()  # maxima first
    assert torch.equal(top_k_maxima(scores, 2, 8)[1], flat)  # the filling variant picks the same slots


def test_top_k_fillers_keep_their_window_inside_the_map():
    """A map whose strongest pixels are at its border and that has no maximum: the fillers are the
    strongest pixels at least ``radius`` inside, so a window read around them (ALIKED) stays in the map."""
    ys, xs = torch.meshgrid(torch.arange(20.0), torch.arange(30.0), indexing="ij")
    scores = (xs + 0.01 * ys)[None, None]  # rises to the right edge: no strict maximum inside the border
    xy, _, valid = top_k_valid_maxima(scores, 2, 10)
    assert not valid.any()
    assert ((xy >= 2) & (xy < torch.tensor([28, 18]))).all()
    assert (xy[0, :, 0] == 27).all()  # the strongest column inside the border


def test_unknown_patch_lists_known_ones():
    with pytest.raises(PatchError, match="known patches: .*aliked_fixed_topk_dkd"):
        apply_patches(torch.nn.Linear(2, 2), ["no_such_patch"], None)


def test_patch_that_matches_nothing_is_refused():
    with pytest.raises(PatchError, match="matched no module"):
        apply_patches(torch.nn.Linear(2, 2), ["lightglue_static_heads"], SimpleNamespace())


def test_every_patch_documents_upstream_reason_replacement_and_test():
    for path in sorted(patches.PATCH_DIR.glob("[!_]*.py")):
        module = patches.patch_module(path.stem)
        doc = module.__doc__ or ""
        for heading in ("Upstream:", "Why it fails", "Replacement:", "Parity:"):
            assert heading in doc, f"{path.name} docstring lacks {heading!r}"
        assert hasattr(module, "TARGET") and callable(module.apply)


def test_parity_tests_named_by_patches_exist():
    tests_dir = patches.PATCH_DIR.parent / "tests"
    for path in sorted(patches.PATCH_DIR.glob("[!_]*.py")):
        doc = " ".join((patches.patch_module(path.stem).__doc__ or "").split())
        named = re.findall(r"(tests/\w+\.py)::(\w+)", doc)
        assert named, f"{path.name} names no parity test"
        for file, test in named:
            assert f"def {test}(" in (tests_dir.parent / file).read_text(), f"{path.name}: {file}::{test} does not exist"


# -- ALIKED deformable convolution and upsampling (dynamic H and W) -----------------------------
@pytest.mark.parametrize("mask", [False, True], ids=["dcn-v1", "dcn-v2"])
def test_deform_grid_equals_upstream(mask):
    """Integer sampling base and offset fractions: upstream's deformable convolution to float32 rounding,
    with offsets large enough to leave the map."""
    import copy

    from kornia.feature.aliked.aliked import DeformableConv2d

    from glueforge.patches import aliked_deform_grid

    torch.manual_seed(0)
    upstream = DeformableConv2d(16, 32, mask=mask).eval()
    with torch.no_grad():
        upstream.offset_conv.weight.mul_(20)  # offsets of several pixels, some outside the map
    patched = copy.deepcopy(upstream)
    assert aliked_deform_grid.apply(patched, None) == 1
    for h, w in ((12, 20), (24, 78), (7, 9)):
        x = torch.randn(2, 16, h, w)
        with torch.no_grad():
            expected, got = upstream(x), patched(x)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=0, atol=2e-5)


def test_batched_sddh_equals_upstream():
    """The descriptor head on the four maps, normalised where it reads them: upstream's SDDH on their normalised
    concatenation (per-image loop, get_patches, grid_sample) to float32 rounding, for a batch of two, keypoints at
    the border too, and offsets that leave the map."""
    import copy

    import torch.nn.functional as F
    from kornia.feature.aliked.aliked import SDDH

    from glueforge.patches import aliked_batched_sddh

    torch.manual_seed(0)
    upstream = torch.nn.Sequential(SDDH(32, 3, 16, gate=torch.nn.SELU()).eval())
    with torch.no_grad():
        upstream[0].offset_conv[2].weight.mul_(30)  # offsets of several pixels, some outside the map
    patched = copy.deepcopy(upstream)
    assert aliked_batched_sddh.apply(patched, None) == 1
    for h, w in ((32, 64), (24, 40)):
        parts = [torch.randn(2, 8, h, w) for _ in range(4)]
        keypoints = torch.rand(2, 50, 2) * 2 - 1
        keypoints[:, :4] = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [0.999, -0.999]])  # corners
        with torch.no_grad():
            expected, _ = upstream[0](F.normalize(torch.cat(parts, dim=1), p=2, dim=1), list(keypoints))
            got = patched[0](parts, keypoints)
        torch.testing.assert_close(got, torch.stack(expected), rtol=0, atol=2e-5)


@pytest.mark.parametrize("scale", [2, 8, 32])
def test_upsample_grid_equals_upstream(scale):
    """GridSample over the aligned-corners grid: nn.Upsample's bilinear interpolation to float32 rounding."""
    import copy

    from glueforge.patches import aliked_upsample_grid

    upstream = torch.nn.Sequential(torch.nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=True))
    patched = copy.deepcopy(upstream)
    assert aliked_upsample_grid.apply(patched, None) == 1
    torch.manual_seed(1)
    for h, w in ((3, 5), (12, 39), (15, 20)):
        x = torch.randn(2, 4, h, w)
        torch.testing.assert_close(patched(x), upstream(x), rtol=0, atol=5e-5)
    with pytest.raises(ValueError, match="integer scale"):
        aliked_upsample_grid.apply(torch.nn.Sequential(torch.nn.Upsample(scale_factor=1.5, mode="bilinear",
                                                                         align_corners=True)), None)
