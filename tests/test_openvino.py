"""The `openvino` target: OpenVINO IR built and run on this CPU, validated like `cpu`.

It builds in the project that test_build's cold `cpu` build left (the `built` fixture), so
the export and simplify stages, which do not depend on the runtime, come from the cache.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import yaml

from glueforge.config import Config, ConfigError
from glueforge.files import sha256_file
from glueforge.runtime import EngineBuildError, Incompatible
from glueforge.runtimes import openvino

from tests.project import MATCHED, MODELS, VERSIONS, assert_parity, ort_session

log = logging.getLogger(__name__)
PARITY = {"keypoint_mnn": 0.98, "descriptor_cosine_min": 0.999, "match_recall": 0.95}  # as for cpu


def test_openvino_bundles_hold_the_ir_and_pass_cpu_thresholds(openvino_built):
    config = Config.load(openvino_built / "models.yaml")
    assert config.target("openvino").thresholds == config.target("cpu").thresholds
    for model in MODELS:
        bundle = openvino_built / "artifacts/store" / model / VERSIONS[model] / "openvino"
        manifest = json.loads((bundle / "manifest.json").read_text())
        runtime = manifest["runtime"]
        assert runtime["runtime"] == "openvino" and runtime["openvino"] == openvino.installed_version()
        assert runtime["properties"]["INFERENCE_PRECISION_HINT"] == "f32" and runtime["device"] == "CPU"
        assert manifest["validation"]["status"] == "passed" and manifest["precision"] == "fp32"
        for graph in manifest["graphs"]:
            for suffix in (".xml", ".bin"):
                name = graph + suffix
                assert manifest["files"][name]["sha256"] == sha256_file(bundle / name)
            assert (bundle / f"{graph}.bin").stat().st_size > 100_000  # FP32 weights, not compressed to FP16
        assert json.loads((bundle / openvino.PROPERTIES).read_text())["properties"] == runtime["properties"]


def test_runner_returns_the_graph_output_names(openvino_built):
    """A compiled output tensor can carry internal names (ALIKED's keypoints do); the runner uses the graph's."""
    bundle = openvino_built / "artifacts/store/aliked_lightglue" / VERSIONS["aliked_lightglue"] / "openvino"
    io = json.loads((bundle / "io.json").read_text())
    images = np.random.default_rng(0).random((2, 3, 480, 640), dtype=np.float32)
    with openvino.runner(bundle, "end2end", "end2end") as runner:
        outputs = runner.infer({"images": images})
        assert list(runner.get_input_metadata(use_numpy_dtypes=False)) == ["images"]
    assert list(outputs) == [t["name"] for t in io["graphs"]["end2end"]["outputs"]]
    assert outputs["keypoints"].shape == (2, 1024, 2) and outputs["matches"].shape[1] == 3


@pytest.mark.parametrize("target", ["cpu", "openvino"])
def test_extractor_takes_a_single_frame(openvino_built, target):
    """A tracking loop extracts each new frame once: the extractor graph runs on one image."""
    from glueforge import registry

    for model in MODELS:
        bundle = openvino_built / "artifacts/store" / model / VERSIONS[model] / target
        manifest = json.loads((bundle / "manifest.json").read_text())
        frame = np.random.default_rng(1).random((1, 3, 480, 640), dtype=np.float32)
        with registry.runtime(manifest["runtime"]["runtime"]).runner(bundle, "extractor", "extractor") as runner:
            outputs = runner.infer({"images": frame})
        k = manifest["keypoints"]
        assert outputs["keypoints"].shape == (1, k, 2) and outputs["descriptors"].shape[:2] == (1, k)


@pytest.mark.parametrize("model", MATCHED)
def test_parity_of_openvino_bundles_with_kornia(openvino_built, download_cache, model):
    text = assert_parity(openvino_built, model, "openvino", download_cache, PARITY)
    log.info("parity of the openvino %s bundle against kornia:\n%s", model, text)


def test_an_older_openvino_is_refused_on_pull(monkeypatch):
    manifest = {"model": "m", "version": "1.0.0", "target": "openvino", "runtime": {"runtime": "openvino", "openvino": "2026.4.1"}}
    monkeypatch.setattr(openvino, "installed_version", lambda: "2025.3.0")
    with pytest.raises(Incompatible, match="needs OpenVINO 2026.4.1 or later; this machine has 2025.3.0"):
        openvino.check_compatibility(manifest)
    monkeypatch.setattr(openvino, "installed_version", lambda: "2026.5.0")
    openvino.check_compatibility(manifest)


def test_fp16_openvino_target_is_refused_when_models_yaml_loads(tmp_path):
    from tests.project import REPO

    data = yaml.safe_load((REPO / "models.yaml").read_text())
    data["targets"]["openvino"]["precision"] = "fp16"
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"targets\.openvino: runtime .openvino. builds precision fp32 or int8, not .fp16."):
        Config.load(path)


@pytest.mark.parametrize("opset, rank", [(17, 4), (18, 4), (17, 3)])
def test_instance_norm_written_out_equals_onnxruntime(opset, rank, tmp_path):
    """The rewrite keeps the function (onnxruntime before and after, and OpenVINO after), with the
    batch and the spatial dimensions dynamic.

    A lone InstanceNormalization does not show the MVN kernel's error (it shows inside DISK,
    fused with its neighbours); what the rewrite buys is proved by DISK's openvino parity above.
    """
    import onnx
    import openvino as ov
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    channels = 4
    dims = ["N", channels, "H", "W"][:rank]
    model = helper.make_model(helper.make_graph(
        [helper.make_node("InstanceNormalization", ["x", "scale", "bias"], ["y"], epsilon=1e-5, name="norm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
        [numpy_helper.from_array(rng.normal(size=channels).astype(np.float32), "scale"),
         numpy_helper.from_array(rng.normal(size=channels).astype(np.float32), "bias")]),
        opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    x = (rng.normal(size=(3, channels, 24, 32)[:rank]) * 0.05 + 2.0).astype(np.float32)  # small variance, large mean
    run = lambda m: ort_session(m.SerializeToString()).run(None, {"x": x})[0]  # noqa: E731
    before = run(model)
    prepared, meta = openvino.prepare(model, "g", None)
    assert meta == {"instance_norms_written_out": 1, "grid_samples_as_resize": 0}
    assert "InstanceNormalization" not in {n.op_type for n in prepared.graph.node}
    np.testing.assert_allclose(run(prepared), before, atol=2e-5)
    onnx.save(prepared, tmp_path / "prepared.onnx")
    compiled = ov.Core().compile_model(ov.convert_model(tmp_path / "prepared.onnx"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    np.testing.assert_allclose(compiled({"x": x})[0], before, atol=2e-5)


def test_instance_norm_of_unknown_rank_is_refused():
    from onnx import TensorProto, helper

    model = helper.make_model(helper.make_graph(
        [helper.make_node("InstanceNormalization", ["t", "scale", "bias"], ["y"], name="norm"),
         helper.make_node("Relu", ["x"], ["t"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    with pytest.raises(EngineBuildError, match="InstanceNormalization 'norm': the rank of its input 't' is unknown"):
        openvino.prepare(model, "g", None)
