"""TensorRT and TensorRT-RTX engine builds.

Two builders for ``tensorrt`` targets, written against NVIDIA's documented interfaces:

- ``trtexec`` (``builder: trtexec``): the command line with ``--fp16``, ``--memPoolSize``,
  ``--timingCacheFile``, ``--minShapes/--optShapes/--maxShapes``,
  ``--builderOptimizationLevel``, ``--profilingVerbosity=detailed``, ``--exportLayerInfo``,
  ``--skipInference``, and FP32 islands pinned with ``--precisionConstraints=obey
  --layerPrecisions``; its output is parsed for errors, the TensorRT version and the device;
- the Python builder API (``builder: python``), the same settings through
  ``IBuilderConfig``.

TensorRT cannot be installed on the development machines or in CI of this project (PyPI
carries only stubs): real TensorRT engines are built where TensorRT exists, on the Jetson
runners. Here those paths are exercised with stand-ins (tests/stand_in/).

``tensorrt_rtx`` targets are built for real anywhere: TensorRT-RTX (``pip install
tensorrt-rtx-cu13``, module ``tensorrt_rtx``) compiles ahead of time without a GPU, for the
compute capabilities of the target. Its engines run on RTX GPUs only.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Mapping, Sequence

from packaging.version import Version

from glueforge import GlueforgeError
from glueforge.config import TENSORRT_RTX_COMPUTE, Target

log = logging.getLogger(__name__)
JETSON_TRTEXEC = Path("/usr/src/tensorrt/bin/trtexec")


class EngineUnavailable(GlueforgeError):
    """The engine of this target cannot be built on this machine."""


class EngineBuildError(GlueforgeError):
    """The builder ran and refused the network."""


# -- shapes -----------------------------------------------------------------------------------
def profile_shapes(inputs: Sequence[Mapping[str, Any]], target: Target) -> dict[str, tuple[list[int], list[int], list[int]]]:
    """min/opt/max shapes of each dynamic input: ``2B`` and ``N`` are 2 x pairs, ``B`` is pairs."""
    shapes = {}
    for tensor in inputs:
        dims = tensor["shape"]
        if all(isinstance(d, int) for d in dims):
            continue
        per = {"2B": 2, "N": 2, "B": 1}
        shapes[tensor["name"]] = tuple(
            [d if isinstance(d, int) else per[d] * pairs for d in dims]
            for pairs in (target.batch.min, target.batch.opt, target.batch.max)
        )
    return shapes


# -- the Python builder API (TensorRT and TensorRT-RTX) ----------------------------------------
def _logger(trt):
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

    return CapturingLogger()


def build_with_api(
    trt,
    onnx_path: Path,
    engine_path: Path,
    target: Target,
    inputs: Sequence[Mapping[str, Any]],
    fp32_layers: Sequence[str] = (),
    timing_cache: Path | None = None,
) -> dict[str, Any]:
    """Build one engine with a TensorRT-like Python module ``trt`` (tensorrt or tensorrt_rtx)."""
    rtx = target.runtime == "tensorrt_rtx"
    logger = _logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"{onnx_path.name}: {trt.__name__} {trt.__version__} cannot parse the graph:\n  " + "\n  ".join(errors))
    config = builder.create_builder_config()
    if target.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, target.workspace_mib << 20)
    if rtx:
        config.num_compute_capabilities = len(target.compute_capability)
        for i, cc in enumerate(target.compute_capability):
            config.set_compute_capability(getattr(trt.ComputeCapability, TENSORRT_RTX_COMPUTE[cc]), i)
    else:
        config.builder_optimization_level = target.builder_optimization_level
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        if target.precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            pinned = set(fp32_layers)
            for i in range(network.num_layers):
                layer = network.get_layer(i)
                if layer.name in pinned:
                    layer.precision = trt.float32
        if timing_cache is not None:
            cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
            config.set_timing_cache(cache, ignore_mismatch=False)
    shapes = profile_shapes(inputs, target)
    if shapes:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"{onnx_path.name}: {trt.__name__} {trt.__version__} refused the network:\n  " + "\n  ".join(logger.errors()[-10:]))
    engine_path.write_bytes(bytes(plan))
    if timing_cache is not None and not rtx:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {
        "engine_bytes": engine_path.stat().st_size,
        "weights_memory_bytes": logger.value(r"Total Weights Memory: (\d+) bytes"),
        "activation_memory_bytes": logger.value(r"Total Activation Memory: (\d+) bytes"),
        "profile_shapes": {k: list(v) for k, v in shapes.items()},
    }


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
) -> list[str]:
    cmd = [str(trtexec), f"--onnx={onnx_path}", f"--saveEngine={engine_path}", "--skipInference",
           f"--builderOptimizationLevel={target.builder_optimization_level}", "--profilingVerbosity=detailed"]
    if target.workspace_mib:
        cmd.append(f"--memPoolSize=workspace:{target.workspace_mib}M")
    if timing_cache is not None:
        cmd.append(f"--timingCacheFile={timing_cache}")
    if layer_info is not None:
        cmd.append(f"--exportLayerInfo={layer_info}")
    shapes = profile_shapes(inputs, target)
    for flag, index in (("--minShapes", 0), ("--optShapes", 1), ("--maxShapes", 2)):
        if shapes:
            cmd.append(f"{flag}=" + ",".join(f"{name}:{_dims(s[index])}" for name, s in shapes.items()))
    if target.precision == "fp16":
        cmd.append("--fp16")
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


def import_runtime(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None
