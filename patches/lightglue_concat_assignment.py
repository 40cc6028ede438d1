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

Padding: upstream has none here (its padded path slices the descriptors back to the real
points before the assignment). The patched assignment takes optional per-point biases
``bias0`` (B, M) and ``bias1`` (B, N): 0 for a real point, -1e4 (``lightglue_fixed_depth.PADDING_BIAS``)
for a padded one. The row softmax adds ``bias1`` to the similarity (padded columns weigh
exactly 0 once ``exp`` underflows), the column softmax adds ``bias0`` (padded rows likewise), so
the double softmax of the real rows and columns is upstream's on the unpadded set. Both biases
are then added to the inner block: every log-softmax and log-sigmoid term is <= 0, so an entry
with a padded row or column is <= -1e4, its ``exp`` is 0 in FP32 and FP16, and
``filter_matches`` can neither pick it over a real entry nor score it above any threshold > 0
(also when one image has no real point at all). The dustbins are upstream's per point
(``logsigmoid(-z)``); ``filter_matches`` does not read them.

Parity: tests/test_patches.py::test_concat_assignment_matches_upstream (random inputs, exact),
tests/test_patches.py::test_masked_assignment_matches_upstream_on_real_points and
tests/test_build.py::test_parity_of_bundled_graphs_with_kornia (matches against kornia's LightGlue).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from kornia.feature.lightglue import MatchAssignment

from glueforge.patches import swap_class

TARGET = MatchAssignment


def concat_log_double_softmax(
    sim: torch.Tensor, z0: torch.Tensor, z1: torch.Tensor,
    bias0: Optional[torch.Tensor] = None, bias1: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``sim`` (B, M, N), ``z0`` (B, M, 1), ``z1`` (B, N, 1) -> log assignment (B, M+1, N+1).

    ``bias0`` (B, M) and ``bias1`` (B, N), both or neither, mask padded points (module docstring).
    """
    certainties = F.logsigmoid(z0) + F.logsigmoid(z1).transpose(1, 2)
    if bias0 is None and bias1 is None:
        scores0 = F.log_softmax(sim, 2)
        scores1 = F.log_softmax(sim.transpose(1, 2), 2).transpose(1, 2)
        inner = scores0 + scores1 + certainties
    elif bias0 is not None and bias1 is not None:
        row_bias, col_bias = bias0.unsqueeze(2), bias1.unsqueeze(1)  # (B, M, 1), (B, 1, N)
        scores0 = F.log_softmax(sim + col_bias, 2)
        scores1 = F.log_softmax(sim.transpose(1, 2) + row_bias.transpose(1, 2), 2).transpose(1, 2)
        inner = scores0 + scores1 + certainties + (row_bias + col_bias)
    else:
        raise ValueError("the assignment takes the padding biases of both images or of neither")
    dustbin_col = F.logsigmoid(-z0)  # (B, M, 1)
    dustbin_row = torch.cat([F.logsigmoid(-z1).transpose(1, 2), torch.zeros_like(z1[:, :1, :])], dim=2)
    return torch.cat([torch.cat([inner, dustbin_col], dim=2), dustbin_row], dim=1)


class ConcatMatchAssignment(MatchAssignment):
    def forward(  # type: ignore[override]
        self, desc0: torch.Tensor, desc1: torch.Tensor,
        bias0: Optional[torch.Tensor] = None, bias1: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``desc0`` (B, M, D), ``desc1`` (B, N, D), padding biases (B, M), (B, N) -> log assignment
        (B, M+1, N+1), similarity (B, M, N) (unmasked)."""
        mdesc0, mdesc1 = self.final_proj(desc0), self.final_proj(desc1)
        d = mdesc0.shape[-1]
        mdesc0, mdesc1 = mdesc0 / d**0.25, mdesc1 / d**0.25
        sim = torch.matmul(mdesc0, mdesc1.transpose(1, 2))
        scores = concat_log_double_softmax(sim, self.matchability(desc0), self.matchability(desc1), bias0, bias1)
        return scores, sim


def apply(model: torch.nn.Module, settings: Any) -> int:
    return swap_class(model, MatchAssignment, ConcatMatchAssignment)
