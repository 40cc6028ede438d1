"""A runtime-API graph (:class:`glueforge.runtime.GraphRunner`) as a polygraphy runner, for validation.

Validation compares engines through polygraphy's ``Comparator``, which takes polygraphy runners.
Where a runtime's engines run through our own runner (TensorRT and TensorRT-RTX engines:
``glueforge.runtimes.tensorrt.EngineGraph``, over NVIDIA's runtime API and cuda-python), this adapter lets
validation run the engine exactly as the runtime API and ``glueforge bench`` run it on the device.
The inverse adapter is ``glueforge.runtime.PolygraphyGraph``.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.datatype import DataType

from glueforge.runtime import GraphRunner


class GraphPolygraphyRunner(BaseRunner):
    """``open()`` (a :class:`GraphRunner`) on activation, closed on deactivation. ``inputs``: each input's name,
    numpy dtype and shape (-1 for a dynamic dimension), for polygraphy's input checks."""

    def __init__(self, open: Callable[[], GraphRunner], inputs: Callable[[GraphRunner], Sequence[tuple[str, Any, Sequence[int]]]],
                 name: str | None = None) -> None:
        super().__init__(name=name, prefix="glueforge-runner")
        self._open, self._inputs = open, inputs
        self.graph: GraphRunner | None = None

    def activate_impl(self) -> None:
        self.graph = self._open()

    def get_input_metadata_impl(self) -> TensorMetadata:
        meta = TensorMetadata()
        for name, dtype, shape in self._inputs(self.graph):
            meta.add(name, DataType.from_dtype(np.dtype(dtype)), shape=list(shape))
        return meta

    def infer_impl(self, feed_dict: Mapping[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        outputs = self.graph.infer(feed_dict)
        self.inference_time = time.perf_counter() - start
        return outputs

    def deactivate_impl(self) -> None:
        self.graph.close()
        self.graph = None
