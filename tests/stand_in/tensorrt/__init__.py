"""Stand-in for the ``tensorrt`` Python package, for orchestration tests without TensorRT.

It mirrors the part of NVIDIA's builder API that glueforge calls directly (Builder,
OnnxParser, ILogger) and through Polygraphy's loaders (``SetLayerPrecisions``,
``CreateConfig``, ``Profile``, ``EngineBytesFromNetwork``): IBuilderConfig flags and memory
pools, optimization profiles, timing caches, layer precisions. The parser reads
the ONNX file with ``onnx`` so that layers carry the graph's node names; the "engine" is a
JSON record of what the builder was configured to do, and of the ONNX file it parsed.

It also mirrors the runtime API that ``glueforge.runtimes.tensorrt.EngineGraph`` calls (Runtime,
ICudaEngine, IExecutionContext): the stand-in engine runs its ONNX with onnxruntime on the host,
reading its inputs from and writing its outputs to the "device" pointers it is given (the
stand-in ``cuda.bindings.runtime`` allocates host memory), checking shapes against the engine's
profile. Each runtime call is appended to ``$STANDIN_TRT_LOG`` (JSON lines) for tests to inspect.
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
        self.network.source = os.path.abspath(path)
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
            "onnx": getattr(network, "source", None),
            "activation_memory": 5678,
        }
        return _HostMemory(json.dumps(record).encode())


# -- the runtime API: an "engine" that runs its ONNX with onnxruntime on stand-in device memory --------
class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    INT64 = 8


_NUMPY = {DataType.FLOAT: "float32", DataType.HALF: "float16", DataType.INT8: "int8", DataType.INT32: "int32",
          DataType.BOOL: "bool", DataType.INT64: "int64"}
_ONNX = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32, 9: DataType.BOOL, 7: DataType.INT64}


def nptype(dtype: DataType):
    import numpy as np

    return np.dtype(_NUMPY[dtype]).type


def _record(call: str, **args) -> None:
    """Append one runtime call to $STANDIN_TRT_LOG (JSON lines), for tests to check bindings and shapes."""
    path = os.environ.get("STANDIN_TRT_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"call": call, **args}) + "\n")


class _Engine:
    def __init__(self, record: dict) -> None:
        self.record = record
        model = onnx.load(record["onnx"], load_external_data=False)
        self.tensors = {}
        for mode, values in ((TensorIOMode.INPUT, model.graph.input), (TensorIOMode.OUTPUT, model.graph.output)):
            for v in values:
                t = v.type.tensor_type
                self.tensors[v.name] = (mode, _ONNX[t.elem_type], tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim))
        self.names = list(self.tensors)
        self.profile = record["profiles"][0] if record.get("profiles") else {}
        self.device_memory_size_v2 = int(record.get("activation_memory", 5678))

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self.tensors[name][0]

    def get_tensor_dtype(self, name: str) -> DataType:
        return self.tensors[name][1]

    def get_tensor_shape(self, name: str) -> tuple:
        return self.tensors[name][2]

    def get_tensor_profile_shape(self, name: str, profile: int):
        return self.profile[name]

    def create_execution_context(self) -> "_Context":
        return _Context(self)


class _Context:
    def __init__(self, engine: _Engine) -> None:
        from glueforge.runtimes.onnxruntime import OrtSession, session

        self.engine = engine
        self.session = session(engine.record["onnx"], OrtSession())  # as the cpu target's sessions
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}
        self.outputs: dict | None = None

    def set_input_shape(self, name: str, shape) -> bool:
        shape = tuple(int(d) for d in shape)
        _record("set_input_shape", name=name, shape=list(shape))
        declared = self.engine.tensors[name][2]
        if len(shape) != len(declared) or any(d != s for d, s in zip(declared, shape) if d >= 0):
            return False
        if name in self.engine.profile:
            lo, _, hi = self.engine.profile[name]
            if any(not (a <= s <= b) for a, s, b in zip(lo, shape, hi)):
                return False
        self.shapes[name] = shape
        self.outputs = None
        return True

    def set_tensor_address(self, name: str, pointer: int) -> bool:
        _record("set_tensor_address", name=name, dtype=_NUMPY[self.engine.tensors[name][1]])
        self.addresses[name] = int(pointer)
        return True

    def _inputs(self) -> dict:
        import ctypes

        import numpy as np

        feed = {}
        for name, (mode, dtype, _) in self.engine.tensors.items():
            if mode == TensorIOMode.INPUT:
                shape = self.shapes[name]
                count = int(np.prod(shape)) * np.dtype(_NUMPY[dtype]).itemsize
                feed[name] = np.frombuffer(ctypes.string_at(self.addresses[name], count), dtype=_NUMPY[dtype]).reshape(shape)
        return feed

    def _run(self) -> dict:
        if self.outputs is None:
            names = [o.name for o in self.session.get_outputs()]
            self.outputs = dict(zip(names, self.session.run(None, self._inputs())))
        return self.outputs

    def get_tensor_shape(self, name: str) -> tuple:
        if self.engine.tensors[name][0] == TensorIOMode.INPUT:
            return self.shapes[name]
        return tuple(self._run()[name].shape)  # static once the inputs are set (and in memory, here)

    def execute_async_v3(self, stream_handle: int) -> bool:
        import ctypes

        import numpy as np

        self.outputs = None
        outputs = self._run()
        _record("execute_async_v3", inputs={n: list(s) for n, s in self.shapes.items()})
        for name, value in outputs.items():
            value = np.ascontiguousarray(value)
            ctypes.memmove(self.addresses[name], value.ctypes.data, value.nbytes)
        return True


class Runtime:
    def __init__(self, logger: ILogger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, data: bytes):
        try:
            record = json.loads(bytes(data))
        except ValueError:
            self.logger.log(ILogger.Severity.ERROR, "stand-in runtime: not a stand-in engine")
            return None
        _record("deserialize_cuda_engine", onnx=os.path.basename(record.get("onnx", "")))
        return _Engine(record)


def stand_in_engine(onnx_path: str, profiles: dict, activation_memory: int = 5678) -> bytes:
    """A stand-in engine plan that runs ``onnx_path`` (for tests that make engines without building them)."""
    return json.dumps({"stand_in_engine": True, "onnx": str(onnx_path), "profiles": [profiles],
                       "activation_memory": activation_memory}).encode()
