"""Stand-in for ``tensorrt_rtx`` (TensorRT-RTX's Python package), whose API mirrors TensorRT's: the
stand-in ``tensorrt`` module under this name, with TensorRT-RTX's version (that of the installed
``tensorrt-rtx`` distribution, which built the real engines the tests convert) and its
ahead-of-time compute capabilities. Put ``tests/stand_in`` first on the path to use it; it then
shadows the real package in that process only.
"""

from __future__ import annotations

import enum
from importlib import metadata

import tensorrt as _stand_in

globals().update({k: v for k, v in vars(_stand_in).items() if not k.startswith("__")})


def _version() -> str:
    for name in ("tensorrt-rtx-cu13", "tensorrt-rtx-cu12", "tensorrt-rtx"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "1.7.1.116"


__version__ = _version()


class ComputeCapability(enum.Enum):
    SM75 = 75
    SM80 = 80
    SM86 = 86
    SM89 = 89
    SM120 = 120
    SM121 = 121
