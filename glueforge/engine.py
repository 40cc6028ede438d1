"""engine: a (simplified) ONNX graph -> the deployable engine of one target.

- ``onnxruntime``: the engine is the ONNX model plus the session settings it must be run
  with (``session.json``); the model is loaded once here with exactly those settings, so a
  graph the runtime rejects fails this stage, not the application.
- ``tensorrt_rtx``: TensorRT-RTX compiles the (FP16) fused ONNX ahead of time for the
  target's compute capabilities, on any machine (``glueforge/tensorrt.py``).
- ``tensorrt``: trtexec or the Python builder API, on a machine whose TensorRT release and
  GPU match the target. Elsewhere this stage fails with a message naming what is missing
  and the exact commands a Jetson runner uses to finish from the same artifacts; it never
  writes a placeholder.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from glueforge import machine, tensorrt
from glueforge.config import OrtSession, Target
from glueforge.tensorrt import EngineBuildError, EngineUnavailable

log = logging.getLogger(__name__)


def ort_session_options(settings: OrtSession):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, settings.graph_optimization_level)
    options.intra_op_num_threads = settings.intra_op_num_threads
    options.execution_mode = getattr(ort.ExecutionMode, settings.execution_mode)
    options.log_severity_level = 3
    return options


def ort_session(model: Path, settings: OrtSession):
    import onnxruntime as ort

    return ort.InferenceSession(str(model), ort_session_options(settings), providers=list(settings.providers))


@dataclass(frozen=True)
class BuildContext:
    """What the TensorRT builders need besides the graphs."""

    io: Mapping[str, Any]  # graph -> {"inputs": [...], "outputs": [...]} of the export's io.json
    fp32_layers: Mapping[str, list[str]]  # graph -> layers the fuse stage pinned to FP32
    timing_cache_dir: Path
    project_root: Path


def build_engine(target_name: str, target: Target, graphs: Mapping[str, Path], out: Path, context: BuildContext) -> dict[str, Any]:
    if target.runtime == "onnxruntime":
        return _onnxruntime(target, graphs, out)
    if target.runtime == "tensorrt_rtx":
        return _tensorrt_rtx(target, graphs, out, context.io)
    return _tensorrt(target_name, target, graphs, out, context)


def _tensorrt_rtx(target: Target, graphs: Mapping[str, Path], out: Path, io: Mapping[str, Any]) -> dict[str, Any]:
    trt = tensorrt.import_runtime("tensorrt_rtx")
    if trt is None:
        raise EngineUnavailable("TensorRT-RTX is not installed: pip install tensorrt-rtx-cu13 (it builds without a GPU)")
    engines = {}
    for name, source in graphs.items():
        engines[name] = tensorrt.build_with_api(trt, source, out / f"{name}.engine", target, io[name]["inputs"])
        shutil.copyfile(source, out / f"{name}.onnx")  # the graph it was compiled from: validated, and shipped
        log.info("engine %s: TensorRT-RTX %s, %d bytes for %s", name, trt.__version__, engines[name]["engine_bytes"],
                 ", ".join(f"sm_{c}" for c in target.compute_capability))
    return {"runtime": "tensorrt_rtx", "tensorrt_rtx": trt.__version__, "compute_capability": target.compute_capability,
            "precision": target.precision, "engines": engines, "graphs": sorted(graphs)}


def _tensorrt(target_name: str, target: Target, graphs: Mapping[str, Path], out: Path, context: BuildContext) -> dict[str, Any]:
    io, fp32_layers = context.io, context.fp32_layers
    wanted_cc = target.compute_capability[0]
    trtexec = tensorrt.find_trtexec() if target.builder == "trtexec" else None
    trt = tensorrt.import_runtime("tensorrt") if target.builder == "python" else None
    if trtexec is None and trt is None:
        raise EngineUnavailable(_missing_tensorrt(target_name, target, graphs, context))
    version = tensorrt.trtexec_version(trtexec) if trtexec else trt.__version__
    cc = machine.compute_capability()
    where = f"a machine with TensorRT {target.tensorrt_version} and compute capability {wanted_cc}" + (
        f" (JetPack {target.jetpack})" if target.jetpack else "")
    if version is None or (target.tensorrt_version and not tensorrt.same_release(version, target.tensorrt_version)):
        raise EngineUnavailable(f"target {target_name!r} expects TensorRT {target.tensorrt_version}; this machine has "
                                f"TensorRT {version}: engines are tied to the TensorRT release. Build on {where}.")
    if cc != wanted_cc:
        raise EngineUnavailable(f"target {target_name!r} is compute capability {wanted_cc}; this machine's GPU is "
                                f"{cc or 'unknown (no GPU found)'}: engines are tied to the compute capability. Build on {where}.")
    cache = tensorrt.timing_cache_path(context.timing_cache_dir, target, version, cc)
    cache.parent.mkdir(parents=True, exist_ok=True)
    engines = {}
    for name, source in graphs.items():
        engine = out / f"{name}.engine"
        if trtexec is not None:
            cmd = tensorrt.trtexec_command(trtexec, source, engine, target, io[name]["inputs"], fp32_layers.get(name, ()),
                                           cache, out / f"{name}.layers.json")
            parsed = tensorrt.run_trtexec(cmd)
            if parsed["tensorrt_version"] and not tensorrt.same_release(parsed["tensorrt_version"], version):
                raise EngineBuildError(f"trtexec reported TensorRT {parsed['tensorrt_version']}, expected {version}")
            engines[name] = {"engine_bytes": engine.stat().st_size, "builder": "trtexec", "command": cmd[1:]}
        else:
            engines[name] = tensorrt.build_with_api(trt, source, engine, target, io[name]["inputs"],
                                                    fp32_layers.get(name, ()), cache)
    return {"runtime": "tensorrt", "tensorrt": version, "compute_capability": [cc], "precision": target.precision,
            "builder": target.builder, "timing_cache": cache.name, "engines": engines, "graphs": sorted(graphs)}


def _missing_tensorrt(target_name: str, target: Target, graphs: Mapping[str, Path], context: BuildContext) -> str:
    project_root = context.project_root
    what = "trtexec (searched $GLUEFORGE_TRTEXEC, PATH and /usr/src/tensorrt/bin)" if target.builder == "trtexec" \
        else "the TensorRT Python package (import tensorrt)"
    lines = [
        f"target {target_name!r} needs TensorRT {target.tensorrt_version} for compute capability "
        f"{', '.join(target.compute_capability)}, and this machine has no {what}. TensorRT engines are built where "
        f"TensorRT exists: a Jetson runner with JetPack {target.jetpack}.",
        "Every stage up to the fused ONNX is built and cached here:",
        *[f"  {name}: {_relative(path, project_root)}" for name, path in graphs.items()],
        "On the Jetson runner, in a checkout that shares these artifacts (copied artifacts/ or the remote cache), run:",
        f"  doit build target={target_name}",
        "or build each engine directly with:",
    ]
    for name, path in graphs.items():
        cmd = tensorrt.trtexec_command(tensorrt.JETSON_TRTEXEC, Path(_relative(path, project_root)), Path(f"{name}.engine"),
                                       target, context.io[name]["inputs"], context.fp32_layers.get(name, ()), Path("timing.cache"),
                                       Path(f"{name}.layers.json"))
        lines.append("  " + " ".join(cmd))
    return "\n".join(lines)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


def _onnxruntime(target: Target, graphs: Mapping[str, Path], out: Path) -> dict[str, Any]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    missing = [p for p in target.session.providers if p not in available]
    if missing:
        raise EngineUnavailable(f"onnxruntime {ort.__version__} here lacks providers {missing}; available: {available}")
    for name, source in graphs.items():
        dest = out / f"{name}.onnx"
        shutil.copyfile(source, dest)
        ort_session(dest, target.session)  # loads and optimises with the recorded settings, or raises
        log.info("engine %s: onnxruntime %s session created", name, ort.__version__)
    session = {"runtime": "onnxruntime", "onnxruntime": ort.__version__, **target.session.model_dump(mode="json")}
    (out / "session.json").write_text(json.dumps(session, indent=1))
    return {"runtime": "onnxruntime", "onnxruntime": ort.__version__, "graphs": sorted(graphs)}
