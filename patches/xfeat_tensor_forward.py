"""XFeat tensor forward with a fixed keypoint count (``detectAndCompute`` as one static graph).

Upstream: ``kornia.feature.XFeat`` has no ``forward``. ``detectAndCompute`` resizes the image
to multiples of 32, runs the backbone, turns the 65-channel logits into a full-resolution
heatmap, and ``_nms`` takes strict 5 x 5 maxima (``nms2d``, 2-pixel border excluded) above
``detection_threshold``, gathers them with ``nonzero()`` in a Python loop over the batch and
pads with -1. Each maximum ``p`` is scored ``nearest(heatmap, p) * bilinear(reliability, p)``
(``InterpolateSparse2d``: grid ``2 p / (W - 1) - 1`` sampled with ``align_corners=False``),
the ``top_k`` best are kept, descriptors are sampled bicubically from the L2-normalised dense
map at those pixels and normalised again, and one dict per image keeps ``scores > 0``.

Why it fails: no ``forward`` to export; ``nonzero``, the loop, the ``-1`` padding with
boolean-index assignment and the final ``scores > 0`` mask give data-dependent shapes and tie
the graph to the traced batch size; the dict list has no graph representation.

Replacement: ``forward(images)`` with tensors only. The resize is left out: for H and W
multiples of 32 it is the identity (bilinear, ``align_corners=False``, same size). The
score is computed at every pixel: upstream's ``nearest`` read of the full-resolution heatmap
lands on pixel ``p`` itself (source index ``p + p / (W - 1) - 0.5`` rounds to ``p``), so it
is the heatmap; the reliability is read with upstream's bilinear ``grid_sample`` and grid
over the whole pixel grid, so from the same maps each maximum gets upstream's score bit for
bit. Max-pool NMS
(``glueforge.patches._keypoints.local_maxima``, radius 2) and one ``TopK`` of exactly K rank the maxima
by that score. The descriptors are upstream's: bicubic ``grid_sample`` at the keypoints of the
normalised dense map, normalised again. Outputs: ``keypoints`` (B, K, 2) float pixels (x, y),
``scores`` (B, K) sorted descending, ``descriptors`` (B, K, 64) unit length. The slots upstream
would drop (``scores > 0``: past an image's last maximum, or a maximum scored 0) are padding
(``glueforge.schema.PADDING``): keypoint (-1, -1), score 0, zero descriptor.

Parity: tests/test_xfeat.py::test_xfeat_parity_with_kornia (real weights, real photographs,
against kornia's ``XFeat(top_k=K, detection_threshold=0).detectAndCompute``); padding:
tests/test_padding.py::test_aliked_and_xfeat_pad_when_they_find_fewer_than_k.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from kornia.feature.xfeat import XFeat

from glueforge.schema import PADDING
from glueforge.patches import swap_class
from glueforge.patches._keypoints import local_maxima
from glueforge.patches._shapes import size_wh

TARGET = XFeat
NMS_RADIUS = 2  # upstream's 5 x 5 window

log = logging.getLogger(__name__)


def pixel_grid(h: int, w: int, batch: int, device: torch.device) -> torch.Tensor:
    """(B, H, W, 2) grid of every pixel under upstream's ``normgrid``: ``2 p / (W - 1) - 1``."""
    xs = torch.arange(w, device=device, dtype=torch.float32) / (w - 1)
    ys = torch.arange(h, device=device, dtype=torch.float32) / (h - 1)
    grid = torch.stack([xs.view(1, w).expand(h, w), ys.view(h, 1).expand(h, w)], dim=-1)
    return (2.0 * grid - 1.0).unsqueeze(0).expand(batch, h, w, 2)


def top_k_ranked_maxima(
    heatmap: torch.Tensor, ranking: torch.Tensor, radius: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` maxima of ``heatmap`` with the highest ``ranking``.

    Args:
        heatmap: ``(B, 1, H, W)`` map whose local maxima are the candidates.
        ranking: ``(B, 1, H, W)`` non-negative score the candidates are ranked by.
        radius: NMS half window.
        k: keypoint count, at most ``H * W``.

    Returns:
        ``flat`` ``(B, k)`` int64 indices into the flattened ``H * W`` map, best first, and
        ``scores`` ``(B, k)``: ``ranking`` there, 0 for the non-maxima that fill an image with
        fewer than ``k`` maxima (they come after every maximum, ordered by ``ranking``).
    """
    b, _, h, w = heatmap.shape
    maxima = local_maxima(heatmap, radius).reshape(b, h * w)
    ranking = ranking.reshape(b, h * w)
    span = ranking.detach().amax(dim=1, keepdim=True) + 1.0
    ranked = torch.where(maxima, ranking, ranking - span)
    top = torch.topk(ranked, k, dim=1, largest=True, sorted=True)
    scores = torch.where(top.values >= 0, top.values, torch.zeros_like(top.values))
    return top.indices, scores


class TensorXFeat(XFeat):
    top_k_fixed: int

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``images`` (B, 3, H, W) RGB in [0, 1], H and W multiples of 32 ->
        keypoints (B, K, 2) px, scores (B, K), descriptors (B, K, 64)."""
        b, _, h, w = images.shape
        if h % 32 or w % 32:
            raise ValueError(f"XFeat export needs H and W multiples of 32, got {h}x{w}")
        dense, logits, reliability = self.net(images)
        dense = F.normalize(dense, dim=1)
        heatmap = self._get_kpts_heatmap(logits)  # (B, 1, H, W)

        # upstream's InterpolateSparse2d("bilinear") at every pixel: (B, 1, H/8, W/8) -> (B, 1, H, W)
        grid = pixel_grid(h, w, b, images.device)
        reliable = F.grid_sample(reliability, grid, mode="bilinear", align_corners=False)
        flat, scores = top_k_ranked_maxima(heatmap, heatmap * reliable, NMS_RADIUS, self.top_k_fixed)

        # flat >= 0: truncating Div and Sub instead of floor division and Mod (fewer, simpler ONNX ops)
        y = torch.div(flat, w, rounding_mode="trunc")
        keypoints = torch.stack([flat - y * w, y], dim=-1).to(torch.float32)
        # upstream's InterpolateSparse2d, with (W - 1, H - 1) read from the shape at run time instead of the
        # torch.tensor([W - 1, H - 1]) constant it builds (which would freeze the traced size into the graph)
        grid = (2.0 * keypoints / (size_wh(images) - 1) - 1.0).unsqueeze(-2)
        sampled = F.grid_sample(dense, grid, mode=self.interpolator.mode, align_corners=False)
        descriptors = F.normalize(sampled.permute(0, 2, 3, 1).squeeze(-2), dim=-1)
        valid = scores > 0  # what upstream keeps
        keypoints = torch.where(valid.unsqueeze(2), keypoints, torch.full_like(keypoints, PADDING))
        descriptors = torch.where(valid.unsqueeze(2), descriptors, torch.zeros_like(descriptors))
        return keypoints, scores, descriptors


def apply(model: torch.nn.Module, settings: Any) -> int:
    k = int(settings.keypoints)
    height, width = (int(v) for v in settings.image_size)
    if k > height * width:
        raise ValueError(f"keypoints={k} exceeds the {height}x{width} pixels of the image")
    log.debug("XFeat: fixed top-%d keypoints at %dx%d", k, height, width)
    return swap_class(model, XFeat, TensorXFeat, top_k_fixed=k)
