"""What the running machine has: TensorRT release, GPU compute capability. Standard library only,
so that pulling a bundle needs nothing more than boto3 and PyYAML."""

from __future__ import annotations

import os
import shutil
import subprocess
from importlib import metadata
from pathlib import Path


def compute_capability() -> str | None:
    """The GPU's compute capability: $GLUEFORGE_COMPUTE_CAPABILITY, nvidia-smi, or the Jetson device tree."""
    if os.environ.get("GLUEFORGE_COMPUTE_CAPABILITY"):
        return os.environ["GLUEFORGE_COMPUTE_CAPABILITY"]
    if shutil.which("nvidia-smi"):
        result = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True, text=True)
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout.split()[0]
    compatible = Path("/proc/device-tree/compatible")
    if compatible.is_file() and b"tegra234" in compatible.read_bytes():
        return "8.7"  # Jetson Orin (T234)
    return None


def package_version(*names: str) -> str | None:
    """The installed version of the first of ``names`` that is installed."""
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def runtime_version(runtime: str) -> str | None:
    return {
        "onnxruntime": lambda: package_version("onnxruntime", "onnxruntime-gpu"),
        "tensorrt": lambda: package_version("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-lean"),
        "tensorrt_rtx": lambda: package_version("tensorrt-rtx-cu13", "tensorrt-rtx-cu12", "tensorrt-rtx"),
    }[runtime]()
