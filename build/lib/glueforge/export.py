"""export: weights + exporter + patches -> ONNX graphs, their I/O spec, golden and reference outputs.

Besides the graphs, this stage records what later stages need and cannot compute without
torch (a Jetson runner has none):

- ``inputs.npz``: the validation inputs of every graph (preprocessed images, and the
  extractor outputs that feed the matcher-only graph);
- ``golden.npz``: the patched PyTorch model's outputs on them (exactly what was exported);
- ``reference.npz``: kornia's unpatched model on the same images (the task reference).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from exporters.graphs import Models, graph_io
from glueforge.config import ExportSettings
from validation.images import PREPROCESSING, default_pairs

log = logging.getLogger(__name__)


def export(settings: ExportSettings, weights: Mapping[str, Path], out: Path) -> dict[str, Any]:
    """Export ``settings.graphs`` into ``out``; return the stage metadata."""
    torch.manual_seed(0)
    models = Models(settings, weights)
    images = torch.from_numpy(default_pairs(settings.image_size))
    inputs: dict[str, np.ndarray] = {}
    golden: dict[str, np.ndarray] = {}
    io: dict[str, Any] = {}
    for graph in settings.graphs:
        module = models.graph(graph)
        example = models.example_inputs(graph, images)
        ins, outs = graph_io(graph, settings, models.channels, models.descriptor_dim)
        dynamic = {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)} for t in ins + outs}
        log.info("export %s/%s: tracing", settings.model, graph)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about Python scalars are expected and harmless here
            torch.onnx.export(
                module,
                example,
                str(out / f"{graph}.onnx"),
                dynamo=False,
                opset_version=settings.opset,
                input_names=[t.name for t in ins],
                output_names=[t.name for t in outs],
                dynamic_axes=dynamic,
                do_constant_folding=True,
            )
        with torch.no_grad():
            result = module(*example)
        for spec, value in zip(ins, example):
            inputs[f"{graph}/{spec.name}"] = value.numpy()
        for spec, value in zip(outs, result):
            golden[f"{graph}/{spec.name}"] = value.numpy()
        io[graph] = {"inputs": [t.as_dict() for t in ins], "outputs": [t.as_dict() for t in outs]}

    reference = reference_outputs(models, images)
    np.savez(out / "inputs.npz", **inputs)
    np.savez(out / "golden.npz", **golden)
    np.savez(out / "reference.npz", **reference)
    (out / "io.json").write_text(json.dumps({"graphs": io, "preprocessing": PREPROCESSING}, indent=1))
    return {"graphs": list(settings.graphs), "validation_pairs": int(images.shape[0] // 2),
            "exporter": "torch.onnx.export (TorchScript, dynamo=False)"}


def reference_outputs(models: Models, images: torch.Tensor) -> dict[str, np.ndarray]:
    """kornia's features of every image and matches of every pair, flattened to npz keys."""
    features = models.reference_features(images)
    out: dict[str, np.ndarray] = {}
    for i, f in enumerate(features):
        for name, value in f.items():
            out[f"features/{i}/{name}"] = value
    for pair in range(len(features) // 2):
        matches = models.reference_matches(features[2 * pair], features[2 * pair + 1])
        for name, value in matches.items():
            out[f"pairs/{pair}/{name}"] = value
    return out
