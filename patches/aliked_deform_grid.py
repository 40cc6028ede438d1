"""ALIKED's deformable convolution with its sampling grid built from integer ranges.

Upstream: ``kornia.feature.aliked.DeformableConv2d.forward`` predicts offsets and calls kornia's
pure-PyTorch ``deform_conv2d``, which builds the base sampling grid with
``torch.arange(H_out, dtype=input.dtype)`` and ``torch.arange(W_out, dtype=input.dtype)``.

Why it fails the target: with H and W dynamic those ranges are no longer folded into
constants; they export as ONNX ``Range`` on float inputs computed from the feature map's
shape. TensorRT-RTX 1.7 (strongly typed, FP16 graph) refuses to build the network: its Myelin
compiler lowers the float Range with an FP16 cast of the shape and then fails its own type
check ("Input 0's element type (float) differs from input 1's element type (half)",
``/extractor/block4/conv2/Range``), whether or not the Range is kept in FP32.

Replacement: the same computation with the ranges made in int64 (``Range`` on integers, which
TensorRT supports) and cast to the input's dtype. Integer positions are exact in float32
and float16 (feature maps are far below 2048 wide), so the grid is upstream's bit for bit;
the offset clamp, the bilinear sampling (kornia's ``_bilinear_sample``), the DCNv2 mask and the
grouped product are upstream's.

Parity: tests/test_patches.py::test_deform_grid_equals_upstream (exact, random inputs, several
sizes) and the ALIKED parity tests (tests/test_aliked_variants.py, tests/test_build.py).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from kornia.feature.aliked.aliked import DeformableConv2d

from glueforge.patches import swap_class

TARGET = DeformableConv2d


def deform_conv2d_int_grid(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                           stride: int, padding: int, dilation: int, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """kornia's ``deform_conv2d`` (square stride, padding and dilation) with integer grid ranges.

    ``x`` (B, C_in, H, W), ``offset`` (B, 2 G kH kW, H', W') interleaved (dy, dx), ``weight``
    (C_out, C_in / groups, kH, kW), ``mask`` (B, G kH kW, H', W') or None -> (B, C_out, H', W').
    """
    b, c_in, h_in, w_in = x.shape
    c_out, c_in_per_group, kh, kw = weight.shape
    groups = c_in // c_in_per_group
    k = kh * kw
    n_off_grps = offset.shape[1] // (2 * k)
    h_out = (h_in + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    w_out = (w_in + 2 * padding - dilation * (kw - 1) - 1) // stride + 1

    offset = offset.reshape(b, n_off_grps, 2 * k, h_out, w_out)
    off_y, off_x = offset[:, :, 0::2], offset[:, :, 1::2]
    if mask is not None:
        mask = mask.reshape(b, n_off_grps, k, h_out, w_out)

    # integer sampling base (output pixel and kernel tap): Range on int64, no float Range
    base_h = (torch.arange(h_out, device=x.device) * stride - padding).reshape(1, 1, 1, h_out, 1)
    base_w = (torch.arange(w_out, device=x.device) * stride - padding).reshape(1, 1, 1, 1, w_out)
    taps = torch.arange(k, device=x.device)
    kern_h = (torch.div(taps, kw, rounding_mode="floor") * dilation).reshape(1, 1, k, 1, 1)
    kern_w = ((taps % kw) * dilation).reshape(1, 1, k, 1, 1)
    # floor(base + offset) = base + floor(offset) and the fractions are the offsets': the interpolation
    # weights come from the small offsets, not from absolute positions (FP16 steps 1/16 px at 64..128 px)
    floor_y, floor_x = torch.floor(off_y), torch.floor(off_x)
    sampled = _bilinear_sample_split(x, base_h + kern_h + floor_y.long(), base_w + kern_w + floor_x.long(),
                                     off_y - floor_y, off_x - floor_x, n_off_grps, c_in // n_off_grps)
    if mask is not None:
        sampled = sampled * mask.unsqueeze(2)
    sampled = sampled.reshape(b, groups, c_in_per_group, k, h_out * w_out)
    out = torch.einsum("bgckn,gock->bgon", sampled, weight.reshape(groups, c_out // groups, c_in_per_group, k))
    out = out.reshape(b, c_out, h_out, w_out)
    return out if bias is None else out + bias.reshape(1, -1, 1, 1)


def _bilinear_sample_split(x: torch.Tensor, h0: torch.Tensor, w0: torch.Tensor, lh: torch.Tensor, lw: torch.Tensor,
                           n_off_grps: int, c_per_off_grp: int) -> torch.Tensor:
    """kornia's ``_bilinear_sample`` (torchvision's corner-validity rule, zero outside) with the sample
    positions given as integer corners ``h0``, ``w0`` (B, G, K, H', W') and fractions ``lh``, ``lw`` in [0, 1)
    -> (B, G, C / G, K, H', W')."""
    b, _, h_in, w_in = x.shape
    h1, w1 = h0 + 1, w0 + 1

    def valid(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return ((h >= 0) & (h < h_in) & (w >= 0) & (w < w_in)).to(x.dtype).unsqueeze(2)

    flat = x.reshape(b, n_off_grps, c_per_off_grp, h_in * w_in)
    k, h_out, w_out = h0.shape[2:]

    def gather(hh: torch.Tensor, ww: torch.Tensor) -> torch.Tensor:
        index = (hh.clamp(0, h_in - 1) * w_in + ww.clamp(0, w_in - 1)).reshape(b, n_off_grps, 1, k * h_out * w_out)
        return torch.gather(flat, 3, index.expand(-1, -1, c_per_off_grp, -1)).reshape(b, n_off_grps, c_per_off_grp, k, h_out, w_out)

    lh, lw = lh.unsqueeze(2), lw.unsqueeze(2)
    return (gather(h0, w0) * valid(h0, w0) * (1 - lh) * (1 - lw) + gather(h0, w1) * valid(h0, w1) * (1 - lh) * lw
            + gather(h1, w0) * valid(h1, w0) * lh * (1 - lw) + gather(h1, w1) * valid(h1, w1) * lh * lw)


class IntGridDeformableConv2d(DeformableConv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C_in, H, W) -> (B, C_out, H', W'), as upstream."""
        h, w = x.shape[2:]
        max_offset = max(h, w) / 4.0
        out = self.offset_conv(x)
        if self.mask:
            o1, o2, mask_w = torch.chunk(out, 3, dim=1)
            offset = torch.cat((o1, o2), dim=1)
            mask_w = torch.sigmoid(mask_w)
        else:
            offset, mask_w = out, None
        offset = offset.clamp(-max_offset, max_offset)
        return deform_conv2d_int_grid(x, offset, self.regular_conv.weight, self.regular_conv.bias, self.stride,
                                      self.padding, self.dilation, mask_w)


def apply(model: torch.nn.Module, settings: Any) -> int:
    return swap_class(model, DeformableConv2d, IntGridDeformableConv2d)
