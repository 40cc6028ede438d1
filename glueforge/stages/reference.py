"""reference: the data validation judges an engine by, recorded where torch is (a Jetson runner has none).

- ``inputs.npz``: the validation inputs of every graph at every validated size (the embedded
  photographs, and the patched extractor's outputs that feed the matcher-only graph);
- ``golden.npz``: the patched PyTorch model's outputs on them (exactly the code that was
  exported), in the dense match form (``matches0``/``mscores0``); validation derives the list
  form (``matches``/``mscores``) from it for targets whose graphs return that;
- ``reference.npz``: the family's unpatched upstream model on the same images (the task reference);
- ``homography.npz``: the homography evaluation's warps and the upstream model's matches on them.

One step per model and keypoint count: its view (``ExportSettings.for_reference``) has no match
output form and no opset, so cpu, openvino and the TensorRT targets share it where K is equal.
Only the validate stage reads it: an edit here or in the validation images re-runs references and
validation, never a trace or an engine.
Code identity: this module (with ``glueforge.validation.images`` and ``glueforge.homography``) and the
families of the model's parts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from glueforge.config import ExportSettings
from glueforge.progress import progress
from glueforge.stages import Job, Label, Services, Stage, WeightRef, tool_versions, weights_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReferenceView:
    settings: ExportSettings  # ExportSettings.for_reference
    weights: dict[str, WeightRef]


class Reference(Stage):
    name = "reference"

    def modules(self, job: Job, graph: str | None) -> list[str]:
        return [__name__, *(family.__name__ for family in job.families)]

    def view(self, services: Services, job: Job, graph: str | None) -> ReferenceView:
        return ReferenceView(job.settings.for_reference(), weights_of(services, job))

    def tools(self, job: Job) -> dict[str, Any]:
        return tool_versions("torch", "kornia", "opencv-python-headless")

    def build(self, services: Services, view: ReferenceView, inputs: Mapping[str, Any], out: Path, label: Label) -> dict[str, Any]:
        weights = {role: services.fetch(ref.name) for role, ref in view.weights.items()}
        log.info("reference %s: computing the golden and reference outputs", label.model)
        return record(view.settings, weights, out)


def case(graph: str, size: tuple[int, int] | list[int]) -> str:
    """The npz key prefix of one graph's validation inputs and outputs at one image size: ``end2end@480x640``."""
    return f"{graph}@{size[0]}x{size[1]}"


def record(settings: ExportSettings, weights: Mapping[str, Path], out: Path) -> dict[str, Any]:
    """Write the four npz files of the module docstring into ``out``; return the step's metadata."""
    import torch

    from glueforge.graphs import Models, graph_io
    from glueforge.validation.images import default_pairs

    torch.manual_seed(0)
    models = Models(settings, weights)
    pairs = {tuple(size): torch.from_numpy(default_pairs(size, settings.extractor.colour)) for size in settings.all_sizes}
    inputs: dict[str, np.ndarray] = {}
    golden: dict[str, np.ndarray] = {}
    with progress(f"reference {'+'.join(settings.graphs)}", total=len(pairs), unit="size") as bar:
        for size, images in pairs.items():
            for graph, (example, result) in models.golden(settings.graphs, images).items():
                ins, outs = graph_io(graph, settings, models.channels, models.descriptor_dim)
                for spec, value in zip(ins, example):
                    inputs[f"{case(graph, size)}/{spec.name}"] = value.numpy()
                for spec, value in zip(outs, result):
                    golden[f"{case(graph, size)}/{spec.name}"] = value.numpy()
            bar.update(1)
    reference: dict[str, Any] = {}
    for size, images in pairs.items():
        reference.update({f"{size[0]}x{size[1]}/{k}": v for k, v in reference_outputs(models, images).items()})
    np.savez(out / "inputs.npz", **inputs)
    np.savez(out / "golden.npz", **golden)
    np.savez(out / "reference.npz", **reference)
    np.savez_compressed(out / "homography.npz", **homography_reference(models, settings))
    return {"validation_pairs": len(pairs) * int(next(iter(pairs.values())).shape[0] // 2),
            "validation_sizes": [list(size) for size in pairs], "golden": "dense match form"}


def reference_outputs(models, images) -> dict[str, Any]:
    """The upstream reference's features of every image and, with a matcher, the matches of every pair,
    flattened to npz keys."""
    features = models.reference_features(images)
    out: dict[str, Any] = {}
    for i, f in enumerate(features):
        for name, value in f.items():
            out[f"features/{i}/{name}"] = value
    if models.matcher is None:
        return out
    for pair in range(len(features) // 2):
        for name, value in _reference_matches(models, features[2 * pair: 2 * pair + 2], images.shape[-2:]).items():
            out[f"pairs/{pair}/{name}"] = value
    return out


def _reference_matches(models, features: list[dict[str, Any]], size_hw) -> dict[str, Any]:
    h, w = size_hw
    return models.reference_matches(*({**f, "image_size": np.array([w, h], dtype=np.float32)} for f in features))


def homography_reference(models, settings: ExportSettings) -> dict[str, np.ndarray]:
    """``homography.npz``: the evaluation warps (``glueforge.homography``, at the export's image size) and the
    matched keypoints of the unpatched upstream model on each (an extractor alone: mutual nearest descriptors)."""
    import torch

    from glueforge.homography import default_images, make_warps, mutual_nearest_descriptors
    from glueforge.validation.images import prepare

    x = settings.extractor
    out: dict[str, np.ndarray] = {}
    for i, warp in enumerate(make_warps(default_images(settings.image_size, x.colour))):
        images = torch.from_numpy(np.stack([prepare(im, settings.image_size, x.colour) for im in (warp.image0, warp.image1)]))
        with torch.inference_mode():
            features = models.reference_features(images)
        if models.matcher is not None:
            matches = _reference_matches(models, features, settings.image_size)["matches"]
        else:
            matches = mutual_nearest_descriptors(features[0]["descriptors"], features[1]["descriptors"])
        out.update({f"{i}/image0": warp.image0, f"{i}/image1": warp.image1, f"{i}/homography": warp.homography,
                    f"{i}/points0": features[0]["keypoints"][matches[:, 0]], f"{i}/points1": features[1]["keypoints"][matches[:, 1]]})
    return out
