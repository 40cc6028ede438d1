"""LightGlue match assignment built by concatenation instead of in-place slice writes.

Upstream: ``kornia.feature.lightglue.sigmoid_log_double_softmax`` allocates an
``(B, M+1, N+1)`` tensor with ``new_full`` and fills it with three in-place slice
assignments (``scores[:, :m, :n] = ...``, the dustbin row and the dustbin column).

Why it fails the targets: in-place slice assignment exports as ``ScatterND`` on a
``ConstantOfShape`` whose shape is computed at run time. TensorRT handles ScatterND poorly
(slow, and refused in some versions for this pattern), and the dynamic ``ConstantOfShape``
keeps shape tensors alive in the engine.

Replacement: the same three blocks joined with two ``Concat`` ops; the corner element is 0,
as upstream's fill value. The similarity is a ``MatMul`` instead of an ``Einsum``, and every
transpose names its axes positively (see ``lightglue_posenc_expand`` for why).

Parity: tests/test_patches.py::test_concat_assignment_matches_upstream (random inputs, exact)
and tests/test_build.py::test_parity_of_bundled_graphs_with_kornia (matches against kornia's LightGlue).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from kornia.feature.lightglue import MatchAssignment

from patches import swap_class

TARGET = MatchAssignment


def concat_log_double_softmax(sim: torch.Tensor, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
    """``sim`` (B, M, N), ``z0`` (B, M, 1), ``z1`` (B, N, 1) -> log assignment (B, M+1, N+1)."""
    certainties = F.logsigmoid(z0) + F.logsigmoid(z1).transpose(1, 2)
    scores0 = F.log_softmax(sim, 2)
    scores1 = F.log_softmax(sim.transpose(1, 2), 2).transpose(1, 2)
    inner = scores0 + scores1 + certainties
    dustbin_col = F.logsigmoid(-z0)  # (B, M, 1)
    dustbin_row = torch.cat([F.logsigmoid(-z1).transpose(1, 2), torch.zeros_like(z1[:, :1, :])], dim=2)
    return torch.cat([torch.cat([inner, dustbin_col], dim=2), dustbin_row], dim=1)


class ConcatMatchAssignment(MatchAssignment):
    def forward(self, desc0: torch.Tensor, desc1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mdesc0, mdesc1 = self.final_proj(desc0), self.final_proj(desc1)
        d = mdesc0.shape[-1]
        mdesc0, mdesc1 = mdesc0 / d**0.25, mdesc1 / d**0.25
        sim = torch.matmul(mdesc0, mdesc1.transpose(1, 2))
        scores = concat_log_double_softmax(sim, self.matchability(desc0), self.matchability(desc1))
        return scores, sim


def apply(model: torch.nn.Module, settings: Any) -> int:
    return swap_class(model, MatchAssignment, ConcatMatchAssignment)
