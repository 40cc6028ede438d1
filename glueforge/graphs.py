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

A matcher with an exit rule (adaptive depth) also has its step graphs, ``matcher_layer<i>`` and
``matcher_exit<i>`` (``glueforge.depth`` names them and runs them): its module provides
``layer(index, states0, states1, kpts0, kpts1, size0, size1, *features)`` and
``assign(index, states0, states1, kpts0, kpts1)`` (:class:`SteppedMatcher`).

TensorRT targets take the dense match outputs instead (``match_output: dense``):
``matches0`` int64 (B, K), the index in image 1 of each keypoint of image 0 or -1, and
``mscores0`` float32 (B, K). No tensor then has a data-dependent shape: TensorRT-RTX has no
NonZero at all, and TensorRT needs an output allocator for one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from glueforge import registry
from glueforge.depth import NEXT_STATES, STATES, parse_step, step_graphs

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


class SteppedMatcher(Protocol):
    """A matcher module that runs layer by layer (adaptive depth); tensors are per image of each pair, (B, K, ...)."""

    def layer(self, index: int, states0: torch.Tensor, states1: torch.Tensor, kpts0: torch.Tensor, kpts1: torch.Tensor,
              size0: torch.Tensor, size1: torch.Tensor, *features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """-> states0, states1 (B, K, D) and, but after the last layer, confidences0, confidences1 (B, K)."""

    def assign(self, index: int, states0: torch.Tensor, states1: torch.Tensor, kpts0: torch.Tensor,
               kpts1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> matches0 (B, K) int64, mscores0 (B, K): the exit after layer ``index``."""


def interleave(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Image 0's and image 1's (B, K, ...) tensors as one (2B, K, ...) batch, each pair's images adjacent."""
    return torch.stack([first, second], dim=1).reshape(-1, *first.shape[1:])


class LayerGraph(nn.Module):
    """``matcher_layer<index>``: keypoints (2B, K, 2), states (2B, K, D) (layer 0: descriptors (2B, K, Din)), image_sizes
    (2B, 2), keypoint inputs (2B, K) -> next_states (2B, K, D), confidences (2B, K) (none after the last layer)."""

    def __init__(self, matcher: SteppedMatcher, index: int) -> None:
        super().__init__()
        self.matcher, self.index = matcher, index

    def forward(self, keypoints: torch.Tensor, states: torch.Tensor, image_sizes: torch.Tensor,
                *features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pairs = [half for f in features for half in (f[0::2], f[1::2])]
        out = self.matcher.layer(self.index, states[0::2], states[1::2], keypoints[0::2], keypoints[1::2],
                                 image_sizes[0::2], image_sizes[1::2], *pairs)
        return tuple(interleave(out[i], out[i + 1]) for i in range(0, len(out), 2))


class ExitGraph(nn.Module):
    """``matcher_exit<index>``: keypoints (2B, K, 2), states (2B, K, D) after layer ``index`` -> the matcher graph's
    match outputs."""

    def __init__(self, matcher: SteppedMatcher, index: int, dense: bool = False) -> None:
        super().__init__()
        self.matcher, self.index, self.dense = matcher, index, dense

    def forward(self, keypoints: torch.Tensor, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        matches0, mscores0 = self.matcher.assign(self.index, states[0::2], states[1::2], keypoints[0::2], keypoints[1::2])
        return (matches0, mscores0) if self.dense else dense_to_matches(matches0, mscores0)


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
    features = [TensorSpec(f, "float32", ("2B", k)) for f in spec.matcher.keypoint_inputs] if spec.matcher else []
    descriptors = TensorSpec("descriptors", "float32", ("2B", k, descriptor_dim))
    sizes = TensorSpec("image_sizes", "float32", ("2B", 2))
    if name == "matcher":
        return [keypoints_pairs, descriptors, sizes, *features], matches
    step = parse_step(name)
    if step is not None and spec.matcher is not None and spec.matcher.layers and step[1] < spec.matcher.layers:
        kind, index = step
        states = TensorSpec(STATES, "float32", ("2B", k, spec.matcher.state_dim))
        if kind == "exit":
            return [keypoints_pairs, states], matches
        last = index == spec.matcher.layers - 1
        return ([keypoints_pairs, descriptors if index == 0 else states, sizes, *features],
                [TensorSpec(NEXT_STATES, "float32", states.shape)] + ([] if last else [TensorSpec("confidences", "float32", ("2B", k))]))
    raise KeyError(f"unknown graph {name!r}; known graphs: {', '.join(GRAPHS)}")


class Models:
    """The patched (exported) and unpatched (reference) models of one export, through their families."""

    def __init__(self, settings: Any, weights: Mapping[str, Path | None]) -> None:
        self.spec = settings
        self._weights = weights
        m = settings.matcher
        self.matcher = registry.family(m.family).build(m, weights["matcher"], settings) if m is not None else None
        self._reference: tuple[Any, Any] | None = None

    @functools.cached_property
    def extractor(self) -> nn.Module | None:
        """The patched extractor, built on first use (a step graph's trace needs none); None for a host extractor
        (SIFT), whose features come from the family's ``extract``."""
        x = self.spec.extractor
        return None if x is None or x.host else registry.family(x.family).build(x, self._weights.get("extractor"), self.spec)

    @property
    def channels(self) -> int:
        """The images' channels (1 where the view has no extractor: a step graph takes no images)."""
        return self.spec.extractor.channels if self.spec.extractor is not None else 1

    @property
    def descriptor_dim(self) -> int:
        """The descriptor size: the extractor's, which the matcher takes (a step graph's view has only the matcher)."""
        return self.spec.extractor.descriptor_dim if self.spec.extractor is not None else self.spec.matcher.input_dim

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
        step = self._step(name)
        if step is not None:
            kind, index = step
            return (LayerGraph(self.matcher, index) if kind == "layer" else ExitGraph(self.matcher, index, dense)).eval()
        raise KeyError(f"unknown graph {name!r}; known graphs: {', '.join(GRAPHS)}")

    def _step(self, name: str) -> tuple[str, int] | None:
        """A step graph's kind and index, where the matcher runs adaptively (``glueforge.depth``)."""
        step = parse_step(name)
        layers = self.spec.matcher.layers if self.spec.matcher is not None else None
        return step if step is not None and layers and step[1] < layers else None

    def example_inputs(self, name: str, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Inputs of graph ``name`` derived from an interleaved image batch (2B, C, H, W)."""
        if name == "matcher":
            keypoints, _, descriptors, *features = self.extract(images)
            return (keypoints, descriptors, image_sizes(images), *(features[i] for i in self.feature_index))
        step = self._step(name)
        if step is not None:
            return self._step_example(step, images)
        return (images,)

    def _step_example(self, step: tuple[str, int], images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Seeded inputs of a step graph for tracing: keypoints on ``images``, unit descriptors, random states. A step
        graph has no data-dependent control flow (fixed K, padded slots), so values do not shape its trace, and tracing
        one layer need not run the extractor and the layers before it (golden outputs chain the real ones: ``steps``)."""
        kind, index = step
        generator = torch.Generator().manual_seed(0)
        n, k = images.shape[0], self.spec.keypoints
        sizes = image_sizes(images)
        keypoints = torch.rand(n, k, 2, generator=generator) * (sizes[:, None, :] - 1)
        states = torch.randn(n, k, self.spec.matcher.state_dim, generator=generator)
        if kind == "exit":
            return keypoints, states
        if index == 0:
            states = torch.nn.functional.normalize(torch.randn(n, k, self.descriptor_dim, generator=generator), dim=-1)
        features = [torch.rand(n, k, generator=generator) for _ in self.spec.matcher.keypoint_inputs]
        return (keypoints, states, sizes, *features)

    @torch.no_grad()
    def steps(self, matcher_inputs: Sequence[torch.Tensor]) -> dict[str, tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]]:
        """Inputs and outputs of every step graph on the ``matcher`` graph's inputs, in one pass through the layers
        (each exit on the states after its layer)."""
        keypoints, descriptors, sizes, *features = matcher_inputs
        dense = self.spec.match_output == "dense"
        calls: dict[str, tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]] = {}
        states = descriptors
        layers = self.spec.matcher.layers
        for name in step_graphs(layers)[:layers]:
            _, index = parse_step(name)
            args = (keypoints, states, sizes, *features)
            calls[name] = (args, tuple(LayerGraph(self.matcher, index)(*args)))
            states = calls[name][1][0]
            exit_args = (keypoints, states)
            calls[step_graphs(layers)[layers + index]] = (exit_args, tuple(ExitGraph(self.matcher, index, dense)(*exit_args)))
        return calls

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
            if name not in calls and self._step(name) is None:
                example = self.example_inputs(name, images)
                calls[name] = (example, tuple(self.graph(name)(*example)))
        if any(self._step(name) is not None for name in names):
            calls.update(self.steps(calls["matcher"][0] if "matcher" in calls else self.example_inputs("matcher", images)))
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
