"""Parity of a bundle's graphs with the upstream reference on photographs, as a table.

    glueforge parity aliked_lightglue --target cpu --data ../shared/data

Runs the bundle's ``extractor`` and ``matcher`` graphs through the runner of the bundle's own
runtime (what validation runs: the engine itself, or for TensorRT-RTX the FP16 ONNX it was
compiled from), and the families' unpatched upstream models with the same weights, K and
fixed depth, on every pair of the data directory (validation.images.shared_pairs). The
``end2end`` graph is those two graphs in one: validation holds it to their golden outputs.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

from glueforge import registry
from glueforge.graphs import Models
from glueforge.validation.images import load, shared_pairs
from glueforge.validation.metrics import matches_of_pair, pair_metrics


def bundle_parity(bundle: Path, models: Models, data_dir: Path,
                  cache: dict | None = None, sequence_pairs: int | None = None) -> list[tuple[str, dict[str, float]]]:
    """Metrics of each pair: keypoint_mnn, descriptor_cosine_min/mean, match_recall, match counts.

    ``cache``: the reference's features and matches per pair, kept across calls by the caller (the
    reference does not depend on the bundle's target, so several targets of one model share it).
    ``sequence_pairs``: pairs of consecutive frames per sequence (``shared_pairs``; None: all)."""
    runtime = registry.runtime(json.loads((Path(bundle) / "manifest.json").read_text())["runtime"]["runtime"])
    size, colour = models.spec.image_size, models.spec.extractor.colour
    rows = []
    with ExitStack() as stack:
        extractor = stack.enter_context(runtime.runner(bundle, "extractor", "extractor"))
        matcher = stack.enter_context(runtime.runner(bundle, "matcher", "matcher"))
        takes = list(matcher.get_input_metadata())
        for name, a, b in shared_pairs(data_dir, sequence_pairs):
            images = np.stack([load(a, size, colour), load(b, size, colour)])
            features = extractor.infer({"images": images})
            image_sizes = np.array([[size[1], size[0]]] * 2, np.float32)  # (width, height) of each image
            outputs = matcher.infer({**{k: v for k, v in features.items() if k in takes}, "image_sizes": image_sizes})
            outputs, descriptors = {**features, **outputs}, features["descriptors"]
            if cache is None or name not in cache:
                with torch.inference_mode():
                    features = models.reference_features(torch.from_numpy(images))
                reference = (features, models.reference_matches(features[0], features[1])["matches"])
                if cache is not None:
                    cache[name] = reference
            ref, ref_matches = cache[name] if cache is not None else reference
            cand = [{"keypoints": outputs["keypoints"][i], "descriptors": descriptors[i]} for i in (0, 1)]
            rows.append((name, pair_metrics((ref[0], ref[1], ref_matches), (cand[0], cand[1], matches_of_pair(outputs, 0)))))
    return rows


def table(model: str, rows: list[tuple[str, dict[str, float]]]) -> str:
    """One row per pair, named by its first image (a wide-baseline pair, or a frame and the next):
    keypoints with a mutual nearest neighbour within 1 px, descriptor cosine on them (mean, min),
    share of the reference's matches reproduced, matches (bundle / reference)."""
    header = f"{'model':17s} {'pair (first image)':34s} against the unpatched upstream model, same weights and K"
    return header + "\n" + "\n".join(
        f"{model:17s} {name:34s} mnn={m['keypoint_mnn']:.4f} cos_mean={m['descriptor_cosine_mean']:.6f} "
        f"cos_min={m['descriptor_cosine_min']:.6f} recall={m['match_recall']:.4f} "
        f"matches={int(m['matches'])}/{int(m['reference_matches'])}"
        for name, m in rows
    )
