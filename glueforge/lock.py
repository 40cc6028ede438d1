"""One build at a time per checkout: an exclusive lock on the artifacts directory.

``doit`` takes it when it loads the task graph (``glueforge.tasks.load_plan``) and holds it until
the process ends; the kernel releases it however the process ends, kill -9 included. A second
build in the same checkout waits for it, logs that it waited, and then finds every step the first
one built in the cache: nothing is built twice, and no benchmark is timed while another build
runs. Holding the lock, the build removes what interrupted writers left under the artifacts
directory (``glueforge.files.sweep_temporaries``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)
LOCK = ".lock"
_held: dict[Path, int] = {}  # artifacts directory -> the open descriptor that holds its lock


def hold(artifacts: Path) -> float:
    """Hold the build lock of ``artifacts`` for the rest of this process (again: a no-op); return the seconds
    waited for another build to finish."""
    artifacts = Path(artifacts).resolve()
    if artifacts in _held:
        return 0.0
    artifacts.mkdir(parents=True, exist_ok=True)
    fd = os.open(artifacts / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    started = time.monotonic()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
        log.info("waiting for the build that holds %s (pid %s) to finish: one build at a time per checkout",
                 artifacts / LOCK, holder)
        fcntl.flock(fd, fcntl.LOCK_EX)
    waited = time.monotonic() - started
    if waited > 0.01:
        log.info("waited %.1f s for another build in this checkout; reusing what it built", waited)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _held[artifacts] = fd
    return waited
