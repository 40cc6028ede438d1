"""Stand-in for ``cuda.bindings.runtime`` (cuda-python's CUDA runtime API): "device" memory is host
memory, so that the stand-in TensorRT engine can read and write it through the pointers it is
given. Each call returns ``(error, *values)`` as cuda-python's do. It tracks what is allocated, so
tests can check the device-memory figures.
"""

from __future__ import annotations

import ctypes
import enum

TOTAL = 8 << 30
_allocations: dict[int, ctypes.Array] = {}
_streams: set[int] = set()


class cudaError_t(enum.IntEnum):  # noqa: N801 - cuda-python's names
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


def allocated() -> int:
    return sum(len(b) for b in _allocations.values())


def cudaMalloc(size: int):  # noqa: N802
    buffer = ctypes.create_string_buffer(int(size))
    _allocations[ctypes.addressof(buffer)] = buffer
    return cudaError_t.cudaSuccess, ctypes.addressof(buffer)


def cudaFree(pointer: int):  # noqa: N802
    if pointer not in _allocations:
        return (cudaError_t.cudaErrorInvalidValue,)
    del _allocations[pointer]
    return (cudaError_t.cudaSuccess,)


def _owned(pointer: int, size: int) -> bool:
    return any(start <= pointer and pointer + size <= start + len(b) for start, b in _allocations.items())


def cudaMemcpyAsync(dst: int, src: int, size: int, kind: cudaMemcpyKind, stream: int):  # noqa: N802
    device = dst if kind == cudaMemcpyKind.cudaMemcpyHostToDevice else src
    if stream not in _streams or not _owned(int(device), int(size)):
        return (cudaError_t.cudaErrorInvalidValue,)
    ctypes.memmove(int(dst), int(src), int(size))
    return (cudaError_t.cudaSuccess,)


def cudaStreamCreate():  # noqa: N802
    handle = len(_streams) + 1 + max(_streams, default=0)
    _streams.add(handle)
    return cudaError_t.cudaSuccess, handle


def cudaStreamSynchronize(stream: int):  # noqa: N802
    return (cudaError_t.cudaSuccess if stream in _streams else cudaError_t.cudaErrorInvalidValue,)


def cudaStreamDestroy(stream: int):  # noqa: N802
    _streams.discard(stream)
    return (cudaError_t.cudaSuccess,)


def cudaMemGetInfo():  # noqa: N802
    return cudaError_t.cudaSuccess, TOTAL - allocated(), TOTAL
