"""Build chains that run beside the test session.

A doit build uses about 1.3 of the 2 cores on average (tracing, onnxsim and the TensorRT-RTX
builder are mostly single-threaded; measured: 30.4 s of CPU in 22.8 s for xfeat's cpu build), and
the whole suite run one step after another kept 1.44 cores busy (50 min of CPU in 35 min). So the
session's builds run in threads (tests/conftest.py), each as soon as what it builds on is built,
beside each other and beside the tests that build nothing, which run first; a test that needs a
build waits for its chain and reads its results.

The suite runs in two pytest-xdist workers (README: ``-n 2``), so that the tests after the chains use both cores.
Each chain runs once per session, in the worker that claims it first (:func:`claim`); it writes its milestones and
its result to the session's directory (``$GLUEFORGE_TEST_SESSION``, made by the controller), where the other worker
reads them (:class:`RemoteChain`). Without xdist, one process claims every chain.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable


# Each chain's builds take one thread (torch, onnxruntime and OpenVINO read $OMP_NUM_THREADS: glueforge.machine):
# three or four chains and the tests share two cores, so the parallelism is between processes. Measured on a clean
# clone: the suite with one thread per chain and the new hand-off tests (about 2 CPU-min) took 44.6 CPU-min, the
# suite before both 44.4; the cpu chain, alone early on, finishes about 30 s later. A thread limit the caller set is
# kept.
THREADS = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


SESSION = "GLUEFORGE_TEST_SESSION"  # the session's shared directory: chain claims, milestones, results, the S3 server


def session_dir() -> Path:
    return Path(os.environ[SESSION])


TIMELINE = "chains.timeline"  # one JSON line per doit run of a chain, in the session's directory


def _communicate(process: subprocess.Popen) -> tuple[str, str, float]:
    """``process``'s stdout and stderr, read to the end, and the CPU seconds it and the children it waited for used
    (``os.wait4``: the rusage of this process alone, not of the session's other builds)."""
    out: dict[str, str] = {}
    readers = [threading.Thread(target=lambda n=name, f=f: out.__setitem__(n, f.read()), daemon=True)
               for name, f in (("stdout", process.stdout), ("stderr", process.stderr))]
    for reader in readers:
        reader.start()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join()
    return out["stdout"], out["stderr"], usage.ru_utime + usage.ru_stime


def record_step(chain: str, project: Path, args: tuple[str, ...], started: float, seconds: float, cpu: float) -> None:
    """Append a chain's doit run to the session's timeline (appends of one short line do not interleave)."""
    what = " ".join(a for a in args if not a.startswith("config=")) + f" (in {project.name})"
    line = json.dumps({"chain": chain, "what": what, "started": started, "seconds": round(seconds, 1), "cpu": round(cpu, 1)})
    with open(session_dir() / TIMELINE, "a") as f:
        f.write(line + "\n")


def timeline(since: float) -> list[str]:
    """The session's chain steps in the order they started: start and end in minutes:seconds after ``since``."""
    try:
        steps = [json.loads(line) for line in (session_dir() / TIMELINE).read_text().splitlines() if line]
    except OSError:
        return []

    def clock(t: float) -> str:
        return f"{int(t // 60):2d}:{int(t % 60):02d}"

    lines = [f"{clock(s['started'] - since)} -> {clock(s['started'] - since + s['seconds'])}  {s['seconds']:6.1f} s  "
             f"{s['cpu']:6.1f} s CPU  {s['chain']:<9} doit {s['what']}" for s in sorted(steps, key=lambda s: s["started"])]
    return lines + [f"the chains' CPU: {sum(s['cpu'] for s in steps) / 60:.1f} min"]


def _write(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_bytes(pickle.dumps(value))
    os.replace(tmp, path)  # a reader sees the whole value or nothing


class Chain:
    """``steps(run, mark)`` in a thread, where ``run(project, *args)`` runs doit in ``project`` like tests.project.doit,
    and ``mark(name, value)`` says a milestone is reached: another chain that builds on this one's first steps waits
    for that milestone (:meth:`milestone`), not for the whole chain. Milestones and the result are also written to
    ``directory`` for the other workers' :class:`RemoteChain`."""

    def __init__(self, name: str, steps: Callable[[Callable[..., Any], Callable[[str, Any], None]], Any],
                 directory: Path) -> None:
        self.name = name
        self._steps = steps
        self._directory = directory
        self._marks: dict[str, Any] = {}
        self._marked = threading.Condition()
        self._value: Any = None
        self._error: BaseException | None = None
        self._process: subprocess.Popen | None = None
        self._stopped = False
        # the environment as the session began: what a test sets in this process while the chain runs (monkeypatch,
        # the stand-ins' variables) must not reach the chain's builds; a step passes what it needs (``env``)
        self._environ = dict(os.environ)
        self._thread = threading.Thread(target=self._run, name=f"chain-{name}", daemon=True)
        self._thread.start()

    def _doit(self, project: Path, *args: str, env: dict[str, str] | None = None):
        from tests.project import doit_environment, parse_doit

        if self._stopped:
            raise RuntimeError(f"the {self.name} chain was stopped")
        self._process = subprocess.Popen([sys.executable, "-m", "doit", *args], cwd=project, text=True,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         env=doit_environment(project, {**self._environ, **THREADS}, env))
        started = time.time()
        stdout, stderr, cpu = _communicate(self._process)
        record_step(self.name, project, args, started, time.time() - started, cpu)
        proc = subprocess.CompletedProcess(self._process.args, self._process.returncode, stdout, stderr)
        return parse_doit(proc)

    def _mark(self, name: str, value: Any) -> None:
        _write(self._directory / f"{self.name}.mark.{name}", value)
        with self._marked:
            self._marks[name] = value
            self._marked.notify_all()

    def _run(self) -> None:
        try:
            self._value = self._steps(self._doit, self._mark)
            _write(self._directory / f"{self.name}.result", ("value", self._value))
        except BaseException as e:  # noqa: BLE001 - handed to the test that waits for it
            self._error = e
            _write(self._directory / f"{self.name}.result", ("error", repr(e)))
        finally:
            with self._marked:
                self._marked.notify_all()

    def milestone(self, name: str) -> Any:
        """Wait until the chain marks ``name``; its value. Raises if the chain ends without marking it."""
        with self._marked:
            while name not in self._marks:
                if not self._thread.is_alive():
                    raise RuntimeError(f"the {self.name} build chain ended before {name!r}: {self._error!r}") from self._error
                self._marked.wait(timeout=1.0)
            return self._marks[name]

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


class RemoteChain:
    """A chain another worker of this session runs: its milestones and result, read from the session's directory."""

    def __init__(self, name: str, directory: Path, owner: int) -> None:
        self.name, self._directory, self._owner = name, directory, owner

    def _wait(self, mark: str | None) -> Any:
        """The value of milestone ``mark`` (written before the result), or with None the chain's result."""
        result = self._directory / f"{self.name}.result"
        marked = self._directory / f"{self.name}.mark.{mark}"
        what = "its end" if mark is None else repr(mark)
        while True:
            if mark is not None and marked.is_file():
                return pickle.loads(marked.read_bytes())
            if result.is_file():
                kind, value = pickle.loads(result.read_bytes())
                if kind == "error":
                    raise RuntimeError(f"the {self.name} build chain failed (in pid {self._owner}): {value}")
                if mark is None:
                    return value
                raise RuntimeError(f"the {self.name} build chain ended before {what}")
            if not alive(self._owner):
                raise RuntimeError(f"the process that ran the {self.name} build chain (pid {self._owner}) ended before {what}")
            time.sleep(1.0)

    def milestone(self, name: str) -> Any:
        return self._wait(name)

    def result(self) -> Any:
        return self._wait(None)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # an exited process that nobody has reaped yet is not alive


def claim(name: str, steps: Callable[[], Callable[..., Any]]) -> Chain | RemoteChain:
    """The session's chain ``name``: run here if no other worker claimed it first (``steps()`` makes its steps), else
    the other worker's, read from the session's directory."""
    directory = session_dir()
    path = directory / f"{name}.claim"
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        while not path.read_text():  # the claimant writes its pid right after creating the file
            time.sleep(0.05)
        return RemoteChain(name, directory, int(path.read_text()))
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return Chain(name, steps(), directory)
