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

import patches
from patches import PatchError, apply_patches
from patches._keypoints import local_maxima, top_k_maxima
from patches.lightglue_concat_assignment import concat_log_double_softmax


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_concat_assignment_matches_upstream():
    sim, z0, z1 = torch.randn(2, 50, 60), torch.randn(2, 50, 1), torch.randn(2, 60, 1)
    assert torch.equal(concat_log_double_softmax(sim, z0, z1), sigmoid_log_double_softmax(sim, z0, z1))


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
