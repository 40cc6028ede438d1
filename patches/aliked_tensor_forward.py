"""ALIKED forward returning batched tensors instead of per-image feature objects, without the dense map.

Upstream: ``kornia.feature.ALIKED.forward`` runs the backbone (``extract_dense_map``: four feature
maps, upsampled to full resolution, concatenated, then the score head on the concatenation and the
L2-normalised concatenation as the descriptor map), then DKD and SDDH, and builds one
``ALIKEDFeatures`` dataclass per image in a Python loop.

Why it fails: ONNX export traces tensors only; the dataclass list has no graph
representation, and the loop ties the graph to the traced batch size. The dense map (128 channels
at full resolution, concatenated then normalised) took about 40 % of ALIKED-n16's extractor on
onnxruntime's CPU provider, for the few pixels per keypoint the descriptor head reads.

Replacement: the same stages, with the patched DKD (``aliked_fixed_topk_dkd``) and SDDH
(``aliked_batched_sddh``), returning ``keypoints`` (B, K, 2) in pixels, ``scores`` (B, K) and
``descriptors`` (B, K, D). The four maps stay apart: the score head's first 1x1 convolution over
their concatenation is the sum of its slices' products with each map, taken before the upsampling
(a 1x1 convolution and a bilinear upsampling commute: 8 channels are upsampled, not 32), and SDDH
reads and normalises the upsampled maps at its pixels only (float32 rounding, not bits). H and W are
multiples of 32 (the extractor's interface), where upstream's padding is none. Grey input is
repeated to three channels as upstream. Slots the DKD marks invalid (an image with fewer than K
maxima, where upstream returns fewer keypoints) become padding: keypoint (-1, -1), score 0, zero
descriptor (three ``Where`` ops).

Parity: tests/test_build.py::test_parity_of_bundled_graphs_with_kornia[aliked_lightglue];
padding: tests/test_padding.py::test_aliked_and_xfeat_pad_when_they_find_fewer_than_k.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
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
        maps = self.gated_maps(images)
        keypoints, scores, valid = self.dkd(self.score_map(maps))
        parts = [up(m) for up, m in zip(self._upsamples(), maps)]  # upstream's x1234 before its concatenation
        descriptors = self.desc_head(parts, keypoints)
        wh = size_wh(images) - 1  # from the shape at run time: H and W stay dynamic
        keypoints = wh * (keypoints + 1) / 2.0
        keypoints = torch.where(valid.unsqueeze(2), keypoints, torch.full_like(keypoints, PADDING))
        scores = torch.where(valid, scores, torch.zeros_like(scores))
        descriptors = torch.where(valid.unsqueeze(2), descriptors, torch.zeros_like(descriptors))
        return keypoints, scores, descriptors

    def gated_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``images`` (B, 3, H, W) -> the four gated feature maps, (B, dim / 4, H / s, W / s) for s = 1, 2, 8, 32."""
        x1 = self.block1(images)
        x2 = self.block2(self.pool2(x1))
        x3 = self.block3(self.pool4(x2))
        x4 = self.block4(self.pool4(x3))
        return [self.gate(self.conv1(x1)), self.gate(self.conv2(x2)), self.gate(self.conv3(x3)), self.gate(self.conv4(x4))]

    def _upsamples(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        return [lambda x: x, self.upsample2, self.upsample8, self.upsample32]

    def score_map(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """The score head on the concatenation of the upsampled ``maps`` -> (B, 1, H, W) in (0, 1). Its first layer,
        a 1x1 convolution without bias, is the sum of its slices' products with each map, and a 1x1 convolution
        and a bilinear upsampling commute: each map's product (8 channels) is upsampled, not the map (32)."""
        slices = self.score_head[0].weight.split([m.shape[1] for m in maps], dim=1)
        x = sum(up(F.conv2d(m, w)) for up, m, w in zip(self._upsamples(), maps, slices))
        return torch.sigmoid(self.score_head[1:](x))


def apply(model: torch.nn.Module, settings: Any) -> int:
    for module in model.modules():
        if type(module) is ALIKED and module.score_head[0].bias is not None:
            raise NotImplementedError("aliked_tensor_forward expects the released score head (a 1x1 convolution without bias)")
    return swap_class(model, ALIKED, TensorALIKED)
