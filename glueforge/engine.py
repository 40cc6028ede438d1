"""engine: a (simplified) ONNX graph -> the deployable engine of one target.

- ``onnxruntime``: the engine is the ONNX model plus the session settings it must be run
  with (``session.json``); the model is loaded once here with exactly those settings, so a
  graph the runtime rejects fails this stage, not the application.
- ``tensorrt`` / ``tensorrt_rtx``: built where the builder exists. On a machine without it
  this stage fails with a message saying what is missing and where to build; it never
  writes a placeholder.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
from pathlib import Path
from typing import Any, Mapping

from glueforge import GlueforgeError
from glueforge.config import OrtSession, Target

log = logging.getLogger(__name__)


class EngineUnavailable(GlueforgeError):
    """The engine of this target cannot be built on this machine."""


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


def build_engine(target_name: str, target: Target, graphs: Mapping[str, Path], out: Path) -> dict[str, Any]:
    if target.runtime == "onnxruntime":
        return _onnxruntime(target, graphs, out)
    raise EngineUnavailable(
        f"target {target_name!r} needs a {target.runtime} engine builder, which is not part of this build yet "
        f"and not installed on this machine ({platform.machine()}); everything up to the ONNX graphs is built "
        f"and cached for a runner that has it"
    )


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
