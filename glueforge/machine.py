"""What the running machine has: installed package versions, the GPU's compute capability, the processor's
floating-point mode.

Standard library and packaging only, so that pulling a bundle needs nothing more than the
pull-only install.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import shutil
import subprocess
import threading
from importlib import metadata
from pathlib import Path

from glueforge import GlueforgeError


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


def thread_limit() -> int | None:
    """``$OMP_NUM_THREADS`` where it is a positive integer: the threads one process may use on a machine it shares
    (the convention torch, OpenMP and BLAS libraries follow). The runtimes apply it to a session whose settings
    leave the thread count to the library (``0``); it changes how fast a graph runs, not what it computes, so no
    key holds it."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def passive_wait() -> bool:
    """``$OMP_WAIT_POLICY`` is ``PASSIVE``: idle worker threads sleep instead of spinning (OpenMP's convention; the
    onnxruntime sessions follow it too). On a machine whose cores several processes share, spinning threads take
    the cores the others need; alone, a passive wait costs next to nothing (measured: tests/conftest.py)."""
    return os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"


# The flush-to-zero and denormals-are-zero bits of the calling thread's floating-point control, per processor, and
# where glibc's fenv_t holds that register: x86-64's MXCSR (after the 28-byte x87 environment), AArch64's FPCR (FZ).
_DENORMAL_BITS = {"x86_64": (28, 0x8040), "AMD64": (28, 0x8040), "aarch64": (0, 1 << 24), "arm64": (0, 1 << 24)}
_FENV = threading.local()


@contextlib.contextmanager
def flush_denormals():
    """Within the block, the calling thread computes with denormal floats as zero (inputs and results), then its
    floating-point environment is restored. Where the processor or the C library offers no such mode (no glibc,
    another processor) the block runs unchanged.

    Why: a float below 1.2e-38 costs about a hundred cycles per operation on x86 processors, and real images give
    LightGlue's attention many (an exponential of a very negative score): its matcher ran 2.1x as long on
    onnxruntime's CPU provider (1441 against 682 ms, one thread, the same matches and scores to the bit).
    onnxruntime's ``session.set_denormal_as_zero`` covers the threads of a session's pool (and leaves the mode set
    on the thread that made the session, as a side effect), not the thread that calls ``run``."""
    where = _DENORMAL_BITS.get(platform.machine())
    libc = _libc() if where else None
    if libc is None or getattr(_FENV, "active", False):
        yield
        return
    saved = ctypes.create_string_buffer(64)
    if libc.fegetenv(saved) != 0:
        yield
        return
    changed = ctypes.create_string_buffer(saved.raw)
    offset, bits = where
    register = ctypes.c_uint32.from_buffer(changed, offset)
    register.value |= bits
    libc.fesetenv(changed)
    _FENV.active = True
    try:
        yield
    finally:
        _FENV.active = False
        libc.fesetenv(saved)


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    """glibc's libm, where fegetenv and fesetenv are."""
    try:
        libm = ctypes.CDLL("libm.so.6")
    except OSError:
        return None
    return libm if all(hasattr(libm, name) for name in ("fegetenv", "fesetenv")) else None


def package_version(*names: str) -> str | None:
    """The installed version of the first of ``names`` that is installed."""
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def pinned_versions() -> dict[str, str]:
    """Exact pins (``name==X``) of glueforge's requirements."""
    from packaging.requirements import Requirement

    pins = {}
    for text in metadata.requires("glueforge") or []:
        requirement = Requirement(text)
        exact = [s.version for s in requirement.specifier if s.operator == "=="]
        if exact:
            pins[requirement.name.lower()] = exact[0]
    return pins


def _version(name: str) -> str:
    """The installed version of package ``name``: of the distribution installed where its module imports from, where
    more than one distribution provides that module (onnxruntime-gpu's ``onnxruntime`` computes what onnxruntime's
    does, and counts as it in keys; the one first on the path is the one that runs)."""
    import importlib.util

    module = name.replace("-", "_")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin is not None:
        site = Path(spec.origin).parent.parent
        try:
            if Path(metadata.distribution(name).locate_file("")).resolve() == site.resolve():
                return metadata.version(name)  # the distribution of that name is where the module imports from
        except metadata.PackageNotFoundError:
            pass
        for distribution in metadata.distributions(path=[str(site)]):
            top = (distribution.read_text("top_level.txt") or "").split()
            if module in top:
                return distribution.version
    return metadata.version(name)


def module_version(name: str) -> str | None:
    """The installed version of the package that provides module ``name`` (``PROVIDERS_OF``), or None."""
    try:
        return _version(name)
    except metadata.PackageNotFoundError:
        return None


def tool_versions(*packages: str) -> dict[str, str]:
    """Installed versions; a pinned tool that is not installed counts at its pin, so that a
    runner without it (a Jetson without torch) computes the same keys and takes the results
    of the stages it cannot run from the remote cache. Local version labels (``+cpu``) are
    dropped: they name the build of a wheel, not what it computes."""
    from packaging.version import Version

    versions = {}
    for name in packages:
        try:
            versions[name] = Version(_version(name)).public  # 2.13.0+cpu exports as 2.13.0 does
        except metadata.PackageNotFoundError:
            pin = pinned_versions().get(name.lower())
            if pin is None:
                raise GlueforgeError(f"{name} is not installed and glueforge does not pin it") from None
            versions[name] = pin
    return versions


def describe() -> dict[str, object]:
    """The machine that measured something: processor, logical CPUs, memory, system, GPU (for benchmarks)."""
    import platform

    processor = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                processor = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    gpu = None
    if shutil.which("nvidia-smi"):
        result = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
        gpu = result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout.strip() else None
    return {"processor": processor, "cores": os.cpu_count(), "memory_gib": memory, "system": platform.platform(),
            "python": platform.python_version(), "gpu": gpu, "compute_capability": compute_capability()}
