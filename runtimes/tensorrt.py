"""TensorRT on Jetson (and other NVIDIA GPUs with a matching TensorRT release).

**TensorRT cannot be installed on the development machines or in CI of this project** (PyPI
carries only stubs): real TensorRT engines are built where TensorRT exists, on the Jetson
runners. Here every path is exercised with stand-ins (``tests/stand_in/``); elsewhere the
engine stage fails with a message naming what is missing and the exact commands a Jetson
runner uses to finish from the same artifacts. It never writes a placeholder.

- prepare: the pre-build lint against TensorRT's ONNX parser (``lint_rules``), then FP16 the
  weakly typed way: the FP32 graph is kept, the engine is built with the FP16 flag, and the
  FP32 islands (``glueforge/fp16.py``) are pinned with precision constraints. ``int8``: the
  extractor's convolutions arrive with symmetric INT8 Q/DQ (explicit quantization,
  ``QUANTIZATION``; the fuse step quantizes before prepare), built with ``--int8`` beside
  ``--fp16`` so that the rest runs in FP16 as above; ``fp8`` is refused at load (``_fp8``);
- check (fuse stage, on the x86 runner): TensorRT-RTX's parser parses every prepared graph
  and its builder builds it once for an RTX compute capability, a proxy for TensorRT's parser
  that catches unsupported ops and shape problems before a Jetson runner does; the record
  goes into the manifest (``prepared``);
- engine, two builders written against NVIDIA's documented interfaces:
  - ``trtexec`` (``builder: trtexec``): ``--fp16`` (and ``--int8``), ``--memPoolSize``, ``--timingCacheFile``,
    ``--minShapes/--optShapes/--maxShapes``, ``--builderOptimizationLevel``,
    ``--profilingVerbosity=detailed``, ``--exportLayerInfo``, ``--skipInference``, and the
    islands pinned with ``--precisionConstraints=obey --layerPrecisions``; its output is
    parsed for errors, the TensorRT version and the device;
  - the Python API (``builder: python``) through Polygraphy's loaders
    (``SetLayerPrecisions``, ``CreateConfig``, ``Profile``,
    ``EngineBytesFromNetwork`` with its timing cache), with the same settings; the network is
    parsed with glueforge's own logger on the builder, so the memory figures reach the manifest;
- the machine must have the target's TensorRT release and compute capability; one timing
  cache per device, CUDA, TensorRT and builder configuration;
- runner: polygraphy's ``TrtRunner`` over the serialized engine (needs the device);
- open_graph (the runtime API): :class:`EngineGraph`, written against NVIDIA's Python runtime API
  and cuda-python; here it is exercised with stand-ins of both (``tests/stand_in/``), and it runs
  for real on the device.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, Optional, Sequence

import numpy as np
from packaging.version import Version
from pydantic import Field, model_validator
from typing_extensions import Annotated

from glueforge import machine
from glueforge.lint import Rules
from glueforge.runtime import BuildContext, EngineBuildError, EngineUnavailable, Incompatible, relative
from glueforge.schema import SYMMETRIC_INT8, BatchProfile, TargetSpec

log = logging.getLogger(__name__)
NAME = "tensorrt"
PROXY_PACKAGE = "tensorrt-rtx-cu13"  # the parser proxy (``check``); pinned, so Jetson runners without it compute the same keys
TOOLS = ("onnx", PROXY_PACKAGE)  # the lint over onnx, and the proxy
JETSON_TRTEXEC = Path("/usr/src/tensorrt/bin/trtexec")
# TensorRT's TopK layer accepts K <= 3840 (ITopKLayer, TensorRT 8.x-10.x).
MAX_TOPK = 3840
# int8 targets (glueforge/quantize.py): explicit quantization, symmetric INT8 Q/DQ (TensorRT's "Working with Quantized
# Types"); the rest of the network builds in FP16 with its FP32 islands
QUANTIZATION = SYMMETRIC_INT8
FP8_COMPUTE = Version("8.9")  # FP8 tensor cores: Ada (8.9), Hopper (9.0), Blackwell; Orin (8.7) and Ampere have none
measured_with = "the engine itself, TensorRT on the device"

# onnx-tensorrt docs/operators.md, TensorRT 10.x: operators with "Y".
TENSORRT_OPS = frozenset("""
Abs Acos Acosh Add AffineGrid And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
BitwiseAnd BitwiseNot BitwiseOr BitwiseXor BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant
ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DFT DepthToSpace DequantizeLinear Div Dropout
DynamicQuantizeLinear Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND
Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization
GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If InstanceNormalization IsInf IsNaN
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LpNormalization LpPool LRN LSTM MatMul Max
MaxPool Mean Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu
QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2
ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape
Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink
Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze STFT Sub Sum Tan
Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())


class Target(TargetSpec):
    # fp8 is listed so that it is refused with the reason (``_fp8``), not as an unknown precision
    precisions: ClassVar[tuple[str, ...]] = ("fp16", "fp32", "int8", "fp8")
    match_output: ClassVar[str] = "dense"  # no data-dependent output shape: no output allocator needed
    max_keypoints: ClassVar[Optional[int]] = MAX_TOPK
    runtime: Literal["tensorrt"]
    builder: Literal["trtexec", "python"]
    compute_capability: Annotated[list[str], Field(min_length=1)]
    tensorrt_version: str
    cuda_version: Optional[str] = None
    jetpack: Optional[str] = None
    workspace_mib: Optional[Annotated[int, Field(ge=16)]] = None
    builder_optimization_level: Annotated[int, Field(ge=0, le=5)] = 3
    batch: BatchProfile = BatchProfile()

    # the lint rules are TensorRT's release's; the parser proxy builds with the batch profile
    fuse_fields: ClassVar[tuple[str, ...]] = ("runtime", "precision", "tensorrt_version", "batch")

    @model_validator(mode="after")
    def _one_device(self) -> "Target":
        if len(self.compute_capability) != 1:
            raise ValueError("a TensorRT engine is built for one compute capability: give exactly one")
        return self

    @model_validator(mode="after")
    def _fp8(self) -> "Target":
        if self.precision != "fp8":
            return self
        (compute,) = self.compute_capability
        if Version(compute) < FP8_COMPUTE:
            raise ValueError(f"precision fp8 needs FP8 tensor cores, compute capability {FP8_COMPUTE} or newer; "
                             f"{compute} has none: use int8 or fp16")
        raise ValueError("precision fp8: glueforge builds no FP8 engines yet; use int8 or fp16")


def lint_rules(version: str | None = None) -> Rules:
    before_10 = version is not None and Version(version) < Version("10")
    return Rules(
        parser="TensorRT's ONNX parser (onnx-tensorrt operators.md)",
        supported_ops=TENSORRT_OPS,
        warned={"NonZero": "data-dependent output shape: needs an IOutputAllocator at run time"},
        max_topk=MAX_TOPK,
        int64_io=f"INT64 I/O: TensorRT {version} casts INT64 down to INT32" if before_10 else None,
    )


def installed_version() -> str | None:
    """The installed TensorRT release: its package's, else the importable module's (JetPack's apt package)."""
    version = machine.package_version("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-lean")
    if version is None:
        trt = _import_tensorrt()
        version = getattr(trt, "__version__", None) if trt is not None else None
    return version


def versions() -> dict[str, str | None]:
    return {NAME: installed_version()}  # the engine stage checks the machine's release itself


def prepare(model, graph: str, target: Target) -> tuple[Any, dict[str, Any]]:
    from glueforge.fp16 import fp32_islands
    from glueforge.lint import check as lint

    warnings = lint(model, graph, lint_rules(target.tensorrt_version))
    for finding in warnings:
        log.warning("lint %s: %s", graph, finding)
    meta: dict[str, Any] = {"lint_warnings": [str(f) for f in warnings], "fp32_layers": []}
    if target.precision in ("fp16", "int8"):
        meta["fp32_layers"] = fp32_islands(model)
        meta["precision"] = "fp32 graph; fp16 builder flag with fp32 precision constraints"
    if target.precision == "int8" and any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        meta["precision"] = ("Q/DQ convolutions in INT8 (explicit quantization); the rest fp16 with fp32 precision "
                             "constraints: int8 and fp16 builder flags")
    return model, meta


# -- the parser proxy: TensorRT-RTX checks the Jetson graphs before a Jetson runner does ---------------
PROXY_COMPUTE = ("8.6", "SM86")  # one RTX compute capability the proxy builds for (an FP32 GEMM builds there)


def check(graphs: Mapping[str, Path], target: Target, context: BuildContext) -> dict[str, Any]:
    """Parse every prepared graph with TensorRT-RTX's ONNX parser (TensorRT's lineage) and build it once for
    one RTX compute capability, with the target's shape profile: a proxy that catches unsupported ops and
    shape problems here, before a Jetson runner spends time on them. Only a check: nothing it builds is kept.

    A parse or build failure raises :class:`EngineBuildError` naming the node (the parser's message names
    node and operator). What is specific to TensorRT 10.3 stays the lint's (``lint_rules``). Returns the
    record for the manifest: parser, version, compute capability, and per graph what passed.
    """
    import time

    try:
        import tensorrt_rtx as rtx
    except ImportError:
        raise EngineUnavailable(f"the TensorRT parser proxy needs TensorRT-RTX (pip install {PROXY_PACKAGE}, the "
                                "build extra): it checks every Jetson graph before a Jetson runner builds it") from None
    record: dict[str, Any] = {"parser": "TensorRT-RTX ONNX parser (TensorRT's lineage), as a proxy for TensorRT "
                                        f"{target.tensorrt_version}", "version": rtx.__version__,
                              "compute_capability": PROXY_COMPUTE[0], "graphs": {}}
    for name, path in graphs.items():
        started = time.monotonic()
        logger = capturing_logger(rtx)
        try:
            builder, network, _parser = parse_onnx(rtx, path, logger)
        except EngineBuildError as e:
            raise EngineBuildError(f"target {context.target_name!r}: the TensorRT parser proxy (TensorRT-RTX "
                                   f"{rtx.__version__}) cannot parse {name}: {e}") from None
        config = builder.create_builder_config()
        config.num_compute_capabilities = 1
        config.set_compute_capability(getattr(rtx.ComputeCapability, PROXY_COMPUTE[1]), 0)
        shapes = profile_shapes(context.io[name]["inputs"], target.batch, context.sizes)
        if shapes:
            profile = builder.create_optimization_profile()
            for tensor, (lo, opt, hi) in shapes.items():
                profile.set_shape(tensor, lo, opt, hi)
            config.add_optimization_profile(profile)
        if builder.build_serialized_network(network, config) is None:
            raise EngineBuildError(f"target {context.target_name!r}: the TensorRT parser proxy (TensorRT-RTX "
                                   f"{rtx.__version__}) parsed {name} but its builder refused it:\n  "
                                   + "\n  ".join(logger.errors()[-10:]))
        record["graphs"][name] = {"parsed": True, "built": True, "layers": network.num_layers,
                                  "seconds": round(time.monotonic() - started, 1)}
        log.info("proxy %s: parsed and built by TensorRT-RTX %s for sm_%s in %.1f s", name, rtx.__version__,
                 PROXY_COMPUTE[0], time.monotonic() - started)
    return record


# -- shapes -----------------------------------------------------------------------------------
def profile_shapes(
    inputs: Sequence[Mapping[str, Any]], batch: BatchProfile, sizes: Mapping[str, Sequence[int]] | None = None
) -> dict[str, tuple[list[int], list[int], list[int]]]:
    """min/opt/max shapes of each dynamic input: ``2B`` is 2 x pairs and ``B`` is pairs; ``N`` (the
    extractor's images) is 2 x pairs at max but 1 at min and opt: a tracking loop extracts each new
    frame on its own, and the engine is tuned for that; ``H`` and ``W`` come from the model's image sizes
    (models.yaml ``export.sizes`` min/max and ``export.image_size`` as the optimum)."""
    shapes = {}
    for tensor in inputs:
        dims = tensor["shape"]
        if all(isinstance(d, int) for d in dims):
            continue
        per = {"2B": 2, "N": 2, "B": 1}
        profile = []
        for which, pairs in (("min", batch.min), ("opt", batch.opt), ("max", batch.max)):
            shape = []
            for d in dims:
                if isinstance(d, int):
                    shape.append(d)
                elif d in per:
                    shape.append(1 if (d == "N" and which in ("min", "opt")) else per[d] * pairs)
                elif d in ("H", "W") and sizes:
                    shape.append(int(sizes[which]["HW".index(d)]))
                else:
                    raise EngineBuildError(f"input {tensor['name']}: no profile for dimension {d!r} (io.json image_sizes)")
            profile.append(shape)
        shapes[tensor["name"]] = tuple(profile)
    return shapes


# -- the engine stage -----------------------------------------------------------------------------
def build(graphs: Mapping[str, Path], out: Path, target: Target, context: BuildContext) -> dict[str, Any]:
    wanted_cc = target.compute_capability[0]
    trtexec = find_trtexec() if target.builder == "trtexec" else None
    trt = _import_tensorrt() if target.builder == "python" else None
    if trtexec is None and trt is None:
        raise EngineUnavailable(_missing_tensorrt(target, graphs, context))
    version = trtexec_version(trtexec) if trtexec else trt.__version__
    cc = machine.compute_capability()
    where = f"a machine with TensorRT {target.tensorrt_version} and compute capability {wanted_cc}" + (
        f" (JetPack {target.jetpack})" if target.jetpack else "")
    if version is None or not same_release(version, target.tensorrt_version):
        raise EngineUnavailable(f"target {context.target_name!r} expects TensorRT {target.tensorrt_version}; this machine has "
                                f"TensorRT {version}: engines are tied to the TensorRT release. Build on {where}.")
    if cc != wanted_cc:
        raise EngineUnavailable(f"target {context.target_name!r} is compute capability {wanted_cc}; this machine's GPU is "
                                f"{cc or 'unknown (no GPU found)'}: engines are tied to the compute capability. Build on {where}.")
    cache = timing_cache_path(context.timing_cache_dir, target, version, cc)
    cache.parent.mkdir(parents=True, exist_ok=True)
    engines = {}
    for name, source in graphs.items():
        engine = out / f"{name}.engine"
        fp32_layers = context.prepared.get(name, {}).get("fp32_layers", ())
        inputs = context.io[name]["inputs"]
        if trtexec is not None:
            cmd = trtexec_command(trtexec, source, engine, target, inputs, fp32_layers, cache, out / f"{name}.layers.json",
                                  context.sizes)
            parsed = run_trtexec(cmd)
            if parsed["tensorrt_version"] and not same_release(parsed["tensorrt_version"], version):
                raise EngineBuildError(f"trtexec reported TensorRT {parsed['tensorrt_version']}, expected {version}")
            engines[name] = {"engine_bytes": engine.stat().st_size, "builder": "trtexec", "command": cmd[1:],
                             "profile_shapes": {k: list(v) for k, v in profile_shapes(inputs, target.batch, context.sizes).items()},
                             "device_command": " ".join(device_command(name, target, context))}
        else:
            engines[name] = build_with_polygraphy(trt, source, engine, target, inputs, fp32_layers, cache, context.sizes)
        shutil.copyfile(source, out / f"{name}.onnx")  # the graph it was built from: shipped, to rebuild on the device
    return {"runtime": NAME, NAME: version, "compute_capability": [cc], "cuda": target.cuda_version,
            "jetpack": target.jetpack, "precision": target.precision, "builder": target.builder,
            "timing_cache": cache.name, "engines": engines, "files": {g: f"{g}.engine" for g in sorted(graphs)}}


def _missing_tensorrt(target: Target, graphs: Mapping[str, Path], context: BuildContext) -> str:
    what = "trtexec (searched $GLUEFORGE_TRTEXEC, PATH and /usr/src/tensorrt/bin)" if target.builder == "trtexec" \
        else "the TensorRT Python package (import tensorrt)"
    lines = [
        f"target {context.target_name!r} needs TensorRT {target.tensorrt_version} for compute capability "
        f"{', '.join(target.compute_capability)}, and this machine has no {what}. TensorRT engines are built where "
        f"TensorRT exists: a Jetson runner with JetPack {target.jetpack}.",
        "Every stage up to the fused ONNX is built and cached here:",
        *[f"  {name}: {relative(path, context.project_root)}" for name, path in graphs.items()],
        "On the Jetson runner, in a checkout that shares these artifacts (copied artifacts/ or the remote cache), run:",
        f"  doit build target={context.target_name}",
        "or build each engine directly with:",
    ]
    for name, path in graphs.items():
        lines.append("  " + " ".join(device_command(name, target, context, Path(relative(path, context.project_root)))))
    return "\n".join(lines)


def device_command(graph: str, target: Target, context: BuildContext, onnx_path: Path | None = None) -> list[str]:
    """The trtexec line that builds ``graph``'s engine on the device (from ``<graph>.onnx`` of a bundle by default)."""
    return trtexec_command(JETSON_TRTEXEC, onnx_path or Path(f"{graph}.onnx"), Path(f"{graph}.engine"), target,
                           context.io[graph]["inputs"], context.prepared.get(graph, {}).get("fp32_layers", ()),
                           Path("timing.cache"), Path(f"{graph}.layers.json"), context.sizes)


def _import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt


# -- the Python API, through Polygraphy's loaders -----------------------------------------------
_LOGGERS: dict[str, Any] = {}


def capturing_logger(trt):
    """A TensorRT ``ILogger`` that keeps the builder's messages (errors, memory figures) for the manifest.

    One per TensorRT module for the whole process, emptied for each build: TensorRT keeps the
    first logger it is given (for its plugins too), so that one must outlive every build.
    """
    logger = _LOGGERS.get(trt.__name__)
    if logger is None:
        logger = _LOGGERS[trt.__name__] = _new_capturing_logger(trt)
    logger.messages.clear()
    return logger


def _new_capturing_logger(trt):

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[str, str]] = []

        def log(self, severity, msg):  # noqa: A003 - TensorRT's interface
            self.messages.append((str(severity), msg))
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                log.error("%s: %s", trt.__name__, msg)

        def errors(self) -> list[str]:
            return [m for s, m in self.messages if s.endswith(("ERROR", "INTERNAL_ERROR"))]

        def value(self, pattern: str) -> int | None:
            for _, m in self.messages:
                found = re.search(pattern, m)
                if found:
                    return int(found.group(1))
            return None

        def memory(self) -> dict[str, int | None]:
            return {"weights_memory_bytes": self.value(r"Total Weights Memory: (\d+) bytes"),
                    "activation_memory_bytes": self.value(r"Total Activation Memory: (\d+) bytes")}

    return CapturingLogger()


def parse_onnx(trt, onnx_path: Path, logger, flags: int = 0):
    """(builder, network, parser) for one ONNX file, with ``logger`` on the builder.

    Polygraphy's ``NetworkFromOnnxPath`` does the same but puts its own process-wide logger on
    the builder, which would hide the memory figures the manifest records.
    """
    builder = trt.Builder(logger)
    network = builder.create_network(flags)
    if hasattr(trt, "init_libnvinfer_plugins"):
        trt.init_libnvinfer_plugins(logger, "")
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"{onnx_path.name}: {trt.__name__} {trt.__version__} cannot parse the graph:\n  " + "\n  ".join(errors))
    return builder, network, parser


def build_with_polygraphy(
    trt,
    onnx_path: Path,
    engine_path: Path,
    target: Target,
    inputs: Sequence[Mapping[str, Any]],
    fp32_layers: Sequence[str] = (),
    timing_cache: Path | None = None,
    sizes: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Build one engine with the target's settings; FP32 islands pinned by precision constraints."""
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, Profile, SetLayerPrecisions

    logger = capturing_logger(trt)
    network = parse_onnx(trt, onnx_path, logger)
    fp16 = target.precision in ("fp16", "int8")  # int8: the Q/DQ layers in INT8, the rest FP16
    if fp16 and fp32_layers:
        network = SetLayerPrecisions(network, {name: trt.float32 for name in fp32_layers})
    shapes = profile_shapes(inputs, target.batch, sizes)
    profiles = []
    if shapes:
        profile = Profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.add(name, min=lo, opt=opt, max=hi)
        profiles.append(profile)
    config = CreateConfig(
        fp16=fp16,
        int8=target.precision == "int8",
        precision_constraints="obey" if fp16 and fp32_layers else None,
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: target.workspace_mib << 20} if target.workspace_mib else None,
        profiles=profiles or None,
        builder_optimization_level=target.builder_optimization_level,
        profiling_verbosity=trt.ProfilingVerbosity.DETAILED,
        load_timing_cache=str(timing_cache) if timing_cache is not None and timing_cache.is_file() else None,
    )
    try:
        plan = EngineBytesFromNetwork(network, config, save_timing_cache=str(timing_cache) if timing_cache else None)()
    except Exception as e:  # polygraphy reports builder failures as PolygraphyException
        detail = "\n  ".join(logger.errors()[-10:]) or str(e)
        raise EngineBuildError(f"{onnx_path.name}: TensorRT {trt.__version__} refused the network:\n  {detail}") from None
    engine_path.write_bytes(bytes(plan))
    return {"engine_bytes": engine_path.stat().st_size, "builder": "python (polygraphy loaders)", **logger.memory(),
            "profile_shapes": {k: list(v) for k, v in shapes.items()}}


# -- trtexec ---------------------------------------------------------------------------------------
def _dims(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def trtexec_command(
    trtexec: Path,
    onnx_path: Path,
    engine_path: Path,
    target: Target,
    inputs: Sequence[Mapping[str, Any]],
    fp32_layers: Sequence[str] = (),
    timing_cache: Path | None = None,
    layer_info: Path | None = None,
    sizes: Mapping[str, Sequence[int]] | None = None,
) -> list[str]:
    cmd = [str(trtexec), f"--onnx={onnx_path}", f"--saveEngine={engine_path}", "--skipInference",
           f"--builderOptimizationLevel={target.builder_optimization_level}", "--profilingVerbosity=detailed"]
    if target.workspace_mib:
        cmd.append(f"--memPoolSize=workspace:{target.workspace_mib}M")
    if timing_cache is not None:
        cmd.append(f"--timingCacheFile={timing_cache}")
    if layer_info is not None:
        cmd.append(f"--exportLayerInfo={layer_info}")
    shapes = profile_shapes(inputs, target.batch, sizes)
    for flag, index in (("--minShapes", 0), ("--optShapes", 1), ("--maxShapes", 2)):
        if shapes:
            cmd.append(f"{flag}=" + ",".join(f"{name}:{_dims(s[index])}" for name, s in shapes.items()))
    if target.precision in ("fp16", "int8"):
        cmd.append("--fp16")
        if target.precision == "int8":
            cmd.append("--int8")  # explicit quantization: the Q/DQ convolutions in INT8 (no calibration cache)
        if fp32_layers:
            cmd += ["--precisionConstraints=obey", "--layerPrecisions=" + ",".join(f"{n}:fp32" for n in fp32_layers)]
    return cmd


def parse_trtexec(output: str) -> dict[str, Any]:
    """Version, device and verdict of a trtexec run, from its log."""
    version = None
    found = re.search(r"\[TensorRT v(\d+)\]", output)
    if found:
        n = int(found.group(1))
        version = f"{n // 10000}.{n // 100 % 100}.{n % 100}"
    cc = re.search(r"Compute Capability: (\d+\.\d+)", output)
    return {
        "tensorrt_version": version,
        "compute_capability": cc.group(1) if cc else None,
        "passed": "&&&& PASSED" in output,
        "errors": [line.strip() for line in output.splitlines() if "[E]" in line],
    }


def find_trtexec() -> Path | None:
    for candidate in (os.environ.get("GLUEFORGE_TRTEXEC"), shutil.which("trtexec"), str(JETSON_TRTEXEC)):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def trtexec_version(trtexec: Path) -> str | None:
    result = subprocess.run([str(trtexec), "--help"], capture_output=True, text=True)
    return parse_trtexec(result.stdout + result.stderr)["tensorrt_version"]


def run_trtexec(cmd: list[str]) -> dict[str, Any]:
    log.info("trtexec: %s", " ".join(cmd[:4]) + " ...")
    result = subprocess.run(cmd, capture_output=True, text=True)
    parsed = parse_trtexec(result.stdout + result.stderr)
    if result.returncode != 0 or not parsed["passed"]:
        detail = "\n  ".join(parsed["errors"][-10:]) or (result.stdout + result.stderr)[-2000:]
        raise EngineBuildError(f"trtexec failed (exit {result.returncode}):\n  {detail}")
    return parsed


# -- the build machine --------------------------------------------------------------------------
def same_release(installed: str, expected: str) -> bool:
    """TensorRT engines are tied to the major.minor release that built them."""
    a, b = Version(installed), Version(expected)
    return (a.major, a.minor) == (b.major, b.minor)


def timing_cache_path(root: Path, target: Target, tensorrt_version: str, compute_capability: str) -> Path:
    """One timing cache per device, CUDA, TensorRT version and builder configuration; never mixed."""
    key = {"compute_capability": compute_capability, "cuda": target.cuda_version, "tensorrt": tensorrt_version,
           "precision": target.precision, "workspace_mib": target.workspace_mib,
           "builder_optimization_level": target.builder_optimization_level}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(root) / f"sm{compute_capability.replace('.', '')}-trt{tensorrt_version}-{digest}.cache"


# -- running an engine: NVIDIA's Python runtime API and cuda-python ---------------------------------
def _cudart():
    """cuda-python's CUDA runtime bindings (``pip install cuda-python``), as TensorRT's samples use them."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python 12.6 and later
    except ImportError:
        try:
            from cuda import cudart  # earlier cuda-python
        except ImportError:
            raise EngineUnavailable("running a TensorRT engine needs cuda-python for device memory: "
                                    "pip install cuda-python (glueforge's tensorrt extra)") from None
    return cudart


def _cuda(result, call: str):
    """The values of a cuda-python call, which returns (error, *values); raises on an error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(getattr(err, "value", err)) != 0:
        raise EngineUnavailable(f"CUDA {call} failed: {err}")
    return values[0] if len(values) == 1 else values


class EngineGraph:
    """One serialized engine, run with TensorRT's (or TensorRT-RTX's, whose API mirrors it) Python
    runtime API: ``Runtime.deserialize_cuda_engine``, an execution context, ``set_input_shape``,
    ``set_tensor_address`` and ``execute_async_v3`` on a CUDA stream, with device buffers from
    cuda-python, grown as shapes need. Outputs have static shapes once the inputs' are set (the
    graphs of TensorRT targets take dense match outputs); a data-dependent one is refused.
    A :class:`glueforge.runtime.GraphRunner`.
    """

    def __init__(self, trt, path: Path) -> None:
        self.trt, self.path, self.cudart = trt, Path(path), _cudart()
        self.logger = capturing_logger(trt)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise EngineUnavailable(f"{self.path.name}: {trt.__name__} {trt.__version__} cannot load this engine:\n  "
                                    + "\n  ".join(self.logger.errors()[-5:] or ["(no message)"]))
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.stream = _cuda(self.cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.buffers: dict[str, tuple[int, int]] = {}  # tensor -> (device pointer, bytes)
        self.engine_memory = int(getattr(self.engine, "device_memory_size_v2", None) or self.engine.device_memory_size)

    def _buffer(self, name: str, nbytes: int) -> int:
        pointer, size = self.buffers.get(name, (0, 0))
        if size < nbytes:
            if pointer:
                _cuda(self.cudart.cudaFree(pointer), "cudaFree")
            pointer, size = _cuda(self.cudart.cudaMalloc(max(nbytes, 1)), "cudaMalloc"), max(nbytes, 1)
            self.buffers[name] = (pointer, size)
        return pointer

    def infer(self, feed: Mapping[str, Any]) -> dict[str, Any]:
        cudart = self.cudart
        missing = [n for n in self.inputs if n not in feed]
        if missing:
            raise EngineBuildError(f"{self.path.name}: inputs {missing} not given (the engine takes {self.inputs})")
        for name in self.inputs:
            array = np.ascontiguousarray(feed[name])
            if array.dtype != self.dtypes[name]:
                raise EngineBuildError(f"{self.path.name}: input {name!r} is {array.dtype}; the engine takes {self.dtypes[name]}")
            if not self.context.set_input_shape(name, tuple(array.shape)):
                lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
                raise EngineBuildError(f"{self.path.name}: input {name!r} of shape {tuple(array.shape)} is outside the "
                                       f"engine's profile {tuple(lo)} .. {tuple(hi)}")
            pointer = self._buffer(name, array.nbytes)
            _cuda(cudart.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes,
                                         cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream), "cudaMemcpyAsync")
            self.context.set_tensor_address(name, pointer)
        results = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise EngineBuildError(f"{self.path.name}: output {name!r} has a data-dependent shape {shape}; the graphs "
                                       "of TensorRT targets take dense match outputs")
            results[name] = np.empty(shape, dtype=self.dtypes[name])
            self.context.set_tensor_address(name, self._buffer(name, results[name].nbytes))
        if not self.context.execute_async_v3(self.stream):
            raise EngineBuildError(f"{self.path.name}: execute_async_v3 failed:\n  " + "\n  ".join(self.logger.errors()[-5:]))
        for name, array in results.items():
            _cuda(cudart.cudaMemcpyAsync(array.ctypes.data, self.buffers[name][0], array.nbytes,
                                         cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream), "cudaMemcpyAsync")
        _cuda(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return results

    def input_metadata(self) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
        """Each input's name, dtype and shape (-1 where dynamic)."""
        return [(n, self.dtypes[n], tuple(self.engine.get_tensor_shape(n))) for n in self.inputs]

    def device_memory(self) -> int:
        """The engine's activation memory plus its input and output buffers, in bytes."""
        return self.engine_memory + sum(size for _, size in self.buffers.values())

    def close(self) -> None:
        for pointer, _ in self.buffers.values():
            self.cudart.cudaFree(pointer)
        self.buffers.clear()
        if self.stream is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None
        self.context = self.engine = None


def open_graph(directory: Path, graph: str, manifest: Mapping[str, Any] | None = None) -> EngineGraph:
    """``graph``'s engine of a bundle, for the runtime API: needs TensorRT, cuda-python and the engine's GPU."""
    trt = _import_tensorrt()
    if trt is None:
        raise EngineUnavailable("this bundle's engines run with TensorRT (JetPack on a Jetson) and cuda-python; this "
                                "machine has no TensorRT Python package")
    if manifest is not None:
        check_compatibility(manifest, trt.__version__)  # the TensorRT that will run it, as imported
    return EngineGraph(trt, Path(directory) / f"{graph}.engine")


def runs_here(target: Target) -> str | None:
    """Why this machine cannot run the target's engines, or None (the benchmark stage measures them then)."""
    installed, cc = installed_version(), machine.compute_capability()
    if installed is None or not same_release(installed, target.tensorrt_version):
        return f"TensorRT {target.tensorrt_version} is not installed here (found {installed or 'none'})"
    if cc not in target.compute_capability:
        return f"the engine runs on compute capability {', '.join(target.compute_capability)}; this machine has {cc or 'no GPU'}"
    return _needs_cudart()


def _needs_cudart() -> str | None:
    try:
        _cudart()
    except EngineUnavailable as e:
        return str(e)
    return None


# -- running and pulling ----------------------------------------------------------------------------
def runner(directory: Path, graph: str, name: str):
    """The engine as validation runs it: through :class:`EngineGraph`, the runner of the runtime API and of
    ``glueforge bench`` (NVIDIA's runtime API and cuda-python), as a polygraphy runner. Needs TensorRT and the
    engine's GPU."""
    from glueforge.runners import GraphPolygraphyRunner

    return GraphPolygraphyRunner(lambda: open_graph(directory, graph), EngineGraph.input_metadata, name=name)


def check_compatibility(manifest: Mapping[str, Any], installed: str | None = None, package: str = NAME) -> None:
    """Refuse a bundle whose TensorRT release or compute capability this machine does not have."""
    runtime = manifest["runtime"]
    installed = installed if installed is not None else installed_version()
    wanted, wanted_cc = runtime.get(package), runtime.get("compute_capability") or []
    cc = machine.compute_capability()
    same = installed is not None and wanted is not None and Version(installed).release[:2] == Version(wanted).release[:2]
    if not same or cc not in wanted_cc:
        raise Incompatible(
            f"{manifest['model']} {manifest['version']} for {manifest['target']} needs {package} {wanted} on compute "
            f"capability {', '.join(wanted_cc) or '?'}; this machine has {package} {installed or 'not installed'} on "
            f"compute capability {cc or 'unknown (no GPU found)'}"
        )
