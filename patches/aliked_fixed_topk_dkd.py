"""ALIKED keypoint detection (DKD) with a fixed keypoint count.

Upstream: ``kornia.feature.aliked.DKD.forward`` finds strict maxima with ``nms2d``, keeps the
top-k with ``topk.values > -inf`` boolean indexing, then refines each image's keypoints in a
Python loop over the batch (``nn.Unfold`` patches, soft-argmax, ``grid_sample`` scores) and
returns lists of per-image tensors.

Why it fails: the boolean indexing and the per-image lists give data-dependent shapes; the
loop unrolls over the traced batch size, so the graph is tied to one batch; ``nn.Unfold`` of
the whole map materialises ``(2r+1)^2 * H * W`` values to read ``(2r+1)^2 * K`` of them.

Replacement: max-pool NMS and one ``TopK`` of exactly K per image (``glueforge.patches._keypoints``),
the soft-argmax window read with one ``Gather`` around each peak (its weighted mean as
Mul + ReduceSum rather than a MatMul), and the score read with a batched ``grid_sample``.
Outputs are ``(B, K, 2)`` keypoints in [-1, 1], ``(B, K)`` scores and ``(B, K)`` bool ``valid``:
upstream returns only the maxima, so a map with fewer than K has slots past its last maximum,
which ``aliked_tensor_forward`` turns into padding (``glueforge.schema.PADDING``). Those slots
sit on the strongest non-maxima inside the border, so every gather stays in the map.
The border rule and temperature are upstream's; the peaks are at least ``radius`` pixels
inside the map, so the window never leaves it and upstream's zero padding is never read.

Parity: tests/test_build.py::test_parity_of_bundled_graphs_with_kornia[aliked_lightglue] (real weights, real
photographs, against kornia's unpatched ALIKED in top-k mode) and
tests/test_padding.py::test_aliked_and_xfeat_pad_when_they_find_fewer_than_k (the maxima equal kornia's, the
rest padding).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from kornia.feature.aliked.aliked import DKD

from glueforge.patches import swap_class
from glueforge.patches._keypoints import top_k_valid_maxima
from glueforge.patches._shapes import size_wh

TARGET = DKD


class FixedTopKDKD(DKD):
    top_k_fixed: int

    def forward(self, scores_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """``scores_map`` (B, 1, H, W) -> keypoints (B, K, 2) in [-1, 1], scores (B, K), valid (B, K) bool."""
        b, _, h, w = scores_map.shape
        k = self.top_k_fixed
        xy, flat, valid = top_k_valid_maxima(scores_map, self.radius, k)
        grid = self.hw_grid.to(scores_map.dtype)  # (window, 2) as (dx, dy)
        window_offsets = (grid[:, 1] * w + grid[:, 0]).long()
        window_index = (flat.unsqueeze(-1) + window_offsets).reshape(b, -1)
        patch = torch.gather(scores_map.reshape(b, h * w), 1, window_index).reshape(b, k, -1)
        max_v = patch.max(dim=-1, keepdim=True).values.detach()
        x_exp = ((patch - max_v) / self.temperature).exp()
        # weighted mean offset as Mul + ReduceSum, not a MatMul: the keypoint chain stays FP32 on
        # FP16 targets, and TensorRT-RTX cannot compile an FP32 GEMM for Turing
        residual = (x_exp.unsqueeze(-1) * grid).sum(dim=2) / x_exp.sum(dim=-1, keepdim=True)
        wh = size_wh(scores_map) - 1  # (W - 1, H - 1), from the shape at run time: H and W stay dynamic
        keypoints = (xy.to(scores_map.dtype) + residual) / wh * 2 - 1
        scores = F.grid_sample(scores_map, keypoints.unsqueeze(1), mode="bilinear", align_corners=True)
        return keypoints, scores.reshape(b, k), valid


def apply(model: torch.nn.Module, settings: Any) -> int:
    return swap_class(model, DKD, FixedTopKDKD, top_k_fixed=int(settings.keypoints))
