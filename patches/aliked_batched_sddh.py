"""ALIKED sparse descriptor head (SDDH) over the whole batch at once.

Upstream: ``kornia.feature.aliked.SDDH.forward`` loops over the images of the batch; for each
it cuts 3x3 patches with ``get_patches`` (advanced indexing of a permuted map with a tuple of
index tensors), predicts deformable offsets, samples with ``grid_sample`` and aggregates.

Why it fails: the Python loop unrolls over the traced batch size and returns lists, and the
tuple-of-tensors indexing exports as a chain of Gather/Reshape ops whose shapes depend on the
keypoint count of each image.

Replacement: the same computation on ``(B, K, ...)`` tensors: the 3x3 patch is one
``Gather`` on the flattened map with upstream's corner rule (``floor(xy) - 1`` clamped to the
map), the offsets and aggregation run on ``B * K`` patches, and the deformable samples are
one ``grid_sample`` per batch. Same weights, same arithmetic, no loop.

Parity: tests/test_build.py::test_parity_of_bundled_graphs_with_kornia[aliked_lightglue] (descriptor cosine
against kornia's unpatched SDDH on real photographs).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from kornia.feature.aliked.aliked import SDDH

from glueforge.patches import swap_class
from glueforge.patches._shapes import size_wh

TARGET = SDDH


class BatchedSDDH(SDDH):
    def forward(self, x: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``x`` (B, C, H, W) features, ``keypoints`` (B, K, 2) in [-1, 1] -> (B, K, C) descriptors."""
        b, c, h, w = x.shape
        k = keypoints.shape[1]
        ps = self.kernel_size
        # H and W from the shape at run time (Shape ops), not trace-time constants: H and W stay dynamic
        wh = size_wh(x) - 1  # (W - 1, H - 1)
        max_offset = (wh + 1).max() / 4.0
        kpts_wh = (keypoints / 2 + 0.5) * wh  # (B, K, 2) pixels

        # Upstream get_patches: corner = trunc(long(xy) - ps/2 + 1), clamped to the map.
        corner = torch.minimum(torch.floor(torch.floor(kpts_wh) - ps / 2 + 1).clamp(min=0), wh - ps)
        cx = corner[..., 0].long()
        cy = corner[..., 1].long()
        steps = torch.arange(ps, device=x.device)
        rows = (cy.unsqueeze(-1) + steps).unsqueeze(-1)  # (B, K, ps, 1)
        cols = (cx.unsqueeze(-1) + steps).unsqueeze(-2)  # (B, K, 1, ps)
        index = (rows * w + cols).reshape(b, 1, k * ps * ps).expand(b, c, -1)
        patch = torch.gather(x.reshape(b, c, h * w), 2, index)  # (B, C, K*ps*ps)
        patch = patch.reshape(b, c, k, ps, ps).permute(0, 2, 1, 3, 4).reshape(b * k, c, ps, ps)

        offset = torch.maximum(torch.minimum(self.offset_conv(patch), max_offset), -max_offset)  # (B*K, 2M, 1, 1)
        offset = offset.reshape(b, k, 2, self.n_pos).permute(0, 1, 3, 2)  # (B, K, M, 2)
        pos = kpts_wh.unsqueeze(2) + offset
        pos = 2.0 * pos / wh - 1
        features = F.grid_sample(x, pos.reshape(b, k * self.n_pos, 1, 2), mode="bilinear", align_corners=True)
        features = features.reshape(b, c, k, self.n_pos).permute(0, 2, 1, 3)  # (B, K, C, M)
        features = features.reshape(b * k, c, self.n_pos, 1)
        features = F.selu(self.sf_conv(features)).reshape(b, k, c, self.n_pos)
        descriptors = torch.einsum("bncp,pcd->bnd", features, self.agg_weights)
        return F.normalize(descriptors, p=2.0, dim=-1)


def apply(model: torch.nn.Module, settings: Any) -> int:
    for module in model.modules():
        if type(module) is SDDH and (module.mask or module.conv2d):
            raise NotImplementedError("aliked_batched_sddh supports the released ALIKED heads (mask=False, conv2d=False)")
    return swap_class(model, SDDH, BatchedSDDH)
