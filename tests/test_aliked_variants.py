"""ALIKED t16, n16rot and n32 as standalone extractors: the exported ONNX graph against kornia, real weights.

Each variant's extractor graph at K 2000 is the one the cpu bundle holds (traced by the build's export step,
prepared for onnxruntime by its fuse step); aliked_t16's at K 1000 is traced here and prepared the same way (the
export takes K as a setting: one variant shows another K traces and holds parity). Either
graph, with dynamic H and W, runs in onnxruntime at both sizes the users run: TUM's 640x480 frames, and
KITTI's 1241x376 frames zero-padded to 1248x384 (multiples of 32, the manifest's ``pad``); the first two
frames of each sequence (the parity tables' first pair; consecutive frames differ little, and CI time counts).
kornia's ALIKED with the same variant, weights, K and padded image is the reference. The bundles (cpu, openvino,
rtx) of the models.yaml entries are built in test_build, test_openvino and test_tensorrt_rtx.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings

import numpy as np
import onnx
import pytest
import torch

from glueforge.config import Config
from glueforge.fetch import fetch
from glueforge.graphs import Models, graph_io
from glueforge.runtimes import onnxruntime as onnxruntime_target
from glueforge.validation.images import load_padded
from glueforge.validation.metrics import pair_metrics

from tests.project import REPO, SHARED_DATA, VERSIONS, ort_session

log = logging.getLogger(__name__)
VARIANTS = ("aliked_t16", "aliked_n16rot", "aliked_n32")
FRAMES = 2  # of each sequence
PARITY = {"keypoint_mnn": 0.98, "descriptor_cosine_min": 0.999}  # the acceptance


def frames(sequence: str) -> list[np.ndarray]:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: the parity photographs live there")
    paths = sorted((SHARED_DATA / "sequences" / sequence).glob("*.png"))[:FRAMES]
    assert len(paths) == FRAMES, f"no frames in {SHARED_DATA / 'sequences' / sequence}"
    return [load_padded(p, 32, "RGB") for p in paths]


@pytest.fixture(scope="module")
def sequences() -> dict[str, list[np.ndarray]]:
    return {"tum": frames("tum"), "kitti": frames("kitti")}


# each variant's bundled graph (K 2000), and one traced at another K: the cheapest variant's (a trace no build shares
# costs CI time; the other variants' at K 1000 took 50 s each beside the build chains)
CASES = [(model, 2000) for model in VARIANTS] + [("aliked_t16", 1000)]


@pytest.mark.parametrize("model,keypoints", CASES)
def test_exported_variant_matches_kornia_at_tum_and_kitti_sizes(model, keypoints, sequences, built, download_cache, tmp_path):

    config = Config.load(REPO / "models.yaml")
    spec = config.model(model)
    assert spec.matcher is None and spec.graphs == ["extractor"]
    weight = spec.extractor.weights
    settings = dataclasses.replace(config.export_settings(model, "cpu"), keypoints=keypoints)
    models = Models(settings, {"extractor": fetch(weight, config.project.weights[weight], download_cache, REPO)})
    ins, outs = graph_io("extractor", settings, models.channels, models.descriptor_dim)
    assert outs[2].shape == ("N", keypoints, 64 if model == "aliked_t16" else 128)
    if keypoints == config.export_settings(model, "cpu").keypoints:  # the graph of the cpu bundle
        onnx_path = built / "artifacts/store" / model / VERSIONS[model] / "cpu/extractor.onnx"
        assert onnx_path.is_file(), f"the cpu build has no bundle of {model}"
    else:  # another K: traced here, prepared as the cpu target's fuse step prepares it
        traced, onnx_path = tmp_path / "traced.onnx", tmp_path / "extractor.onnx"
        example = torch.from_numpy(sequences["tum"][0][None])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(models.graph("extractor"), (example,), str(traced), dynamo=False, opset_version=17,
                              input_names=[t.name for t in ins], output_names=[t.name for t in outs],
                              dynamic_axes={t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
                                            for t in ins + outs})
        prepared, _ = onnxruntime_target.prepare(onnx.load(str(traced)), "extractor", config.target("cpu"))
        onnx.save(prepared, str(onnx_path))
    session = ort_session(str(onnx_path))
    worst: dict[str, dict[str, float]] = {}
    for sequence, images in sequences.items():
        for image in images:
            keypoints_, _, descriptors = session.run(None, {"images": image[None]})
            with torch.inference_mode():
                ref = models.reference_features(torch.from_numpy(image[None]))[0]
            assert len(ref["keypoints"]) == keypoints, "kornia found fewer keypoints than K on a photograph"
            cand = {"keypoints": keypoints_[0], "descriptors": descriptors[0]}
            m = pair_metrics((ref, ref, np.zeros((0, 2), int)), (cand, cand, np.zeros((0, 2), int)))
            size = "x".join(map(str, image.shape[1:]))
            row = worst.setdefault(f"{sequence} {size}", {k: 1.0 for k in PARITY})
            for k in PARITY:
                row[k] = min(row[k], m[k])
    for where, row in worst.items():
        log.info("%s K=%d %s: mnn=%.4f cos_min=%.6f", model, keypoints, where, row["keypoint_mnn"], row["descriptor_cosine_min"])
    assert set(worst) == {"tum 480x640", "kitti 384x1248"}
    for where, row in worst.items():
        for metric, threshold in PARITY.items():
            assert row[metric] >= threshold, f"{model} K={keypoints} {where}: {metric} {row[metric]:.5f} < {threshold}"
