"""ALIKED's feature upsampling as a GridSample over a grid made from the map's shape.

Upstream: ``kornia.feature.ALIKED`` upsamples its three coarse feature maps to full resolution
with ``nn.Upsample(scale_factor=2 | 8 | 32, mode="bilinear", align_corners=True)``.

Why it fails the target: exported with H and W dynamic, that is an ONNX ``Resize``
(``align_corners``, constant ``scales``, or ``sizes`` from the shape: both tried). TensorRT-RTX
1.7 refuses to build ALIKED's graph with it: its Myelin compiler fails shape inference of the
Resize ("Error during shape inference of /extractor/upsample2/Resize_output_0 ...
coordinate_transformation=align_corners"), in FP16 and in FP32 alike. (A small graph with the
same pooling, Selu and upsampling builds; the full ALIKED graph does not. Static H and W built.)

Replacement: the same bilinear interpolation as a ``GridSample`` with ``align_corners=True`` over
the output pixel grid ``2 i / (H s - 1) - 1`` (x likewise), built from integer ranges of the
output size read at run time. With ``align_corners`` both map output pixel i to input position
``i (H - 1) / (H s - 1)``, so this is upstream's interpolation; the values agree to float32
rounding of the grid (max difference 2e-5 on maps of unit variance), and the grid stays in FP32 in
FP16 graphs (``glueforge.fp16.keypoint_chain``).

Parity: tests/test_patches.py::test_upsample_grid_equals_upstream and the ALIKED parity tests
(tests/test_aliked_variants.py, tests/test_build.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from glueforge.patches import swap_class

TARGET = nn.Upsample


def upsample_grid(x: torch.Tensor, scale: int) -> torch.Tensor:
    """``x`` (B, C, H, W) -> (B, C, H scale, W scale), bilinear with aligned corners, by ``grid_sample``."""
    b, _, h, w = x.shape
    hh, ww = h * scale, w * scale
    gy = torch.arange(hh, device=x.device).to(x.dtype) / (hh - 1) * 2 - 1
    gx = torch.arange(ww, device=x.device).to(x.dtype) / (ww - 1) * 2 - 1
    grid = torch.stack([gx.view(1, ww).expand(hh, ww), gy.view(hh, 1).expand(hh, ww)], dim=-1)
    return F.grid_sample(x, grid.unsqueeze(0).expand(b, hh, ww, 2), mode="bilinear", align_corners=True)


class GridUpsample(nn.Upsample):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``x`` (B, C, H, W) -> (B, C, H s, W s), ``s`` the module's integer scale factor."""
        return upsample_grid(x, int(self.scale_factor))


def apply(model: torch.nn.Module, settings: Any) -> int:
    for module in model.modules():
        if type(module) is nn.Upsample and (module.size is not None or float(module.scale_factor) % 1
                                            or module.mode != "bilinear" or not module.align_corners):
            raise ValueError(f"aliked_upsample_grid expects bilinear, aligned corners, integer scale factors: {module}")
    return swap_class(model, nn.Upsample, GridUpsample)
