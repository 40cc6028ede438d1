"""ALIKED sparse descriptor head (SDDH) over the whole batch at once, reading the feature map only where it samples.

Upstream: ``kornia.feature.aliked.SDDH.forward`` takes the L2-normalised dense map (``B x 128 x H x
W`` at full resolution, made by ``ALIKED.extract_dense_map``) and loops over the images of the
batch; for each it cuts 3x3 patches with ``get_patches`` (advanced indexing of a permuted map with a
tuple of index tensors), predicts deformable offsets, samples with ``grid_sample`` and aggregates.

Why it fails: the Python loop unrolls over the traced batch size and returns lists, and the
tuple-of-tensors indexing exports as a chain of Gather/Reshape ops whose shapes depend on the
keypoint count of each image. And the dense map costs more than the head: concatenating and
normalising 128 channels at full resolution, for the 9 + 4 x 16 pixels per keypoint the head reads,
took 34 % of ALIKED-n16's extractor on onnxruntime's CPU provider, and its ``GridSample`` another 9 %
(480x640, one thread; benchmarks/op_profile.py).

Replacement: the same computation on ``(B, K, ...)`` tensors, reading the four feature maps that
upstream concatenates (``parts``, each ``B x 32 x H x W``, as ``aliked_tensor_forward`` passes them):

- a pixel's feature is its four parts' rows of the channels-last maps (one ``Gather`` each),
  concatenated and divided by their L2 norm (``F.normalize``'s rule, per pixel, as upstream's map);
- the 3x3 patch uses upstream's corner rule (``floor(xy) - 1`` clamped to the map);
- the deformable samples are bilinear with aligned corners and zeros outside the map, as upstream's
  ``grid_sample`` on the normalised map: the four corner pixels' normalised features, weighted;
- the offsets, ``sf_conv`` and the aggregation run on ``B * K`` patches (the 1x1 convolution and the
  einsum as ``MatMul``), with upstream's weights.

Same arithmetic per pixel, in another order: float32 rounding, not bits.

Parity: tests/test_patches.py::test_batched_sddh_equals_upstream (random maps and keypoints, near the
border too) and tests/test_build.py::test_parity_of_bundled_graphs_with_kornia[aliked_lightglue]
(descriptor cosine against kornia's unpatched ALIKED on real photographs).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from kornia.feature.aliked.aliked import SDDH

from glueforge.patches import swap_class
from glueforge.patches._shapes import size_wh

TARGET = SDDH


class _PixelFeatures:
    """The concatenation of ``parts`` (each (B, C_i, H, W)), L2-normalised per pixel, read at pixels only."""

    def __init__(self, parts: list[torch.Tensor]) -> None:
        b, _, h, w = parts[0].shape
        self.size = (h, w)
        self.rows = [p.permute(0, 2, 3, 1).reshape(b * h * w, p.shape[1]) for p in parts]
        self.first = torch.arange(b, device=parts[0].device) * (h * w)  # each image's first row

    def at(self, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        """Integer pixels ``ys``, ``xs`` (B, ...) inside the map -> their features (B, ..., C)."""
        h, w = self.size
        index = self.first.reshape([-1] + [1] * (ys.dim() - 1)) + ys * w + xs
        v = torch.cat([rows[index] for rows in self.rows], dim=-1)
        return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(1e-12)

    def bilinear(self, pos: torch.Tensor) -> torch.Tensor:
        """Pixel positions ``pos`` (B, ..., 2) as (x, y) -> (B, ..., C): ``grid_sample`` of the normalised map,
        bilinear with aligned corners, zero outside the map."""
        h, w = self.size
        x, y = pos[..., 0], pos[..., 1]
        x0, y0 = torch.floor(x), torch.floor(y)
        lx, ly = x - x0, y - y0
        x0, y0 = x0.long(), y0.long()

        def corner(yy: torch.Tensor, xx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
            inside = ((yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)).to(pos.dtype)
            return self.at(yy.clamp(0, h - 1), xx.clamp(0, w - 1)) * (inside * weight).unsqueeze(-1)

        return (corner(y0, x0, (1 - ly) * (1 - lx)) + corner(y0, x0 + 1, (1 - ly) * lx)
                + corner(y0 + 1, x0, ly * (1 - lx)) + corner(y0 + 1, x0 + 1, ly * lx))


class BatchedSDDH(SDDH):
    def forward(self, parts: list[torch.Tensor], keypoints: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``parts`` (B, C_i, H, W) whose channel concatenation, L2-normalised per pixel, is upstream's feature map;
        ``keypoints`` (B, K, 2) in [-1, 1] -> (B, K, D) descriptors."""
        features = _PixelFeatures(parts)
        b, k = keypoints.shape[:2]
        ps = self.kernel_size
        # H and W from the shape at run time (Shape ops), not trace-time constants: H and W stay dynamic
        wh = size_wh(parts[0]) - 1  # (W - 1, H - 1)
        max_offset = (wh + 1).max() / 4.0
        kpts_wh = (keypoints / 2 + 0.5) * wh  # (B, K, 2) pixels

        # Upstream get_patches: corner = trunc(long(xy) - ps/2 + 1), clamped to the map.
        corner = torch.minimum(torch.floor(torch.floor(kpts_wh) - ps / 2 + 1).clamp(min=0), wh - ps).long()
        steps = torch.arange(ps, device=keypoints.device)
        ys = (corner[..., 1].unsqueeze(-1) + steps).unsqueeze(-1).expand(-1, -1, ps, ps)  # (B, K, ps, ps)
        xs = (corner[..., 0].unsqueeze(-1) + steps).unsqueeze(-2).expand(-1, -1, ps, ps)
        patch = features.at(ys, xs)  # (B, K, ps, ps, C)
        patch = patch.reshape(b * k, ps, ps, -1).permute(0, 3, 1, 2)  # (B*K, C, ps, ps)

        offset = torch.maximum(torch.minimum(self.offset_conv(patch), max_offset), -max_offset)  # (B*K, 2M, 1, 1)
        offset = offset.reshape(b, k, 2, self.n_pos).permute(0, 1, 3, 2)  # (B, K, M, 2)
        samples = features.bilinear(kpts_wh.unsqueeze(2) + offset)  # (B, K, M, C)
        samples = F.selu(samples @ self.sf_conv.weight.flatten(1).t())  # the 1x1 convolution, no bias
        descriptors = samples.flatten(2) @ self.agg_weights.flatten(0, 1)  # einsum "bncp,pcd->bnd"
        return F.normalize(descriptors, p=2.0, dim=-1)


def apply(model: torch.nn.Module, settings: Any) -> int:
    for module in model.modules():
        if type(module) is SDDH and (module.mask or module.conv2d):
            raise NotImplementedError("aliked_batched_sddh supports the released ALIKED heads (mask=False, conv2d=False)")
    return swap_class(model, SDDH, BatchedSDDH)
