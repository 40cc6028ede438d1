"""export: weights + exporter + patches -> ONNX graphs, their I/O spec, golden and reference outputs.

Besides the graphs, this stage records what later stages need and cannot compute without
torch (a Jetson runner has none):

- ``inputs.npz``: the validation inputs of every graph (preprocessed images, and the
  extractor outputs that feed the matcher-only graph);
- ``golden.npz``: the patched PyTorch model's outputs on them (exactly what was exported);
- ``reference.npz``: the family's unpatched upstream model on the same images (the task reference);
- ``homography.npz``: the homography evaluation's warps and the upstream model's matches on them.

Code identity: this module and the extractor and matcher family modules, with everything
they import (their patches included).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from glueforge.cache import Result
from glueforge.config import ExportSettings
from glueforge.progress import progress
from glueforge.stages import Job, Services, Stage, tool_versions
from validation.images import default_pairs, preprocessing

log = logging.getLogger(__name__)


class Export(Stage):
    name = "export"

    def modules(self, job: Job) -> list[str]:
        return [__name__, *(family.__name__ for family in job.families)]

    def settings(self, services: Services, job: Job) -> dict[str, Any]:
        return {
            # the effective digest: declared, or recorded on first use (known only once the weight is fetched)
            "weights": {role: services.weight_digest(name) for role, name in job.weight_names().items()},
            "settings": job.settings.payload(),
            # the validation inputs it also records are data for the validate stage, whose key has their digests
            "tools": tool_versions("torch", "kornia", "onnx"),
        }

    def build(self, services: Services, job: Job, inputs: Mapping[str, Result], out: Path) -> dict[str, Any]:
        weights = {role: services.fetch(name) for role, name in job.weight_names().items()}
        return export(job.settings, weights, out)


def case(graph: str, size: tuple[int, int] | list[int]) -> str:
    """The npz key prefix of one graph's validation inputs and outputs at one image size: ``end2end@480x640``."""
    return f"{graph}@{size[0]}x{size[1]}"


def export(settings: ExportSettings, weights: Mapping[str, Path], out: Path) -> dict[str, Any]:
    """Export ``settings.graphs`` into ``out``; return the stage metadata.

    Every graph is traced once at ``settings.image_size`` with H and W dynamic, then run at each
    validated size; inputs and outputs are keyed ``<graph>@<H>x<W>/<tensor>``.
    """
    import numpy as np
    import torch

    from glueforge.graphs import Models, graph_io

    torch.manual_seed(0)
    models = Models(settings, weights)
    extractor = settings.extractor
    pairs = {tuple(size): torch.from_numpy(default_pairs(size, extractor.colour)) for size in settings.all_sizes}
    inputs: dict[str, np.ndarray] = {}
    golden: dict[str, np.ndarray] = {}
    io: dict[str, Any] = {}
    with progress(f"export {settings.model}", total=len(settings.graphs), unit="graph") as bar:
        for graph in settings.graphs:
            module = models.graph(graph)
            ins, outs = graph_io(graph, settings, models.channels, models.descriptor_dim)
            dynamic = {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)} for t in ins + outs}
            log.info("export %s/%s: tracing", settings.model, graph)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TracerWarnings about Python scalars are expected and harmless here
                torch.onnx.export(
                    module,
                    models.example_inputs(graph, pairs[tuple(settings.image_size)]),
                    str(out / f"{graph}.onnx"),
                    dynamo=False,
                    opset_version=settings.opset,
                    input_names=[t.name for t in ins],
                    output_names=[t.name for t in outs],
                    dynamic_axes=dynamic,
                    do_constant_folding=True,
                )
            for size, images in pairs.items():
                example = models.example_inputs(graph, images)
                with torch.no_grad():
                    result = module(*example)
                for spec, value in zip(ins, example):
                    inputs[f"{case(graph, size)}/{spec.name}"] = value.numpy()
                for spec, value in zip(outs, result):
                    golden[f"{case(graph, size)}/{spec.name}"] = value.numpy()
            io[graph] = {"inputs": [t.as_dict() for t in ins], "outputs": [t.as_dict() for t in outs]}
            bar.update(1)

    reference: dict[str, Any] = {}
    for size, images in pairs.items():
        reference.update({f"{size[0]}x{size[1]}/{k}": v for k, v in reference_outputs(models, images).items()})
    np.savez(out / "inputs.npz", **inputs)
    np.savez(out / "golden.npz", **golden)
    np.savez(out / "reference.npz", **reference)
    np.savez_compressed(out / "homography.npz", **homography_reference(models, settings))
    spec = {"graphs": io, "preprocessing": preprocessing(extractor.colour, extractor.channels, extractor.divisor, settings.sizes,
                                                         extractor.host_extractor if extractor.host else ""),
            "image_sizes": {**settings.sizes, "divisor": extractor.divisor}, "keypoints": settings.keypoints}
    (out / "io.json").write_text(json.dumps(spec, indent=1))
    return {"graphs": list(settings.graphs), "validation_pairs": len(pairs) * int(next(iter(pairs.values())).shape[0] // 2),
            "validation_sizes": [list(size) for size in pairs], "exporter": "torch.onnx.export (TorchScript, dynamo=False)"}


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
    from validation.images import prepare

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
