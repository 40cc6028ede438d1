"""LightGlue forward at fixed depth on padded keypoint sets, returning dense match tensors.

Upstream: ``kornia.feature.LightGlue._forward`` reads a dict of per-image dicts, may stop
early after any layer (``depth_confidence``), prunes points between layers
(``width_confidence``, ``index_select`` on data-dependent indices), and builds the match
lists with a Python loop over the batch and ``torch.where``. Each image has its own point
count; padding exists only on its ``compile`` path (``pad_to_length`` to static lengths, with
boolean masks, ``masked_fill(-inf)`` and ``nan_to_num`` in the attention).

Why it fails: early stopping is data-dependent control flow that tracing freezes to the
path of the example input; pruning gives data-dependent shapes; dicts and lists have no
graph representation; the loop ties the graph to the traced batch size. A static graph
needs K slots per image, so an image with fewer keypoints arrives padded, and ``-inf``
masking gives NaN rows (then ``nan_to_num``, which TensorRT lacks) and does not survive FP16.

Replacement: tensors in, tensors out; every one of the ``n_layers`` transformer layers runs
(upstream's behaviour with ``depth_confidence=-1, width_confidence=-1``), then the last
layer's assignment and upstream's ``filter_matches``. Outputs are ``matches0`` (B, M) int64
(-1 for unmatched) and ``mscores0`` (B, M).

- Image size: an input, ``size0`` / ``size1`` (B, 2) float32 = (width, height) of each image;
  keypoints are normalised per image as upstream's ``normalize_keypoints``:
  ``(kpts - size / 2) / (max(size) / 2)``. No H or W is a constant of the graph.
- Scale and orientation (``add_scale_ori``, the SIFT checkpoint): ``features`` are
  ``scales0, scales1, oris0, oris1`` (B, K); as upstream, each image's normalised keypoints
  get ``scales * scale_coef`` and ``oris`` (radians) appended before the positional encoding.
- Padding: a slot whose keypoint x is negative (``glueforge.schema.PADDING``) is padding.
  Each image's key bias is ``Where(Less(x, 0), -1e4, 0)`` (``PADDING_BIAS``; finite, so FP16
  holds it and no row of a softmax is all ``-inf``). It is ``Add``-ed to the attention scores
  before every ``Softmax``: self-attention of each image over its own keys, cross-attention
  0 -> 1 over the keys of image 1 and 1 -> 0 over the keys of image 0
  (``lightglue_static_heads``). ``exp`` of a biased score underflows to exactly 0, so a real
  point attends to real points only and computes what upstream computes on the unpadded set
  (the FFNs are per point); a padded point's own state is finite garbage that nothing real
  reads. The assignment (``lightglue_concat_assignment``) adds the biases to both softmaxes
  of the double softmax and again to its inner block, so every entry in a padded row or
  column is <= -1e4: never chosen over a real entry, ``exp`` = 0, never above the
  threshold. Padded slots therefore get ``matches0 = -1`` and ``mscores0 = 0``, and no real
  slot is matched to a padded one.

Parity: tests/test_padding.py::test_padded_matcher_equals_kornia_on_unpadded_sets (aliked
weights and the sift architecture, real and interleaved padded slots),
tests/test_padding.py::test_padding_survives_onnx_export_and_attention_fusion and
tests/test_build.py::test_parity_of_bundled_graphs_with_kornia (matches reproduced against kornia's
LightGlue with ``depth_confidence=-1, width_confidence=-1``).

Adaptive depth (``glueforge.depth``): ``layer`` runs one layer (layer 0 after the input
projection) with its confidence head, recomputing the positional encoding and key biases from
the keypoints so that each step graph takes only the matcher's inputs and the states; ``assign``
is the exit after any layer, with that layer's assignment head (upstream stops at layer i and
assigns with ``log_assignment[i]``). ``forward`` is the same layers and the last exit. Parity:
tests/test_depth.py::test_steps_equal_kornia_adaptive_depth (the steps, chained by the exit rule,
against kornia's LightGlue with ``depth_confidence`` on real weights: the same stop and matches).
"""

from __future__ import annotations

from typing import Any

import torch
from kornia.feature.lightglue import LightGlue, filter_matches

from glueforge.patches import swap_class

TARGET = LightGlue
PADDING_BIAS = -1.0e4  # added to the scores of a padded key: exp underflows to 0 in FP32 and FP16


def padding_bias(kpts: torch.Tensor) -> torch.Tensor:
    """``kpts`` (B, K, 2) px -> (B, K) float: ``PADDING_BIAS`` where x < 0 (a padded slot), else 0."""
    x = kpts[:, :, 0]
    return torch.where(x < 0, torch.full_like(x, PADDING_BIAS), torch.zeros_like(x))


def normalize_keypoints(kpts: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Upstream's ``normalize_keypoints``: ``kpts`` (B, K, 2) px, ``size`` (B, 2) (w, h) -> (B, K, 2)."""
    size = size.to(kpts.dtype)
    shift = size / 2
    scale = size.max(dim=1, keepdim=True).values / 2  # (B, 1)
    return (kpts - shift.unsqueeze(1)) / scale.unsqueeze(2)


class FixedDepthLightGlue(LightGlue):
    def forward(  # type: ignore[override]
        self, kpts0: torch.Tensor, kpts1: torch.Tensor, desc0: torch.Tensor, desc1: torch.Tensor,
        size0: torch.Tensor, size1: torch.Tensor, *features: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``kpts*`` (B, K, 2) px (x < 0: padding), ``desc*`` (B, K, D), ``size*`` (B, 2) (w, h) px,
        ``features`` (scales0, scales1, oris0, oris1) (B, K) with ``add_scale_ori``, else none
        -> matches0 (B, K) int64, mscores0 (B, K)."""
        context = self.context(kpts0, kpts1, size0, size1, *features)
        desc0, desc1 = self.input_proj(desc0), self.input_proj(desc1)
        for layer in self.transformers:
            desc0, desc1 = self._layer(layer, desc0, desc1, context)
        return self.assign(len(self.transformers) - 1, desc0, desc1, kpts0, kpts1)

    def context(self, kpts0: torch.Tensor, kpts1: torch.Tensor, size0: torch.Tensor, size1: torch.Tensor,
                *features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What every layer reads besides the states: each image's positional encoding and key bias (B, 1, 1, K)."""
        expected = 4 if self.conf.add_scale_ori else 0
        if len(features) != expected:
            raise ValueError(f"LightGlue (add_scale_ori={self.conf.add_scale_ori}) takes {expected} keypoint "
                             f"feature tensors (scales0, scales1, oris0, oris1), got {len(features)}")
        if self.conf.add_laf:
            raise NotImplementedError("LightGlue with add_laf is not exported")
        key_bias0, key_bias1 = padding_bias(kpts0)[:, None, None, :], padding_bias(kpts1)[:, None, None, :]
        kpts0, kpts1 = normalize_keypoints(kpts0, size0), normalize_keypoints(kpts1, size1)
        if self.conf.add_scale_ori:
            scales0, scales1, oris0, oris1 = features
            coef = float(self.conf.scale_coef)
            if coef != 1.0:
                scales0, scales1 = scales0 * coef, scales1 * coef
            kpts0 = torch.cat([kpts0, scales0.unsqueeze(2).to(kpts0.dtype), oris0.unsqueeze(2).to(kpts0.dtype)], dim=2)
            kpts1 = torch.cat([kpts1, scales1.unsqueeze(2).to(kpts1.dtype), oris1.unsqueeze(2).to(kpts1.dtype)], dim=2)
        return self.posenc(kpts0), self.posenc(kpts1), key_bias0, key_bias1

    @staticmethod
    def _layer(layer: torch.nn.Module, desc0: torch.Tensor, desc1: torch.Tensor,
               context: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Upstream ``TransformerLayer.forward``, with key biases."""
        encoding0, encoding1, key_bias0, key_bias1 = context
        desc0 = layer.self_attn(desc0, encoding0, bias=key_bias0)
        desc1 = layer.self_attn(desc1, encoding1, bias=key_bias1)
        return layer.cross_attn(desc0, desc1, bias0=key_bias0, bias1=key_bias1)

    def layer(self, index: int, states0: torch.Tensor, states1: torch.Tensor, kpts0: torch.Tensor, kpts1: torch.Tensor,
              size0: torch.Tensor, size1: torch.Tensor, *features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One step of adaptive depth (``glueforge.depth``): layer ``index`` on ``states*`` (B, K, D), the input
        descriptors (B, K, Din) for layer 0 -> ``states0, states1`` and, for every layer but the last, the
        confidence head's ``confidences0, confidences1`` (B, K) (upstream ``token_confidence[index]``)."""
        if index == 0:
            states0, states1 = self.input_proj(states0), self.input_proj(states1)
        states0, states1 = self._layer(self.transformers[index], states0, states1,
                                       self.context(kpts0, kpts1, size0, size1, *features))
        if index == len(self.transformers) - 1:
            return states0, states1
        return (states0, states1, *self.token_confidence[index](states0, states1))

    def assign(self, index: int, states0: torch.Tensor, states1: torch.Tensor, kpts0: torch.Tensor,
               kpts1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The exit after layer ``index``: its assignment head and upstream's ``filter_matches`` -> matches0 (B, K)
        int64, mscores0 (B, K)."""
        scores, _ = self.log_assignment[index](states0, states1, padding_bias(kpts0), padding_bias(kpts1))
        matches0, _, mscores0, _ = filter_matches(scores, self.conf.filter_threshold)
        return matches0, mscores0


def apply(model: torch.nn.Module, settings: Any) -> int:
    return swap_class(model, LightGlue, FixedDepthLightGlue)
