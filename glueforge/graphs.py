"""The exported graphs, built from any extractor and matcher family, and the upstream reference.

Interface (DESIGN.md, "Model interface"), the convention LightGlue-ONNX users know:

- ``end2end``: ``images`` float32 (2B, C, H, W) in [0, 1], the two images of each pair
  interleaved -> ``keypoints`` float32 (2B, K, 2) pixels, ``matches`` int64 (M, 3) as
  (pair, index in image 0, index in image 1), ``mscores`` float32 (M,);
- ``extractor``: ``images`` (N, C, H, W) -> ``keypoints`` (N, K, 2), ``scores`` (N, K),
  ``descriptors`` (N, K, D);
- ``matcher``: ``keypoints`` (2B, K, 2) pixels, ``descriptors`` (2B, K, D) and ``image_sizes``
  (2B, 2) float32, the (width, height) of each image in pixels, interleaved as above ->
  ``matches`` (M, 3), ``mscores`` (M,).

H and W of ``images`` are dynamic (multiples of the extractor family's divisor); K is fixed.
Slots of an image with fewer than K keypoints are padding (keypoint (-1, -1), score 0, zero
descriptor; ``glueforge.schema.ExtractorSpec``) and are never matched. A model without a matcher
has the ``extractor`` graph only; a host extractor (SIFT) has the ``matcher`` graph only, fed by the
family's ``extract``; a dense extractor (SuperPoint dense) returns maps that the family's
``decode`` turns into keypoints on the host.

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
from typing import Any, Mapping, Sequence

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

    def forward(self, keypoints: torch.Tensor, descriptors: torch.Tensor, image_sizes: torch.Tensor,
                *features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [half for f in features for half in (f[0::2], f[1::2])]
        matches0, mscores0 = self.matcher(keypoints[0::2], keypoints[1::2], descriptors[0::2], descriptors[1::2],
                                          image_sizes[0::2], image_sizes[1::2], *pairs)
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
        matches, mscores = self.matcher(keypoints, descriptors, image_sizes(images), *(features[i] for i in self.feature_index))
        return keypoints, matches, mscores


def image_sizes(images: torch.Tensor) -> torch.Tensor:
    """(width, height) of each image of ``images`` (N, C, H, W) as (N, 2) float32, from the traced shape
    (a Shape op in the graph, so H and W stay dynamic)."""
    wh = torch._shape_as_tensor(images)[torch.tensor([3, 2])].to(torch.float32)
    return torch.ones_like(images[:, 0, 0, :2]) * wh


def feature_index(extractor: Any, matcher: Any) -> tuple[int, ...]:
    """Positions among the extractor's ``keypoint_features`` of the matcher's ``keypoint_inputs``."""
    return tuple(extractor.keypoint_features.index(name) for name in matcher.keypoint_inputs)


def graph_io(name: str, spec: Any, channels: int, descriptor_dim: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output specs of graph ``name``; symbolic dimensions are strings."""
    k = spec.keypoints
    images = TensorSpec("images", "float32", ("2B" if name == "end2end" else "N", channels, "H", "W"))
    keypoints_pairs = TensorSpec("keypoints", "float32", ("2B", k, 2))
    if spec.match_output == "dense":
        matches = [TensorSpec("matches0", "int64", ("B", k)), TensorSpec("mscores0", "float32", ("B", k))]
    else:
        matches = [TensorSpec("matches", "int64", ("M", 3)), TensorSpec("mscores", "float32", ("M",))]
    if name == "end2end":
        return [images], [keypoints_pairs, *matches]
    if name == "extractor":
        return [images], [TensorSpec(*output) for output in spec.extractor.extractor_outputs(k)]
    if name == "matcher":
        features = [TensorSpec(f, "float32", ("2B", k)) for f in spec.matcher.keypoint_inputs]
        return [keypoints_pairs, TensorSpec("descriptors", "float32", ("2B", k, descriptor_dim)),
                TensorSpec("image_sizes", "float32", ("2B", 2)), *features], matches
    raise KeyError(f"unknown graph {name!r}; known graphs: {', '.join(GRAPHS)}")


class Models:
    """The patched (exported) and unpatched (reference) models of one export, through their families."""

    def __init__(self, settings: Any, weights: Mapping[str, Path | None]) -> None:
        self.spec = settings
        self._weights = weights
        x, m = settings.extractor, settings.matcher
        # a host extractor (SIFT) has no module: its features come from the family's ``extract``
        self.extractor = None if x.host else registry.family(x.family).build(x, weights.get("extractor"), settings)
        self.matcher = registry.family(m.family).build(m, weights["matcher"], settings) if m is not None else None
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
        return feature_index(self.spec.extractor, self.spec.matcher) if self.spec.matcher is not None else ()

    def extract(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Keypoints, scores, descriptors and keypoint features (padded to K) of each image (N, C, H, W):
        the patched extractor module, or the host extractor's ``extract``."""
        x = self.spec.extractor
        if x.host:
            out = registry.family(x.family).extract(x, images.numpy(), self.spec.keypoints)
            return tuple(torch.from_numpy(np.ascontiguousarray(out[name])) for name, _, _ in x.extractor_outputs(self.spec.keypoints))
        with torch.no_grad():  # inference-mode tensors cannot be traced
            return tuple(self.extractor(images))

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
            keypoints, _, descriptors, *features = self.extract(images)
            return (keypoints, descriptors, image_sizes(images), *(features[i] for i in self.feature_index))
        return (images,)

    @torch.no_grad()
    def golden(self, names: Sequence[str], images: torch.Tensor) -> dict[str, tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]]:
        """Inputs and outputs of each graph of ``names`` on an interleaved image batch (2B, C, H, W).

        Where ``end2end`` is among them, its one pass also gives the ``extractor``'s and ``matcher``'s: its
        submodules are those graphs' modules, called on exactly their example inputs, and forward hooks
        record what they take and return (one extractor and one matcher pass instead of three and two)."""
        calls: dict[str, tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]] = {}
        hooks = []
        if "end2end" in names:
            end2end = self.graph("end2end")
            for name, sub in (("extractor", end2end.extractor), ("matcher", end2end.matcher)):
                if name in names:
                    hooks.append(sub.register_forward_hook(
                        lambda module, args, output, name=name: calls.__setitem__(name, (tuple(args), tuple(output)))))
            try:
                calls["end2end"] = ((images,), tuple(end2end(images)))
            finally:
                for hook in hooks:
                    hook.remove()
        for name in names:
            if name not in calls:
                example = self.example_inputs(name, images)
                calls[name] = (example, tuple(self.graph(name)(*example)))
        return {name: calls[name] for name in names}

    # -- the upstream reference, unpatched ----------------------------------------------------
    def reference(self) -> tuple[Any, Any]:
        """``(extract, match)`` of the families' unpatched upstream models."""
        if self._reference is None:
            s = self.spec
            self._reference = (
                registry.family(s.extractor.family).reference(s.extractor, self._weights.get("extractor"), s),
                registry.family(s.matcher.family).reference(s.matcher, self._weights["matcher"], s) if s.matcher else None,
            )
        return self._reference

    @torch.inference_mode()
    def reference_features(self, images: torch.Tensor) -> list[dict[str, np.ndarray]]:
        """Upstream features of each image: keypoints (n, 2) px, scores (n,), descriptors (n, D)."""
        return self.reference()[0](images)

    def reference_matches(self, features0: dict[str, np.ndarray], features1: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Upstream matcher on one pair of reference features -> matches (S, 2), mscores (S,)."""
        return self.reference()[1](features0, features1)
