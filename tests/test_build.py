"""The main job end to end: `doit build target=cpu` in a clean copy of the project.

One cold build (real weights, real exports, real onnxruntime validation) is shared by the
module. Then: the bundles and manifests, a second run and a touch run executing nothing,
parity of the bundled graphs against kornia on ../shared/data, a patch edit rerunning only
the dependent model, and a validation failure stopping the bundle.
"""

from __future__ import annotations

import json
import logging
import os
import time

import pytest
import yaml

from glueforge.config import Config
from glueforge.files import sha256_file

from tests.project import MATCHED, MODELS, SELECT, UNREACHABLE, VERSIONS, assert_parity, clone_project, doit

log = logging.getLogger(__name__)
PARITY = {"keypoint_mnn": 0.98, "descriptor_cosine_min": 0.999, "match_recall": 0.95}  # the acceptance


def test_bundles_have_verified_manifests(built):
    for model in MODELS:
        bundle = built / "artifacts" / "store" / model / VERSIONS[model] / "cpu"
        manifest = json.loads((bundle / "manifest.json").read_text())
        assert (manifest["model"], manifest["version"], manifest["target"]) == (model, VERSIONS[model], "cpu")
        assert manifest["validation"]["status"] == "passed"
        listed = set(manifest["files"])
        graphs = ["end2end", "extractor", "matcher"] if model in MATCHED else ["extractor"]
        assert list(manifest["graphs"]) == graphs
        assert {*(f"{g}.onnx" for g in graphs), "session.json", "validation.json", "io.json"} <= listed
        assert listed == {p.name for p in bundle.iterdir()} - {"manifest.json"}
        for name, entry in manifest["files"].items():
            assert sha256_file(bundle / name) == entry["sha256"]
            assert (bundle / name).stat().st_size == entry["size"]
        weights = manifest["provenance"]["weights"]
        config = Config.load(built / "models.yaml")
        assert weights["extractor"]["sha256"] == config.project.weights[config.model(model).extractor.weights].sha256
        if model in MATCHED:
            assert manifest["graphs"]["end2end"]["outputs"][1] == {"name": "matches", "dtype": "int64", "shape": ["M", 3]}
        assert manifest["graphs"]["extractor"]["inputs"][0]["shape"] == ["N", 3, "H", "W"]  # dynamic image size


def test_second_clone_takes_every_stage_from_the_remote_cache(built, tmp_path, remote_cache):
    cold = float((built.parent / "cold_build_seconds").read_text())
    clone_b = clone_project(tmp_path / "clone_b")
    start = time.monotonic()
    proc, executed, skipped = doit(clone_b, "build", "target=cpu", SELECT, env=remote_cache)
    warm = time.monotonic() - start
    log.info("cold build of clone A: %.1f s; clone B from the remote cache: %.1f s", cold, warm)
    (built / "remote_cache_seconds").write_text(f"{warm:.1f}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [t for t in executed if t.startswith("export:")] == [], proc.stderr[-5000:]
    assert {f"export:cpu:{m}" for m in MODELS} <= set(skipped)
    assert "taken from the remote cache" in proc.stderr
    assert warm < cold / 5, f"clone B took {warm:.1f} s, clone A {cold:.1f} s"
    for model in MODELS:
        ours = json.loads((clone_b / "artifacts/store" / model / VERSIONS[model] / "cpu/manifest.json").read_text())
        theirs = json.loads((built / "artifacts/store" / model / VERSIONS[model] / "cpu/manifest.json").read_text())
        assert ours["files"] == theirs["files"]


def test_second_run_executes_nothing(built):
    proc, executed, skipped = doit(built, "build", "target=cpu", SELECT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert executed == []
    assert f"bundle:cpu:{MODELS[0]}" in skipped


def test_touch_without_change_executes_nothing(built, download_cache):
    touched = [built / "models.yaml", *built.glob("patches/*.py"), *built.glob("exporters/*.py"),
               *built.glob("glueforge/*.py"), *download_cache.glob("weights/*.pth")]
    for path in touched:
        os.utime(path)
    proc, executed, _ = doit(built, "build", "target=cpu", SELECT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert executed == []


def test_patch_edit_reruns_only_dependent_model(built, tmp_path):
    project = clone_project(tmp_path / "edited", artifacts_from=built)
    patch = project / "patches" / "aliked_fixed_topk_dkd.py"
    source = patch.read_text()
    old = "residual = (x_exp.unsqueeze(-1) * grid).sum(dim=2) / x_exp.sum(dim=-1, keepdim=True)"
    assert old in source
    # Same arithmetic, different graph: normalise the weights before the product.
    patch.write_text(source.replace(old, "residual = (x_exp / x_exp.sum(dim=-1, keepdim=True)).unsqueeze(-1).mul(grid).sum(dim=2)"))
    config = yaml.safe_load((project / "models.yaml").read_text())
    # one ALIKED model (the quickest to rebuild) beside the models of other families: only it reruns
    aliked = ["aliked_t16"]
    for model in aliked:  # published versions are immutable
        config["models"][model]["version"] = "0.9.1"
    (project / "models.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    proc, executed, _ = doit(project, "build", "target=cpu", "model=aliked_t16,disk_lightglue,xfeat_lighterglue")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [t for t in executed if "disk_lightglue" in t or "xfeat" in t or t.startswith("fetch:")] == []
    for model in aliked:
        for stage in ("export", "simplify", "engine", "validate", "benchmark", "bundle"):
            assert f"{stage}:cpu:{model}" in executed
        assert (project / f"artifacts/store/{model}/0.9.1/cpu/manifest.json").is_file()


def test_validation_failure_stops_the_bundle(built, tmp_path):
    project = clone_project(tmp_path / "strict", artifacts_from=built)
    config = yaml.safe_load((project / "models.yaml").read_text())
    config["targets"]["cpu"]["tolerances"]["descriptors"] = {"atol": 0.0, "rtol": 0.0, "stat": "max"}
    config["models"]["xfeat_lighterglue"]["version"] = "0.9.0"
    (project / "models.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    cas_before = sorted(p.name for p in (project / "artifacts/cas/validate").iterdir())

    proc, executed, _ = doit(project, "build", "target=cpu", "model=xfeat_lighterglue")
    assert proc.returncode != 0
    assert "validation failed" in proc.stdout + proc.stderr and "descriptors" in proc.stdout + proc.stderr
    assert "bundle:cpu:xfeat_lighterglue" not in executed
    assert not (project / "artifacts/store/xfeat_lighterglue/0.9.0").exists()
    assert sorted(p.name for p in (project / "artifacts/cas/validate").iterdir()) == cas_before


# -- parity of the bundled graphs against kornia on ../shared/data ---------------------------------------

@pytest.mark.parametrize("model", MATCHED)
def test_parity_of_bundled_graphs_with_kornia(built, download_cache, model, record_property):
    text = assert_parity(built, model, "cpu", download_cache, PARITY)
    log.info("parity of the bundled %s graphs against kornia:\n%s", model, text)
    record_property("parity", text)


# -- publishing from the task graph -----------------------------------------------------------------------

def test_doit_publish_to_s3_then_pull(built, s3_server, tmp_path):
    from glueforge.pull import pull
    from glueforge.store import S3Store

    store = ["store=" + s3_server.url("published"), "endpoint=" + s3_server.endpoint]
    proc, executed, _ = doit(built, "publish", "target=cpu", SELECT, "channel=latest,stable", *store)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert {f"publish:cpu:{m}" for m in MODELS} <= set(executed)
    proc, executed, _ = doit(built, "publish", "target=cpu", SELECT, "channel=latest,stable", *store)
    assert proc.returncode == 0 and executed == []  # already published: nothing to do
    remote = S3Store(s3_server.url("published"), s3_server.endpoint)
    for model in MODELS:
        path = pull(remote, model, "cpu", tmp_path / "apps", channel="stable")
        local = built / "artifacts/store" / model / VERSIONS[model] / "cpu"
        for name in json.loads((local / "manifest.json").read_text())["files"]:
            assert (path / name).read_bytes() == (local / name).read_bytes()


def test_unvalidated_override_is_loud_and_marked(built, s3_server):
    from glueforge.store import S3Store

    store = ["store=" + s3_server.url("unvalidated"), "endpoint=" + s3_server.endpoint]
    proc, executed, _ = doit(built, "publish", "target=cpu", "model=xfeat_lighterglue", "version=0.0.1", "unvalidated=1", *store)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "validate:cpu:xfeat_lighterglue" not in executed
    assert "UNVALIDATED: xfeat_lighterglue for cpu is bundled WITHOUT validation" in proc.stderr
    manifest = S3Store(s3_server.url("unvalidated"), s3_server.endpoint).manifest("xfeat_lighterglue", "0.0.1", "cpu")
    assert manifest["validation"]["status"] == "unvalidated" and "override" in manifest["validation"]["reason"]


def test_a_bare_build_builds_the_default_models(built):
    """`doit build target=cpu`, the README's main command: the models marked default (those with real weights here),
    which clone A has built: it exits 0 with nothing to do."""
    proc, executed, skipped = doit(built, "build", "target=cpu")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert executed == [] and {f"bundle:cpu:{m}" for m in MODELS} <= set(skipped)
    assert not [t for t in skipped if any(m in t for m in UNREACHABLE)], skipped
    assert "build summary" not in proc.stdout  # a summary ends a build that failed


def test_every_model_builds_where_its_weights_are_reachable(built):
    """`doit build target=cpu model=all`: the ones with reachable weights are bundled (from the cache here),
    each one whose weights are on unreachable sources fails at fetch, naming every source and how to supply it;
    the run ends with a line per model."""
    proc, executed, _ = doit(built, "build", "target=cpu", "model=all", env={"GLUEFORGE_FETCH_BACKOFF": "0"})  # retries, no sleeping
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert [t for t in executed if not t.startswith("fetch:")] == [], executed  # the rest is up to date
    for weight in ("superpoint_v1", "superpoint_lightglue", "superpoint_open", "sift_lightglue"):
        assert f"fetch:{weight}" in executed
        assert f"weight {weight!r}" in out
    assert "https://github.com/cvg/LightGlue/releases/download/v0.1_arxiv/superpoint_v1.pth" in out
    assert "https://github.com/magicleap/SuperPointPretrainedNetwork/raw/master/superpoint_v1.pth" in out
    assert "To supply it" in out and "config=team.yaml" in out
    assert "Traceback" not in out
    for model in MODELS:
        assert (built / "artifacts/store" / model / VERSIONS[model] / "cpu/manifest.json").is_file()
    for model in UNREACHABLE:
        assert not (built / "artifacts/store" / model).exists()
    summary = proc.stdout[proc.stdout.index("build summary"):].splitlines()
    assert summary[0] == f"build summary for target cpu: {len(MODELS)} bundled, {len(UNREACHABLE)} failed", summary
    lines = {line.split()[0]: line.split(None, 1)[1] for line in summary[1:] if line.strip()}
    assert set(lines) == set(MODELS) | set(UNREACHABLE)
    for model in MODELS:
        assert lines[model] == f"bundled: artifacts/store/{model}/{VERSIONS[model]}/cpu"
    assert lines["superpoint_open"].startswith("failed at fetch superpoint_open: ")
    assert lines["sift_lightglue"].startswith("failed at fetch sift_lightglue: ")
