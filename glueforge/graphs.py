"""The exported graphs, built from any extractor and matcher family, and the upstream reference.

Interface (DESIGN.md, "Model interface"), the convention LightGlue-ONNX users know:

- ``end2end``: ``images`` float32 (2B, C, H, W) in [0, 1], the two images of each pair
  interleaved -> ``keypoints`` float32 (2B, K, 2) pixels, ``matches`` int64 (M, 3) as
  (pair, index in image 0, index in image 1), ``mscores`` float32 (M,);
- ``extractor``: ``images`` (N, C, H, W) -> ``keypoints`` (N, K, 2), ``scores`` (N, K),
  ``descriptors`` (N, K, D);
- ``matcher``: ``keypoints`` (2B, K, 2) pixels and ``descriptors`` (2B, K, D), interleaved
  as above -> ``matches`` (M, 3), ``mscores`` (M,). The image size is a graph constant.

Families may add per-keypoint features (N, K) after the descriptors: the extractor's
``keypoint_features`` are extra outputs of ``extractor``, and the matcher's
``keypoint_inputs`` (a subset) extra inputs of ``matcher`` (SIFT's scales and orientations
for LightGlue). The matcher module is called with ``(keypoints0, keypoints1, descriptors0,
descriptors1, feature0, feature1, ...)``, one pair per keypoint input.

TensorRT targets take the dense match outputs instead (``match_output: dense``):
``matches0`` int64 (B, K), the index in image 1 of each keypoint of image 0 or -1, and
``mscores0`` float32 (B, K). No tensor then has a data-dependent shape: TensorRT-RTX has no
NonZero at all, and TensorRT needs an output allocator for one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from glueforge import registry

GRAPHS = ("end2end", "extractor", "matcher")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


def dense_to_matches(matches0: torch.Tensor, mscores0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``matches0`` (B, K) int64 with -1 for none, ``mscores0`` (B, K) -> matches (M, 3), mscores (M,)."""
    pair_index = torch.nonzero(matches0 > -1)  # (M, 2): pair, index in image 0
    pair, index0 = pair_index[:, 0], pair_index[:, 1]
    index1 = matches0[pair, index0]
    return torch.stack([pair, index0, index1], dim=1), mscores0[pair, index0]


class ExtractorGraph(nn.Module):
    def __init__(self, extractor: nn.Module) -> None:
        super().__init__()
        self.extractor = extractor

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.extractor(images)


class MatcherGraph(nn.Module):
    def __init__(self, matcher: nn.Module, dense: bool = False) -> None:
        super().__init__()
        self.matcher = matcher
        self.dense = dense

    def forward(self, keypoints: torch.Tensor, descriptors: torch.Tensor, *features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [half for f in features for half in (f[0::2], f[1::2])]
        matches0, mscores0 = self.matcher(keypoints[0::2], keypoints[1::2], descriptors[0::2], descriptors[1::2], *pairs)
        if self.dense:
            return matches0, mscores0
        return dense_to_matches(matches0, mscores0)


class EndToEndGraph(nn.Module):
    def __init__(self, extractor: nn.Module, matcher: nn.Module, dense: bool = False, feature_index: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.extractor = extractor
        self.matcher = MatcherGraph(matcher, dense)
        self.feature_index = feature_index  # which of the extractor's keypoint features the matcher takes

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        keypoints, _, descriptors, *features = self.extractor(images)
        matches, mscores = self.matcher(keypoints, descriptors, *(features[i] for i in self.feature_index))
        return keypoints, matches, mscores


def feature_index(extractor: Any, matcher: Any) -> tuple[int, ...]:
    """Positions among the extractor's ``keypoint_features`` of the matcher's ``keypoint_inputs``."""
    return tuple(extractor.keypoint_features.index(name) for name in matcher.keypoint_inputs)


def graph_io(name: str, spec: Any, channels: int, descriptor_dim: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output specs of graph ``name``; symbolic dimensions are strings."""
    h, w = spec.image_size
    k = spec.keypoints
    images = TensorSpec("images", "float32", ("2B" if name == "end2end" else "N", channels, h, w))
    keypoints_pairs = TensorSpec("keypoints", "float32", ("2B", k, 2))
    if spec.match_output == "dense":
        matches = [TensorSpec("matches0", "int64", ("B", k)), TensorSpec("mscores0", "float32", ("B", k))]
    else:
        matches = [TensorSpec("matches", "int64", ("M", 3)), TensorSpec("mscores", "float32", ("M",))]
    if name == "end2end":
        return [images], [keypoints_pairs, *matches]
    if name == "extractor":
        return [images], [
            TensorSpec("keypoints", "float32", ("N", k, 2)),
            TensorSpec("scores", "float32", ("N", k)),
            TensorSpec("descriptors", "float32", ("N", k, descriptor_dim)),
            *(TensorSpec(f, "float32", ("N", k)) for f in spec.extractor.keypoint_features),
        ]
    if name == "matcher":
        features = [TensorSpec(f, "float32", ("2B", k)) for f in spec.matcher.keypoint_inputs]
        return [keypoints_pairs, TensorSpec("descriptors", "float32", ("2B", k, descriptor_dim)), *features], matches
    raise KeyError(f"unknown graph {name!r}; known graphs: {', '.join(GRAPHS)}")


class Models:
    """The patched (exported) and unpatched (reference) models of one export, through their families."""

    def __init__(self, settings: Any, weights: Mapping[str, Path]) -> None:
        self.spec = settings
        self._weights = weights
        self.extractor = registry.family(settings.extractor.family).build(settings.extractor, weights["extractor"], settings)
        self.matcher = registry.family(settings.matcher.family).build(settings.matcher, weights["matcher"], settings)
        self._reference: tuple[Any, Any] | None = None

    @property
    def channels(self) -> int:
        return self.spec.extractor.channels

    @property
    def descriptor_dim(self) -> int:
        return self.spec.extractor.descriptor_dim

    @property
    def feature_index(self) -> tuple[int, ...]:
        """Which of the extractor's keypoint features the matcher takes, in the matcher's order."""
        return feature_index(self.spec.extractor, self.spec.matcher)

    def graph(self, name: str) -> nn.Module:
        dense = self.spec.match_output == "dense"
        if name == "end2end":
            return EndToEndGraph(self.extractor, self.matcher, dense, self.feature_index).eval()
        if name == "extractor":
            return ExtractorGraph(self.extractor).eval()
        if name == "matcher":
            return MatcherGraph(self.matcher, dense).eval()
        raise KeyError(f"unknown graph {name!r}; known graphs: {', '.join(GRAPHS)}")

    def example_inputs(self, name: str, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Inputs of graph ``name`` derived from an interleaved image batch (2B, C, H, W)."""
        if name == "matcher":
            with torch.no_grad():  # inference-mode tensors cannot be traced
                keypoints, _, descriptors, *features = self.extractor(images)
            return (keypoints, descriptors, *(features[i] for i in self.feature_index))
        return (images,)

    # -- the upstream reference, unpatched ----------------------------------------------------
    def reference(self) -> tuple[Any, Any]:
        """``(extract, match)`` of the families' unpatched upstream models."""
        if self._reference is None:
            s = self.spec
            self._reference = (
                registry.family(s.extractor.family).reference(s.extractor, self._weights["extractor"], s),
                registry.family(s.matcher.family).reference(s.matcher, self._weights["matcher"], s),
            )
        return self._reference

    @torch.inference_mode()
    def reference_features(self, images: torch.Tensor) -> list[dict[str, np.ndarray]]:
        """Upstream features of each image: keypoints (n, 2) px, scores (n,), descriptors (n, D)."""
        return self.reference()[0](images)

    def reference_matches(self, features0: dict[str, np.ndarray], features1: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Upstream matcher on one pair of reference features -> matches (S, 2), mscores (S,)."""
        return self.reference()[1](features0, features1)
