"""LightGlue positional encoding without ``repeat_interleave``.

Upstream: ``kornia.feature.lightglue.LearnableFourierPositionalEncoding.forward`` stacks
cosines and sines into a rank-5 tensor ``(2, B, 1, N, F/2)`` and doubles the last axis with
``repeat_interleave(2, dim=-1)``.

Why it fails: with torch 2.13's TorchScript exporter, the ``repeat_interleave`` symbolic
rewrites its ``dim=-1`` constant to ``4`` in place; constants are pooled across the graph,
so every other ``-1`` in the graph (reshape sizes, softmax and reduction axes) becomes ``4``
too, and onnxruntime rejects the model (``Softmax axis must be in [-4, 3], actual 4``,
``MatMul incompatible dimensions``). TensorRT also has no native ``repeat_interleave``; it
lowers to Tile/Gather chains.

Replacement: ``unsqueeze(-1)``, ``expand`` to 2 and ``reshape``: the same interleaving
(``[c0, c0, c1, c1, ...]``) with Unsqueeze/Expand/Reshape, and explicit positive axes.

Parity: tests/test_patches.py::test_posenc_expand_matches_upstream (exact) and
tests/test_build.py::test_parity_of_bundled_graphs_with_kornia.
"""

from __future__ import annotations

from typing import Any

import torch
from kornia.feature.lightglue import LearnableFourierPositionalEncoding

from glueforge.patches import swap_class

TARGET = LearnableFourierPositionalEncoding


class ExpandPositionalEncoding(LearnableFourierPositionalEncoding):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, N, M) -> encoding (2, B, 1, N, F), cosines then sines, each value twice."""
        projected = self.Wr(x)  # (B, N, F/2)
        b, n, f = projected.shape
        emb = torch.stack([torch.cos(projected), torch.sin(projected)], 0).unsqueeze(2)  # (2, B, 1, N, F/2)
        return emb.unsqueeze(5).expand(2, b, 1, n, f, 2).reshape(2, b, 1, n, 2 * f)


def apply(model: torch.nn.Module, settings: Any) -> int:
    return swap_class(model, LearnableFourierPositionalEncoding, ExpandPositionalEncoding)
