"""ONNX Runtime's CUDA provider on an NVIDIA GPU: static FP16 graphs, IO binding, CUDA graphs.

For x86 GPU servers and workstations, where TensorRT is not what the team deploys (``pip install
onnxruntime-gpu`` is). What makes the provider fast is what this module builds for (measured on the
lent H200, issue 21):

- prepare (fuse stage, any machine): every graph static at the target's declared ``shapes``
  (``glueforge/static.py``: onnxsim folds the shape arithmetic that the provider would run on the
  CPU, with copies, and that forbids CUDA graph capture); LightGlue's attention as
  ``MultiHeadAttention`` (``glueforge/attention.py``) and onnxruntime's transformer fusions
  (``glueforge/transformer_fusion.py``); then FP16 with FP32 islands (``glueforge/fp16.py``);
- check (fuse stage, any machine): what the provider would place on the CPU for being shape
  arithmetic (``glueforge.static.shape_findings``): the build stops naming those nodes;
- engine (a machine with onnxruntime-gpu and a GPU): the ONNX model and its session settings; each
  graph is run once with onnxruntime's profiler, and a node the profile places off the GPU fails the
  build, naming its ops; CUDA graph capture is tried and its outcome recorded. Without a GPU the
  stage names the one command that finishes the build on a GPU machine (``scripts/cuda_device.sh``
  from a ``doit handoff``); nothing is bundled or published unvalidated;
- runner and open_graph: :class:`CudaGraph`, IO binding with device buffers and the captured CUDA
  graph replayed per call; a feed of several of the declared batches runs as that many calls.

Images of another size are resized and padded to the declared size by the runtime API (the engine's
``profile_shapes`` are the declared shapes), and validation runs the declared size only. A team with
two camera sizes declares two targets (an overlay).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, Optional

import numpy as np
from pydantic import Field
from typing_extensions import Annotated

from glueforge import machine
from glueforge.runtime import BuildContext, EngineBuildError, EngineUnavailable, Incompatible, recorded_settings
from glueforge.schema import Strict, TargetSpec

log = logging.getLogger(__name__)
NAME = "onnxruntime_cuda"
TOOLS = ("onnx", "onnxsim", "onnxruntime")  # onnxsim fixes the shapes; onnxruntime's transformer fusions and FP16 converter
PROVIDER = "CUDAExecutionProvider"
BUFFERS = "cuda"  # where CudaGraph binds its inputs and outputs (an OrtValue device)
SESSION = "session.json"
DEVICE_SCRIPT = "scripts/cuda_device.sh"
# the hand-off's words for the machine that finishes the build (glueforge/handoff.py): a venv without torch, which the
# steps taken from the hand-off do not need (their keys count torch at its pin)
DEVICE = "the GPU machine (an NVIDIA GPU and its driver; no torch needed)"
DEVICE_SETUP = 'python3 -m venv .venv-cuda && . .venv-cuda/bin/activate && pip install -e ".[cuda]"'
measured_with = "the engine itself, onnxruntime's CUDA provider on the GPU (IO binding, CUDA graphs where captured)"


# FP32 islands (glueforge/fp16.py) but these: the CUDA provider's LayerNormalization computes its mean and variance in
# float for float16 inputs (its kernel is registered as T=float16, U=float), so the 2 Casts around each (72 kernels of a
# 9-layer LightGlue matcher) buy nothing
FP16_ON_CUDA = ("LayerNormalization",)


class StaticShapes(Strict):
    """The sizes every graph of the target is fixed at: one image size per target."""

    image_size: Annotated[list[Annotated[int, Field(ge=16)]], Field(min_length=2, max_length=2)]  # [H, W]
    images: Annotated[int, Field(ge=1, le=64)] = 1  # per extractor call: 1, a frame
    pairs: Annotated[int, Field(ge=1, le=32)] = 1  # per end2end and matcher call


class CudaSession(Strict):
    device_id: Annotated[int, Field(ge=0)] = 0
    cuda_graph: bool = True  # capture each graph's run once, replay it per call (falls back, logged, where refused)
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = "EXHAUSTIVE"
    graph_optimization_level: Literal["ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL"] = (
        "ORT_ENABLE_ALL"
    )


class Target(TargetSpec):
    precisions: ClassVar[tuple[str, ...]] = ("fp16", "fp32")
    match_output: ClassVar[str] = "dense"  # no NonZero: its output shape is data-dependent, which a CUDA graph cannot hold
    fuse_fields: ClassVar[tuple[str, ...]] = ("runtime", "precision", "shapes")
    runtime: Literal["onnxruntime_cuda"]
    shapes: StaticShapes
    session: CudaSession = CudaSession()

    @property
    def static_image_size(self) -> Optional[tuple[int, int]]:
        return tuple(self.shapes.image_size)  # type: ignore[return-value]


def installed_version() -> str | None:
    return machine.module_version("onnxruntime")  # onnxruntime-gpu's, where it provides the module


def versions() -> dict[str, str | None]:
    return {NAME: installed_version()}


def declared_dims(target: Target) -> dict[str, int]:
    """The value of each symbolic input dimension of our exports (``glueforge.graphs``) at the declared shapes."""
    h, w = target.shapes.image_size
    return {"N": target.shapes.images, "2B": 2 * target.shapes.pairs, "H": h, "W": w}


def prepare(model, graph: str, target: Target) -> tuple[Any, dict[str, Any]]:
    import onnx

    from glueforge.attention import fuse_attention
    from glueforge.fp16 import FP32_ISLAND_OPS, fp32_islands, to_fp16
    from glueforge.static import fix_shapes
    from glueforge.transformer_fusion import fuse_transformer_ops

    nodes = {"exported": len(model.graph.node)}
    static, shapes = fix_shapes(model, declared_dims(target))
    nodes["static"] = len(static.graph.node)
    fused, attention = fuse_attention(static)
    fused, transformer = fuse_transformer_ops(fused)
    nodes["fused"] = len(fused.graph.node)
    meta: dict[str, Any] = {"static_shapes": shapes, "nodes": nodes, "attention_fused": attention,
                            "transformer_fused": transformer}
    if target.precision == "fp16":
        islands = tuple(op for op in FP32_ISLAND_OPS if op not in FP16_ON_CUDA)
        meta["fp32_layers"] = fp32_islands(fused, islands)
        fused = to_fp16(fused, islands)
        meta["precision"] = "fp16 graph with fp32 islands"
    onnx.checker.check_model(fused)
    meta["nodes"]["prepared"] = len(fused.graph.node)
    return fused, meta


def check(graphs: Mapping[str, Path], target: Target, context: BuildContext) -> dict[str, Any]:
    """Refuse a prepared graph with anything the CUDA provider would run on the CPU as shape arithmetic
    (``glueforge.static.shape_findings``); the placement itself is read from the profile where the engine is built."""
    import onnx

    from glueforge.static import shape_findings

    record = {}
    for name, path in graphs.items():
        findings = shape_findings(onnx.load(str(path)))
        if findings:
            raise EngineBuildError(f"{name}: not static at {target.shapes.image_size} ({len(findings)} findings): "
                                   + "; ".join(findings[:5]))
        record[name] = {"static": True, "shape_findings": 0}
    return record


# -- the engine: on a GPU --------------------------------------------------------------------------------
def _ort():
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    return ort


def gpu_missing() -> str | None:
    """Why onnxruntime's CUDA provider cannot run here, or None."""
    ort = _ort()
    if ort is None:
        return "onnxruntime is not installed (pip install onnxruntime-gpu)"
    if PROVIDER not in ort.get_available_providers():
        return (f"onnxruntime {ort.__version__} has no CUDA provider (providers: {', '.join(ort.get_available_providers())}; "
                "the onnxruntime-gpu package has it)")
    if machine.compute_capability() is None:
        return "no NVIDIA GPU was found (nvidia-smi)"
    return None


def device_command(target_name: str, model: str) -> str:
    """The one line that finishes a build of ``model`` for ``target_name`` on a GPU machine."""
    return (f"doit handoff target={target_name} model={model} dest=handoff here, then on the GPU machine, in a clone of "
            f"the same commit: {DEVICE_SCRIPT} handoff")


def provider_options(settings: CudaSession, cuda_graph: bool) -> dict[str, str]:
    return {"device_id": str(settings.device_id), "enable_cuda_graph": "1" if cuda_graph else "0",
            "cudnn_conv_algo_search": settings.cudnn_conv_algo_search, "cudnn_conv_use_max_workspace": "1"}


def providers(settings: CudaSession, cuda_graph: bool) -> list:
    """The session's providers: CUDA, then the CPU provider, which onnxruntime adds anyway for what CUDA lacks (the
    profile says whether anything went there)."""
    return [(PROVIDER, provider_options(settings, cuda_graph)), "CPUExecutionProvider"]


def session(path: Path, settings: CudaSession, cuda_graph: bool, profile: Path | None = None):
    """An onnxruntime session of ``path`` on :func:`providers`, profiled into ``profile*.json`` where given."""
    ort = _ort()
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, settings.graph_optimization_level)
    options.log_severity_level = 3
    if profile is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile)
    return ort.InferenceSession(str(path), options, providers=providers(settings, cuda_graph))


def placement(profile: Path) -> dict[str, dict[str, int]]:
    """Provider -> op type -> nodes, from an onnxruntime profile (its ``<node>_kernel_time`` events)."""
    events = json.loads(Path(profile).read_text())
    seen: dict[str, tuple[str, str]] = {}
    for event in events:
        args = event.get("args") or {}
        if event.get("cat") == "Node" and "provider" in args and event.get("name", "").endswith("_kernel_time"):
            seen[event["name"].removesuffix("_kernel_time")] = (args["provider"], args.get("op_name", "?"))
    where: dict[str, dict[str, int]] = {}
    for provider, op in seen.values():
        where.setdefault(provider, {})
        where[provider][op] = where[provider].get(op, 0) + 1
    return where


def off_provider(where: Mapping[str, Mapping[str, int]], provider: str | None = None) -> dict[str, int]:
    """Op type -> nodes that ran on a provider other than ``provider`` (the CUDA provider); Memcpy nodes count too."""
    provider = provider or PROVIDER
    off: dict[str, int] = {}
    for name, ops in where.items():
        if name != provider:
            for op, n in ops.items():
                off[op] = off.get(op, 0) + n
    for op, n in where.get(provider, {}).items():
        if op.startswith("Memcpy"):
            off[op] = off.get(op, 0) + n
    return off


def zero_feed(session_) -> dict[str, np.ndarray]:
    """Zeros of each input's static shape and type."""
    return {i.name: np.zeros(i.shape, _TYPES[i.type]) for i in session_.get_inputs()}


def build(graphs: Mapping[str, Path], out: Path, target: Target, context: BuildContext) -> dict[str, Any]:
    missing = gpu_missing()
    if missing is not None:
        raise EngineUnavailable(f"target {context.target_name!r} runs on an NVIDIA GPU with onnxruntime's CUDA provider, "
                                f"and on this machine {missing}. Its graphs are built and checked; to validate, bench and bundle: "
                                f"{device_command(context.target_name, context.model or 'MODEL')}")
    ort = _ort()
    engines = {}
    for name, source in graphs.items():
        dest = out / f"{name}.onnx"
        shutil.copyfile(source, dest)
        profiled = session(dest, target.session, cuda_graph=False, profile=out / f"{name}.profile")
        profiled.run(None, zero_feed(profiled))
        trace = Path(profiled.end_profiling())
        where = placement(trace)
        trace.unlink()
        off = off_provider(where)
        if off:
            raise EngineBuildError(f"{name}: {sum(off.values())} nodes would run off the GPU under onnxruntime "
                                   f"{ort.__version__}'s CUDA provider: {', '.join(f'{op} x{n}' for op, n in sorted(off.items()))}")
        runner = CudaGraph(dest, target.session)
        runner.infer(zero_feed(runner.session))
        engines[name] = {"profile_shapes": {i.name: [list(i.shape)] * 3 for i in runner.session.get_inputs()},
                         "placement": {p: sum(ops.values()) for p, ops in where.items()},
                         "cuda_graph": (True if runner.captured else f"refused: {runner.refused}" if runner.refused
                                        else "off (session.cuda_graph: false)")}
        runner.close()
        log.info("engine %s: onnxruntime %s, %s, CUDA graph %s", name, ort.__version__, engines[name]["placement"],
                 engines[name]["cuda_graph"])
    settings = {"runtime": NAME, NAME: ort.__version__, **target.session.model_dump(mode="json")}
    (out / SESSION).write_text(json.dumps(settings, indent=1))
    return {"runtime": NAME, NAME: ort.__version__, "gpu": machine.describe()["gpu"],
            "compute_capability": machine.compute_capability(), "precision": target.precision, "engines": engines,
            "files": {g: f"{g}.onnx" for g in sorted(graphs)}}


class CudaGraph:
    """One static graph as a :class:`glueforge.runtime.GraphRunner`: inputs and outputs bound to buffers on the device
    (``device="cuda"``; ``"cpu"`` binds host buffers, the same code path on a machine without a GPU), the run captured
    as a CUDA graph and replayed where the provider allows it, else run plainly, with the reason logged. A feed whose
    batch is a multiple of the graph's runs as that many calls, their outputs concatenated."""

    def __init__(self, path: Path, settings: CudaSession, device: str | None = None, session_=None) -> None:
        self.path, self.settings, self.device = Path(path), settings, device or BUFFERS
        self.refused: str | None = None
        self.captured = False
        self._ran = False
        if session_ is not None:
            self.session = session_
        else:
            try:
                self.session = session(path, settings, cuda_graph=settings.cuda_graph)
                self.captured = settings.cuda_graph
            except Exception as e:  # onnxruntime raises its own Fail/RuntimeException types
                self._without_capture(e)
        ort = _ort()
        self.dtypes = {i.name: _TYPES[i.type] for i in self.session.get_inputs()}
        self.shapes = {i.name: tuple(i.shape) for i in self.session.get_inputs()}
        self.inputs = {name: ort.OrtValue.ortvalue_from_shape_and_type(shape, self.dtypes[name], self.device,
                                                                       settings.device_id)
                       for name, shape in self.shapes.items()}
        self.outputs = [(o.name, ort.OrtValue.ortvalue_from_shape_and_type(o.shape, _TYPES[o.type], self.device,
                                                                           settings.device_id))
                        for o in self.session.get_outputs()]
        self._bind()

    def _bind(self) -> None:
        """The session's IO binding to the buffers (fixed addresses: what a captured CUDA graph replays on)."""
        self.binding = self.session.io_binding()
        for name, value in self.inputs.items():
            self.binding.bind_ortvalue_input(name, value)
        for name, value in self.outputs:
            self.binding.bind_ortvalue_output(name, value)

    def _without_capture(self, error: Exception) -> None:
        """A session without CUDA graph capture, the reason logged."""
        self.refused, self.captured = str(error).splitlines()[0] if str(error) else type(error).__name__, False
        log.warning("%s: CUDA graph capture refused (%s); running without it", self.path.name, self.refused)
        self.session = session(self.path, self.settings, cuda_graph=False)

    def input_metadata(self) -> list[tuple[str, Any, tuple[int, ...]]]:
        """Each input's name, numpy dtype and shape, its batch dimension open (a multiple of the graph's runs)."""
        return [(name, self.dtypes[name], (-1, *shape[1:])) for name, shape in self.shapes.items()]

    def run(self) -> None:
        """One run on what the input buffers hold (no copies): what a caller that keeps its tensors on the device times.
        The first run of a captured session is the capture: where it fails, the session is made again without."""
        if self._ran or not self.captured:
            self.session.run_with_iobinding(self.binding)
            return
        try:
            self.session.run_with_iobinding(self.binding)
        except Exception as e:  # onnxruntime's own exception types
            self._without_capture(e)
            self._bind()
            self.session.run_with_iobinding(self.binding)
        self._ran = True

    def calls(self, feed: Mapping[str, Any]) -> int:
        """How many runs ``feed`` takes: its batch over the graph's, the same for every input; else a clear error."""
        counts = set()
        for name, shape in self.shapes.items():
            got = np.shape(feed[name]) if name in feed else None
            if got is None or len(got) != len(shape) or got[1:] != shape[1:] or got[0] % shape[0] or not got[0]:
                raise EngineBuildError(f"input {name!r}: this engine is static at {list(shape)} (or a batch of several); "
                                       f"got {list(got) if got is not None else 'nothing'}")
            counts.add(got[0] // shape[0])
        if len(counts) != 1:
            raise EngineBuildError(f"the inputs' batches disagree: {({n: np.shape(feed[n]) for n in self.shapes})}")
        return counts.pop()

    def infer(self, feed: Mapping[str, Any]) -> dict[str, Any]:
        results: dict[str, list[np.ndarray]] = {name: [] for name, _ in self.outputs}
        for call in range(self.calls(feed)):
            for name, value in self.inputs.items():
                b = self.shapes[name][0]
                value.update_inplace(np.ascontiguousarray(np.asarray(feed[name])[call * b:(call + 1) * b], self.dtypes[name]))
            self.run()
            for name, value in self.outputs:
                results[name].append(value.numpy())
        return {name: np.concatenate(parts) if len(parts) > 1 else parts[0] for name, parts in results.items()}

    def device_memory(self) -> int | None:
        """The bound input and output buffers on the device (the session's own arena is not counted)."""
        if self.device == "cpu":
            return None
        return sum(int(np.prod(v.shape())) * np.dtype(_TYPES[v.data_type()]).itemsize
                   for v in [*self.inputs.values(), *(v for _, v in self.outputs)])

    def close(self) -> None:
        self.binding = self.session = None
        self.inputs, self.outputs = {}, []


_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
          "tensor(bool)": np.bool_}


def _recorded_session(directory: Path) -> CudaSession:
    return recorded_settings(directory, SESSION, CudaSession)


def open_graph(directory: Path, graph: str, manifest: Mapping[str, Any] | None = None) -> CudaGraph:
    """``graph`` of a bundle or engine directory, for the runtime API, on the GPU."""
    missing = gpu_missing()
    if missing is not None:
        raise EngineUnavailable(f"this bundle runs on an NVIDIA GPU with onnxruntime's CUDA provider; here {missing}")
    return CudaGraph(Path(directory) / f"{graph}.onnx", _recorded_session(directory))


def runner(directory: Path, graph: str, name: str):
    """The engine as validation runs it: :class:`CudaGraph`, as the runtime API and ``glueforge bench`` run it."""
    from glueforge.runners import GraphPolygraphyRunner

    return GraphPolygraphyRunner(lambda: open_graph(directory, graph), CudaGraph.input_metadata, name=name)


def runs_here(target: Target) -> str | None:
    return gpu_missing()


def check_compatibility(manifest: Mapping[str, Any]) -> None:
    missing = gpu_missing()
    if missing is not None:
        raise Incompatible(f"{manifest['model']} {manifest['version']} for {manifest['target']} runs on an NVIDIA GPU "
                           f"with onnxruntime's CUDA provider (built with {manifest['runtime'].get(NAME)}); here {missing}")


def provider_loads() -> str | None:
    """Why a session cannot be made on the CUDA provider here (its libraries: CUDA, cuDNN), or None."""
    import tempfile

    import onnx
    from onnx import TensorProto, helper

    missing = gpu_missing()
    if missing is not None:
        return missing
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
        try:
            probe = session(path, CudaSession(), cuda_graph=False)
        except Exception as e:  # onnxruntime's own exception types
            return f"onnxruntime could not make a CUDA session: {str(e).splitlines()[0]}"
    if PROVIDER not in probe.get_providers():
        return (f"onnxruntime fell back to {probe.get_providers()}: the CUDA provider's libraries (CUDA 13, cuDNN 9) "
                "did not load; put them on LD_LIBRARY_PATH")
    return None


def main() -> int:
    """The device script's install check (scripts/cuda_device.sh): one line, exit 0 where the CUDA provider runs."""
    missing = provider_loads()
    if missing is not None:
        print(f"glueforge: the cuda target cannot run here: {missing}", file=sys.stderr)
        return 2
    print(f"onnxruntime {installed_version()}: {PROVIDER} on {machine.describe()['gpu']} (compute capability "
          f"{machine.compute_capability()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
