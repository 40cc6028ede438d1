"""Parity of a bundle's graphs with kornia's reference on photographs, as a table.

    python -m validation.parity --model aliked_lightglue --target cpu --data ../shared/data

Runs the bundle's ``end2end`` and ``extractor`` graphs (the ONNX the engine was built from)
with plain onnxruntime, and kornia's unpatched models with the same weights, K and fixed
depth, on every pair of the data directory (validation.images.shared_pairs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from exporters.graphs import Models
from validation.images import load, shared_pairs
from validation.metrics import pair_metrics
from validation.validate import dense_to_list


def bundle_parity(bundle: Path, models: Models, data_dir: Path) -> list[tuple[str, dict[str, float]]]:
    """Metrics of each pair: keypoint_mnn, descriptor_cosine_min/mean, match_recall, match counts."""
    end2end = ort.InferenceSession(str(bundle / "end2end.onnx"), providers=["CPUExecutionProvider"])
    extractor = ort.InferenceSession(str(bundle / "extractor.onnx"), providers=["CPUExecutionProvider"])
    dense = [o.name for o in end2end.get_outputs()][1] == "matches0"
    rows = []
    for name, a, b in shared_pairs(data_dir):
        images = np.stack([load(a, models.spec.image_size), load(b, models.spec.image_size)])
        keypoints, matches, _ = end2end.run(None, {"images": images})
        _, _, descriptors = extractor.run(None, {"images": images})
        with torch.inference_mode():
            ref = models.reference_features(torch.from_numpy(images))
        ref_matches = models.reference_matches(ref[0], ref[1])["matches"]
        cand = [{"keypoints": keypoints[i], "descriptors": descriptors[i]} for i in (0, 1)]
        pairs = (dense_to_list(matches) if dense else matches)[:, 1:]
        rows.append((name, pair_metrics((ref[0], ref[1], ref_matches), (cand[0], cand[1], pairs))))
    return rows


def table(model: str, rows: list[tuple[str, dict[str, float]]]) -> str:
    return "\n".join(
        f"{model:17s} {name:34s} mnn={m['keypoint_mnn']:.4f} cos_mean={m['descriptor_cosine_mean']:.6f} "
        f"cos_min={m['descriptor_cosine_min']:.6f} recall={m['match_recall']:.4f} "
        f"matches={int(m['matches'])}/{int(m['reference_matches'])}"
        for name, m in rows
    )


def main() -> None:
    from glueforge.cli import configure_logging
    from glueforge.pipeline import Pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--target", default="cpu")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    args = parser.parse_args()
    configure_logging()
    pipeline = Pipeline.load()
    bundle = pipeline.result("bundle", args.model, args.target).path
    if json.loads((bundle / "manifest.json").read_text())["runtime"]["runtime"] == "tensorrt":
        raise SystemExit("TensorRT bundles hold engines only; run parity where they run")
    weights = {role: pipeline.fetch(name) for role, name in pipeline.weight_names(args.model).items()}
    models = Models(pipeline.config.export_settings(args.model, args.target), weights)
    print(table(args.model, bundle_parity(bundle, models, args.data)))


if __name__ == "__main__":
    main()
