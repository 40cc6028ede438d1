"""ALIKED forward returning batched tensors instead of per-image feature objects.

Upstream: ``kornia.feature.ALIKED.forward`` runs the backbone, then DKD and SDDH, and builds
one ``ALIKEDFeatures`` dataclass per image in a Python loop.

Why it fails: ONNX export traces tensors only; the dataclass list has no graph
representation, and the loop ties the graph to the traced batch size.

Replacement: the same three stages, with the patched DKD (``aliked_fixed_topk_dkd``) and
SDDH (``aliked_batched_sddh``), returning ``keypoints`` (B, K, 2) in pixels, ``scores``
(B, K) and ``descriptors`` (B, K, D). Grey input is repeated to three channels as upstream.
Slots the DKD marks invalid (an image with fewer than K maxima, where upstream returns fewer
keypoints) become padding: keypoint (-1, -1), score 0, zero descriptor (three ``Where`` ops).

Parity: tests/test_build.py::test_parity_of_bundled_graphs_with_kornia[aliked_lightglue];
padding: tests/test_padding.py::test_aliked_and_xfeat_pad_when_they_find_fewer_than_k.
"""

from __future__ import annotations

from typing import Any

import torch
from kornia.feature.aliked.aliked import ALIKED

from glueforge.schema import PADDING
from glueforge.patches import swap_class
from glueforge.patches._shapes import size_wh

TARGET = ALIKED


class TensorALIKED(ALIKED):
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """``images`` (B, 3, H, W) RGB in [0, 1] -> keypoints (B, K, 2) px, scores (B, K), descriptors (B, K, D)."""
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        feature_map, score_map = self.extract_dense_map(images)
        keypoints, scores, valid = self.dkd(score_map)
        descriptors = self.desc_head(feature_map, keypoints)
        wh = size_wh(images) - 1  # from the shape at run time: H and W stay dynamic
        keypoints = wh * (keypoints + 1) / 2.0
        keypoints = torch.where(valid.unsqueeze(2), keypoints, torch.full_like(keypoints, PADDING))
        scores = torch.where(valid, scores, torch.zeros_like(scores))
        descriptors = torch.where(valid.unsqueeze(2), descriptors, torch.zeros_like(descriptors))
        return keypoints, scores, descriptors


def apply(model: torch.nn.Module, settings: Any) -> int:
    return swap_class(model, ALIKED, TensorALIKED)
