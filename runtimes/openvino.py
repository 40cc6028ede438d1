"""OpenVINO on the CPU (``pip install openvino``), FP32.

- prepare: the plain graph (no ``com.microsoft`` fusion, which OpenVINO would not import),
  with ``InstanceNormalization`` written out as ReduceMean, ReduceSumSquare / N, Sqrt and Div.
  OpenVINO fuses InstanceNormalization (and the ReduceMean-of-squares form) into its MVN
  kernel; inside DISK that differs from onnxruntime by ~2e-5 relative at each of its 8
  layers (measured tensor by tensor), which grew to a median 2.1e-4 on the descriptors and a
  minimum descriptor cosine of 0.92 against kornia on TUM frames. Written out with
  ReduceSumSquare, which no MVN pattern matches, OpenVINO agrees with onnxruntime to 8e-7 on
  DISK's descriptors and its parity with kornia is 1.0 on every pair. Upsampling GridSamples
  over shape-derived pixel grids become Resize (``glueforge/resample.py``), as for onnxruntime;
- engine: the OpenVINO IR (``<graph>.xml`` + ``<graph>.bin``, from ``ov.convert_model`` and
  ``ov.save_model`` with FP32 weights) plus the compile properties it must be run with
  (``openvino.json``). Each IR is compiled once here with exactly those properties, so a graph
  the device rejects fails this stage, not the application. The IR, not a compiled blob, is
  the engine: it is portable across CPUs and later OpenVINO releases, and the compiled blob is
  tied to both;
- runner: a polygraphy runner over ``Core.compile_model`` with the recorded properties. FP32
  is pinned with ``INFERENCE_PRECISION_HINT=f32``: on CPUs with AMX or AVX512-BF16 OpenVINO
  otherwise infers in BF16.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping

from pydantic import Field
from typing_extensions import Annotated

from glueforge.runtime import BuildContext, EngineBuildError, EngineUnavailable, Incompatible
from glueforge.schema import SYMMETRIC_INT8, Strict, TargetSpec

log = logging.getLogger(__name__)
NAME = "openvino"
TOOLS = ("onnx",)  # prepare rewrites InstanceNormalization with onnx's helpers
PROPERTIES = "openvino.json"
QUANTIZATION = SYMMETRIC_INT8  # int8 targets (glueforge/quantize.py): OpenVINO reads the QDQ form TensorRT reads
# the command line resizes images whose longest side exceeds this (glueforge infer/bench/evaluate --max-size): on two
# CPU cores ALIKED + LightGlue takes seconds per pair on 12 MP photographs
DEFAULT_MAX_SIZE = 1024
measured_with = "the engine itself, OpenVINO on the CPU"


class Compile(Strict):
    """Compile properties of the IR (``ov.Core.compile_model``)."""

    device: Literal["CPU"] = "CPU"
    num_threads: Annotated[int, Field(ge=0)] = 0  # INFERENCE_NUM_THREADS; 0: $OMP_NUM_THREADS where set, else OpenVINO's default
    performance_hint: Literal["LATENCY", "THROUGHPUT"] = "LATENCY"

    def properties(self, precision: str) -> dict[str, Any]:
        props: dict[str, Any] = {"PERFORMANCE_HINT": self.performance_hint, "INFERENCE_PRECISION_HINT": {"fp32": "f32", "int8": "f32"}[precision]}
        if self.num_threads:
            props["INFERENCE_NUM_THREADS"] = self.num_threads
        return props


class Target(TargetSpec):
    # int8: the QDQ graph (glueforge/quantize.py), whose convolutions OpenVINO's low-precision transformations run in
    # INT8; the rest in f32
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "int8")
    runtime: Literal["openvino"]
    compile: Compile = Compile()


def installed_version() -> str | None:
    from glueforge.machine import package_version

    return package_version("openvino")


def versions() -> dict[str, str | None]:
    return {NAME: installed_version()}


def prepare(model, graph: str, target: Target) -> tuple[Any, dict[str, Any]]:
    from glueforge.resample import regular_grid_to_resize

    model, resized = regular_grid_to_resize(model)
    count = unfuse_instance_norm(model)
    return model, {"instance_norms_written_out": count, "grid_samples_as_resize": resized}


def unfuse_instance_norm(model) -> int:
    """Rewrite each ``InstanceNormalization`` (in place) so that OpenVINO's MVN fusion does not match it.

    ``y = scale * (x - mean) / sqrt(ReduceSumSquare(x - mean) / N + eps) + bias`` over the
    spatial axes (2 ..), N their size (from the input's shape at run time, so every dimension
    may stay dynamic). The input's rank comes from the graph's shape information (the
    simplify stage infers every tensor's shape).
    """
    import onnx
    from onnx import TensorProto, helper

    graph = model.graph
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in (*graph.input, *graph.value_info, *graph.output)
             if v.type.tensor_type.HasField("shape")}
    nodes, count = [], 0
    for node in graph.node:
        if node.op_type != "InstanceNormalization":
            nodes.append(node)
            continue
        count += 1
        x, scale, bias = node.input
        if x not in ranks:
            raise EngineBuildError(f"InstanceNormalization {node.name!r}: the rank of its input {x!r} is unknown; "
                                   "the simplify stage's shape inference should have recorded it")
        spatial = list(range(2, ranks[x]))
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        p = f"{node.name or node.output[0]}/unfused"
        graph.initializer.extend([helper.make_tensor(f"{p}/eps", TensorProto.FLOAT, [], [eps]),
                                  helper.make_tensor(f"{p}/per_channel", TensorProto.INT64, [len(spatial) + 1],
                                                     [-1] + [1] * len(spatial))])
        if opset >= 18:  # axes became an input of the Reduce ops
            graph.initializer.append(helper.make_tensor(f"{p}/axes", TensorProto.INT64, [len(spatial)], spatial))
            reduce = lambda op, i, o: helper.make_node(op, [i, f"{p}/axes"], [o], keepdims=1)  # noqa: E731
        else:
            reduce = lambda op, i, o: helper.make_node(op, [i], [o], axes=spatial, keepdims=1)  # noqa: E731
        nodes += [
            reduce("ReduceMean", x, f"{p}/mean"),
            helper.make_node("Sub", [x, f"{p}/mean"], [f"{p}/centred"]),
            reduce("ReduceSumSquare", f"{p}/centred", f"{p}/sum_sq"),
            helper.make_node("Shape", [x], [f"{p}/spatial"], start=2),
            helper.make_node("ReduceProd", [f"{p}/spatial"], [f"{p}/n_int"], keepdims=1),
            helper.make_node("Cast", [f"{p}/n_int"], [f"{p}/n"], to=TensorProto.FLOAT),
            helper.make_node("Div", [f"{p}/sum_sq", f"{p}/n"], [f"{p}/var"]),
            helper.make_node("Add", [f"{p}/var", f"{p}/eps"], [f"{p}/var_eps"]),
            helper.make_node("Sqrt", [f"{p}/var_eps"], [f"{p}/std"]),
            helper.make_node("Div", [f"{p}/centred", f"{p}/std"], [f"{p}/normed"]),
            helper.make_node("Reshape", [scale, f"{p}/per_channel"], [f"{p}/scale"]),
            helper.make_node("Reshape", [bias, f"{p}/per_channel"], [f"{p}/bias"]),
            helper.make_node("Mul", [f"{p}/normed", f"{p}/scale"], [f"{p}/scaled"]),
            helper.make_node("Add", [f"{p}/scaled", f"{p}/bias"], list(node.output)),
        ]
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
        onnx.checker.check_model(model)
    return count


def compiled(directory: Path, graph: str):
    """The IR of ``graph`` in an engine directory, compiled with its recorded properties,
    and the graph's output names in the order of the compiled model's outputs."""
    import openvino as ov

    recorded = json.loads((Path(directory) / PROPERTIES).read_text())
    model = ov.Core().compile_model(str(Path(directory) / f"{graph}.xml"), recorded["device"], _properties(recorded))
    wanted = recorded["outputs"][graph]
    names = [next((n for n in wanted if n in port.get_names()), port.get_any_name()) for port in model.outputs]
    return model, names


def _properties(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """The recorded compile properties, with this process's thread limit where the target left threads open."""
    from glueforge.machine import thread_limit

    properties = dict(recorded["properties"])
    if "INFERENCE_NUM_THREADS" not in properties and thread_limit():
        # a limit says the cores are shared: unpinned, or every process's threads land on the same cores (measured:
        # three processes with one thread each took 23 s for what one pinned process does in 3.7 s)
        properties.update(INFERENCE_NUM_THREADS=thread_limit(), ENABLE_CPU_PINNING=False)
    return properties


def matmul_rate(directory: Path) -> dict[str, Any] | None:
    """The fp32 matrix-multiply rate of the device the engines run on (``glueforge.floor``), compiled with the
    engines' recorded properties; None off the CPU."""
    import tempfile

    import openvino as ov

    from glueforge import floor

    recorded = json.loads((Path(directory) / PROPERTIES).read_text())
    if recorded["device"] != "CPU":
        return None
    properties = _properties(recorded)
    with tempfile.TemporaryDirectory() as tmp:
        request = ov.Core().compile_model(str(floor.write_matmul(Path(tmp))), "CPU", properties).create_infer_request()
    inputs = floor.matmul_inputs()
    threads = properties.get("INFERENCE_NUM_THREADS") or "default"
    return floor.measure(lambda: request.infer(inputs), f"OpenVINO {ov.get_version()} MatMul on the CPU, {threads} threads")


def build(graphs: Mapping[str, Path], out: Path, target: Target, context: BuildContext) -> dict[str, Any]:
    try:
        import openvino as ov
    except ImportError:
        raise EngineUnavailable("OpenVINO is not installed: pip install openvino (or the project's build extra)") from None
    core = ov.Core()
    if target.compile.device not in core.available_devices:
        raise EngineUnavailable(f"OpenVINO {ov.get_version()} here has no {target.compile.device} device; "
                                f"available: {core.available_devices}")
    recorded = {"device": target.compile.device, "properties": target.compile.properties(target.precision),
                # a compiled output tensor may carry internal names too: the runner picks the graph's own
                "outputs": {name: [t["name"] for t in context.io[name]["outputs"]] for name in graphs}}
    (out / PROPERTIES).write_text(json.dumps(recorded, indent=1))
    for name, source in graphs.items():
        try:
            model = ov.convert_model(str(source))
            ov.save_model(model, str(out / f"{name}.xml"), compress_to_fp16=False)
            _, names = compiled(out, name)  # compiles with the recorded properties, or raises
        except Exception as e:  # OpenVINO raises RuntimeError/OpConversionFailure with the frontend's message
            raise EngineBuildError(f"{source.name}: OpenVINO {ov.get_version()} refused the graph: {e}") from None
        if names != recorded["outputs"][name]:
            raise EngineBuildError(f"{source.name}: OpenVINO's outputs {names} are not the graph's {recorded['outputs'][name]}")
        log.info("engine %s: OpenVINO IR, %d bytes of weights", name, (out / f"{name}.bin").stat().st_size)
    return {"runtime": NAME, NAME: installed_version(), "openvino_build": ov.get_version(), **recorded,
            "files": {g: f"{g}.xml" for g in sorted(graphs)}}


def runner(directory: Path, graph: str, name: str):
    """A polygraphy runner of ``graph`` in an engine directory, compiled with its recorded properties."""
    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata
    from polygraphy.datatype import DataType

    class OpenVinoRunner(BaseRunner):
        def __init__(self) -> None:
            super().__init__(name=name, prefix="openvino-runner")

        def activate_impl(self) -> None:
            self.graph = OpenVinoGraph(directory, graph)
            self.model = self.graph.model

        def get_input_metadata_impl(self) -> TensorMetadata:
            meta = TensorMetadata()
            for port in self.model.inputs:
                shape = [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]
                meta.add(port.get_any_name(), dtype=DataType.from_dtype(port.get_element_type().to_dtype()), shape=shape)
            return meta

        def infer_impl(self, feed_dict):
            start = time.time()
            results = self.graph.infer(feed_dict)
            self.inference_time = time.time() - start
            return OrderedDict(results)

        def deactivate_impl(self) -> None:
            self.graph.close()
            del self.graph, self.model

    return OpenVinoRunner()


class OpenVinoGraph:
    """One graph as a :class:`glueforge.runtime.GraphRunner`: the IR compiled with its recorded properties."""

    def __init__(self, directory: Path, graph: str) -> None:
        self.model, self.names = compiled(directory, graph)
        self.request = self.model.create_infer_request()

    def infer(self, feed: Mapping[str, Any]) -> dict[str, Any]:
        results = self.request.infer(dict(feed))
        return {name: results[port].copy() for name, port in zip(self.names, self.model.outputs)}

    def device_memory(self) -> int | None:
        return None  # the CPU device: host memory, counted in the process's RSS

    def close(self) -> None:
        self.request = self.model = None


def open_graph(directory: Path, graph: str, manifest: Mapping[str, Any] | None = None) -> OpenVinoGraph:
    """``graph`` of a bundle or engine directory, for the runtime API."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        raise EngineUnavailable("this bundle runs with OpenVINO: pip install openvino") from None
    return OpenVinoGraph(Path(directory), graph)


def runs_here(target: Target) -> str | None:
    """Why this machine cannot run the target's engines, or None (the benchmark stage measures them then)."""
    return None if installed_version() else "OpenVINO is not installed"


def check_compatibility(manifest: Mapping[str, Any]) -> None:
    """An IR loads in the OpenVINO release that wrote it and later ones, not earlier ones."""
    from packaging.version import Version

    built, installed = manifest["runtime"].get(NAME), installed_version()
    if installed is None or (built and Version(installed).release[:2] < Version(built).release[:2]):
        raise Incompatible(f"{manifest['model']} {manifest['version']} for {manifest['target']} needs OpenVINO {built} "
                           f"or later; this machine has {installed or 'none'}")
