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
``softmax(q k^T / sqrt(d)) v`` with MatMul ops: the MatMul-Softmax-MatMul pattern that
onnxruntime's attention fusion and TensorRT's MHA fusion both recognise. Every axis is
named positively.

Parity: tests/test_patches.py::test_static_heads_match_upstream (exact to float rounding on
random inputs) and tests/test_build.py::test_parity_of_bundled_graphs_with_kornia.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from kornia.feature.lightglue import CrossBlock, SelfBlock

from patches import swap_class

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


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over (B, heads, N, d) tensors."""
    scale = q.shape[-1] ** -0.5
    return torch.matmul(F.softmax(torch.matmul(q, k.transpose(2, 3)) * scale, dim=3), v)


class StaticHeadsSelfBlock(SelfBlock):
    def forward(self, x: torch.Tensor, encoding: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.Wqkv(x).reshape(b, n, self.num_heads, self.head_dim, 3).permute(4, 0, 2, 1, 3)
        q, k, v = qkv[0], qkv[1], qkv[2]
        context = attention(rotary(encoding, q), rotary(encoding, k), v)
        message = self.out_proj(merge_heads(context))
        return x + self.ffn(torch.cat([x, message], 2))


class StaticHeadsCrossBlock(CrossBlock):
    def forward(
        self, x0: torch.Tensor, x1: torch.Tensor, mask: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        qk0, qk1 = split_heads(self.to_qk(x0), self.heads), split_heads(self.to_qk(x1), self.heads)
        v0, v1 = split_heads(self.to_v(x0), self.heads), split_heads(self.to_v(x1), self.heads)
        qk0, qk1 = qk0 * self.scale**0.5, qk1 * self.scale**0.5
        sim = torch.matmul(qk0, qk1.transpose(2, 3))
        m0 = torch.matmul(F.softmax(sim, dim=3), v1)
        m1 = torch.matmul(F.softmax(sim.transpose(2, 3), dim=3), v0)
        m0, m1 = self.to_out(merge_heads(m0)), self.to_out(merge_heads(m1))
        x0 = x0 + self.ffn(torch.cat([x0, m0], 2))
        x1 = x1 + self.ffn(torch.cat([x1, m1], 2))
        return x0, x1


def apply(model: torch.nn.Module, settings: Any) -> int:
    return swap_class(model, SelfBlock, StaticHeadsSelfBlock) + swap_class(model, CrossBlock, StaticHeadsCrossBlock)
