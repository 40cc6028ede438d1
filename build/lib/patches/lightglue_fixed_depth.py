"""LightGlue forward at fixed depth returning dense match tensors.

Upstream: ``kornia.feature.LightGlue._forward`` reads a dict of per-image dicts, may stop
early after any layer (``depth_confidence``), prunes points between layers
(``width_confidence``, ``index_select`` on data-dependent indices), and builds the match
lists with a Python loop over the batch and ``torch.where``.

Why it fails: early stopping is data-dependent control flow that tracing freezes to the
path of the example input; pruning gives data-dependent shapes; dicts and lists have no
graph representation; the loop ties the graph to the traced batch size.

Replacement: tensors in, tensors out; every one of the ``n_layers`` transformer layers runs
(upstream's behaviour with ``depth_confidence=-1, width_confidence=-1``), then the last
layer's assignment and upstream's ``filter_matches``. Outputs are ``matches0`` (B, M) int64
(-1 for unmatched) and ``mscores0`` (B, M). The image size is a constant of the graph.

Parity: tests/test_build.py::test_parity_of_bundled_graphs_with_kornia (matches reproduced against kornia's
LightGlue with ``depth_confidence=-1, width_confidence=-1``).
"""

from __future__ import annotations

from typing import Any

import torch
from kornia.feature.lightglue import LightGlue, filter_matches

from patches import swap_class

TARGET = LightGlue


class FixedDepthLightGlue(LightGlue):
    image_wh: tuple[int, int]

    def forward(  # type: ignore[override]
        self, kpts0: torch.Tensor, kpts1: torch.Tensor, desc0: torch.Tensor, desc1: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``kpts*`` (B, K, 2) pixels, ``desc*`` (B, K, D) -> matches0 (B, K) int64, mscores0 (B, K)."""
        w, h = self.image_wh
        shift = torch.tensor([w / 2.0, h / 2.0], dtype=kpts0.dtype, device=kpts0.device)
        scale = max(w, h) / 2.0
        kpts0, kpts1 = (kpts0 - shift) / scale, (kpts1 - shift) / scale
        desc0, desc1 = self.input_proj(desc0), self.input_proj(desc1)
        encoding0, encoding1 = self.posenc(kpts0), self.posenc(kpts1)
        for layer in self.transformers:
            desc0, desc1 = layer(desc0, desc1, encoding0, encoding1)
        scores, _ = self.log_assignment[-1](desc0, desc1)
        matches0, _, mscores0, _ = filter_matches(scores, self.conf.filter_threshold)
        return matches0, mscores0


def apply(model: torch.nn.Module, settings: Any) -> int:
    height, width = settings.image_size
    return swap_class(model, LightGlue, FixedDepthLightGlue, image_wh=(int(width), int(height)))
