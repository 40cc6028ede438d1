"""LightGlue attention blocks with explicit head reshapes and plain attention.

Upstream: ``kornia.feature.lightglue.SelfBlock`` / ``CrossBlock`` split heads with
``Tensor.unflatten(-1, (heads, -1, 3))``, rotate with ``rotate_half`` (again ``unflatten``),
and run ``F.scaled_dot_product_attention`` (self) or two einsums (cross).

Why it fails the targets: ``scaled_dot_product_attention`` and broadcast ``Einsum`` export
as op chains that neither onnxruntime's attention fusion nor TensorRT's MHA fusion match,
and the Ellipsis selects (``qkv[..., 0]``) and ``-1`` axes on rank-5 tensors are where torch
2.13's TorchScript exporter mis-normalises axes (see ``lightglue_posenc_expand``).

Replacement: the same computation with ``reshape`` to explicit ``(B, N, heads, head_dim)``
shapes, ``rotate_half`` by reshape to ``(..., head_dim / 2, 2)``, and attention written as
``softmax(q k^T / sqrt(d) [+ bias]) v`` with MatMul ops: the MatMul-Softmax-MatMul pattern
(with an optional Add before the Softmax) that onnxruntime's attention fusion and TensorRT's
MHA fusion both recognise. Every axis is named positively.

Padding: upstream masks with a boolean ``mask`` (``masked_fill(-inf)`` then ``nan_to_num``);
the patched blocks refuse it and take instead an additive key bias, ``bias`` (self) or
``bias0`` / ``bias1`` (cross, the keys of image 0 / image 1), each (B, 1, 1, N) float: 0 for a
real key, ``PADDING_BIAS`` (-1e4, finite so FP16 holds it and a query with no real key gets
a uniform softmax rather than NaN) for a padded one. It is added to the scaled scores before
the Softmax (``Add``), so ``exp`` of a padded key underflows to exactly 0 and a real query
reads only real keys. ``lightglue_fixed_depth`` builds the biases from the keypoints.

Parity: tests/test_patches.py::test_static_heads_match_upstream (exact to float rounding on
random inputs), tests/test_patches.py::test_static_heads_key_bias_matches_upstream_mask (the
bias against upstream's boolean mask) and tests/test_build.py::test_parity_of_bundled_graphs_with_kornia.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from kornia.feature.lightglue import CrossBlock, SelfBlock

from glueforge.patches import swap_class

TARGET = (SelfBlock, CrossBlock)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, heads * d) -> (B, heads, N, d)."""
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) -> (B, N, heads * d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def rotary(freqs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Upstream ``apply_cached_rotary_emb`` with ``rotate_half`` as an explicit reshape."""
    b, h, n, d = t.shape
    pairs = t.reshape(b, h, n, d // 2, 2)
    rotated = torch.stack((-pairs.select(4, 1), pairs.select(4, 0)), dim=4).reshape(b, h, n, d)
    return t * freqs[0] + rotated * freqs[1]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v over (B, heads, N, d) tensors; ``bias`` broadcasts to (B, heads, N_q, N_k)."""
    scale = q.shape[-1] ** -0.5
    scores = torch.matmul(q, k.transpose(2, 3)) * scale
    if bias is not None:
        scores = scores + bias
    return torch.matmul(F.softmax(scores, dim=3), v)


def _refuse_boolean_mask(mask: Optional[torch.Tensor]) -> None:
    if mask is not None:
        raise NotImplementedError("the patched LightGlue blocks take an additive key bias (bias=...), "
                                  "not upstream's boolean mask")


class StaticHeadsSelfBlock(SelfBlock):
    def forward(self, x: torch.Tensor, encoding: torch.Tensor, mask: Optional[torch.Tensor] = None,
                bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x`` (B, N, D), ``encoding`` (2, B, 1, N, head_dim), ``bias`` (B, 1, 1, N) key bias -> (B, N, D)."""
        _refuse_boolean_mask(mask)
        b, n, _ = x.shape
        qkv = self.Wqkv(x).reshape(b, n, self.num_heads, self.head_dim, 3).permute(4, 0, 2, 1, 3)
        q, k, v = qkv[0], qkv[1], qkv[2]
        context = attention(rotary(encoding, q), rotary(encoding, k), v, bias)
        message = self.out_proj(merge_heads(context))
        return x + self.ffn(torch.cat([x, message], 2))


class StaticHeadsCrossBlock(CrossBlock):
    def forward(
        self, x0: torch.Tensor, x1: torch.Tensor, mask: Optional[torch.Tensor] = None,
        bias0: Optional[torch.Tensor] = None, bias1: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x0`` (B, M, D), ``x1`` (B, N, D); ``bias0`` (B, 1, 1, M) and ``bias1`` (B, 1, 1, N) are the key
        biases of image 0 and image 1 (both or neither) -> updated ``x0``, ``x1``."""
        _refuse_boolean_mask(mask)
        qk0, qk1 = split_heads(self.to_qk(x0), self.heads), split_heads(self.to_qk(x1), self.heads)
        v0, v1 = split_heads(self.to_v(x0), self.heads), split_heads(self.to_v(x1), self.heads)
        qk0, qk1 = qk0 * self.scale**0.5, qk1 * self.scale**0.5
        sim = torch.matmul(qk0, qk1.transpose(2, 3))
        sim01, sim10 = sim, sim.transpose(2, 3)
        if bias0 is not None and bias1 is not None:
            sim01, sim10 = sim01 + bias1, sim10 + bias0
        elif bias0 is not None or bias1 is not None:
            raise ValueError("the cross block takes the key biases of both images or of neither")
        m0 = torch.matmul(F.softmax(sim01, dim=3), v1)
        m1 = torch.matmul(F.softmax(sim10, dim=3), v0)
        m0, m1 = self.to_out(merge_heads(m0)), self.to_out(merge_heads(m1))
        x0 = x0 + self.ffn(torch.cat([x0, m0], 2))
        x1 = x1 + self.ffn(torch.cat([x1, m1], 2))
        return x0, x1


def apply(model: torch.nn.Module, settings: Any) -> int:
    return swap_class(model, SelfBlock, StaticHeadsSelfBlock) + swap_class(model, CrossBlock, StaticHeadsCrossBlock)
