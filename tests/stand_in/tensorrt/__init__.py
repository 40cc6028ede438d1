"""Stand-in for the ``tensorrt`` Python package, for orchestration tests without TensorRT.

It mirrors the part of NVIDIA's builder API that glueforge calls directly (Builder,
OnnxParser, ILogger) and through Polygraphy's loaders (``SetLayerPrecisions``,
``CreateConfig``, ``Profile``, ``EngineBytesFromNetwork``): IBuilderConfig flags and memory
pools, optimization profiles, timing caches, layer precisions. The parser reads
the ONNX file with ``onnx`` so that layers carry the graph's node names; the "engine" is a
JSON record of what the builder was configured to do. It builds nothing and runs nothing.
"""

from __future__ import annotations

import enum
import json
import os

import onnx

__version__ = os.environ.get("STANDIN_TRT_PY_VERSION", "10.3.0.30")
float32, float16 = "float32", "float16"


class ILogger:
    class Severity(enum.Enum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    def __init__(self) -> None:
        pass


class Logger(ILogger):
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = ILogger.Severity


def init_libnvinfer_plugins(logger: ILogger, namespace: str) -> bool:
    return True


class NetworkDefinitionCreationFlag(enum.IntEnum):
    STRONGLY_TYPED = 1


class OnnxParserFlag(enum.IntEnum):
    NATIVE_INSTANCENORM = 0


class DeviceType(enum.Enum):
    GPU = 0
    DLA = 1


class LayerType(enum.Enum):
    SHAPE = 0
    OTHER = 1


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0


class BuilderFlag(enum.IntEnum):
    FP16 = 0
    OBEY_PRECISION_CONSTRAINTS = 1


class ProfilingVerbosity(enum.Enum):
    DETAILED = 2


class _Layer:
    def __init__(self, name: str, op: str) -> None:
        self.name, self.op, self.precision = name, op, None
        self.type = LayerType.SHAPE if op == "Shape" else LayerType.OTHER

    @property
    def precision_is_set(self) -> bool:
        return self.precision is not None


class _Tensor:
    def __init__(self, name: str, shape: list[int]) -> None:
        self.name, self.shape, self.dtype, self.is_shape_tensor = name, shape, float32, False


class _Network:
    def __init__(self) -> None:
        self.layers: list[_Layer] = []
        self.inputs: list[_Tensor] = []

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, i: int) -> _Layer:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> _Layer:
        return self.layers[i]

    def get_flag(self, flag: NetworkDefinitionCreationFlag) -> bool:
        return False

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, i: int) -> _Tensor:
        return self.inputs[i]


class OnnxParser:
    def __init__(self, network: _Network, logger: ILogger) -> None:
        self.network, self.errors, self.flags = network, [], 0

    def parse_from_file(self, path: str) -> bool:
        model = onnx.load(path, load_external_data=False)
        bad = [n for n in model.graph.node if n.domain not in ("", "ai.onnx")]
        if bad:
            self.errors = [f"stand-in parser: no importer for {n.domain}.{n.op_type} (node {n.name})" for n in bad]
            return False
        self.network.layers = [_Layer(n.name, n.op_type) for n in model.graph.node]
        self.network.inputs = [_Tensor(i.name, [d.dim_value or -1 for d in i.type.tensor_type.shape.dim]) for i in model.graph.input]
        return True

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> str:
        return self.errors[i]


class _HostMemory(bytes):
    """IHostMemory: a buffer that is also a context manager."""

    def __enter__(self) -> "_HostMemory":
        return self

    def __exit__(self, *exc) -> None:
        return None


class _TimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def combine(self, other: "_TimingCache", ignore_mismatch: bool) -> bool:
        return True

    def serialize(self) -> _HostMemory:
        return _HostMemory(self.data + b"stand-in timing entry\n")


class _Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, list[list[int]]] = {}

    def set_shape(self, name: str, lo, opt, hi) -> None:
        self.shapes[name] = [list(lo), list(opt), list(hi)]


class _Config:
    DLA_core = -1
    default_device_type = DeviceType.GPU

    def __init__(self) -> None:
        self.flags: list[str] = []
        self.pools: dict[str, int] = {}
        self.profiles: list[_Profile] = []
        self.builder_optimization_level = None
        self.profiling_verbosity = None
        self.timing_cache = None

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        self.pools[pool.name] = size

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.append(flag.name)

    def get_flag(self, flag: BuilderFlag) -> bool:
        return flag.name in self.flags

    def get_memory_pool_limit(self, pool: MemoryPoolType) -> int:
        return self.pools.get(pool.name, 0)

    @property
    def num_optimization_profiles(self) -> int:
        return len(self.profiles)

    def create_timing_cache(self, data: bytes) -> _TimingCache:
        return _TimingCache(bytes(data))

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> _TimingCache:
        return self.timing_cache

    def add_optimization_profile(self, profile: _Profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1


class Builder:
    def __init__(self, logger: ILogger) -> None:
        self.logger = logger

    def create_network(self, flags: int = 0) -> _Network:
        return _Network()

    def create_builder_config(self) -> _Config:
        return _Config()

    def create_optimization_profile(self) -> _Profile:
        return _Profile()

    def build_serialized_network(self, network: _Network, config: _Config) -> bytes:
        self.logger.log(ILogger.Severity.INFO, "Total Weights Memory: 1234 bytes")
        self.logger.log(ILogger.Severity.INFO, "Total Activation Memory: 5678 bytes")
        record = {
            "stand_in_engine": True,
            "flags": config.flags,
            "pools": config.pools,
            "builder_optimization_level": config.builder_optimization_level,
            "profiling_verbosity": getattr(config.profiling_verbosity, "name", None),
            "profiles": [p.shapes for p in config.profiles],
            "fp32_layers": [layer.name for layer in network.layers if layer.precision == float32],
            "layers": len(network.layers),
            "timing_cache": config.timing_cache is not None,
        }
        return _HostMemory(json.dumps(record).encode())
