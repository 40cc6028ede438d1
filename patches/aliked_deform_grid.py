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
TensorRT supports). Integer positions are exact in float32 and float16 (feature maps are far
below 2048 wide), so the grid is upstream's bit for bit; the offset clamp, the bilinear weights
and torchvision's corner-validity rule (kornia's ``_bilinear_sample``) and the DCNv2 mask are
upstream's. The samples are read as whole pixel rows of the channels-last map (one ``Gather`` per
corner, ``(B, H', W', k, C)``), and the product with the kernel is one ``MatMul`` over taps and
channels: kornia's per-channel gathers export as ``GatherElements`` over an index ``Expand``-ed to
every channel: ALIKED-n16's whole extractor took 352 ms with those against 293 ms with the rows
(480x640, onnxruntime's CPU provider, one thread, side by side: benchmarks/op_profile.py). The sums run
in another order: float32 rounding, not bits.

Parity: tests/test_patches.py::test_deform_grid_equals_upstream (to float32 rounding, random inputs,
several sizes) and the ALIKED parity tests (tests/test_aliked_variants.py, tests/test_build.py).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from kornia.feature.aliked.aliked import DeformableConv2d

from glueforge.patches import swap_class

TARGET = DeformableConv2d


def deform_conv2d_int_grid(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                           stride: int, padding: int, dilation: int, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """kornia's ``deform_conv2d`` (one offset group, ``groups=1``, square stride, padding and dilation) with
    integer grid ranges, sampling whole pixel rows.

    ``x`` (B, C_in, H, W), ``offset`` (B, 2 kH kW, H', W') interleaved (dy, dx), ``weight``
    (C_out, C_in, kH, kW), ``mask`` (B, kH kW, H', W') or None -> (B, C_out, H', W').
    """
    b, c_in, h_in, w_in = x.shape
    c_out, _, kh, kw = weight.shape
    k = kh * kw
    h_out = (h_in + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    w_out = (w_in + 2 * padding - dilation * (kw - 1) - 1) // stride + 1

    offset = offset.reshape(b, k, 2, h_out, w_out).permute(0, 3, 4, 1, 2)  # (B, H', W', k, (dy, dx))
    off_y, off_x = offset[..., 0], offset[..., 1]
    # integer sampling base (output pixel and kernel tap): Range on int64, no float Range
    base_h = (torch.arange(h_out, device=x.device) * stride - padding).reshape(1, h_out, 1, 1)
    base_w = (torch.arange(w_out, device=x.device) * stride - padding).reshape(1, 1, w_out, 1)
    taps = torch.arange(k, device=x.device)
    kern_h = (torch.div(taps, kw, rounding_mode="floor") * dilation).reshape(1, 1, 1, k)
    kern_w = ((taps % kw) * dilation).reshape(1, 1, 1, k)
    # floor(base + offset) = base + floor(offset) and the fractions are the offsets': the interpolation
    # weights come from the small offsets, not from absolute positions (FP16 steps 1/16 px at 64..128 px)
    floor_y, floor_x = torch.floor(off_y), torch.floor(off_x)
    sampled = _bilinear_rows(x, base_h + kern_h + floor_y.long(), base_w + kern_w + floor_x.long(),
                             off_y - floor_y, off_x - floor_x)  # (B, H', W', k, C_in)
    if mask is not None:
        sampled = sampled * mask.reshape(b, k, h_out, w_out).permute(0, 2, 3, 1).unsqueeze(-1)
    # the convolution: (B, H' W', k C_in) @ (k C_in, C_out), taps major as the samples
    out = sampled.reshape(b, h_out * w_out, k * c_in) @ weight.permute(2, 3, 1, 0).reshape(k * c_in, c_out)
    out = out.transpose(1, 2).reshape(b, c_out, h_out, w_out)
    return out if bias is None else out + bias.reshape(1, -1, 1, 1)


def _bilinear_rows(x: torch.Tensor, h0: torch.Tensor, w0: torch.Tensor, lh: torch.Tensor, lw: torch.Tensor) -> torch.Tensor:
    """kornia's ``_bilinear_sample`` (torchvision's corner-validity rule, zero outside) of ``x`` (B, C, H, W) at
    integer corners ``h0``, ``w0`` (B, ...) and fractions ``lh``, ``lw`` in [0, 1) -> (B, ..., C): each corner is
    one ``Gather`` of whole pixel rows (C values) of the channels-last map, its weight one value per sample."""
    b, c, h_in, w_in = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(b * h_in * w_in, c)
    first = (torch.arange(b, device=x.device) * (h_in * w_in)).reshape([b] + [1] * (h0.dim() - 1))

    def corner(hh: torch.Tensor, ww: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        inside = ((hh >= 0) & (hh < h_in) & (ww >= 0) & (ww < w_in)).to(x.dtype)
        index = first + hh.clamp(0, h_in - 1) * w_in + ww.clamp(0, w_in - 1)
        return rows[index] * (inside * weight).unsqueeze(-1)

    return (corner(h0, w0, (1 - lh) * (1 - lw)) + corner(h0, w0 + 1, (1 - lh) * lw)
            + corner(h0 + 1, w0, lh * (1 - lw)) + corner(h0 + 1, w0 + 1, lh * lw))


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
    for module in model.modules():
        if type(module) is DeformableConv2d and module.regular_conv.groups != 1:
            raise NotImplementedError("aliked_deform_grid supports ALIKED's deformable convolutions (groups=1)")
    return swap_class(model, DeformableConv2d, IntGridDeformableConv2d)
