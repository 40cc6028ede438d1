"""DISK detection with a fixed keypoint count and batched descriptor lookup.

Upstream: ``kornia.feature.DISK.forward`` runs the U-Net, then ``heatmap_to_keypoints``
loops over the batch, takes ``nonzero()`` of the strict-maximum mask, keeps the ``n``
strongest with ``kthvalue`` and tie-breaking ``cumsum`` masks, and ``merge_with_descriptors``
indexes each image's dense descriptors with the resulting coordinates. It returns one
``DISKFeatures`` per image, keypoints in raster order.

Why it fails: ``nonzero`` and the boolean masks give data-dependent shapes, the loop unrolls
over the traced batch size, and the dataclass list has no graph representation.

Replacement: max-pool NMS with the same 5x5 window and border rule and one ``TopK`` of
exactly K per image (``glueforge.patches._keypoints.top_k_valid_maxima``), then one ``Gather`` of the
dense descriptors at those pixels, L2-normalised. Keypoints come strongest first rather than
in raster order; LightGlue is invariant to keypoint order. The detection threshold is not
applied: with a fixed K the K strongest maxima are returned, as upstream does with
``score_threshold=-inf``. An image with fewer than K maxima (small or featureless images)
gets upstream's maxima first and padding in the remaining slots (``glueforge.schema.PADDING``):
keypoint (-1, -1), score 0, all-zero descriptor (three ``Where`` ops on the slot mask).
Inputs whose size is not a multiple of 16 are zero-padded bottom/right and the maps cropped
back, as upstream's ``pad_if_not_divisible``.

Parity: tests/test_build.py::test_parity_of_bundled_graphs_with_kornia[disk_lightglue] (real weights, real
photographs, against kornia's unpatched DISK) and
tests/test_padding.py::test_disk_pads_when_it_finds_fewer_than_k (a 64x64 crop at K=1024: the
maxima equal kornia's, the rest padding, and DISK + LightGlue match as kornia's).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from kornia.feature.disk.disk import DISK

from glueforge.schema import PADDING
from glueforge.patches import swap_class
from glueforge.patches._keypoints import top_k_valid_maxima

TARGET = DISK


class FixedTopKDISK(DISK):
    top_k_fixed: int
    nms_radius: int

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """``images`` (B, 3, H, W) RGB in [0, 1] -> keypoints (B, K, 2) px, scores (B, K), descriptors (B, K, D);
        slots past an image's last maximum are padding (keypoint (-1, -1), score 0, zero descriptor)."""
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        b, _, h, w = images.shape
        pad_h, pad_w = (-h) % 16, (-w) % 16
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h), value=0.0)
        heatmaps, dense = self.heatmap_and_dense_descriptors(images)
        heatmaps, dense = heatmaps[..., :h, :w], dense[..., :h, :w]

        xy, flat, valid = top_k_valid_maxima(heatmaps, self.nms_radius, self.top_k_fixed)
        scores = torch.gather(heatmaps.reshape(b, h * w), 1, flat)
        d = dense.shape[1]
        descriptors = torch.gather(dense.reshape(b, d, h * w), 2, flat.unsqueeze(1).expand(-1, d, -1))
        descriptors = F.normalize(descriptors.transpose(1, 2), dim=-1)
        keypoints = torch.where(valid.unsqueeze(2), xy.to(heatmaps.dtype), torch.full_like(descriptors[:, :, :2], PADDING))
        scores = torch.where(valid, scores, torch.zeros_like(scores))
        descriptors = torch.where(valid.unsqueeze(2), descriptors, torch.zeros_like(descriptors))
        return keypoints, scores, descriptors


def apply(model: torch.nn.Module, settings: Any) -> int:
    return swap_class(
        model, DISK, FixedTopKDISK, top_k_fixed=int(settings.keypoints), nms_radius=int(settings.extractor.nms_window) // 2
    )
