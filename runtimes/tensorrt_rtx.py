"""TensorRT-RTX: ahead-of-time engines for RTX GPUs, built on any machine (no GPU needed).

``pip install tensorrt-rtx-cu13`` (module ``tensorrt_rtx``) compiles for the target's
compute capabilities; the engines run on RTX GPUs only (not on data-centre GPUs such as the
H100). TensorRT-RTX builds strongly typed networks only:

- prepare: the pre-build lint (TensorRT's parser lineage, and no NonZero at all), then an
  FP16 graph with FP32 islands (``glueforge/fp16.py``); inputs and outputs stay FP32;
- engine: the builder API directly (``IBuilderConfig`` with the target's compute
  capabilities). Polygraphy's loaders are not used here: they switch between TensorRT and
  TensorRT-RTX with the process-wide ``POLYGRAPHY_USE_TENSORRT_RTX``, fixed when polygraphy is
  first imported, and the same process runs polygraphy for validation;
- runner: on machines without an RTX GPU, validation runs the FP16 ONNX each engine was
  compiled from (shipped in the bundle next to it) with onnxruntime on the CPU;
- open_graph (the runtime API): the engine itself through TensorRT-RTX's runtime API
  (``glueforge.runtimes.tensorrt.EngineGraph``), on an RTX GPU; tested here with stand-ins.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, Optional, Sequence

from pydantic import Field, model_validator
from typing_extensions import Annotated

from glueforge import machine
from glueforge.lint import Rules
from glueforge.runtime import BuildContext, EngineBuildError, EngineUnavailable
from glueforge.schema import BatchProfile, TargetSpec
from glueforge.runtimes import tensorrt

log = logging.getLogger(__name__)
NAME = "tensorrt_rtx"
TOOLS = ("onnx", "onnxruntime", "onnx-graphsurgeon")  # the float16 converter and the toposort
# Compute capabilities TensorRT-RTX compiles for ahead of time (tensorrt_rtx.ComputeCapability).
COMPUTE = {"7.5": "SM75", "8.0": "SM80", "8.6": "SM86", "8.9": "SM89", "12.0": "SM120", "12.1": "SM121"}
TURING_FP32_GEMM = (
    "TensorRT-RTX cannot compile FP32 matrix multiplies for Turing: \"Cannot compile operation ... for Turing "
    "(SM75): FP32 GEMM is not supported\"; a target with compute capability 7.5 must be fp16"
)
measured_with = ("the FP16 ONNX the engine was compiled from, onnxruntime on the CPU "
                 "(TensorRT-RTX engines run on RTX GPUs only)")


class Target(TargetSpec):
    precisions: ClassVar[tuple[str, ...]] = ("fp16", "fp32")
    match_output: ClassVar[str] = "dense"  # TensorRT-RTX has no NonZero
    max_keypoints: ClassVar[Optional[int]] = tensorrt.MAX_TOPK
    runtime: Literal["tensorrt_rtx"]
    compute_capability: Annotated[list[str], Field(min_length=1)]
    workspace_mib: Optional[Annotated[int, Field(ge=16)]] = None
    batch: BatchProfile = BatchProfile()

    @model_validator(mode="after")
    def _devices(self) -> "Target":
        unknown = [c for c in self.compute_capability if c not in COMPUTE]
        if unknown:
            raise ValueError(f"compute capabilities {unknown} are not TensorRT-RTX targets; valid: {', '.join(COMPUTE)}")
        if self.precision == "fp32" and "7.5" in self.compute_capability:
            raise ValueError(f"precision fp32 with compute capability 7.5: {TURING_FP32_GEMM}")
        return self


def lint_rules(version: str | None = None) -> Rules:
    return Rules(
        parser="TensorRT-RTX's ONNX parser",
        supported_ops=tensorrt.TENSORRT_OPS,
        refused={"NonZero": "TensorRT-RTX has no NonZero importer (its plugin creator is not shipped); "
                            "use the dense match outputs"},
        max_topk=tensorrt.MAX_TOPK,
    )


def installed_version() -> str | None:
    return machine.package_version("tensorrt-rtx-cu13", "tensorrt-rtx-cu12", "tensorrt-rtx")


def versions() -> dict[str, str | None]:
    return {NAME: installed_version()}


def prepare(model, graph: str, target: Target) -> tuple[Any, dict[str, Any]]:
    import onnx

    from glueforge.fp16 import fp32_islands, to_fp16
    from glueforge.lint import check

    rules = lint_rules()
    warnings = check(model, graph, rules)
    for finding in warnings:
        log.warning("lint %s: %s", graph, finding)
    meta: dict[str, Any] = {"lint_warnings": [str(f) for f in warnings], "fp32_layers": fp32_islands(model)}
    if target.precision == "fp16":
        model = to_fp16(model)
        onnx.checker.check_model(model)
        meta["precision"] = "fp16 graph with fp32 islands"
        check(model, graph, rules)
    return model, meta


def build(graphs: Mapping[str, Path], out: Path, target: Target, context: BuildContext) -> dict[str, Any]:
    try:
        import tensorrt_rtx as trt
    except ImportError:
        raise EngineUnavailable("TensorRT-RTX is not installed: pip install tensorrt-rtx-cu13 (it builds without a GPU)") from None
    engines = {}
    for name, source in graphs.items():
        engines[name] = build_with_api(trt, source, out / f"{name}.engine", target, context.io[name]["inputs"],
                                       context.sizes)
        shutil.copyfile(source, out / f"{name}.onnx")  # the graph it was compiled from: validated, and shipped
        log.info("engine %s: TensorRT-RTX %s, %d bytes for %s", name, trt.__version__, engines[name]["engine_bytes"],
                 ", ".join(f"sm_{c}" for c in target.compute_capability))
    return {"runtime": NAME, NAME: trt.__version__, "compute_capability": target.compute_capability,
            "precision": target.precision, "engines": engines, "files": {g: f"{g}.engine" for g in sorted(graphs)}}


def runner(directory: Path, graph: str, name: str):
    """The FP16 ONNX the engine was compiled from, with onnxruntime on the CPU (no RTX GPU here), in a session made as
    the cpu target's are (``glueforge.runtimes.onnxruntime.session``: this process's thread limit, passive waiting)."""
    from polygraphy.backend.onnxrt import OnnxrtRunner

    from glueforge.runtimes.onnxruntime import OrtSession, session

    return OnnxrtRunner(lambda: session(Path(directory) / f"{graph}.onnx", OrtSession()), name=name)


def check_compatibility(manifest: Mapping[str, Any]) -> None:
    tensorrt.check_compatibility(manifest, installed_version(), NAME)


def runs_here(target: Target) -> str | None:
    """Why this machine cannot run the target's engines, or None (the benchmark stage measures them then)."""
    cc = machine.compute_capability()
    if installed_version() is None:
        return "TensorRT-RTX is not installed here"
    if cc not in target.compute_capability:
        return (f"TensorRT-RTX engines run on RTX GPUs; this target's are compute capability "
                f"{', '.join(target.compute_capability)}, and this machine has {cc or 'no GPU'}")
    return tensorrt._needs_cudart()


def open_graph(directory: Path, graph: str, manifest: Mapping[str, Any] | None = None):
    """``graph``'s engine of a bundle, for the runtime API (``glueforge.runtimes.tensorrt.EngineGraph``: TensorRT-RTX's
    runtime API mirrors TensorRT's): needs tensorrt_rtx, cuda-python and an RTX GPU of the engine's compute
    capabilities. Without one, the engine cannot run; validation ran its FP16 ONNX instead (``runner``)."""
    try:
        import tensorrt_rtx as trt
    except ImportError:
        raise EngineUnavailable("this bundle's engines run with TensorRT-RTX: pip install tensorrt-rtx-cu13 cuda-python, "
                                "on a machine with an RTX GPU") from None
    if manifest is not None:
        tensorrt.check_compatibility(manifest, trt.__version__, NAME)  # the TensorRT-RTX that will run it, as imported
    return tensorrt.EngineGraph(trt, Path(directory) / f"{graph}.engine")


def build_with_api(trt, onnx_path: Path, engine_path: Path, target: Target, inputs: Sequence[Mapping[str, Any]],
                   sizes: Mapping[str, Sequence[int]] | None = None) -> dict[str, Any]:
    """Compile one strongly typed engine for the target's compute capabilities."""
    logger = tensorrt.capturing_logger(trt)
    builder, network, _parser = tensorrt.parse_onnx(trt, onnx_path, logger)
    config = builder.create_builder_config()
    if target.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, target.workspace_mib << 20)
    config.num_compute_capabilities = len(target.compute_capability)
    for i, cc in enumerate(target.compute_capability):
        config.set_compute_capability(getattr(trt.ComputeCapability, COMPUTE[cc]), i)
    shapes = tensorrt.profile_shapes(inputs, target.batch, sizes)
    if shapes:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"{onnx_path.name}: TensorRT-RTX {trt.__version__} refused the network:\n  " + "\n  ".join(logger.errors()[-10:]))
    engine_path.write_bytes(bytes(plan))
    return {
        "engine_bytes": engine_path.stat().st_size,
        **logger.memory(),
        "profile_shapes": {k: list(v) for k, v in shapes.items()},
    }
