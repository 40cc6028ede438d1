"""Build chains that run beside the test session, for projects that share nothing with the others.

The tests' builds are chains: clone A's cpu, openvino, rtx and orin_nano builds reuse each other's
steps, so they run one after the other; the seeded project (tests/test_seeded_models.py) shares
nothing with them. A build uses about 1.3 of the 2 cores on average (tracing and onnxsim are mostly
single-threaded), so the seeded chain starts in a thread when the session collects a test that needs
it, and runs beside clone A's chain; the tests read its results when they get to them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable


class Chain:
    """``steps(run)`` in a thread, where ``run(project, *args)`` runs doit in ``project`` like tests.project.doit."""

    def __init__(self, name: str, steps: Callable[[Callable[..., Any]], Any]) -> None:
        self.name = name
        self._steps = steps
        self._value: Any = None
        self._error: BaseException | None = None
        self._process: subprocess.Popen | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"chain-{name}", daemon=True)
        self._thread.start()

    def _doit(self, project: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[str], list[str]]:
        from tests.project import parse_doit

        if self._stopped:
            raise RuntimeError(f"the {self.name} chain was stopped")
        pythonpath = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(project)) if p)
        self._process = subprocess.Popen([sys.executable, "-m", "doit", *args], cwd=project, text=True,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         env={**os.environ, "PYTHONPATH": pythonpath})
        stdout, stderr = self._process.communicate()
        proc = subprocess.CompletedProcess(self._process.args, self._process.returncode, stdout, stderr)
        return parse_doit(proc)

    def _run(self) -> None:
        try:
            self._value = self._steps(self._doit)
        except BaseException as e:  # noqa: BLE001 - handed to the test that waits for it
            self._error = e

    def result(self) -> Any:
        """Wait for the chain; its value, or its exception raised here."""
        self._thread.join()
        if self._error is not None:
            raise RuntimeError(f"the {self.name} build chain failed: {self._error!r}") from self._error
        return self._value

    def stop(self) -> None:
        """End the chain (at the end of the session): no further build starts, the running one is killed."""
        self._stopped = True
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
        self._thread.join(timeout=30)
