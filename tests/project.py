"""Helpers for tests that run the project as a user would: a clean copy, and doit in it."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

from glueforge.lock import LOCK

REPO = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout (as in CI); GLUEFORGE_SHARED_DATA points elsewhere
SHARED_DATA = Path(os.environ.get("GLUEFORGE_SHARED_DATA", REPO.parent / "shared" / "data"))
# the models of models.yaml built from real weights here (the others' weights are on GitHub, unreachable here)
MODELS = ("aliked_lightglue", "disk_lightglue", "xfeat_lighterglue", "aliked_t16", "aliked_n16rot", "aliked_n32")
MATCHED = ("aliked_lightglue", "disk_lightglue", "xfeat_lighterglue")  # those with a matcher (end2end parity)
UNREACHABLE = ("superpoint_lightglue", "superpoint_dense", "superpoint_open", "sift_lightglue")
SELECT = "model=" + ",".join(MODELS)
RTX_TARGETS = {"rtx": ["8.6", "8.9", "12.0"], "rtx_2060": ["7.5"]}  # TensorRT-RTX targets and their compute capabilities
# the models the tests build for each: every one for rtx; for the Turing target (FP16 by construction: it has no
# FP32 GEMM) one LightGlue model, the quickest to build (CI time)
RTX_MODELS = {"rtx": MODELS, "rtx_2060": ("xfeat_lighterglue",)}
# the model the adaptive-depth tests build (tests/test_depth.py), from an overlay: the cheapest real one (6 layers)
ADAPTIVE_MODEL, ADAPTIVE_OVERLAY = "xfeat_lighterglue_adaptive", REPO / "tests" / "adaptive.yaml"
INT8_MODEL = "xfeat_lighterglue"  # the model the int8 targets' tests build (tests/test_int8.py): the cheapest real one
ORIN_MODEL = "aliked_lightglue"  # the model the Jetson targets' tests build (tests/test_tensorrt.py)  # `doit build target=T` with every model fails at fetch for UNREACHABLE


def _versions() -> dict[str, str]:
    from glueforge.config import Config

    config = Config.load(REPO / "models.yaml")
    return {m: config.model(m).version for m in (*MODELS, *UNREACHABLE)}


VERSIONS = _versions()


def project_files(root: Path) -> list[str]:
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    untracked = subprocess.run(["git", "ls-files", "--others", "--exclude-standard"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.split()
    return sorted({*tracked, *untracked})


def clone_project(dest: Path, artifacts_from: Path | None = None) -> Path:
    """Copy the project's files (not its artifacts) to ``dest``; hard-link ``artifacts_from``'s artifacts."""
    for rel in project_files(REPO):
        if (REPO / rel).is_symlink():  # glueforge/runtimes -> ../runtimes and the like: links, as in a git clone
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(REPO / rel), dest / rel)
        elif (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    if artifacts_from is not None:  # cache entries and bundles are immutable, so links are safe
        # not the build lock (a link is the same file: the two checkouts would wait for each other), and a copy of
        # doit's state file, which doit rewrites in place
        shutil.copytree(artifacts_from / "artifacts", dest / "artifacts", copy_function=os.link,
                        ignore=shutil.ignore_patterns(LOCK, ".doit.db*"))
        for state in (artifacts_from / "artifacts").glob(".doit.db*"):
            shutil.copy2(state, dest / "artifacts" / state.name)
    return dest


def ort_session(model):
    """An onnxruntime CPU session of ``model`` (a path or serialized bytes) made as the cpu target's are: this
    process's thread limit (one thread in the test session: tests/conftest.py) and no spinning threads."""
    from glueforge.runtimes.onnxruntime import OrtSession, session

    return session(model, OrtSession())


def doit_environment(project: Path, base: dict[str, str], env: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` with ``env`` over it, and ``project`` appended to their PYTHONPATH: what doit runs with in ``project``."""
    merged = {**base, **(env or {})}
    merged["PYTHONPATH"] = os.pathsep.join(p for p in (merged.get("PYTHONPATH"), str(project)) if p)
    return merged


def doit(project: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, list[str], list[str]]:
    """Run doit in ``project``; return the process, the executed tasks and the up-to-date tasks."""
    proc = subprocess.run([sys.executable, "-m", "doit", *args], cwd=project, capture_output=True, text=True,
                          env=doit_environment(project, dict(os.environ), env))
    return parse_doit(proc)


def parse_doit(proc: subprocess.CompletedProcess) -> tuple[subprocess.CompletedProcess, list[str], list[str]]:
    """The process, the tasks doit executed and those it found up to date."""
    executed = re.findall(r"^\.  (\S+)", proc.stdout, re.M)
    skipped = re.findall(r"^-- (\S+)", proc.stdout, re.M)
    return proc, executed, skipped


def reference_models(project: Path, model: str, download_cache: Path):
    """The patched and kornia models of ``model`` with the weights a build of ``project`` fetched."""
    from glueforge.config import Config
    from glueforge.fetch import weight_path
    from glueforge.graphs import Models

    config = Config.load(project / "models.yaml")
    m = config.model(model)
    weights = {role: weight_path(download_cache, config.project.weights[getattr(m, role).weights])
               for role in ("extractor", "matcher")}
    return Models(config.export_settings(model, "cpu"), weights)


class SharedReferences:
    """The upstream reference's features and matches per pair (``bundle_parity``'s cache) for one model and export
    settings, shared by the targets' parity tests in every worker of the session: a pickle per pair in the session's
    directory (tests/background.py), or in memory outside a test session."""

    def __init__(self, key: str) -> None:
        from tests.background import SESSION

        self._memory: dict = {}
        self.directory = None
        if SESSION in os.environ:
            self.directory = Path(os.environ[SESSION]) / "parity" / hashlib.sha256(key.encode()).hexdigest()[:16]
            self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        return self.directory / hashlib.sha256(name.encode()).hexdigest()[:16]

    def __contains__(self, name: str) -> bool:
        return name in self._memory or (self.directory is not None and self._path(name).is_file())

    def __getitem__(self, name: str):
        if name not in self._memory:
            self._memory[name] = pickle.loads(self._path(name).read_bytes())
        return self._memory[name]

    def __setitem__(self, name: str, value) -> None:
        self._memory[name] = value
        if self.directory is not None:
            tmp = self._path(name).with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(pickle.dumps(value))
            os.replace(tmp, self._path(name))

    def lock(self):
        """Held while one worker computes the references, so that another waits for them instead of computing them
        again."""
        if self.directory is None:
            return contextlib.nullcontext()

        @contextlib.contextmanager
        def held():
            with open(self.directory / ".lock", "w") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                yield

        return held()


def assert_parity(project: Path, model: str, target: str, download_cache: Path, thresholds: dict[str, float]) -> str:
    """Parity of a built bundle against kornia on ../shared/data: the table, written to
    ``$GLUEFORGE_PARITY_REPORT_DIR`` (or the project's artifacts); every pair must meet ``thresholds``."""
    import pytest

    from glueforge.views import payload
    from glueforge.validation.parity import bundle_parity, table

    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: the parity photographs live there (set GLUEFORGE_SHARED_DATA)")
    bundle = project / "artifacts/store" / model / VERSIONS[model] / target
    models = reference_models(project, model, download_cache)
    references = SharedReferences(model + json.dumps(payload(models.spec), sort_keys=True))  # the reference is the target's K's
    # the four wide-baseline pairs and the first pair of each sequence (consecutive frames differ little; CI time)
    with references.lock():
        rows = bundle_parity(bundle, models, SHARED_DATA, references, sequence_pairs=1)
    text = table(model, rows)
    report_dir = Path(os.environ.get("GLUEFORGE_PARITY_REPORT_DIR", project / "artifacts"))
    (report_dir / f"parity-{target}-{model}.txt").write_text(text + "\n")
    for name, m in rows:
        for metric, threshold in thresholds.items():
            assert m[metric] >= threshold, f"{model} on {target}, {name}: {metric} {m[metric]:.5f} < {threshold}\n{text}"
    return text
