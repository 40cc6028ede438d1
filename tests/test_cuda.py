"""The cuda target (runtimes/onnxruntime_cuda.py): what CI checks without a GPU, and what runs where there is one.

Without a GPU (CI):

- `doit build target=cuda model=aliked_lightglue` (the orin chain, from the rtx chain's traced graphs and
  references: tests/conftest.py) builds and checks the static graphs, then its engine stage names the one command
  that finishes on a GPU machine; no bundle is made, nothing is published;
- the graphs: static at the declared shapes, no shape arithmetic left for the CPU, attention and GELU fused, FP16
  inside with FP32 inputs and outputs, dense match outputs;
- the fusions keep parity: the matcher prepared by the same steps at fp32, run on the CPU through :class:`CudaGraph`'s
  IO binding (host buffers), against the simplified graph, on the validation pair's features;
- the placement is read from a real onnxruntime profile, and what runs off a provider is named;
- ``glueforge.static`` finds shape arithmetic and folds it at the declared sizes;
- a static size an extractor cannot take is refused when models.yaml loads; validation runs the static size only.

With a GPU (skipped here, with the reason): the engine stage's placement (0 nodes off the GPU) and CUDA graph capture,
and :class:`CudaGraph`'s outputs against the CPU provider's. ``scripts/cuda_device.sh`` runs the whole build there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from glueforge.runtimes import onnxruntime_cuda as cuda
from glueforge.static import fix_shapes, shape_findings, static_shapes, StaticShapeError
from tests.project import ORIN_MODEL, REPO, clone_project, doit, ort_session

MODEL = ORIN_MODEL  # aliked_lightglue: the orin chain builds it for cuda too
TARGET = "cuda"
DEVICE_LINE = (f"doit handoff target={TARGET} model={MODEL} dest=handoff here, then on the GPU machine, in a clone of "
               f"the same commit: scripts/cuda_device.sh handoff")
GPU = cuda.gpu_missing()


def _cached(project: Path, stage: str, graph: str | None = None):
    from glueforge.pipeline import Pipeline

    result = Pipeline.load(project).cached(stage, MODEL, TARGET, graph)
    assert result is not None, f"{stage} of {MODEL} for {TARGET} is not cached in {project}"
    return result


def test_build_without_a_gpu_checks_the_graphs_and_names_the_device_command(fused):
    log = (fused / "cuda_build.log").read_text()
    status = int(log.splitlines()[0].removeprefix("exit status "))
    assert status != 0  # no bundle: the build did not finish
    executed = log.splitlines()[1].removeprefix("executed: ").split()
    assert f"fuse:{TARGET}:{MODEL}" in executed and f"engine:{TARGET}:{MODEL}" in executed
    assert not [t for t in executed if t.startswith(("export:", "simplify:"))]  # the rtx chain's graphs: equal views
    assert f"TaskFailed - taskid:engine:{TARGET}:{MODEL}" in log
    summary = log.split(f"build summary for target {TARGET}: 0 bundled, 1 failed\n", 1)[1]  # stdout, then stderr
    line = summary.splitlines()[0]
    assert line.strip().startswith(f"{MODEL}  failed at engine: target 'cuda' runs on an NVIDIA GPU")
    assert line.endswith(DEVICE_LINE)  # the device command, in the one line
    assert not list((fused / "artifacts/store").glob(f"{MODEL}/*/{TARGET}"))
    assert "publish" not in " ".join(executed)
    meta = _cached(fused, "fuse").meta
    assert meta["check"] == {g: {"static": True, "shape_findings": 0} for g in ("end2end", "extractor", "matcher")}


def test_cuda_graphs_are_static_fused_fp16_with_dense_matches(fused):
    fuse = _cached(fused, "fuse")
    declared = {"images": {"end2end": [2, 3, 480, 640], "extractor": [1, 3, 480, 640]},
                "keypoints": {"matcher": [2, 1024, 2]}, "descriptors": {"matcher": [2, 1024, 128]},
                "image_sizes": {"matcher": [2, 2]}}
    for graph in ("end2end", "extractor", "matcher"):
        model = onnx.load(str(fuse.file(f"{graph}.onnx")))
        ops = [n.op_type for n in model.graph.node]
        assert shape_findings(model) == [], graph
        assert not {"Shape", "Size", "NonZero", "ConstantOfShape"} & set(ops), graph
        for value in model.graph.input:
            dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
            assert dims == declared[value.name][graph], (graph, value.name)
            assert value.type.tensor_type.elem_type == TensorProto.FLOAT  # FP32 in and out: casts inside
        assert {o.name for o in model.graph.output} >= ({"keypoints"} if graph != "matcher" else {"matches0", "mscores0"})
        initializers = {i.name: i.data_type for i in model.graph.initializer}
        weights = [initializers[n.input[1]] for n in model.graph.node
                   if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in initializers]
        assert weights and set(weights) == {TensorProto.FLOAT16}, graph  # every convolution and product in FP16
        if graph != "extractor":
            assert ops.count("MultiHeadAttention") == 36 and ops.count("Gelu") == 36, graph  # 9 layers x 2 images x 2
            assert "Erf" not in ops
        assert fuse.meta[graph]["static_shapes"] == {i.name: declared[i.name][graph] for i in model.graph.input}


def test_the_fusions_keep_parity_through_io_binding(fused):
    """The matcher through prepare's steps at fp32 (fp16 needs the GPU) against the simplified graph, both on the CPU,
    on the validation pair's features repeated as two pairs (two runs of the static one-pair graph)."""
    from glueforge.runtimes.onnxruntime import OrtSession, session

    simplified = _cached(fused, "simplify", "matcher").file("matcher.onnx")
    target = cuda.Target.model_validate({"runtime": "onnxruntime_cuda", "precision": "fp32",
                                         "shapes": {"image_size": [480, 640]}, "tolerances": {},
                                         "thresholds": {"keypoint_mnn": 0.9, "descriptor_cosine": 0.9, "match_recall": 0.9}})
    prepared, meta = cuda.prepare(onnx.load(str(simplified)), "matcher", target)
    assert meta["attention_fused"] == 36 and meta["transformer_fused"] == {"Gelu": 36}
    assert meta["nodes"]["fused"] < meta["nodes"]["exported"]
    with np.load(_cached(fused, "reference").file("inputs.npz")) as inputs:
        feed = {k.split("/", 1)[1]: inputs[k] for k in inputs.files if k.startswith("matcher@480x640/")}
    feed2 = {k: np.concatenate([v, v]) for k, v in feed.items()}  # two pairs
    expected = ort_session(simplified).run(None, feed)
    graph = cuda.CudaGraph(Path("matcher.onnx"), cuda.CudaSession(), device="cpu",
                           session_=session(prepared.SerializeToString(), OrtSession())._session)
    out = graph.infer(feed2)
    assert list(out) == ["matches0", "mscores0"] and out["matches0"].shape == (2, 1024)
    for pair in range(2):
        np.testing.assert_array_equal(out["matches0"][pair], expected[0][0])
        np.testing.assert_allclose(out["mscores0"][pair], expected[1][0], atol=1e-4)
    assert (expected[0][0] >= 0).sum() > 300  # a real pair's matches, not an empty comparison
    with pytest.raises(cuda.EngineBuildError, match=r"input 'keypoints': this engine is static at \[2, 1024, 2\]"):
        graph.infer({**feed, "keypoints": feed["keypoints"][:, :512]})


def _relu_model(dims: list) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Reshape", ["r", "s"], ["y"])]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)],
                             ir_version=9)


def test_static_finds_shape_arithmetic_and_folds_it_at_the_declared_size():
    model = _relu_model(["N", 3])
    findings = shape_findings(model)
    assert any("input 'x' is not static" in f for f in findings)
    assert any("Shape node" in f for f in findings)
    assert any("Reshape node" in f and "input 1" in f and "on the CPU" in f for f in findings)
    fixed, shapes = fix_shapes(model, {"N": 2})
    assert shapes == {"x": [2, 3]} and shape_findings(fixed) == []
    with pytest.raises(StaticShapeError, match=r"input 'x' has dimensions \['N'\] with no declared size"):
        static_shapes(model, {"2B": 2})


def test_placement_is_read_from_the_profile(tmp_path):
    import onnxruntime as ort

    model = tmp_path / "m.onnx"
    onnx.save(fix_shapes(_relu_model(["N", 3]), {"N": 2})[0], str(model))
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "p")
    s = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    s.run(None, {"x": np.ones((2, 3), np.float32)})
    where = cuda.placement(Path(s.end_profiling()))
    assert where == {"CPUExecutionProvider": {"Relu": 1}}  # Reshape to a constant shape folds away in the session
    assert cuda.off_provider(where) == {"Relu": 1}  # not on the CUDA provider: named
    assert cuda.off_provider(where, "CPUExecutionProvider") == {}
    on_gpu = {"CUDAExecutionProvider": {"Conv": 3, "MemcpyToHost": 1}, "CPUExecutionProvider": {"Gather": 2}}
    assert cuda.off_provider(on_gpu) == {"MemcpyToHost": 1, "Gather": 2}


def test_a_static_size_the_extractor_cannot_take_is_refused_when_models_yaml_loads(tmp_path):
    overlay = tmp_path / "bad.yaml"
    overlay.write_text("targets:\n  cuda: {shapes: {image_size: [484, 640]}}\n")
    proc = subprocess.run([sys.executable, "-m", "doit", "list", "target=cuda", f"config={overlay}"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "targets.cuda: its static image size [484, 640] for model 'aliked_lightglue'; its extractor takes " \
           "multiples of 32" in proc.stderr


def test_validation_runs_the_static_size_only(tmp_path):
    from glueforge.config import Config
    from glueforge.validation.validate import target_cases

    config = Config.load(REPO / "models.yaml")
    flat = {"extractor@480x640/images": 0, "extractor@384x1248/images": 0}
    assert target_cases(flat, "extractor", config.target("cuda")) == ["480x640"]
    assert target_cases(flat, "extractor", config.target("rtx")) == ["480x640", "384x1248"]
    settings = config.export_settings("disk_lightglue", "cuda")  # the model's own size: rtx's views, shared
    assert settings == config.export_settings("disk_lightglue", "rtx")
    # a declared size other than the model's is traced at the model's and recorded for validation at its own
    overlay = tmp_path / "kitti.yaml"
    overlay.write_text("targets:\n  cuda: {shapes: {image_size: [384, 1248]}}\n")
    kitti = Config.load(REPO / "models.yaml", [overlay])
    settings = kitti.export_settings("disk_lightglue", "cuda")
    assert settings.image_size == [480, 640] and settings.validate_sizes == ((384, 1248),)
    assert target_cases({**flat, "extractor@384x1248/x": 0}, "extractor", kitti.target("cuda")) == ["384x1248"]


def test_the_device_check_says_what_is_missing_in_one_line():
    proc = subprocess.run([sys.executable, "-m", "glueforge.runtimes.onnxruntime_cuda"], capture_output=True, text=True)
    if GPU is None:
        pytest.skip("this machine has the CUDA provider and a GPU: the check passes (tested below)")
    assert proc.returncode == 2 and proc.stdout == ""
    [line] = proc.stderr.splitlines()
    assert line.startswith("glueforge: the cuda target cannot run here: ")


@pytest.mark.skipif(GPU is not None, reason=f"needs an NVIDIA GPU and onnxruntime-gpu: {GPU}")
def test_on_a_gpu_every_node_runs_there_and_the_run_is_captured(fused, tmp_path):
    from glueforge.runtime import BuildContext
    from glueforge.config import Config

    fuse = _cached(fused, "fuse")
    target = Config.load(REPO / "models.yaml").target(TARGET)
    graphs = {g: fuse.file(f"{g}.onnx") for g in ("extractor", "matcher")}
    meta = cuda.build(graphs, tmp_path, target, BuildContext(target_name=TARGET, io={}, model=MODEL))
    for graph, record in meta["engines"].items():
        assert set(record["placement"]) == {"CUDAExecutionProvider"}, record
        assert record["cuda_graph"] is True, record
    with np.load(_cached(fused, "reference").file("inputs.npz")) as inputs:
        feed = {k.split("/", 1)[1]: inputs[k] for k in inputs.files if k.startswith("matcher@480x640/")}
    out = cuda.open_graph(tmp_path, "matcher").infer(feed)
    assert json.loads((tmp_path / cuda.SESSION).read_text())["runtime"] == cuda.NAME
    assert (out["matches0"] >= 0).sum() > 300


def test_the_handoff_and_the_device_script_stop_on_a_machine_without_a_gpu(fused, tmp_path):
    """`doit handoff target=cuda` writes the GPU machine's commands; scripts/cuda_device.sh, given that hand-off, checks
    for a GPU before it installs anything and stops there with one line."""
    project = clone_project(tmp_path / "project", artifacts_from=fused.parent / "pristine")
    dest = tmp_path / "handoff"
    proc, executed, _ = doit(project, "handoff", f"target={TARGET}", f"model={MODEL}", f"dest={dest}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not [t for t in executed if t.split(":")[0] in ("export", "simplify", "fuse", "reference")]  # all built
    notes = json.loads((dest / "handoff.json").read_text())
    assert cuda.DEVICE_SETUP in notes["commands"] and not any("jetson" in c for c in notes["commands"])
    assert any(c.startswith(f'GLUEFORGE_REMOTE_CACHE="$HANDOFF" doit build target={TARGET} model={MODEL}')
               for c in notes["commands"])
    assert {s.split("/")[0] for s in notes["results"][MODEL]} == {"export", "interface", "reference", "simplify", "fuse"}
    readme = (dest / "HANDOFF.md").read_text()
    assert "the GPU machine" in readme and 'scripts/cuda_device.sh "$HANDOFF"' in readme
    if GPU is None:
        pytest.skip("this machine has a GPU: the script would build (scripts/cuda_device.sh on the device)")
    venv = tmp_path / "venv"
    script = subprocess.run(["bash", str(REPO / "scripts/cuda_device.sh"), str(dest)], cwd=project, capture_output=True,
                            text=True, env={**os.environ, "VENV": str(venv), "OUT": str(tmp_path / "out")})
    assert script.returncode == 2, script.stdout + script.stderr
    assert script.stdout.splitlines() == ["== 1. check the clone and the GPU",  # the script logs both streams
                                          "glueforge: the cuda target cannot run here: no NVIDIA GPU was found (nvidia-smi)"]
    assert not venv.exists()  # nothing installed
    assert (tmp_path / "out/device.log").read_text() == script.stdout


@pytest.fixture()
def cpu_as_provider(monkeypatch):
    """The engine stage's code on the CPU provider, as a stand-in for the GPU: the providers, the buffers' device
    and the GPU check swapped; what it reads of the profile and how it runs the graph are the real code."""
    monkeypatch.setattr(cuda, "gpu_missing", lambda: None)
    monkeypatch.setattr(cuda, "providers", lambda settings, cuda_graph: ["CPUExecutionProvider"])
    monkeypatch.setattr(cuda, "BUFFERS", "cpu")


def _target():
    from glueforge.config import Config

    return Config.load(REPO / "models.yaml").target(TARGET)


def test_the_engine_stage_records_placement_and_refuses_nodes_off_the_provider(cpu_as_provider, monkeypatch, tmp_path):
    from glueforge.runtime import BuildContext

    graph = tmp_path / "relu.onnx"
    onnx.save(fix_shapes(_relu_model(["N", 3]), {"N": 2})[0], str(graph))
    context = BuildContext(target_name=TARGET, io={}, model=MODEL)
    monkeypatch.setattr(cuda, "PROVIDER", "CPUExecutionProvider")  # the provider every node must run on
    (tmp_path / "ok").mkdir()
    meta = cuda.build({"relu": graph}, tmp_path / "ok", _target(), context)
    assert meta["engines"]["relu"]["placement"] == {"CPUExecutionProvider": 1}
    assert meta["engines"]["relu"]["profile_shapes"] == {"x": [[2, 3]] * 3}  # the API's fit: the one static shape
    assert meta["files"] == {"relu": "relu.onnx"} and not list((tmp_path / "ok").glob("*.json.*"))
    assert not list((tmp_path / "ok").glob("relu.profile*"))  # the profile is read, not shipped
    out = cuda.open_graph(tmp_path / "ok", "relu").infer({"x": -np.ones((4, 3), np.float32)})  # two runs of 2
    np.testing.assert_array_equal(out["y"], np.zeros((4, 3), np.float32))
    monkeypatch.setattr(cuda, "PROVIDER", "CUDAExecutionProvider")  # now the CPU provider is "off the GPU"
    (tmp_path / "off").mkdir()
    with pytest.raises(cuda.EngineBuildError, match=r"relu: 1 nodes would run off the GPU .*: Relu x1"):
        cuda.build({"relu": graph}, tmp_path / "off", _target(), context)


def test_a_refused_capture_falls_back_with_the_reason_logged(cpu_as_provider, monkeypatch, tmp_path, caplog):
    """Capture refused when the session is made, or at the first run (the capture): either way the graph runs
    without it, and the log says why."""
    graph = tmp_path / "relu.onnx"
    onnx.save(fix_shapes(_relu_model(["N", 3]), {"N": 2})[0], str(graph))
    made = []

    def refusing(path, settings, cuda_graph, profile=None):
        made.append(cuda_graph)
        if cuda_graph:
            raise RuntimeError("all compute graph nodes have not been partitioned to the CUDAExecutionProvider")
        return real(path, settings, cuda_graph, profile)

    real = cuda.session
    monkeypatch.setattr(cuda, "session", refusing)
    runner = cuda.CudaGraph(graph, cuda.CudaSession())
    assert made == [True, False] and runner.captured is False
    assert runner.refused.startswith("all compute graph nodes")
    assert "relu.onnx: CUDA graph capture refused (all compute graph nodes" in caplog.text

    class FailsOnce:  # a session made with capture whose first run (the capture) fails
        def __init__(self, inner):
            self.inner, self.failed = inner, False

        def run_with_iobinding(self, binding):
            if not self.failed:
                self.failed = True
                raise RuntimeError("cudaStreamEndCapture failed")
            return self.inner.run_with_iobinding(binding)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    runner = cuda.CudaGraph(graph, cuda.CudaSession(), session_=FailsOnce(real(graph, cuda.CudaSession(), False)))
    runner.captured = True  # as made with capture
    out = runner.infer({"x": -np.ones((2, 3), np.float32)})
    np.testing.assert_array_equal(out["y"], np.zeros((2, 3), np.float32))
    assert runner.captured is False and runner.refused == "cudaStreamEndCapture failed"
    assert runner.infer({"x": np.ones((2, 3), np.float32)})["y"].sum() == 6  # the new session, bound again


def test_the_device_script_refuses_a_wrong_argument_in_one_line(tmp_path):
    for args, why in (([], "no directory given"), ([str(tmp_path)], f"{tmp_path} has no handoff.json")):
        wrong = subprocess.run(["bash", str(REPO / "scripts/cuda_device.sh"), *args], capture_output=True, text=True)
        assert wrong.returncode == 2 and wrong.stdout == "" and wrong.stderr.count("\n") == 1 and why in wrong.stderr
