"""The seams: import layering, no family or runtime named by the core, stage identity derived.

- `lint-imports` checks the contracts in pyproject.toml (layers, forbidden imports, no cycles);
- the core package holds no string literal naming a family or a runtime (issue 7's grep);
- a stage's code identity is the import closure of its modules: editing a module a stage
  uses changes its identity, editing one it does not use changes nothing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.project import MATCHED, MODELS, REPO, clone_project

CORE = ("glueforge", "validation")  # glueforge/ less its linked plugin packages (exporters, runtimes; patches)
NAMES = re.compile(r"[\"'](aliked|disk|xfeat|superpoint|sift|lightglue|lighterglue|onnxruntime|openvino|tensorrt|tensorrt_rtx)[\"']")
TARGETS = ("cpu", "openvino", "rtx")


def test_import_contracts_are_kept():
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    proc = subprocess.run([lint, "--config", str(REPO / "pyproject.toml")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Contracts: 3 kept, 0 broken." in proc.stdout


def test_core_names_no_family_and_no_runtime():
    plugins = [p for p in (REPO / "glueforge").iterdir() if p.is_symlink()]
    assert {p.name for p in plugins} == {"exporters", "patches", "runtimes", "validation"}
    found = [f"{path.relative_to(REPO)}:{n}: {line.strip()}"
             for package in CORE for path in sorted((REPO / package).rglob("*.py"))
             if not any(plugin in path.parents for plugin in plugins)
             for n, line in enumerate(path.read_text().splitlines(), 1) if NAMES.search(line)]
    found += [f"dodo.py:{n}: {line.strip()}" for n, line in enumerate((REPO / "dodo.py").read_text().splitlines(), 1)
              if NAMES.search(line)]
    assert found == []


IDENTITIES = """
import json, sys
from glueforge.identity import code_digests
from glueforge.pipeline import STAGES, Pipeline
pipeline = Pipeline.load()
print(json.dumps({f"{stage}:{target}:{model}" + (f"/{graph}" if graph else ""):
                      code_digests(STAGES[stage].modules(pipeline.job(model, target), graph))
                  for stage in STAGES for model in sys.argv[1].split(",") for target in sys.argv[2].split(",")
                  for graph in pipeline.graphs(stage, model, target)}))
"""


def _identities(project: Path) -> dict[str, dict[str, str]]:
    proc = subprocess.run([sys.executable, "-c", IDENTITIES, ",".join(MODELS), ",".join(TARGETS)], cwd=project,
                          capture_output=True, text=True, env={"PYTHONPATH": str(project), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return clone_project(tmp_path_factory.mktemp("identity"))


@pytest.fixture(scope="module")
def before(project) -> dict[str, dict[str, str]]:
    return _identities(project)


def _changed_after_editing(project: Path, before, module: str) -> set[str]:
    path = project / module
    original = path.read_text()
    path.write_text(original + "\n# an edit\n")
    try:
        after = _identities(project)
    finally:
        path.write_text(original)
    return {job for job in before if before[job] != after[job]}


def _graphs(model: str) -> list[str]:
    from glueforge.config import Config

    return Config.load(REPO / "models.yaml").model(model).graphs


def _jobs(stages, models=MODELS, targets=TARGETS, graphs=None) -> set[str]:
    """Step names as _identities writes them; a per-graph stage's (export, simplify) one per graph of the model,
    or only those in ``graphs``."""
    per_graph = {"export", "simplify"}
    return {f"{s}:{t}:{m}" + (f"/{g}" if s in per_graph else "") for s in stages for m in models for t in targets
            for g in (_graphs(m) if s in per_graph else [None]) if s not in per_graph or graphs is None or g in graphs}


@pytest.mark.parametrize("module, expected", [
    # a family: the graphs and references of the models that use it, and nothing else
    ("exporters/disk.py", _jobs(["export", "reference"], ["disk_lightglue"])),
    # a matcher family: the graphs that hold the matcher, not the extractor graph, nor the extractor-only models
    ("exporters/lightglue.py", _jobs(["export"], MATCHED, graphs=("end2end", "matcher")) | _jobs(["reference"], MATCHED)),
    ("patches/xfeat_tensor_forward.py", _jobs(["export", "reference"], ["xfeat_lighterglue"])),
    # a runtime: the stages of its targets that run it
    # (TensorRT-RTX's validation here runs its FP16 ONNX in sessions made as the cpu target's are)
    ("runtimes/onnxruntime.py", _jobs(["fuse", "engine", "validate", "benchmark"], targets=["cpu", "rtx"])),
    ("runtimes/openvino.py", _jobs(["fuse", "engine", "validate", "benchmark"], targets=["openvino"])),
    # the TensorRT-RTX runtime builds on the TensorRT module's helpers
    ("runtimes/tensorrt.py", _jobs(["fuse", "engine", "validate", "benchmark"], targets=["rtx"])),
    # a stage module: that stage everywhere
    ("glueforge/stages/simplify.py", _jobs(["simplify"])),
    ("validation/metrics.py", _jobs(["validate"])),
    ("glueforge/bench.py", _jobs(["benchmark"])),
    ("glueforge/report.py", _jobs(["bundle"])),
    # validation's data and the homography evaluation: references and validation, never a graph or an engine
    ("glueforge/homography.py", _jobs(["reference", "validate"])),
    ("validation/images.py", _jobs(["reference", "validate", "benchmark"])),
    # the runtime API: what validation records in the sample, the benchmark, and the manifest's run fields
    ("glueforge/api.py", _jobs(["validate", "benchmark", "bundle"])),
    # modules no stage uses: nothing
    ("glueforge/pull.py", set()),
    ("glueforge/cli.py", set()),
    ("benchmarks/runtime_latency.py", set()),
], ids=lambda v: v if isinstance(v, str) else "")
def test_stage_identity_follows_the_imports(project, before, module, expected):
    assert _changed_after_editing(project, before, module) == expected
