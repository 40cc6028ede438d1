"""XFeat backbone with the 8x8 space-to-depth as Reshape/Transpose instead of ``Tensor.unfold``.

Upstream: ``kornia.feature.xfeat.XFeatModel._unfold2d`` cuts the normalised grey image into
8 x 8 cells with two ``Tensor.unfold`` calls and stacks each cell's 64 pixels as channels
(channel ``dy * 8 + dx``) for the keypoint head.

Why it fails the targets: torch's TorchScript exporter has no single ONNX op for
``Tensor.unfold``; at opset 17 it lowers each call to one Slice + Unsqueeze + Transpose per
window and a Concat (for a 480 x 640 input: 140 Slice, 140 Unsqueeze, 141 Transpose and 562
Constant nodes), a graph that grows with the input size and that TensorRT runs as hundreds
of copy kernels. It is numerically right in onnxruntime, just wasteful.

Replacement: the same rearrangement as one Reshape, one Transpose and one Reshape
(``(B, C, H, W) -> (B, C, H/8, 8, W/8, 8) -> (B, C, 8, 8, H/8, W/8) -> (B, 64 C, H/8, W/8)``),
bit-identical values. The result is contiguous where upstream's is a strided view, so CPU
torch sums the keypoint head's 1x1 convolutions in another order: its logits move by up to
4e-6 and the final scores by up to 3e-7 (no keypoint changes on the test photographs). Needs
H and W divisible by the window, as upstream does.

Parity: tests/test_xfeat.py::test_xfeat_parity_with_kornia (real weights, real photographs,
against kornia's unpatched ``XFeat.detectAndCompute``).
"""

from __future__ import annotations

from typing import Any

import torch
from kornia.feature.xfeat import XFeatModel

from glueforge.patches import swap_class

TARGET = XFeatModel


class SpaceToDepthXFeatModel(XFeatModel):
    def _unfold2d(self, x: torch.Tensor, ws: int = 2) -> torch.Tensor:
        """``x`` (B, C, H, W) -> (B, C * ws * ws, H / ws, W / ws), channel ``c * ws^2 + dy * ws + dx``."""
        b, c, h, w = x.shape
        x = x.reshape(b, c, h // ws, ws, w // ws, ws).permute(0, 1, 3, 5, 2, 4)
        return x.reshape(b, c * ws * ws, h // ws, w // ws)


def apply(model: torch.nn.Module, settings: Any) -> int:
    return swap_class(model, XFeatModel, SpaceToDepthXFeatModel)
