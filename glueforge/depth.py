"""Adaptive depth: a matcher run layer by layer on the host, stopped early by its exit rule.

LightGlue's own speed-up (Lindenberger et al. 2023, sec. 3.3): after each layer but the last a
confidence head scores every point, and the matcher stops once enough points are confident;
easy pairs such as consecutive video frames exit after a few layers. Data-dependent depth has
no static graph, and TensorRT's ``If`` costs both branches (NVIDIA/TensorRT#4402) and breaks
with attention inside (#4739), so the matcher is exported as one graph per step, as LightGlue's
authors suggest (cvg/LightGlue#66), and the host decides between them:

- ``matcher_layer<i>``, i = 0 .. L-1: ``keypoints`` (2B, K, 2) px, ``descriptors`` (2B, K, Din)
  (layer 0) or ``states`` (2B, K, D) (later layers), ``image_sizes`` (2B, 2) and the matcher's
  keypoint inputs -> ``next_states`` (2B, K, D) and, for every layer but the last,
  ``confidences`` (2B, K) in [0, 1]. (An ONNX graph cannot have an input and an output of one name.) Pairs are interleaved as in the ``matcher`` graph.
- ``matcher_exit<i>``: ``keypoints``, ``states`` after layer i -> the ``matcher`` graph's match
  outputs, from layer i's assignment head.

:class:`ExitRule` is the decision (upstream's ``check_if_stop``); ``glueforge.api.run_layers`` the
loop, which the runtime API runs with any runtime's graphs. Neither needs torch. The fixed-depth ``matcher`` and
``end2end`` graphs stay in the bundle and are unchanged.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

LAYER, EXIT = "matcher_layer", "matcher_exit"
STATES, NEXT_STATES = "states", "next_states"  # a layer's input and output
_STEP = re.compile(rf"^({LAYER}|{EXIT})(\d+)$")


class Policy(str, enum.Enum):
    """How a bundle's matcher runs: every layer (the ``matcher`` graph), or layer by layer until the exit rule stops."""

    FIXED = "fixed"
    ADAPTIVE = "adaptive"


def layer_graph(index: int) -> str:
    return f"{LAYER}{index}"


def exit_graph(index: int) -> str:
    return f"{EXIT}{index}"


def step_graphs(layers: int) -> list[str]:
    """The graphs of a matcher of ``layers`` layers run adaptively: each layer, then each exit."""
    return [layer_graph(i) for i in range(layers)] + [exit_graph(i) for i in range(layers)]


def parse_step(graph: str) -> tuple[str, int] | None:
    """``("layer" | "exit", index)`` of a step graph's name; None for any other graph."""
    found = _STEP.match(graph)
    if found is None:
        return None
    return ("layer" if found.group(1) == LAYER else "exit"), int(found.group(2))


RULE = ("stop after layer i (not the last) when, in every pair, the share of real keypoints whose confidence is at "
        "least thresholds[i] exceeds depth_confidence")


@dataclass(frozen=True)
class ExitRule:
    """Stop after layer i (not the last) when, in every pair, the share of real keypoints of both images whose
    confidence is at least ``thresholds[i]`` exceeds ``depth_confidence`` (LightGlue's ``check_if_stop``; the matcher
    family gives the thresholds). Padded slots are not counted."""

    depth_confidence: float
    thresholds: tuple[float, ...]  # one per layer that has a confidence head (L - 1)

    @property
    def layers(self) -> int:
        return len(self.thresholds) + 1

    def confident(self, confidences: np.ndarray, real: np.ndarray, layer: int) -> np.ndarray:
        """Per pair, the share of its real keypoints that are confident after ``layer``: ``confidences`` and ``real``
        (2B, K), pairs interleaved."""
        sure = (np.asarray(confidences, np.float32) >= np.float32(self.thresholds[layer])) & real
        counts = real.reshape(-1, 2, real.shape[-1]).sum(axis=(1, 2))
        return sure.reshape(-1, 2, real.shape[-1]).sum(axis=(1, 2)) / np.maximum(counts, 1)

    def decisions(self, confidences: np.ndarray, real: np.ndarray, layer: int) -> np.ndarray:
        """Per pair, whether it may stop after ``layer`` (never after the last, which has no confidence head)."""
        if layer >= self.layers - 1:
            return np.zeros(real.shape[0] // 2, bool)
        return self.may_stop(self.confident(confidences, real, layer))

    def may_stop(self, shares: np.ndarray) -> np.ndarray:
        """Per pair, whether its share of confident real keypoints (:meth:`confident`) lets it stop."""
        return np.asarray(shares) > self.depth_confidence

    def stops(self, confidences: np.ndarray, real: np.ndarray, layer: int) -> bool:
        """Whether the batch stops after ``layer``: every pair may."""
        return bool(self.decisions(confidences, real, layer).all())

    def as_dict(self) -> dict[str, Any]:
        return {"policy": Policy.ADAPTIVE.value, "rule": RULE, "depth_confidence": self.depth_confidence,
                "thresholds": list(self.thresholds), "layers": self.layers}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "ExitRule":
        return cls(float(record["depth_confidence"]), tuple(float(t) for t in record["thresholds"]))
