"""The build graph at the grain of the work, seen from doit as a user runs it.

- a second target traces only the graphs whose views differ, and computes no reference it shares;
- an edit to the reference's code (the homography evaluation, the validation images) reruns
  references and validation only: no trace, simplify, fuse or engine;
- two builds at once in one checkout: the second waits, then reuses; every step runs once;
- a build killed with SIGKILL in the middle of a step leaves nothing behind after the next build;
- a damaged bundle in the local store is published again.

The steps a build ran are read from the pipeline's log lines (``<stage> <label>: building``); a
graph's trace also logs ``export MODEL/GRAPH: tracing``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from glueforge.files import _TEMPORARY
from glueforge.store import LocalStore
from tests.project import MATCHED, MODELS, VERSIONS, clone_project, doit

pytestmark = pytest.mark.slow
STEP = re.compile(r"glueforge\.pipeline: (\w+) (\S+?)(?: for \S+)?: building \(key")
MODEL = "xfeat_lighterglue"  # the quickest to build


def steps_built(log: str) -> list[str]:
    """``stage model[/graph]`` of every step a build log says it built, in order."""
    return [f"{stage} {what}" for stage, what in STEP.findall(log)]


def _model_steps(model: str, graphs: list[str], reference: bool) -> set[str]:
    return ({f"{stage} {model}/{g}" for stage in ("export", "simplify") for g in graphs}
            | {f"{stage} {model}" for stage in ("interface", "fuse", "engine", "validate", "benchmark", "bundle")}
            | ({f"reference {model}"} if reference else set()))


def test_rtx_after_cpu_traces_only_the_graphs_that_differ(rtx_built):
    """Acceptance: after the cpu build, the rtx build traces no extractor graph and computes no reference where the
    keypoint count is the same (K = 1024: the LightGlue models); it traces end2end and matcher (the dense match
    form). The standalone ALIKED extractors have K = 2000 on cpu and 1024 on rtx: theirs are traced anew."""
    log = (rtx_built.parent / "build-rtx.log").read_text()
    expected = set()
    for model in MODELS:
        if model in MATCHED:
            expected |= _model_steps(model, ["end2end", "matcher"], reference=False)
        else:
            expected |= _model_steps(model, ["extractor"], reference=True)
    built = steps_built(log)
    assert len(built) == len(set(built)), built  # no step twice
    assert set(built) == expected
    for model in MATCHED:
        assert f"export {model}/extractor: tracing" not in log and f"export {model}/end2end: tracing" in log
    # rtx_2060 after rtx: the same fused graphs (its fuse view is rtx's); its own engine, validation and bundle
    log_2060 = (rtx_built.parent / "build-rtx_2060.log").read_text()
    assert steps_built(log_2060) == [f"{stage} xfeat_lighterglue" for stage in ("engine", "validate", "benchmark", "bundle")]


@pytest.mark.parametrize("module", ["glueforge/homography.py", "validation/images.py"])
def test_an_edit_to_the_references_code_reruns_no_graph_step(built, tmp_path, module):
    project = clone_project(tmp_path / "edited", artifacts_from=built)
    with open(project / module, "a") as f:
        f.write("\n# an edit\n")
    config = yaml.safe_load((project / "models.yaml").read_text())
    config["models"][MODEL]["version"] = "0.9.2"  # published versions are immutable
    (project / "models.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    proc, _, _ = doit(project, "build", "target=cpu", f"model={MODEL}")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    built_steps = {step.split()[0] for step in steps_built(log)}
    assert "reference" in built_steps and built_steps <= {"reference", "validate", "benchmark", "bundle"}, built_steps
    assert "tracing" not in log


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, download_cache) -> Path:
    """A clean checkout of its own (no artifacts), for the concurrency and interruption tests."""
    return clone_project(tmp_path_factory.mktemp("fresh"))


def _start(project: Path, *args: str) -> subprocess.Popen:
    pythonpath = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(project)) if p)
    return subprocess.Popen([sys.executable, "-m", "doit", *args], cwd=project, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": pythonpath},
                            start_new_session=True)


def test_two_builds_at_once_build_each_step_once(fresh):
    first = _start(fresh, "build", "target=cpu", f"model={MODEL}")
    time.sleep(1.0)  # let the first take the lock
    second = _start(fresh, "build", "target=cpu", f"model={MODEL}")
    logs = [p.communicate(timeout=900)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    built = steps_built(logs[0]) + steps_built(logs[1])
    assert len(built) == len(set(built)), built  # every step once, in either build
    assert set(built) == _model_steps(MODEL, ["end2end", "extractor", "matcher"], reference=True)
    assert "".join(logs).count(": tracing") == 3
    assert "waiting for the build that holds" in logs[1] and "reusing what it built" in logs[1]
    assert steps_built(logs[1]) == []


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if _TEMPORARY.match(p.name)]


def test_a_killed_build_leaves_nothing_behind(fresh):
    """SIGKILL in the middle of the reference step (its temporary directory exists), then a rebuild."""
    with open(fresh / "glueforge/homography.py", "a") as f:
        f.write("\n# an edit: the reference step reruns\n")
    config = yaml.safe_load((fresh / "models.yaml").read_text())
    config["models"][MODEL]["version"] = "0.9.3"
    (fresh / "models.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    build = _start(fresh, "build", "target=cpu", f"model={MODEL}")
    cas = fresh / "artifacts/cas/reference"
    deadline = time.monotonic() + 300
    while not _temporaries(cas) and time.monotonic() < deadline and build.poll() is None:
        time.sleep(0.02)
    os.killpg(build.pid, signal.SIGKILL)
    build.communicate()
    assert _temporaries(cas), "the build was not caught inside the reference step"

    proc, _, _ = doit(fresh, "build", "target=cpu", f"model={MODEL}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "left by an interrupted build" in proc.stderr
    assert _temporaries(fresh / "artifacts") == []
    for entry in (fresh / "artifacts/cas").glob("*/*"):  # every cache entry is whole
        assert (entry / "result.json").is_file(), entry


def test_a_damaged_bundle_in_the_store_is_published_again(built, tmp_path):
    project = clone_project(tmp_path / "damaged", artifacts_from=built)
    bundle = project / "artifacts/store" / MODEL / VERSIONS[MODEL] / "cpu"
    manifest = json.loads((bundle / "manifest.json").read_text())
    onnx_file = bundle / "end2end.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.unlink()  # the artifacts are hard links of clone A's: write a new file, not into the shared one
    onnx_file.write_bytes(bytes(data))
    (bundle / "report.html").unlink()
    store = LocalStore(project / "artifacts/store")
    assert sorted(store.damaged(manifest)) == ["end2end.onnx", "report.html"]

    proc, executed, _ = doit(project, "build", "target=cpu", f"model={MODEL}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert executed == [f"bundle:cpu:{MODEL}"] and steps_built(proc.stderr) == []  # from the cache, not rebuilt
    assert "is damaged (end2end.onnx, report.html); publishing it again" in proc.stderr
    assert store.damaged(manifest) == [] and json.loads((bundle / "manifest.json").read_text()) == manifest
    proc, executed, _ = doit(project, "build", "target=cpu", f"model={MODEL}")
    assert proc.returncode == 0 and executed == []
