"""INT8 extractors (glueforge/quantize.py): the calibration set, the QDQ form each runtime is given, and the refusals.

Small graphs built here, no model build: the builds of the int8 targets are timed and validated in the issue's
benchmarks (benchmarks/int8.py), and the TensorRT command line is checked below.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from glueforge import quantize
from glueforge.config import Config
from glueforge.runtimes import onnxruntime as ort_runtime
from glueforge.runtimes import openvino as ov_runtime
from glueforge.runtimes import tensorrt
from glueforge.schema import SYMMETRIC_INT8, Calibration
from tests.project import REPO


def _conv_then_matmul() -> onnx.ModelProto:
    """images (N, 3, H, W) -> Conv 3->8 (3x3) -> Relu -> Conv 8->8 (the head) -> global mean (N, 8) -> MatMul (8, 4)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "w")
    b = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "b")
    w2 = numpy_helper.from_array(rng.standard_normal((8, 8, 1, 1)).astype(np.float32) * 0.3, "w2")
    m = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "m")
    nodes = [helper.make_node("Conv", ["images", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["h"], name="head_conv"),
             helper.make_node("ReduceMean", ["h"], ["g"], axes=[2, 3], keepdims=0),
             helper.make_node("MatMul", ["g", "m"], ["out"], name="head")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4])], [w, b, w2, m])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _images(count: int = 4, size: tuple[int, int] = (32, 48)) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.random((3, *size), dtype=np.float32) for _ in range(count)]


def _initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x})[0]


@pytest.mark.parametrize("recipe, dtype", [(SYMMETRIC_INT8, np.int8), (ort_runtime.QUANTIZATION, np.uint8)])
def test_the_convolutions_are_quantized_as_the_recipe_says_and_nothing_else(recipe, dtype):
    model = _conv_then_matmul()
    images = _images()
    feeds = quantize.feeds([{"name": "images", "shape": ["N", 3, "H", "W"]}], images)
    quantized, record = quantize.quantize(model, feeds, recipe, "minmax")

    assert quantize.head_convolutions(model) == ["head_conv"]
    assert record["convolutions"] == 2 and record["calibration_calls"] == len(images)
    by_output = {o: n for n in quantized.graph.node for o in n.output}
    head_conv = next(n for n in quantized.graph.node if n.name == "head_conv")
    if recipe.outputs:  # the first conv's output is quantized; the head, whose output is the features, stays float
        assert record["float_convolutions"] == ["head_conv"] and record["quantized_convolutions"] == 1
        assert head_conv.input[1] == "w2" and by_output["c"].op_type == "Conv"
        assert any(n.op_type == "QuantizeLinear" and n.input[0] == "c" for n in quantized.graph.node)
    else:  # every conv's inputs, and no output
        assert record["float_convolutions"] == [] and record["quantized_convolutions"] == 2
        assert by_output[head_conv.input[1]].op_type == "DequantizeLinear"
        assert not any(n.op_type == "QuantizeLinear" and n.input[0] in ("c", "h") for n in quantized.graph.node)
    head = next(n for n in quantized.graph.node if n.op_type == "MatMul")
    assert head.input[1] == "m"  # the head reads its float weights: no Q/DQ around the MatMul
    conv = next(n for n in quantized.graph.node if n.name == "conv")
    assert conv.input[2] == "b"  # the bias stays float (TensorRT quantizes none)

    weight_dq = by_output[conv.input[1]]
    assert weight_dq.op_type == "DequantizeLinear"
    weight_q = by_output[weight_dq.input[0]] if weight_dq.input[0] in by_output else None
    scale = _initializer(quantized, weight_dq.input[1])
    assert scale.shape == (8,)  # per output channel
    zero = _initializer(quantized, weight_dq.input[2]) if weight_q is None else _initializer(quantized, weight_q.input[2])
    assert zero.dtype == np.int8 and not zero.any()  # symmetric weights

    activation_dq = by_output[conv.input[0]]
    activation_zero = _initializer(quantized, activation_dq.input[2])
    assert activation_zero.dtype == dtype and activation_zero.shape == ()  # per tensor
    if recipe.symmetric_activations:
        assert activation_zero == 0  # TensorRT's explicit quantization reads zero points of 0 only

    x = images[0][None]
    expected, got = _run(model, x), _run(quantized, x)
    assert not np.array_equal(expected, got)  # quantized for real
    np.testing.assert_allclose(got, expected, atol=0.05 * np.abs(expected).max())


def test_end2end_calibrates_on_pairs_of_the_same_images():
    images = _images(5)
    feeds = quantize.feeds([{"name": "images", "shape": ["2B", 3, "H", "W"]}], images)
    assert [f["images"].shape[0] for f in feeds] == [2, 2, 2]
    stacked = np.concatenate([f["images"] for f in feeds])
    np.testing.assert_array_equal(stacked[:5], np.stack(images))
    np.testing.assert_array_equal(stacked[5], images[0])  # the odd one out pairs with the first
    assert [f["images"].shape for f in quantize.feeds([{"name": "images", "shape": ["N", 3, "H", "W"]}], images)] == [
        (1, 3, 32, 48)] * 5


def test_the_default_set_is_held_out_from_validation_and_keyed_by_content():
    default = quantize.calibration_set(Calibration(), REPO)
    names = [n for n, _ in default.files]
    assert len(names) == 12 and default.source == quantize.DEFAULT_SOURCE
    # the validation pair and the homography warps' photographs are not calibration images
    assert not {"motorcycle_left.png", "motorcycle_right.png", "astronaut.png", "coffee.png", "chelsea.png",
                "rocket.jpg"} & set(names)
    assert quantize.calibration_set(Calibration(count=4), REPO).digest != default.digest
    assert quantize.calibration_set(Calibration(method="entropy"), REPO).digest == default.digest  # the files only

    images = quantize.load_images(default, REPO, (48, 64), "L")
    assert len(images) == 12 and all(i.shape == (1, 48, 64) and i.dtype == np.float32 for i in images)


def test_a_user_directory_is_read_by_name_and_each_file_checked_before_it_is_used(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(tmp_path / f"frame{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    spec = Calibration(images=str(tmp_path), count=2)
    calibration = quantize.calibration_set(spec, REPO)
    assert [n for n, _ in calibration.files] == ["frame0.png", "frame1.png"] and calibration.source == str(tmp_path)
    assert len(quantize.load_images(calibration, REPO, (16, 16), "RGB")) == 2

    Image.fromarray(np.full((20, 30, 3), 255, np.uint8)).save(tmp_path / "frame1.png")  # changed after planning
    with pytest.raises(quantize.CalibrationError, match="frame1.png changed or vanished"):
        quantize.load_images(calibration, REPO, (16, 16), "RGB")
    assert quantize.calibration_set(spec, REPO).digest != calibration.digest  # a new plan keys on the new bytes


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing", "is not a directory"),
    (lambda d: d, "holds no image"),
])
def test_a_calibration_directory_that_cannot_serve_is_named(tmp_path, make, message):
    with pytest.raises(quantize.CalibrationError, match=f"calibration.images: .* {message}"):
        quantize.calibration_set(Calibration(images=str(make(tmp_path))), REPO)


def test_each_runtime_that_builds_int8_says_how():
    assert ort_runtime.QUANTIZATION.activations == "uint8" and not ort_runtime.QUANTIZATION.symmetric_activations
    assert ov_runtime.QUANTIZATION == tensorrt.QUANTIZATION == SYMMETRIC_INT8
    config = Config.load(REPO / "models.yaml")
    for name in ("cpu_int8", "openvino_int8", "orin_nano_int8"):
        target = config.target(name)
        assert target.quantized and "calibration" in type(target.view("fuse")).__declared__
    assert not config.target("cpu").quantized and "calibration" not in type(config.target("cpu").view("fuse")).__declared__


def test_orin_nano_int8_builds_with_int8_and_fp16_flags():
    target = Config.load(REPO / "models.yaml").target("orin_nano_int8")
    inputs = [{"name": "images", "shape": ["N", 3, "H", "W"]}]
    sizes = {"min": [256, 320], "opt": [480, 640], "max": [768, 1280]}
    cmd = tensorrt.trtexec_command(Path("/usr/src/tensorrt/bin/trtexec"), Path("extractor.onnx"), Path("e.engine"),
                                   target, inputs, fp32_layers=["norm"], sizes=sizes)
    assert "--int8" in cmd and "--fp16" in cmd
    assert "--precisionConstraints=obey" in cmd and "--layerPrecisions=norm:fp32" in cmd
    fp16 = Config.load(REPO / "models.yaml").target("orin_nano")
    assert "--int8" not in tensorrt.trtexec_command(Path("trtexec"), Path("x.onnx"), Path("e"), fp16, inputs, sizes=sizes)


@pytest.mark.parametrize("compute, reason", [("8.7", "compute capability 8.9 or newer; 8.7 has none"),
                                             ("9.0", "builds no FP8 engines yet")])
def test_fp8_is_refused_at_load_with_its_reason(tmp_path, compute, reason):
    import yaml

    from glueforge.config import ConfigError

    overlay = tmp_path / "fp8.yaml"
    overlay.write_text(yaml.safe_dump({"targets": {"orin_fp8": {
        "runtime": "tensorrt", "precision": "fp8", "builder": "trtexec", "compute_capability": [compute],
        "tensorrt_version": "10.3", "tolerances": {"keypoints": {"atol": 1.0}},
        "thresholds": {"keypoint_mnn": 0.9, "descriptor_cosine": 0.99, "match_recall": 0.9}}}}))
    with pytest.raises(ConfigError, match=reason) as raised:
        Config.load(REPO / "models.yaml", overlays=[overlay])
    # the file, then one line naming the target and the reason
    assert str(overlay) in str(raised.value)
    assert [line for line in str(raised.value).splitlines() if "targets.orin_fp8: precision fp8" in line and reason in line]


def test_the_parser_proxy_builds_the_tensorrt_qdq_form(tmp_path):
    """TensorRT-RTX's parser and builder (the Jetson targets' proxy) take the symmetric INT8 Q/DQ convolutions."""
    from glueforge.runtime import BuildContext

    pytest.importorskip("tensorrt_rtx")
    quantized, _ = quantize.quantize(_conv_then_matmul(), quantize.feeds(
        [{"name": "images", "shape": ["N", 3, "H", "W"]}], _images()), tensorrt.QUANTIZATION, "minmax")
    onnx.save(quantized, str(tmp_path / "extractor.onnx"))
    target = Config.load(REPO / "models.yaml").target("orin_nano_int8")
    io = {"extractor": {"inputs": [{"name": "images", "dtype": "float32", "shape": ["N", 3, "H", "W"]}]}}
    context = BuildContext(target_name="orin_nano_int8", io=io, sizes={"min": [32, 32], "opt": [32, 48], "max": [64, 64]})
    record = tensorrt.check({"extractor": tmp_path / "extractor.onnx"}, target, context)
    assert record["graphs"]["extractor"]["parsed"] and record["graphs"]["extractor"]["built"]


def test_an_edited_calibration_image_rekeys_the_int8_fuse_step_and_nothing_of_a_float_target(tmp_path):
    import yaml
    from PIL import Image

    from glueforge.pipeline import Pipeline

    images = tmp_path / "calibration"
    images.mkdir()
    for i in range(2):
        Image.fromarray(np.full((20, 30, 3), 60 * i, np.uint8)).save(images / f"{i}.png")
    overlay = tmp_path / "team.yaml"
    overlay.write_text(yaml.safe_dump({"targets": {"cpu_int8": {"calibration": {"images": str(images)}}}}))

    def keys(target: str) -> dict[str, str]:
        pipeline = Pipeline(Config.load(REPO / "models.yaml", overlays=[overlay]), REPO)
        return {stage: repr(pipeline.own_key(stage, "xfeat_lighterglue", target, None))
                for stage in ("fuse", "engine", "validate")}

    before = {t: keys(t) for t in ("cpu_int8", "cpu")}
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(images / "1.png")  # same name, other bytes
    after = {t: keys(t) for t in ("cpu_int8", "cpu")}
    assert before["cpu_int8"]["fuse"] != after["cpu_int8"]["fuse"]
    assert before["cpu_int8"]["engine"] == after["cpu_int8"]["engine"]  # rebuilt from the new fuse result, not re-keyed
    assert before["cpu"] == after["cpu"]


def test_only_an_int8_targets_fuse_step_holds_the_quantizer_as_its_code():
    from glueforge.identity import closure
    from glueforge.pipeline import STAGES, Pipeline

    pipeline = Pipeline(Config.load(REPO / "models.yaml"), REPO)
    code = {t: closure(STAGES["fuse"].modules(pipeline.job("xfeat_lighterglue", t), None))
            for t in ("cpu", "cpu_int8", "openvino", "openvino_int8", "orin_nano", "orin_nano_int8")}
    assert {t for t, modules in code.items() if "glueforge.quantize" in modules} == {"cpu_int8", "openvino_int8",
                                                                                      "orin_nano_int8"}
    assert all("glueforge.quantize" not in closure(STAGES[s].modules(pipeline.job("xfeat_lighterglue", "cpu_int8"), None))
               for s in ("engine", "validate", "benchmark", "bundle"))
