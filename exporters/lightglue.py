"""LightGlue (Lindenberger et al. 2023) and LighterGlue through kornia's port, at fixed depth, and layer by layer.

Early stopping and point pruning are off in the graphs (``depth_confidence = width_confidence = -1``):
all ``n_layers`` layers run, which is what makes a static graph possible. With ``depth_confidence``
set, the matcher is also exported one layer per graph, with each layer's exit, and the host stops
early by LightGlue's rule (``glueforge.depth``); point pruning stays off (it changes shapes). The architecture
(descriptor sizes, heads, depth, scale/orientation inputs) of each released checkpoint is in
``ARCHITECTURES``, keyed as kornia's ``LightGlue.features`` and LightGlue-ONNX's config are.

The exported matcher takes each image's (width, height) as an input (no image size is baked
into the graph), SIFT's scales and orientations where the checkpoint reads them
(``keypoint_inputs``), and padded keypoint sets: slots with x < 0 are masked out of every
attention and of the assignment, so they never match (``patches/lightglue_fixed_depth``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, model_validator
from typing_extensions import Annotated

from glueforge.depth import ExitRule
from glueforge.schema import MatcherSpec

# released checkpoint -> its architecture (kornia.feature.LightGlue.features)
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "superpoint": {"input_dim": 256, "descriptor_dim": 256, "n_layers": 9, "num_heads": 4},
    "disk": {"input_dim": 128, "descriptor_dim": 256, "n_layers": 9, "num_heads": 4},
    "aliked": {"input_dim": 128, "descriptor_dim": 256, "n_layers": 9, "num_heads": 4},
    "sift": {"input_dim": 128, "descriptor_dim": 256, "n_layers": 9, "num_heads": 4, "add_scale_ori": True},
    # LighterGlue (verlab/accelerated_features): 6 layers, 1 head, 96-D, for 64-D XFeat descriptors
    "xfeat": {"input_dim": 64, "descriptor_dim": 96, "n_layers": 6, "num_heads": 1},
}


def confidence_thresholds(layers: int) -> tuple[float, ...]:
    """kornia's ``LightGlue.confidence_threshold(i)`` after each layer i but the last of ``layers``:
    ``0.8 + 0.1 exp(-4 i / layers)``, clipped to [0, 1]."""
    return tuple(min(max(0.8 + 0.1 * math.exp(-4.0 * i / layers), 0.0), 1.0) for i in range(layers - 1))


class Spec(MatcherSpec):
    family: Literal["lightglue"]
    features: Literal["superpoint", "disk", "aliked", "sift", "xfeat"]  # the checkpoint's architecture
    n_layers: Optional[Annotated[int, Field(ge=1, le=9)]] = None  # default: all the checkpoint's layers
    filter_threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    # adaptive depth (glueforge.depth): stop once more than this share of the real points is confident; None: fixed
    # depth. Upstream's default is 0.95; kornia's -1 (off) is written here as leaving it out
    depth_confidence: Optional[Annotated[float, Field(gt=0.0, lt=1.0)]] = None

    @model_validator(mode="after")
    def _depth(self) -> "Spec":
        trained = ARCHITECTURES[self.features]["n_layers"]
        if self.n_layers is not None and self.n_layers > trained:
            raise ValueError(f"n_layers {self.n_layers}: the {self.features} checkpoint has {trained} layers")
        if self.depth_confidence is not None and self.layers < 2:
            raise ValueError(f"depth_confidence {self.depth_confidence}: a matcher of {self.layers} layer cannot stop "
                             "early; leave depth_confidence out")
        return self

    @property
    def input_dim(self) -> int:
        return ARCHITECTURES[self.features]["input_dim"]

    @property
    def keypoint_inputs(self) -> tuple[str, ...]:
        """SIFT's LightGlue (``add_scale_ori``) reads each keypoint's scale and orientation (radians)."""
        return ("scales", "oris") if ARCHITECTURES[self.features].get("add_scale_ori") else ()

    @property
    def layers(self) -> int:
        return self.n_layers or ARCHITECTURES[self.features]["n_layers"]

    @property
    def state_dim(self) -> int:
        return ARCHITECTURES[self.features]["descriptor_dim"]

    @property
    def exit_rule(self) -> Optional[ExitRule]:
        return ExitRule(self.depth_confidence, confidence_thresholds(self.layers)) if self.depth_confidence is not None else None

    def at_fixed_depth(self) -> "Spec":
        return self if self.depth_confidence is None else self.model_copy(update={"depth_confidence": None})


def _kornia(spec: Spec, weights: Path):
    from kornia.feature import LightGlue

    from glueforge.weights import load_checkpoint, load_weights

    conf = {"add_scale_ori": False, **ARCHITECTURES[spec.features], "n_layers": spec.layers}
    model = LightGlue(features=None, **conf, depth_confidence=-1, width_confidence=-1,
                      filter_threshold=spec.filter_threshold, flash=False)
    state = dict(load_checkpoint(weights))
    # LighterGlue nests its state under "matcher."; the released LightGlue checkpoints predate
    # upstream's module renaming (self_attn.i -> transformers.i.self_attn)
    state = {k.removeprefix("matcher."): v for k, v in state.items()}
    for i in range(ARCHITECTURES[spec.features]["n_layers"]):
        for old, new in ((f"self_attn.{i}.", f"transformers.{i}.self_attn."), (f"cross_attn.{i}.", f"transformers.{i}.cross_attn.")):
            state = {k.replace(old, new, 1) if k.startswith(old) else k: v for k, v in state.items()}
    # layers past n_layers are not used at fixed depth; disk_lightglue carries the unused
    # 'log_assignment.<i>.r' tensors of an earlier upstream release; LighterGlue's checkpoint
    # also carries the extractor it was trained with ('extractor.*')
    # (token_confidence has one entry less: none after the last layer)
    deeper = [rf"(transformers|log_assignment)\.{i}\." for i in range(spec.layers, 9)]
    deeper += [rf"token_confidence\.{i}\." for i in range(spec.layers - 1, 8)]
    unused = r"log_assignment\.\d+\.r$|extractor\." + (f"|({'|'.join(deeper)})" if deeper else "")
    return load_weights(model, state, weights, unused=unused)


def upstream(spec: Spec, weights: Path, settings: Any):
    """The unpatched kornia LightGlue module with the checkpoint, fixed depth, for :func:`upstream_match`."""
    return _kornia(spec, weights)


def upstream_match(model, features0: dict, features1: dict) -> dict[str, Any]:
    """``model`` (:func:`upstream`) on two images' features on its device: each a dict of ``keypoints`` (n, 2) px,
    ``descriptors`` (n, D), ``image_size`` (2,) = (w, h) tensors (and ``spec.keypoint_inputs``); ``matches`` (S, 2)
    and ``mscores`` (S,)."""
    out = model({"image0": {k: v[None] for k, v in features0.items()}, "image1": {k: v[None] for k, v in features1.items()}})
    return {"matches": out["matches"][0], "mscores": out["scores"][0]}


def reference(spec: Spec, weights: Path, settings: Any):
    """kornia LightGlue with the checkpoint, fixed depth: ``(features0, features1) -> matches (S, 2), mscores (S,)``.

    Each features dict holds unpadded numpy ``keypoints`` (n, 2) px and ``descriptors`` (n, D),
    ``scales`` and ``oris`` (n,) for an ``add_scale_ori`` checkpoint, and optionally
    ``image_size`` (2,) = (w, h) px (default: ``settings.image_size`` [H, W] swapped).
    """
    import numpy as np
    import torch

    from glueforge import GlueforgeError

    model = upstream(spec, weights, settings)
    h, w = settings.image_size
    default_size = np.array([w, h], dtype=np.float32)

    def image(features: dict, role: str) -> dict:
        size = np.asarray(features.get("image_size", default_size), dtype=np.float32).reshape(2)
        data = {"keypoints": torch.from_numpy(np.asarray(features["keypoints"], dtype=np.float32)),
                "descriptors": torch.from_numpy(np.asarray(features["descriptors"], dtype=np.float32)),
                "image_size": torch.from_numpy(size)}
        for name in spec.keypoint_inputs:
            if name not in features:
                raise GlueforgeError(f"lightglue reference ({spec.features}): {role} lacks {name!r}; "
                                     f"the checkpoint reads {', '.join(spec.keypoint_inputs)}")
            data[name] = torch.from_numpy(np.asarray(features[name], dtype=np.float32))
        return data

    @torch.inference_mode()
    def match(features0, features1):
        matched = upstream_match(model, image(features0, "features0"), image(features1, "features1"))
        return {k: v.numpy() for k, v in matched.items()}

    return match


def build(spec: Spec, weights: Path, settings: Any):
    """Patched LightGlue: ``kpts0, kpts1 (B, K, 2) px, desc0, desc1 (B, K, D), size0, size1 (B, 2) (w, h),
    *features (scales0, scales1, oris0, oris1 for sift) -> matches0 (B, K), mscores0 (B, K)``; slots with
    x < 0 are padding and never match (``patches/lightglue_fixed_depth``)."""
    from glueforge.patches import (apply_patches, lightglue_concat_assignment, lightglue_fixed_depth, lightglue_posenc_expand,
                         lightglue_static_heads)

    return apply_patches(_kornia(spec, weights),
                         (lightglue_posenc_expand, lightglue_static_heads, lightglue_concat_assignment, lightglue_fixed_depth),
                         settings)
