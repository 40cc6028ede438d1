"""ONNX Runtime on the CPU: the embedded default runtime, FP32 (or INT8 extractors, ``QUANTIZATION``).

- prepare: LightGlue-style MatMul-Softmax-MatMul attention fused into
  ``com.microsoft.MultiHeadAttention`` (``glueforge/attention.py``), and upsampling GridSamples over
  shape-derived pixel grids as Resize, channels-last where a Transpose to channels-last reads them
  (``glueforge/resample.py``);
- engine: the ONNX model plus the session settings it must be run with (``session.json``);
  the model is loaded once here with exactly those settings, so a graph the runtime rejects
  fails this stage, not the application;
- runner: polygraphy's ``OnnxrtRunner`` over a session made with the recorded settings;
- open_graph: the same session for the runtime API (``glueforge.api``), without polygraphy.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping

from pydantic import Field
from typing_extensions import Annotated

from glueforge.depth import parse_step
from glueforge.machine import flush_denormals
from glueforge.runtime import BuildContext, EngineUnavailable, Incompatible, recorded_settings
from glueforge.schema import Recipe, Strict, TargetSpec

log = logging.getLogger(__name__)
NAME = "onnxruntime"
TOOLS = ("onnx",)  # prepare is glueforge's own attention fusion over onnx
SESSION = "session.json"
# int8 targets (glueforge/quantize.py): UINT8 activations with zero points, so that the CPU provider runs its U8S8
# kernels, the fast ones on x86 (onnxruntime's quantization guide), and the convolutions' outputs quantized, without
# which it forms no integer convolution (QLinearConv) and runs each as DequantizeLinear + a float Conv
QUANTIZATION = Recipe("uint8", symmetric_activations=False, outputs=True)
# the command line resizes images whose longest side exceeds this (glueforge infer/bench/evaluate --max-size): on two
# CPU cores ALIKED + LightGlue takes seconds per pair on 12 MP photographs
DEFAULT_MAX_SIZE = 1024
measured_with = "the engine itself, onnxruntime on the CPU"


class OrtSession(Strict):
    providers: list[str] = ["CPUExecutionProvider"]
    graph_optimization_level: Literal["ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL"] = (
        "ORT_ENABLE_ALL"
    )
    intra_op_num_threads: Annotated[int, Field(ge=0)] = 0  # 0: $OMP_NUM_THREADS where set, else onnxruntime's default
    execution_mode: Literal["ORT_SEQUENTIAL", "ORT_PARALLEL"] = "ORT_SEQUENTIAL"
    # denormal floats computed as zero, in the session's threads and in the one that calls run
    # (glueforge.machine.flush_denormals: LightGlue's matcher on real images, 2.1x as fast, the same outputs)
    flush_denormals: bool = True


class Target(TargetSpec):
    # onnxruntime's CPU provider has no FP16 kernels for most ops: an fp16 target would run an FP32 graph. int8: the
    # extractor's convolutions in QDQ form (glueforge/quantize.py), which the provider runs as integer convolutions
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "int8")
    runtime: Literal["onnxruntime"]
    session: OrtSession = OrtSession()


def installed_version() -> str | None:
    from glueforge.machine import package_version

    return package_version("onnxruntime", "onnxruntime-gpu")


def versions() -> dict[str, str | None]:
    return {NAME: installed_version()}


def prepare(model, graph: str, target: Target) -> tuple[Any, dict[str, Any]]:
    from glueforge.attention import fuse_attention
    from glueforge.resample import regular_grid_to_resize, resize_channels_last

    model, resized = regular_grid_to_resize(model)
    model, channels_last = resize_channels_last(model)
    fused, count = fuse_attention(model)
    return fused, {"attention_fused": count, "grid_samples_as_resize": resized, "resized_channels_last": channels_last}


def session(model: Path | bytes, settings: OrtSession, passive: bool = False):
    """An onnxruntime session of ``model`` (a path, or a serialized graph) with ``settings`` and this machine's
    thread limit; ``passive``: its idle threads sleep whatever ``$OMP_WAIT_POLICY`` says (an adaptive-depth step
    graph's: the step graphs run back to back, each in its own session, and a spinning pool of the one before takes
    the cores of the next: xfeat_lighterglue's layer costs 1.5x as much when two sessions alternate, 1.1x without
    spinning; benchmarks/adaptive_depth.py)."""
    import onnxruntime as ort

    from glueforge.machine import passive_wait, thread_limit

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, settings.graph_optimization_level)
    options.intra_op_num_threads = settings.intra_op_num_threads or thread_limit() or 0
    if passive or passive_wait():  # how the threads wait, not what they compute: no key holds it
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.execution_mode = getattr(ort.ExecutionMode, settings.execution_mode)
    options.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    if not settings.flush_denormals:
        return ort.InferenceSession(source, options, providers=list(settings.providers))
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    # onnxruntime sets the mode on the thread that makes the session, for the pool threads it starts, and leaves it
    # set there: made within the block, the caller's mode is restored after
    with flush_denormals():
        return _DenormalsAsZero(ort.InferenceSession(source, options, providers=list(settings.providers)))


class _DenormalsAsZero:
    """An onnxruntime session whose ``run`` computes with denormals as zero on the calling thread too (its pool's
    threads do by ``session.set_denormal_as_zero``); everything else is the session's."""

    def __init__(self, session) -> None:
        self._session = session

    def run(self, *args, **kwargs):
        with flush_denormals():
            return self._session.run(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._session, name)


def build(graphs: Mapping[str, Path], out: Path, target: Target, context: BuildContext) -> dict[str, Any]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    missing = [p for p in target.session.providers if p not in available]
    if missing:
        raise EngineUnavailable(f"onnxruntime {ort.__version__} here lacks providers {missing}; available: {available}")
    for name, source in graphs.items():
        dest = out / f"{name}.onnx"
        shutil.copyfile(source, dest)
        session(dest, target.session)  # loads and optimises with the recorded settings, or raises
        log.info("engine %s: onnxruntime %s session created", name, ort.__version__)
    settings = {"runtime": NAME, NAME: ort.__version__, **target.session.model_dump(mode="json")}
    (out / SESSION).write_text(json.dumps(settings, indent=1))
    return {"runtime": NAME, NAME: ort.__version__, "files": {g: f"{g}.onnx" for g in sorted(graphs)}}


def runner(directory: Path, graph: str, name: str):
    """A polygraphy runner of ``graph`` in an engine directory, with its recorded session settings."""
    from polygraphy.backend.onnxrt import OnnxrtRunner

    settings = _recorded_session(directory)
    passive = parse_step(graph) is not None
    return OnnxrtRunner(lambda: session(Path(directory) / f"{graph}.onnx", settings, passive), name=name)


class OrtGraph:
    """One graph as a :class:`glueforge.runtime.GraphRunner`: a session with the recorded settings."""

    def __init__(self, path: Path, settings: OrtSession, passive: bool = False) -> None:
        self.session = session(path, settings, passive)
        self.outputs = [o.name for o in self.session.get_outputs()]

    def infer(self, feed: Mapping[str, Any]) -> dict[str, Any]:
        return dict(zip(self.outputs, self.session.run(None, dict(feed))))

    def device_memory(self) -> int | None:
        return None  # the CPU provider: host memory, counted in the process's RSS

    def close(self) -> None:
        self.session = None


def matmul_rate(directory: Path) -> dict[str, Any] | None:
    """The fp32 matrix-multiply rate of the processor the sessions run on (``glueforge.floor``), in a session with
    the recorded settings; None where a provider other than the CPU's is recorded."""
    import tempfile

    import onnxruntime as ort

    from glueforge import floor

    settings = _recorded_session(directory)
    if list(settings.providers) != ["CPUExecutionProvider"]:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        product = session(floor.write_matmul(Path(tmp)), settings)
    inputs = floor.matmul_inputs()
    threads = product.get_session_options().intra_op_num_threads or "default"
    return floor.measure(lambda: product.run(None, inputs), f"onnxruntime {ort.__version__} MatMul, CPU provider, "
                                                           f"{threads} threads")


def _recorded_session(directory: Path) -> OrtSession:
    return recorded_settings(directory, SESSION, OrtSession)


def open_graph(directory: Path, graph: str, manifest: Mapping[str, Any] | None = None) -> OrtGraph:
    """``graph`` of a bundle or engine directory, for the runtime API."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise EngineUnavailable("this bundle runs with ONNX Runtime: pip install onnxruntime") from None
    return OrtGraph(Path(directory) / f"{graph}.onnx", _recorded_session(directory), passive=parse_step(graph) is not None)


def runs_here(target: Target) -> str | None:
    """Why this machine cannot run the target's engines, or None (the benchmark stage measures them then)."""
    return None if installed_version() else "onnxruntime is not installed"


def check_compatibility(manifest: Mapping[str, Any]) -> None:
    if installed_version() is None:
        raise Incompatible(f"{manifest['model']} {manifest['version']} for {manifest['target']} needs onnxruntime "
                           f"(built with {manifest['runtime'].get(NAME)}); this machine has none")
